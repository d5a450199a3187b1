"""Steering runs: steered vs unsteered generations with their measures, steered generation alone,
steered logits of one sequence, strength sweeps, and the tokens a decoder direction promotes.

Every forward goes through the reader's runtime (backend.runtime): its HF model, lock and steering hook."""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from backend.models import ReaderModel
from backend.runtime import HookedForward, runtime_for
from backend.steering.auto import AutoConfig, AutoStrength, Probe, search_strength, with_fires
from backend.steering.config import (
    AUTO, Kind, Positions, SteerConfig, SteeringError, Strength, check_prompts, check_strength, check_strengths,
)
from backend.steering.guide import Guide
from backend.steering.measures import (
    Generation, OutputMeasures, add_concept_similarity, measure_outputs, measures_from_record, perplexity_warning,
    pool_generations,
)
from backend.steering.sampling import StepRecord, format_prompt, generate_batch
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
    auto: AutoStrength | None = None  # how an "auto" strength was chosen (features holds the chosen value)
    guide_top_k: int = 0  # candidates guided sampling read per step (0: plain sampling); Generation.guided: its picks

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
                n_tokens=g.n_tokens, stopped=g.stopped, perplexity=g.perplexity, n_guided=len(g.guided),
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


def marked_text(reader: ReaderModel, g: Generation, left: str = "«", right: str = "»") -> str:
    """A generation's text with each token guided sampling picked marked «like this» (the plain text without)."""
    text = g.text
    for p in sorted(g.guided, reverse=True):  # cut the decoded text where the token starts and ends, last one first
        head = reader.tokenizer.decode(g.token_ids[:p], skip_special_tokens=True)
        upto = reader.tokenizer.decode(g.token_ids[:p + 1], skip_special_tokens=True)
        if not (upto.startswith(head) and text.startswith(upto)):
            continue  # a token that decodes only with its neighbours (a piece of a character): left unmarked
        lead = len(upto[len(head):]) - len(upto[len(head):].lstrip())
        text = text[:len(head) + lead] + left + text[len(head) + lead:len(upto)] + right + text[len(upto):]
    return text


def _generations(
    reader: ReaderModel, kind: str, prompt_idx: int, outs: list[list[int]], measures: list[OutputMeasures], cfg: SteerConfig,
    guided: list[list[int]] | None = None,
) -> list[Generation]:
    guided = guided or [[] for _ in outs]
    return [
        Generation(
            kind=kind, prompt_idx=prompt_idx, sample_idx=i, seed=cfg.seeds()[i],
            text=reader.tokenizer.decode(o, skip_special_tokens=True), token_ids=list(o),
            stopped=len(o) < cfg.max_new_tokens, feature_mean=m.mean, feature_max=m.max, feature_frac=m.frac,
            feature_sum=m.sum, fires=m.fires, nll=m.nll, guided=[p for p in g if p < len(o)],
        )
        for i, (o, m, g) in enumerate(zip(outs, measures, guided))
    ]


def _checked_features(sae: SAE, features: Mapping[int, Strength]) -> dict[int, Strength]:
    out = check_strengths(features)
    for f in out:
        if not 0 <= f < sae.W_dec.shape[0]:
            raise SteeringError(f"Feature {f} is out of range for an SAE with {sae.W_dec.shape[0]} features.")
    return out


def _thresholds(feature_ids: list[int], cfg: SteerConfig, fire_thresholds: Mapping[int, float] | None) -> dict[int, float]:
    return {f: float((fire_thresholds or {}).get(f, cfg.fire_threshold)) for f in feature_ids}


