"""Steering runs: steered vs unsteered generations with their measures, steered generation alone,
steered logits of one sequence, strength sweeps, and the tokens a decoder direction promotes.

Every forward goes through the reader's runtime (backend.runtime): its HF model, lock and steering hook."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from backend.models import ReaderModel
from backend.runtime import runtime_for
from backend.steering.config import Kind, Positions, SteerConfig, SteeringError
from backend.steering.measures import (
    Generation, OutputMeasures, add_concept_similarity, measure_outputs, perplexity_warning, pool_generations,
)
from backend.steering.sampling import OnStep, format_prompt, generate
from backend.steering.units import FeatureScale, decoder_direction, resolve_scales, steering_vector

if TYPE_CHECKING:
    import pandas as pd
    from sae_lens import SAE

OnToken = Callable[[str, int, int, str], None]  # (kind, prompt_idx, sample_idx, text_so_far)
OnProgress = Callable[[int, int], None]  # (prompts done, prompts)


@dataclass
class SteerResult:
    """Unsteered and steered continuations of each prompt, sample by sample, with their measures."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    features: dict[int, float]
    scales: dict[int, FeatureScale]
    config: SteerConfig
    hook_name: str
    device: str
    backend: str
    generations: list[Generation]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def get(self, kind: Kind, prompt_idx: int = 0, sample_idx: int = 0) -> Generation:
        for g in self.generations:
            if (g.kind, g.prompt_idx, g.sample_idx) == (kind, prompt_idx, sample_idx):
                return g
        raise KeyError((kind, prompt_idx, sample_idx))

    def pooled(self, kind: Kind) -> dict[str, float]:
        """Measures of one kind's generations pooled (see `pool_generations`)."""
        return pool_generations([g for g in self.generations if g.kind == kind], list(self.features))

    @property
    def perplexity_warning(self) -> bool:
        """The steered text's perplexity passed `config.perplexity_warning_factor` x the unsteered one."""
        return perplexity_warning(self.pooled("steered")["perplexity"], self.pooled("unsteered")["perplexity"],
                                  self.config.perplexity_warning_factor)

    def frame(self) -> pd.DataFrame:
        """One row per generation: text, length, perplexity, and per feature its mean/max activation,
        whether it fires anywhere in the output, and the concept similarity."""
        import pandas as pd

        rows = []
        for g in self.generations:
            row: dict[str, Any] = dict(
                kind=g.kind, prompt_idx=g.prompt_idx, sample_idx=g.sample_idx, seed=g.seed, text=g.text,
                n_tokens=g.n_tokens, stopped=g.stopped, perplexity=g.perplexity,
            )
            for f in self.features:
                row[f"act_mean_{f}"] = g.feature_mean.get(f, math.nan)
                row[f"act_max_{f}"] = g.feature_max.get(f, math.nan)
                row[f"fires_{f}"] = g.fires.get(f, False)
                row[f"concept_sim_{f}"] = g.concept_similarity.get(f, math.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Per kind (unsteered/steered): token-weighted mean activation of each feature, the max, the share
        of generations where it fires, the concept similarity and the pooled perplexity of the output tokens."""
        import pandas as pd

        return pd.DataFrame([dict(kind=kind, **self.pooled(kind)) for kind in ("unsteered", "steered")]).set_index("kind")


def _generations(
    reader: ReaderModel, kind: str, prompt_idx: int, outs: list[list[int]], measures: list[OutputMeasures], cfg: SteerConfig,
) -> list[Generation]:
    return [
        Generation(
            kind=kind, prompt_idx=prompt_idx, sample_idx=i, seed=cfg.seeds()[i],
            text=reader.tokenizer.decode(o, skip_special_tokens=True), token_ids=list(o),
            stopped=len(o) < cfg.max_new_tokens, feature_mean=m.mean, feature_max=m.max, feature_frac=m.frac,
            feature_sum=m.sum, fires=m.fires, nll=m.nll,
        )
        for i, (o, m) in enumerate(zip(outs, measures))
    ]


def _streamer(reader: ReaderModel, on_token: OnToken | None, kinds: list[Kind], prompt_idx: int) -> OnStep | None:
    """Adapt `on_token` to the step loop's (variant, row, tokens) callback."""
    if on_token is None:
        return None

    def on_step(variant: int, row: int, toks: list[int]) -> None:
        on_token(kinds[variant], prompt_idx, row, reader.tokenizer.decode(toks, skip_special_tokens=True))

    return on_step


def _checked_features(sae: SAE, features: Mapping[int, float]) -> dict[int, float]:
    out = {int(f): float(s) for f, s in features.items()}
    if not out:
        raise SteeringError("Choose at least one feature to steer.")
    for f in out:
        if not 0 <= f < sae.W_dec.shape[0]:
            raise SteeringError(f"Feature {f} is out of range for an SAE with {sae.W_dec.shape[0]} features.")
    return out


def _thresholds(feature_ids: list[int], cfg: SteerConfig, fire_thresholds: Mapping[int, float] | None) -> dict[int, float]:
    return {f: float((fire_thresholds or {}).get(f, cfg.fire_threshold)) for f in feature_ids}


def steer(
    reader: ReaderModel,
    sae: SAE,
    features: Mapping[int, float] | None,
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: Mapping[int, float] | None = None,
    on_token: OnToken | None = None,
    concept_texts: Mapping[int, list[str]] | None = None,
    fire_thresholds: Mapping[int, float] | None = None,
) -> SteerResult:
    """Generate unsteered and steered continuations of each prompt (same seeds per sample), streaming
    text through `on_token(kind, prompt_idx, sample_idx, text_so_far)`, and measure both.

    concept_texts: {feature_id: its top contexts} to measure the MiniLM similarity of each output to them.
    fire_thresholds: per-feature presence thresholds (default `cfg.fire_threshold`), as the corpus uses."""
    cfg = cfg or SteerConfig()
    features = _checked_features(sae, cfg.features if features is None else features)
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    thresholds = _thresholds(list(features), cfg, fire_thresholds)
    kinds: list[Kind] = ["unsteered", "steered"]
    gens: list[Generation] = []
    t0 = time.time()
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()  # inside: the HF model (and its generation config) is loaded now
        scales = resolve_scales(forward, sae, features, typical_acts, prompt_ids)
        vector = steering_vector(sae, scales)
        for j, ids in enumerate(prompt_ids):
            outs = generate(forward, ids, [None, vector], cfg, stop_ids, _streamer(reader, on_token, kinds, j))
            for kind, o in zip(kinds, outs):
                gens += _generations(reader, kind, j, o, measure_outputs(forward, sae, ids, o, list(features), thresholds), cfg)
    notes = [n for n in [add_concept_similarity(gens, concept_texts)] if n] if concept_texts else []
    return SteerResult(
        prompts=list(prompts), prompt_ids=prompt_ids, features=features, scales=scales, config=cfg,
        hook_name=forward.hook_name, device=str(forward.device), backend=forward.backend, generations=gens,
        seconds=time.time() - t0, notes=notes,
    )


def generate_steered(
    reader: ReaderModel,
    sae: SAE,
    features: Mapping[int, float],
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: Mapping[int, float] | None = None,
) -> list[list[list[int]]]:
    """Steered generation only (no unsteered run, no measures): [prompt][sample] -> new token ids.
    An empty `features` gives plain generation through the same loop."""
    cfg = cfg or SteerConfig()
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()
        vector = steering_vector(sae, resolve_scales(forward, sae, features, typical_acts, prompt_ids)) if features else None
        return [generate(forward, ids, [vector], cfg, stop_ids)[0] for ids in prompt_ids]


def steered_logits(
    reader: ReaderModel,
    sae: SAE,
    features: Mapping[int, float],
    token_ids: list[int],
    prompt_len: int | None = None,
    positions: Positions = "all",
    typical_acts: Mapping[int, float] | None = None,
) -> torch.Tensor:
    """Logits [pos, vocab] of one token sequence with the steering hook on (no cache). With
    positions="generated" only positions >= prompt_len are steered."""
    prompt_len = len(token_ids) if prompt_len is None else prompt_len
    runtime = runtime_for(reader)
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        vector = None
        if features:
            vector = steering_vector(sae, resolve_scales(forward, sae, features, typical_acts, [token_ids[:prompt_len]]))
        forward.steer_with(vector, start=prompt_len if positions == "generated" else 0)
        return forward.logits(torch.tensor([token_ids], device=forward.device))[0]


def direction_top_logits(reader: ReaderModel, sae: SAE, feature_id: int, k: int = 10) -> list[tuple[int, str, float]]:
    """Tokens the decoder direction alone predicts next: the direction read as a final residual (through the
    final norm, then the unembedding), top k. What a steer along it pushes the next token towards; unlike
    `backend.features.logit_lens`, which scales by the norm's weight without normalising."""
    model = reader.model
    with torch.inference_mode():
        d = decoder_direction(sae, feature_id).to(reader.device, model.W_U.dtype)
        scores = (model.ln_final(d[None, None]) @ model.W_U)[0, 0]
        top = scores.topk(k)
    return [(int(i), reader.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]


def _sweep_generations(
    reader: ReaderModel, sae: SAE, feature_id: int, strengths: list[float], prompts: list[str], cfg: SteerConfig,
    typical_acts: Mapping[int, float] | None, threshold: float, on_progress: OnProgress | None,
) -> tuple[FeatureScale, dict[float, list[Generation]]]:
    """The unit at strength 1.0 and the generations at each strength (0.0 = unsteered, run once)."""
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    nonzero = sorted({float(s) for s in strengths if s != 0})
    by_strength: dict[float, list[Generation]] = {s: [] for s in [0.0, *nonzero]}
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()
        base = resolve_scales(forward, sae, {feature_id: 1.0}, typical_acts, prompt_ids)[feature_id]
        vectors = [None] + [steering_vector(sae, {feature_id: base.with_strength(s)}) for s in nonzero]
        for j, ids in enumerate(prompt_ids):
            outs = generate(forward, ids, vectors, cfg, stop_ids)
            for s, o in zip(by_strength, outs):
                measures = measure_outputs(forward, sae, ids, o, [feature_id], {feature_id: threshold})
                by_strength[s] += _generations(reader, str(s), j, o, measures, cfg)
            if on_progress is not None:
                on_progress(j + 1, len(prompt_ids))
    return base, by_strength


def strength_sweep(
    reader: ReaderModel,
    sae: SAE,
    feature_id: int,
    strengths: list[float],
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: Mapping[int, float] | None = None,
    on_progress: OnProgress | None = None,
    concept_texts: list[str] | None = None,
    fire_threshold: float | None = None,
) -> pd.DataFrame:
    """Steer one feature at each strength (few samples each) and pool the measures per strength:
    columns strength, raw_coef, mean_feature_act, max_feature_act, frac_active, share_fires,
    concept_similarity, perplexity, perplexity_warning, n_tokens, n_generations, example, and the
    unsteered levels (unsteered_mean_feature_act, unsteered_share_fires, unsteered_concept_similarity,
    unsteered_perplexity). Strength 0 is the unsteered run (same seeds), computed once."""
    import pandas as pd

    cfg = cfg or SteerConfig(n_samples=2)
    f = int(_checked_features(sae, {feature_id: 1.0}).popitem()[0])
    threshold = cfg.fire_threshold if fire_threshold is None else float(fire_threshold)
    base, by_strength = _sweep_generations(reader, sae, f, strengths, prompts, cfg, typical_acts, threshold, on_progress)
    note = add_concept_similarity([g for gens in by_strength.values() for g in gens], {f: concept_texts}) if concept_texts else None
    baseline = pool_generations(by_strength[0.0], [f])
    rows = []
    for s in sorted({float(s) for s in strengths}):
        pooled, gens = pool_generations(by_strength[s], [f]), by_strength[s]
        rows.append(dict(
            strength=s, raw_coef=base.with_strength(s).raw_coef, mean_feature_act=pooled[f"mean_act_{f}"],
            max_feature_act=pooled[f"max_act_{f}"], frac_active=pooled[f"frac_active_{f}"],
            share_fires=pooled[f"share_fires_{f}"], concept_similarity=pooled[f"concept_sim_{f}"],
            perplexity=pooled["perplexity"],
            perplexity_warning=perplexity_warning(pooled["perplexity"], baseline["perplexity"], cfg.perplexity_warning_factor),
            n_tokens=int(pooled["n_tokens"]), n_generations=len(gens), example=gens[0].text if gens else "",
            unsteered_mean_feature_act=baseline[f"mean_act_{f}"], unsteered_share_fires=baseline[f"share_fires_{f}"],
            unsteered_concept_similarity=baseline[f"concept_sim_{f}"], unsteered_perplexity=baseline["perplexity"],
        ))
    df = pd.DataFrame(rows)
    df.attrs.update(feature_id=f, unit=base.unit, unit_source=base.source, unit_note=base.note,
                    perplexity_warning_factor=cfg.perplexity_warning_factor)
    if note:
        df.attrs["concept_note"] = note
    return df
