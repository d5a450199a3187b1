"""What a steering run did: each output re-read by the unsteered model.

Per generation and feature: the per-token figures (mean, max, share of output tokens where it fires, sum),
the max-pooled `fires` (does the feature fire anywhere in the output, judged like a corpus document), the
perplexity of the output tokens (the fluency cost) and, when the feature's top contexts are given, the
MiniLM similarity of the output to them (does the text follow the concept)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from backend.errors import UnavailableError
from backend.search import sentence_embed

if TYPE_CHECKING:
    from sae_lens import SAE

    from backend.runtime import HookedForward


@dataclass
class OutputMeasures:
    """One output's measures: per feature, and the mean NLL of its tokens (NaN for an empty output)."""

    mean: dict[int, float]
    max: dict[int, float]
    frac: dict[int, float]
    sum: dict[int, float]
    fires: dict[int, bool]
    nll: float

    @classmethod
    def empty(cls, feature_ids: list[int]) -> OutputMeasures:
        nan = {f: math.nan for f in feature_ids}
        return cls(dict(nan), dict(nan), dict(nan), dict(nan), {f: False for f in feature_ids}, math.nan)


@dataclass
class Generation:
    """One continuation with its measures under the unsteered model.

    token_ids / text: the new tokens, stop token excluded (these are the "output tokens").
    feature_mean / feature_max / feature_frac: the steered features' SAE activations re-read from
        the output tokens by the plain model (mean, max, share of output tokens where it fires).
    fires: max-pooled presence: the feature fires on at least one output token (as a document would count).
    concept_similarity: MiniLM cosine of the text to the feature's top contexts (when they were given).
    nll: mean negative log-likelihood per output token under the unsteered model.
    """

    kind: str
    prompt_idx: int
    sample_idx: int
    seed: int
    text: str
    token_ids: list[int]
    stopped: bool
    feature_mean: dict[int, float]
    feature_max: dict[int, float]
    feature_frac: dict[int, float]
    nll: float
    feature_sum: dict[int, float] = field(default_factory=dict, repr=False)
    fires: dict[int, bool] = field(default_factory=dict)
    concept_similarity: dict[int, float] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def perplexity(self) -> float:
        """Fluency cost: perplexity of the output tokens under the unsteered model."""
        return math.exp(self.nll) if self.n_tokens else math.nan


def measure_outputs(
    forward: HookedForward,
    sae: SAE,
    prompt_ids: list[int],
    outputs: list[list[int]],
    feature_ids: list[int],
    thresholds: Mapping[int, float],
) -> list[OutputMeasures]:
    """Re-read prompt+output with the unsteered model (one forward for all outputs of a prompt)."""
    length = max((len(o) for o in outputs), default=0)
    if length == 0:
        return [OutputMeasures.empty(feature_ids) for _ in outputs]
    start = len(prompt_ids)
    ids = torch.tensor([prompt_ids + o + [prompt_ids[-1]] * (length - len(o)) for o in outputs], device=forward.device)
    logits, resid = forward.unsteered_logits_and_residuals(ids, keep=length + 1)
    logits = logits[:, :length].float()  # position start-1+j predicts token start+j
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, ids[:, start:, None]).squeeze(-1).cpu()  # [n, length]
    x = resid[:, start : start + length].reshape(-1, resid.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)
    acts = sae.encode(x).reshape(len(outputs), length, -1)[..., feature_ids].float().cpu()  # [n, length, F]
    return [_one_output(acts[i, : len(o)], nll[i, : len(o)], feature_ids, thresholds) if o else OutputMeasures.empty(feature_ids)
            for i, o in enumerate(outputs)]


def _one_output(acts: torch.Tensor, nll: torch.Tensor, feature_ids: list[int], thresholds: Mapping[int, float]) -> OutputMeasures:
    """Measures of one non-empty output from its activations [tokens, F] and token NLLs."""
    peak = acts.max(dim=0).values
    return OutputMeasures(
        mean={f: float(acts[:, k].mean()) for k, f in enumerate(feature_ids)},
        max={f: float(peak[k]) for k, f in enumerate(feature_ids)},
        frac={f: float((acts[:, k] > 0).float().mean()) for k, f in enumerate(feature_ids)},
        sum={f: float(acts[:, k].sum()) for k, f in enumerate(feature_ids)},
        fires={f: bool(peak[k] > thresholds.get(f, 0.0)) for k, f in enumerate(feature_ids)},
        nll=float(nll.mean()),
    )


def concept_similarities(texts: list[str], contexts: list[str]) -> list[float]:
    """MiniLM cosine of each text to the normalized mean embedding of `contexts` (a feature's top contexts,
    embedded as backend.search embeds them); NaN for an empty text. Raises UnavailableError without MiniLM."""
    contexts = [c for c in contexts if c and c.strip()]
    if not contexts:
        return [math.nan] * len(texts)
    concept = sentence_embed(contexts).mean(axis=0)
    concept = concept / (np.linalg.norm(concept) or 1.0)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    sims = [math.nan] * len(texts)
    if keep:
        vecs = sentence_embed([texts[i] for i in keep])
        for i, s in zip(keep, vecs @ concept):
            sims[i] = float(s)
    return sims


def add_concept_similarity(gens: list[Generation], concept_texts: Mapping[int, list[str]]) -> str | None:
    """Fill each generation's `concept_similarity`; returns a note when MiniLM is not installed."""
    texts = [g.text for g in gens]
    for f, contexts in concept_texts.items():
        try:
            sims = concept_similarities(texts, list(contexts))
        except UnavailableError as exc:
            return f"Concept similarity not measured: {exc}"
        for g, s in zip(gens, sims):
            g.concept_similarity[int(f)] = s
    return None


def perplexity_warning(steered: float, unsteered: float, factor: float = 2.0) -> bool:
    """True when the steered perplexity passes `factor` times the unsteered one (the text is breaking)."""
    return math.isfinite(steered) and math.isfinite(unsteered) and steered > factor * unsteered


def pool_generations(gens: list[Generation], feature_ids: list[int]) -> dict[str, float]:
    """Measures of a set of generations: token-pooled activations and perplexity, the share of
    generations where each feature fires, and the mean concept similarity."""
    nonempty = [g for g in gens if g.n_tokens]
    n = sum(g.n_tokens for g in nonempty)
    out: dict[str, float] = {"n_tokens": float(n), "n_generations": float(len(nonempty))}
    for f in feature_ids:
        out[f"mean_act_{f}"] = sum(g.feature_sum[f] for g in nonempty) / n if n else math.nan
        out[f"max_act_{f}"] = max((g.feature_max[f] for g in nonempty), default=math.nan)
        out[f"frac_active_{f}"] = sum(g.feature_frac[f] * g.n_tokens for g in nonempty) / n if n else math.nan
        out[f"share_fires_{f}"] = sum(g.fires.get(f, False) for g in gens) / len(gens) if gens else math.nan
        sims = [g.concept_similarity[f] for g in gens if math.isfinite(g.concept_similarity.get(f, math.nan))]
        out[f"concept_sim_{f}"] = float(np.mean(sims)) if sims else math.nan
    out["perplexity"] = math.exp(sum(g.nll * g.n_tokens for g in nonempty) / n) if n else math.nan
    return out