@dataclass
class _Variants:
    """What one batched generation makes: every variant (steering vector, None = unsteered) x prompt x sample."""

    vectors: list[torch.Tensor | None]
    prompt_ids: list[list[int]]
    cfg: SteerConfig
    guide: Guide | None = None  # guided sampling of the steered rows (made by `guided`), None: plain sampling

    def guided(self, sae: SAE, features: Mapping[int, float], thresholds: Mapping[int, float], top_k: int) -> _Variants:
        """These variants with guided sampling of their steered rows toward the features of positive strength."""
        wanted = [f for f, s in features.items() if s > 0]
        if top_k <= 0 or not wanted:
            return self

        def encode(h: torch.Tensor) -> torch.Tensor:
            return sae.encode(h.to(sae.W_dec.device, sae.W_dec.dtype))[:, wanted].float()

        steered = [self.vectors[v] is not None for v, _, _ in self.rows()]
        seeds = [self.cfg.seeds()[i] for _, _, i in self.rows()] if self.cfg.temperature > 0 else None
        guide = Guide(encode, torch.tensor([thresholds[f] for f in wanted]), top_k, steered, seeds,
                      start=self.cfg.guide_start())
        return dataclasses.replace(self, guide=guide)

    def guided_positions(self) -> dict[tuple[int, int], list[list[int]]]:
        """{(variant, prompt): per sample, the output positions guided sampling picked} (empty lists without it)."""
        return self._grouped(self.guide.guided if self.guide is not None else [[] for _ in self.rows()])

    def rows(self) -> list[tuple[int, int, int]]:
        n = self.cfg.n_samples
        return [(v, j, i) for v in range(len(self.vectors)) for j in range(len(self.prompt_ids)) for i in range(n)]

    def generate(self, forward: HookedForward, stop_ids: set[int], on_row: Callable[[int, int, int, list[int]], None] | None = None,
                 record: StepRecord | None = None) -> dict[tuple[int, int], list[list[int]]]:
        """{(variant, prompt): outputs sample by sample} from ONE batched generate (KV cache, left padding)."""
        rows = self.rows()
        step = None if on_row is None else (lambda r, toks: on_row(*rows[r], toks))
        outs = generate_batch(forward, [self.prompt_ids[j] for _, j, _ in rows], [self.vectors[v] for v, _, _ in rows],
                              [self.cfg.seeds()[i] for _, _, i in rows], self.cfg, stop_ids, step, record=record,
                              guide=self.guide)
        return self._grouped(outs)

    def _grouped(self, per_row: list[Any]) -> dict[tuple[int, int], list[Any]]:
        grouped: dict[tuple[int, int], list[Any]] = {}
        for (v, j, _), x in zip(self.rows(), per_row):
            grouped.setdefault((v, j), []).append(x)
        return grouped

    def run(self, forward: HookedForward, sae: SAE, stop_ids: set[int], feature_ids: list[int], thresholds: Mapping[int, float],
            on_row: Callable[[int, int, int, list[int]], None] | None = None,
            ) -> tuple[dict[tuple[int, int], list[list[int]]], dict[tuple[int, int], list[OutputMeasures]]]:
        """Outputs and their measures. On the HF model the generation records what the measures need
        (`measures_from_record`: no re-reading forward); the TransformerLens fallback re-reads (`measured`)."""
        if forward.backend != "hf":
            outs = self.generate(forward, stop_ids, on_row)
            return outs, self.measured(forward, sae, outs, feature_ids, thresholds)
        record = StepRecord()
        outs = self.generate(forward, stop_ids, on_row, record)
        flat = [o for ms in outs.values() for o in ms]  # grouped in row order (rows() is variant, prompt, sample)
        steered = [self.vectors[v] is not None for v, _, _ in self.rows()]
        return outs, self._grouped(measures_from_record(forward, sae, record, flat, steered, feature_ids, thresholds))

    def measured(self, forward: HookedForward, sae: SAE, outs: dict[tuple[int, int], list[list[int]]], feature_ids: list[int],
                 thresholds: Mapping[int, float]) -> dict[tuple[int, int], list[OutputMeasures]]:
        """Measures of every output, one unsteered re-reading forward per prompt (all its variants together)."""
        n_var, out = len(self.vectors), {}
        for j, ids in enumerate(self.prompt_ids):
            flat = [o for v in range(n_var) for o in outs[(v, j)]]
            measures = measure_outputs(forward, sae, ids, flat, feature_ids, thresholds)
            for v in range(n_var):
                out[(v, j)] = measures[v * self.cfg.n_samples:(v + 1) * self.cfg.n_samples]
        return out


def _token_streamer(reader: ReaderModel, on_token: OnToken | None, kinds: list[Kind]) -> Callable[[int, int, int, list[int]], None] | None:
    if on_token is None:
        return None
    return lambda v, j, i, toks: on_token(kinds[v], j, i, reader.tokenizer.decode(toks, skip_special_tokens=True))


def _median_ratio(measures: dict[tuple[int, int], list[OutputMeasures]], n_variants: int) -> list[float]:
    """Per variant 1.. : median per-generation perplexity over its prompts and samples / variant 0's (unsteered)."""
    def median_ppl(v: int) -> float:
        ppl = [math.exp(m.nll) for (var, _), ms in measures.items() if var == v for m in ms if math.isfinite(m.nll)]
        return float(statistics.median(ppl)) if ppl else math.nan

    base = median_ppl(0)
    return [median_ppl(v) / base for v in range(1, n_variants)]


