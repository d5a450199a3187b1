"""What a steering run did: each output read by the unsteered model, from what its generation recorded
(`measures_from_record`, the HF model) or by re-reading it (`measure_outputs`, any backend).

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
from backend.steering.sampling import StepRecord

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
    guided: output positions where guided sampling picked the token because a steered feature fires on it.
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
    guided: list[int] = field(default_factory=list)  # output positions guided sampling picked (backend.steering.guide)

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


_LOGITS_BYTES = 256 * 2**20  # the most float32 logits one teacher-forced chunk of steered rows holds
_ENCODE_TOKENS = 4096  # output tokens SAE-encoded at once


def measures_from_record(
    forward: HookedForward,
    sae: SAE,
    record: StepRecord,
    outputs: list[list[int]],
    steered: list[bool],
    feature_ids: list[int],
    thresholds: Mapping[int, float],
) -> list[OutputMeasures]:
    """The measures `measure_outputs` gives, from what one batched generation recorded, with no re-reading
    forward: the features' activations from the hook's activation captured before the vector (the unsteered
    model's), an unsteered row's NLL from its own step logits, a steered row's NLL from the layers after the
    hook run on its captured activations (`HookedForward.logits_from_hook`; a full unsteered forward of its
    tokens where the model has no such path). `steered[i]`: row i had a steering vector."""
    acts = _recorded_acts(sae, record, outputs, feature_ids)
    step_nll = record.nll()
    nll = {i: step_nll[i, : len(o)] for i, o in enumerate(outputs) if o and not steered[i]}
    nll.update(_steered_nll(forward, record, outputs, [i for i, o in enumerate(outputs) if o and steered[i]]))
    return [_one_output(acts[i], nll[i], feature_ids, thresholds) if o else OutputMeasures.empty(feature_ids)
            for i, o in enumerate(outputs)]


def _recorded_acts(sae: SAE, record: StepRecord, outputs: list[list[int]], feature_ids: list[int]) -> list[torch.Tensor]:
    """Per row: the features' SAE activations [output tokens, F] at the output positions."""
    rows = torch.tensor([i for i, o in enumerate(outputs) for _ in o], dtype=torch.long)
    pos = torch.tensor([record.width + k for o in outputs for k in range(len(o))], dtype=torch.long)
    if not feature_ids or not len(rows):
        return [torch.zeros(len(o), len(feature_ids)) for o in outputs]
    resid, parts = record.resid(), []
    for at in range(0, len(rows), _ENCODE_TOKENS):
        r, p = rows[at: at + _ENCODE_TOKENS].to(resid.device), pos[at: at + _ENCODE_TOKENS].to(resid.device)
        x = resid[r, p].to(sae.W_dec.device, sae.W_dec.dtype)
        parts.append(sae.encode(x)[:, feature_ids].float().cpu())
    return list(torch.cat(parts).split([len(o) for o in outputs]))


def _steered_nll(forward: HookedForward, record: StepRecord, outputs: list[list[int]], rows: list[int]) -> dict[int, torch.Tensor]:
    """{row: NLL of its output tokens under the unsteered model}, teacher-forced in chunks of rows."""
    if not rows:
        return {}
    length = max(len(outputs[i]) for i in rows)
    end = record.width + length - 1  # the last position whose logits predict an output token
    resid, out = record.resid(), {}
    vocab = forward.hf.config.vocab_size if forward.hf is not None else 1
    per = max(1, _LOGITS_BYTES // (4 * length * vocab))
    for at in range(0, len(rows), per):
        chunk = rows[at: at + per]
        sel = torch.tensor(chunk, device=resid.device)
        mask = None if record.mask is None else record.mask[sel, :end]
        pos = None if record.positions is None else record.positions[sel, :end]
        if forward.runs_from_hook:
            logits = forward.logits_from_hook(resid[sel, :end], mask, pos, keep=length)
        else:  # the whole model on the row's tokens, unsteered
            forward.reset()
            logits = forward.logits(record.ids[sel, :end], keep=length, attention_mask=mask, position_ids=pos)
        tokens = torch.tensor([outputs[i] + [0] * (length - len(outputs[i])) for i in chunk], device=logits.device)
        nll = -torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None])[..., 0].cpu()
        out.update({i: nll[k, : len(outputs[i])] for k, i in enumerate(chunk)})
    return out


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
