"""How to steer and sample: one validated configuration shared by steering runs and sweeps."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union

from backend.errors import UserError

Positions = Literal["all", "generated"]
Kind = Literal["steered", "unsteered"]
Strength = Union[float, Literal["auto"]]

AUTO = "auto"
MAX_ABS_STRENGTH = 20.0  # past this any unit breaks the text; a typo like 1e9 must not reach the model
MAX_NEW_TOKENS = 512
MAX_SAMPLES = 32
MAX_GENERATIONS = 128  # prompts x samples of one run (each has a steered and an unsteered row)
GUIDE_TOP_K = 32  # candidate tokens guided sampling reads per step when a strength is "auto" (docs/steering.md)
MAX_GUIDE_TOP_K = 256


class SteeringError(UserError):
    """A steering request the user can fix (no feature, a feature out of range, a bad setting)."""


@dataclass
class SteerConfig:
    """How to steer and sample.

    features: {feature_id: strength} used when `steer(..., features=None)`; a strength is in units
        of the feature's typical activation (see `feature_scale`).
    positions: "all" adds the vector at every position (prompt and generated); "generated" only at
        positions holding generated tokens, so the prompt's logits (and hence the first new token)
        are those of the unsteered model and steering acts from the second new token on.
    temperature: 0 means greedy. Sample i uses the RNG seed `seed + i` in both the unsteered and
        the steered run, so the two differ only through the steering.
    min_new_tokens: stop tokens are forbidden before this many new tokens (for benchmarks).
    chat_template: wrap each prompt as a user turn (instruct models with a chat template only).
    fire_threshold: a feature "fires" in a generation when its max activation over the output tokens
        is above this, the rule corpus documents follow (`latents(pooling="binary", threshold=...)`).
    perplexity_warning_factor: warn when the steered perplexity passes this multiple of the unsteered one.
    guide: guided sampling (`backend.steering.guide`): a steered generation reads its `guide` likeliest next
        tokens at the hook and takes one a steered feature (positive strength) fires on, once per feature, if its
        own pick does not; 0 is off. None (the default) guides with GUIDE_TOP_K when a strength is "auto" and
        not when all strengths are numbers (a plain residual intervention).
    guide_wait: the share of max_new_tokens during which a guided generation only watches whether the model
        writes the feature by itself; only after it may a candidate replace the model's own pick (0: from the
        first token).
    """

    features: dict[int, Strength] = field(default_factory=dict)
    positions: Positions = "all"
    n_samples: int = 2
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 48
    min_new_tokens: int = 0
    chat_template: bool = True
    use_cache: bool = True
    fire_threshold: float = 0.0
    perplexity_warning_factor: float = 2.0
    guide: int | None = None
    guide_wait: float = 0.0

    def __post_init__(self) -> None:
        if self.positions not in ("all", "generated"):
            raise SteeringError(f"positions must be 'all' or 'generated', not {self.positions!r}")
        if not 1 <= self.n_samples <= MAX_SAMPLES:
            raise SteeringError(f"n_samples must be between 1 and {MAX_SAMPLES}, not {self.n_samples}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise SteeringError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, not {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise SteeringError("top_p must be in (0, 1]")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 10):
            raise SteeringError("temperature must be a number between 0 and 10")
        if self.fire_threshold < 0:
            raise SteeringError("fire_threshold must be >= 0")
        if not self.perplexity_warning_factor > 1:
            raise SteeringError("perplexity_warning_factor must be above 1")
        if self.guide is not None and (isinstance(self.guide, bool) or not 0 <= int(self.guide) <= MAX_GUIDE_TOP_K):
            raise SteeringError(f"guide must be None or a number of candidate tokens from 0 to {MAX_GUIDE_TOP_K}, "
                                f"not {self.guide!r}")
        if not 0.0 <= self.guide_wait < 1.0:
            raise SteeringError(f"guide_wait must be in [0, 1), not {self.guide_wait!r}")
        if self.guide and not self.use_cache:
            raise SteeringError("Guided sampling needs the KV cache: set use_cache=True or guide=0.")
        check_strengths(self.features, allow_empty=True)

    def guide_top_k(self, strengths: Mapping[int, Strength]) -> int:
        """Candidate tokens guided sampling reads per step for these strengths (0: off); see `guide`."""
        if self.guide is not None:
            return int(self.guide)
        return GUIDE_TOP_K if any(s == AUTO for s in strengths.values()) else 0

    def guide_start(self) -> int:
        """The first step at which guided sampling may replace a pick (`guide_wait` of max_new_tokens)."""
        return int(self.guide_wait * self.max_new_tokens)

    def seeds(self) -> list[int]:
        """RNG seed of each sample index (shared by the steered and unsteered runs)."""
        return [self.seed + i for i in range(self.n_samples)]


def check_strength(feature_id: Any, strength: Any) -> Strength:
    """A strength as a float, or "auto"; refuses non-numbers, NaN, infinities and absurd magnitudes."""
    if isinstance(strength, str) and strength.strip().lower() == AUTO:
        return AUTO
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) and not hasattr(strength, "__float__"):
        raise SteeringError(f"The strength of feature {feature_id} must be a number or 'auto', not {strength!r}.")
    value = float(strength)
    if not math.isfinite(value) or abs(value) > MAX_ABS_STRENGTH:
        raise SteeringError(f"The strength of feature {feature_id} must be a finite number between "
                            f"-{MAX_ABS_STRENGTH:g} and {MAX_ABS_STRENGTH:g} (or 'auto'), not {strength!r}.")
    return value


def check_strengths(features: Mapping[Any, Any], allow_empty: bool = False) -> dict[int, Strength]:
    """{feature_id: strength} with integer ids and checked strengths (see `check_strength`)."""
    if not features and not allow_empty:
        raise SteeringError("Choose at least one feature to steer.")
    out: dict[int, Strength] = {}
    for f, s in features.items():
        try:
            fid = int(f)
        except (TypeError, ValueError):
            raise SteeringError(f"Feature ids must be integers, not {f!r}.") from None
        out[fid] = check_strength(fid, s)
    return out


def check_prompts(prompts: Any, n_samples: int) -> list[str]:
    """The prompts as a list of strings; refuses an empty list, blank prompts and runs too large to generate."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts or [])
    if not prompts:
        raise SteeringError("Give at least one prompt.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise SteeringError(f"Prompt {i + 1} is {type(p).__name__} {p!r}, not text.")
        if not p.strip():
            raise SteeringError(f"Prompt {i + 1} is empty; every prompt needs some text.")
    if len(prompts) * n_samples > MAX_GENERATIONS:
        raise SteeringError(f"{len(prompts)} prompts x {n_samples} samples is {len(prompts) * n_samples} generations; "
                            f"one run takes at most {MAX_GENERATIONS}. Split the prompts over several runs.")
    return prompts