def _fire_share(measures: list[OutputMeasures], feature_ids: list[int]) -> float:
    """Share of generations where the features fire (averaged over the features)."""
    if not measures or not feature_ids:
        return math.nan
    return sum(m.fires.get(f, False) for m in measures for f in feature_ids) / (len(measures) * len(feature_ids))


def _auto_probe(forward: HookedForward, sae: SAE, prompt_ids: list[list[int]], fixed: torch.Tensor | None,
                unit_vec: torch.Tensor, cfg: SteerConfig, auto_cfg: AutoConfig, stop_ids: set[int],
                watch: tuple[list[int], Mapping[int, float], dict[float, float]], guide_top_k: int = 0) -> Probe:
    """probe(strengths): median perplexity ratios of short steered generations, all strengths in one batch,
    guided as the run will be (`guide_top_k`), so the bound holds for what the user gets.
    `watch` = (feature ids, their thresholds, {strength: share of probe generations where they fire}, filled
    as a side record; strength 0 is the unsteered rows)."""
    probe_cfg = dataclasses.replace(cfg, n_samples=min(cfg.n_samples, auto_cfg.max_samples), features={},
                                    max_new_tokens=auto_cfg.probe_tokens, min_new_tokens=auto_cfg.probe_tokens)
    prompts = prompt_ids[: auto_cfg.max_prompts]
    feature_ids, thresholds, fires = watch

    def probe(strengths: list[float]) -> list[float]:
        vectors = [None] + [unit_vec * s if fixed is None else fixed + unit_vec * s for s in strengths]
        variants = _Variants(vectors, prompts, probe_cfg).guided(sae, dict.fromkeys(feature_ids, 1.0), thresholds,
                                                                 guide_top_k)
        _, measures = variants.run(forward, sae, stop_ids, feature_ids, thresholds)
        for v, s in enumerate([0.0, *strengths]):
            fires.setdefault(float(s), _fire_share([m for (var, _), ms in measures.items() if var == v for m in ms], feature_ids))
        return _median_ratio(measures, len(vectors))

    return probe


def _resolve_auto(forward: HookedForward, sae: SAE, features: dict[int, Strength], scales: dict[int, FeatureScale],
                  prompt_ids: list[list[int]], cfg: SteerConfig, auto_cfg: AutoConfig | None, stop_ids: set[int],
                  thresholds: Mapping[int, float], guide_top_k: int = 0) -> tuple[dict[int, float], AutoStrength | None]:
    """Numeric strengths: the "auto" features share one strength found by `search_strength` (probes guided by
    `guide_top_k` candidates, as the run); `result.auto.fires` keeps how often they fired in the probes at each
    strength."""
    auto = [f for f, s in features.items() if s == AUTO]
    if not auto:
        return {f: float(s) for f, s in features.items()}, None
    fixed = {f: scales[f].with_strength(float(s)) for f, s in features.items() if s != AUTO}
    fixed_vec = steering_vector(sae, fixed) if fixed else None
    unit_vec = steering_vector(sae, {f: scales[f] for f in auto})
    fires: dict[float, float] = {}
    probe = _auto_probe(forward, sae, prompt_ids, fixed_vec, unit_vec, cfg, auto_cfg or AutoConfig(), stop_ids,
                        (auto, {f: thresholds[f] for f in auto}, fires), guide_top_k)
    found = with_fires(search_strength(probe, auto_cfg), fires)
    return {f: (found.strength if s == AUTO else float(s)) for f, s in features.items()}, found


