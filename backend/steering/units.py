"""What a steering strength means.

The default unit, "residual", is calibrated so 1.0 means the same push for every feature: it adds a vector
as long as the median residual norm at the hook on the prompts, along the feature's decoder direction. The
older units ("p99_act", "max_act": the feature's typical activation over a corpus's documents times its
decoder direction) stay available by name; their push varies with each feature's activation and decoder
scale (a dense feature with small activations barely moves the text at 1.0, another breaks it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping

import torch

from backend.steering.config import SteeringError

if TYPE_CHECKING:
    from sae_lens import SAE

    from backend.runtime import HookedForward

UnitKind = Literal["residual", "p99_act", "max_act"]
UNIT_KINDS: dict[str, str] = {
    "residual": "median residual norm (same push for every feature)",
    "p99_act": "99th-percentile activation",
    "max_act": "maximum activation",
}
DEFAULT_UNIT: UnitKind = "residual"
ScaleSource = Literal["typical_acts", "residual_norm", "decoder_bias_norm", "unit_norm"]


@dataclass(frozen=True)
class FeatureScale:
    """What a steering strength means for one feature.

    The vector added to the residual is `raw_coef * direction`, where `direction` is the decoder row
    W_dec[f] (divided by its norm for SAEs that rescale activations by decoder norm), and
    `raw_coef = strength * unit`. `unit` is the feature's typical activation.
    """

    feature_id: int
    unit: float
    source: ScaleSource
    note: str
    direction_norm: float
    strength: float = 1.0

    @property
    def raw_coef(self) -> float:
        """Coefficient multiplying the decoder direction for this strength."""
        return self.strength * self.unit

    @property
    def vector_norm(self) -> float:
        """L2 norm of the vector added to the residual stream."""
        return abs(self.raw_coef) * self.direction_norm

    def with_strength(self, strength: float) -> FeatureScale:
        return FeatureScale(self.feature_id, self.unit, self.source, self.note, self.direction_norm, strength)


@dataclass(frozen=True)
class ActivationLevels:
    """A feature's activation levels over a corpus's documents (its feature_stats row), None when unknown."""

    p99_act: float | None = None
    max_act: float | None = None


def typical_units(levels: Mapping[int, ActivationLevels], unit: UnitKind = "p99_act") -> dict[int, float]:
    """{feature_id: typical activation} for strength 1.0: the chosen level, else the max; features that
    never fired (no positive level) are left out, so `feature_scale` falls back to a norm-based unit.
    The "residual" unit uses no activation level: empty."""
    if unit not in UNIT_KINDS:
        raise SteeringError(f"unit must be one of {', '.join(UNIT_KINDS)}, not {unit!r}")
    out: dict[int, float] = {}
    if unit == "residual":
        return out
    for feature_id, level in levels.items():
        value = getattr(level, unit) or level.max_act or 0.0
        if value > 0:
            out[int(feature_id)] = float(value)
    return out


def decoder_direction(sae: SAE, feature_id: int) -> torch.Tensor:
    """Residual-space vector that one unit of the feature's activation adds to the reconstruction."""
    w = sae.W_dec[int(feature_id)].detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        w = w / w.norm()
    return w


def feature_scale(
    sae: SAE,
    feature_id: int,
    typical_acts: Mapping[int, float] | None = None,
    strength: float = 1.0,
    resid_norm: float | None = None,
) -> FeatureScale:
    """Unit of steering strength for a feature: strength 1.0 adds the decoder direction times the
    feature's typical activation (`typical_acts[f]`, e.g. its max or 99th-percentile activation in
    the workspace). Without it, fall back (and say so in `note`) to a norm-based estimate: strength
    1.0 adds a vector as long as a typical residual at the hook (`resid_norm`, when the caller
    measured it), else as long as the SAE's decoder bias (about the mean residual), else of norm 1.
    """
    f = int(feature_id)
    d_norm = float(decoder_direction(sae, f).float().norm())
    if d_norm <= 0:
        raise SteeringError(f"Feature {f} has a zero decoder direction; it cannot steer.")
    extra = ""
    if getattr(sae.cfg, "normalize_activations", "none") not in (None, "none"):
        extra = f" (the SAE normalizes inputs with {sae.cfg.normalize_activations!r}; units are in its normalized space)"
    if typical_acts is not None and f in typical_acts and float(typical_acts[f]) > 0:
        unit = float(typical_acts[f])
        return FeatureScale(f, unit, "typical_acts", f"1.0 = the feature's typical activation ({unit:.4g}){extra}", d_norm, strength)
    if resid_norm is not None and resid_norm > 0:
        unit = float(resid_norm) / d_norm
        note = (f"1.0 adds a vector as long as the median residual norm at the hook on the prompts "
                f"({resid_norm:.4g}){extra}")
        return FeatureScale(f, unit, "residual_norm", note, d_norm, strength)
    b_norm = float(sae.b_dec.detach().float().norm()) if getattr(sae, "b_dec", None) is not None else 0.0
    if b_norm > 1e-6:
        unit = b_norm / d_norm
        note = (f"no typical activation given: estimated from the SAE alone so 1.0 adds a vector as long as "
                f"its decoder bias ({b_norm:.4g}, about the mean residual){extra}")
        return FeatureScale(f, unit, "decoder_bias_norm", note, d_norm, strength)
    unit = 1.0 / d_norm
    note = f"no typical activation given and no scale in the SAE: 1.0 adds a unit-norm vector{extra}"
    return FeatureScale(f, unit, "unit_norm", note, d_norm, strength)


def steering_vector(sae: SAE, scales: Mapping[int, FeatureScale]) -> torch.Tensor:
    """Sum over features of raw_coef * decoder direction, in float32 on the SAE's device."""
    vec = torch.zeros(sae.W_dec.shape[1], dtype=torch.float32, device=sae.W_dec.device)
    for f, sc in scales.items():
        vec += sc.raw_coef * decoder_direction(sae, f).float()
    return vec


def median_resid_norm(forward: HookedForward, prompt_ids: list[list[int]]) -> float:
    """Median residual norm at the hook over prompt positions (each prompt's first position, the sink,
    excluded): one left-padded forward that stops at the hook (one per prompt on TransformerLens)."""
    prompts = [list(p) for p in prompt_ids if len(p) > 1]
    if not prompts:
        return 0.0
    if forward.backend != "hf":
        norms = [forward.residuals(torch.tensor([p], device=forward.device))[0, 1:].float().norm(dim=-1).cpu() for p in prompts]
        return float(torch.cat(norms).median())
    width = max(len(p) for p in prompts)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=forward.device)
    ids = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=forward.device)
    padded = bool((mask == 0).any())
    resid = forward.residuals(ids, mask if padded else None, (mask.cumsum(-1) - 1).clamp(min=0) if padded else None)
    keep = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1).bool()  # real, and not a row's first
    return float(resid[keep].float().norm(dim=-1).median())


def resolve_scales(
    forward: HookedForward,
    sae: SAE,
    features: Mapping[int, float],
    typical_acts: Mapping[int, float] | None,
    prompt_ids: list[list[int]],
) -> dict[int, FeatureScale]:
    """Each feature's scale at its strength; the residual norm is measured only when a feature needs it."""
    missing = [f for f in features if not (typical_acts and float(typical_acts.get(f, 0)) > 0)]
    resid_norm = median_resid_norm(forward, prompt_ids) if missing else None
    return {int(f): feature_scale(sae, f, typical_acts, s, resid_norm) for f, s in features.items()}