def steer(
    reader: ReaderModel,
    sae: SAE,
    features: Mapping[int, Strength] | None,
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: Mapping[int, float] | None = None,
    on_token: OnToken | None = None,
    concept_texts: Mapping[int, list[str]] | None = None,
    fire_thresholds: Mapping[int, float] | None = None,
    auto: AutoConfig | None = None,
) -> SteerResult:
    """Generate unsteered and steered continuations of each prompt (same seeds per sample) in one batched
    generate, streaming text through `on_token(kind, prompt_idx, sample_idx, text_so_far)`, and measure both.

    A strength "auto" is chosen first by `search_strength` (`auto`: its AutoConfig), reported in `result.auto`.
    concept_texts: {feature_id: its top contexts} to measure the MiniLM similarity of each output to them.
    fire_thresholds: per-feature presence thresholds (default `cfg.fire_threshold`), as the corpus uses."""
    cfg = cfg or SteerConfig()
    requested = _checked_features(sae, cfg.features if features is None else features)
    prompts = check_prompts(prompts, cfg.n_samples)
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    thresholds = _thresholds(list(requested), cfg, fire_thresholds)
    kinds: list[Kind] = ["unsteered", "steered"]
    t0 = time.time()
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()  # inside: the HF model (and its generation config) is loaded now
        unit_scales = resolve_scales(forward, sae, {f: 1.0 for f in requested}, typical_acts, prompt_ids)
        top_k = _guide_top_k(cfg, requested, forward)
        strengths, found = _resolve_auto(forward, sae, requested, unit_scales, prompt_ids, cfg, auto, stop_ids, thresholds,
                                         top_k)
        scales = {f: unit_scales[f].with_strength(s) for f, s in strengths.items()}
        variants = _Variants([None, steering_vector(sae, scales)], prompt_ids, cfg).guided(sae, strengths, thresholds, top_k)
        outs, measures = variants.run(forward, sae, stop_ids, list(strengths), thresholds, _token_streamer(reader, on_token, kinds))
    guided = variants.guided_positions()
    gens = [g for j in range(len(prompt_ids)) for v, kind in enumerate(kinds)
            for g in _generations(reader, kind, j, outs[(v, j)], measures[(v, j)], cfg, guided[(v, j)])]
    notes = [n for n in [add_concept_similarity(gens, concept_texts)] if n] if concept_texts else []
    return SteerResult(
        prompts=list(prompts), prompt_ids=prompt_ids, features=strengths, scales=scales, config=cfg,
        hook_name=forward.hook_name, device=str(forward.device), backend=forward.backend, generations=gens,
        seconds=time.time() - t0, notes=([found.note] if found else []) + notes + _guide_notes(gens, top_k), auto=found,
        guide_top_k=top_k if variants.guide is not None else 0,
    )


def _guide_top_k(cfg: SteerConfig, requested: Mapping[int, Strength], forward: HookedForward) -> int:
    """The candidates guided sampling reads per step (`SteerConfig.guide`); 0 on the TransformerLens fallback
    unless asked for, where it is refused."""
    top_k = cfg.guide_top_k(requested)
    if top_k and forward.backend != "hf":
        if cfg.guide:
            raise SteeringError("Guided sampling needs the Hugging Face model; this reader runs on TransformerLens.")
        return 0
    return top_k


def _guide_notes(gens: list[Generation], top_k: int) -> list[str]:
    """What guided sampling did, said plainly (it changes what the steered text shows)."""
    steered = [g for g in gens if g.kind == "steered"]
    if not top_k or not steered:
        return []
    n = sum(bool(g.guided) for g in steered)
    return [f"Guided sampling: in {n} of {len(steered)} steered generations one token per feature was picked, among "
            f"the model's {top_k} likeliest, because the feature fires on it (marked in the text; `guide=0` turns "
            "this off)."]


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
    features = {f: float(s) for f, s in check_strengths(features, allow_empty=True).items()}
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in check_prompts(prompts, cfg.n_samples)]
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()
        vector = steering_vector(sae, resolve_scales(forward, sae, features, typical_acts, prompt_ids)) if features else None
        outs = _Variants([vector], prompt_ids, cfg).generate(forward, stop_ids)
    return [outs[(0, j)] for j in range(len(prompt_ids))]


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
    """The unit at strength 1.0 and the generations at each strength (0.0 = unsteered), all in one batch.
    `on_progress(tokens generated, max_new_tokens)` follows the batch."""
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in check_prompts(prompts, cfg.n_samples)]
    nonzero = sorted({float(s) for s in strengths if s != 0})
    by_strength: dict[float, list[Generation]] = {s: [] for s in [0.0, *nonzero]}
    progress = None if on_progress is None else (
        lambda v, j, i, toks: on_progress(len(toks), cfg.max_new_tokens) if (v, j, i) == (0, 0, 0) else None)
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as forward:
        stop_ids = runtime.stop_token_ids()
        base = resolve_scales(forward, sae, {feature_id: 1.0}, typical_acts, prompt_ids)[feature_id]
        variants = _Variants([None] + [steering_vector(sae, {feature_id: base.with_strength(s)}) for s in nonzero],
                             prompt_ids, cfg)
        outs, measures = variants.run(forward, sae, stop_ids, [feature_id], {feature_id: threshold}, progress)
    for j in range(len(prompt_ids)):
        for v, s in enumerate(by_strength):
            by_strength[s] += _generations(reader, str(s), j, outs[(v, j)], measures[(v, j)], cfg)
    if on_progress is not None:
        on_progress(cfg.max_new_tokens, cfg.max_new_tokens)
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
    checked = [check_strength(f, s) for s in strengths]
    if AUTO in checked or not checked:
        raise SteeringError("A sweep takes one or more numeric strengths ('auto' is for ws.steer).")
    strengths = [float(s) for s in checked]
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
