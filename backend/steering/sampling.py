"""Steered sampling: prompts to token ids, and one batched step loop (KV cache, left padding) that generates
every row of a run together: any prompts, samples and steering vectors, each row with its own RNG seed (so
a steered row and its unsteered twin differ only through the steering)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from backend.models import ReaderModel
from backend.runtime import HookedForward, runtime_for
from backend.steering.config import SteerConfig
from backend.steering.guide import Guide

OnStep = Callable[[int, int, list[int]], None]  # (variant, row, new tokens so far)


def format_prompt(reader: ReaderModel, prompt: str, chat_template: bool = True) -> list[int]:
    """Token ids of a prompt: the reader's prefix token, then the prompt (as a user turn with the
    assistant's turn opened, for instruct models when `chat_template`)."""
    tok = reader.tokenizer
    text = prompt
    if chat_template and reader.is_chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    prefix = reader.prefix_ids()
    return ids if ids[: len(prefix)] == prefix else prefix + ids


def stop_token_ids(reader: ReaderModel) -> set[int]:
    """Token ids that end a generation."""
    return runtime_for(reader).stop_token_ids()


def _allowed(logits: torch.Tensor, forbid: list[int]) -> torch.Tensor:
    """Float logits without the forbidden tokens (a copy: the caller's logits stay raw, a StepRecord reads them)."""
    logits = logits.float()
    if forbid:
        logits = logits.clone()
        logits[:, forbid] = -math.inf
    return logits


def sampling_probs(logits: torch.Tensor, cfg: SteerConfig, forbid: list[int]) -> torch.Tensor:
    """What each row samples from: the softmax at the temperature (1 when greedy), cut to the top-p nucleus and
    without the forbidden tokens."""
    logits = _allowed(logits, forbid)
    probs = torch.softmax(logits / (cfg.temperature if cfg.temperature > 0 else 1.0), dim=-1)
    if cfg.top_p < 1.0 and cfg.temperature > 0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs * ((sorted_probs.cumsum(-1) - sorted_probs) < cfg.top_p)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return probs


def pick_tokens(logits: torch.Tensor, cfg: SteerConfig, generators: list[torch.Generator], forbid: list[int]) -> list[int]:
    """Next token of each row: greedy at temperature 0, else a top-p draw from the row's own generator."""
    if cfg.temperature <= 0:
        return _allowed(logits, forbid).argmax(-1).tolist()
    probs = sampling_probs(logits, cfg, forbid)
    # Inverse-CDF draw with one uniform per row from that row's generator (torch.multinomial is
    # ~100x slower on a CPU for a 50k vocabulary).
    u = torch.stack([torch.rand((), generator=g, device=g.device, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp_(max=probs.shape[-1] - 1).tolist()


@dataclass
class StepRecord:
    """What the step loop saw, so a run is measured without re-reading its outputs: the hook's activation
    BEFORE the steering vector at every fed position (the unsteered model's, for every row: the layers up to
    the hook never see the vector) and each picked token's NLL under that step's raw logits (temperature 1,
    no forbidden tokens; the unsteered model's own NLL for an unsteered row)."""

    width: int = 0  # the padded prompt width: output token k of a row sits at position width + k
    ids: torch.Tensor | None = None  # [rows, positions]: the tokens fed (left padding, then every step's pick)
    mask: torch.Tensor | None = None  # [rows, positions] at the end of the loop; None without padding
    positions: torch.Tensor | None = None
    chunks: list[torch.Tensor] = field(default_factory=list)  # [rows, fed, d_model], in position order
    step_nll: list[torch.Tensor] = field(default_factory=list)  # [rows] per step

    @property
    def n_positions(self) -> int:
        return sum(c.shape[1] for c in self.chunks)

    def add_resid(self, resid: torch.Tensor | None, offset: int) -> None:
        if resid is None:
            raise RuntimeError("The step loop's forward never reached the hook.")
        if offset != self.n_positions:  # no KV cache: every step re-reads the whole sequence
            self.chunks.clear()
            if offset != 0:
                raise RuntimeError(f"Captured positions from {offset}, expected {self.n_positions} or 0.")
        self.chunks.append(resid)

    def add_step(self, logits: torch.Tensor, tokens: list[int]) -> None:
        raw = logits.float()
        picked = raw.gather(-1, torch.tensor(tokens, device=raw.device)[:, None])[:, 0]
        self.step_nll.append(torch.logsumexp(raw, dim=-1) - picked)

    def resid(self) -> torch.Tensor:
        """[rows, positions, d_model]: every fed position's activation at the hook, before the vector."""
        return torch.cat(self.chunks, dim=1)

    def nll(self) -> torch.Tensor:
        """[rows, steps]: NLL of the token picked at each step under the step's raw logits."""
        return torch.stack(self.step_nll, dim=1).cpu()


@dataclass
class _Batch:
    """Rows generated together: left-padded prompts, their attention mask and positions, one steering
    vector per row ([rows, 1, d_model], zeros for unsteered rows; None when no row is steered)."""

    seq: torch.Tensor
    mask: torch.Tensor | None
    positions: torch.Tensor | None
    vector: torch.Tensor | None
    generators: list[torch.Generator]
    cache: Any


def _batch(forward: HookedForward, prompts: list[list[int]], vectors: list[torch.Tensor | None], seeds: list[int],
           cfg: SteerConfig, pad_id: int) -> _Batch:
    dev, width = forward.device, max(len(p) for p in prompts)
    seq = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long, device=dev)
    mask = positions = None
    if any(len(p) != width for p in prompts):  # left padding: mask the pads, count positions from each row's start
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=dev)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    vector = None
    if any(v is not None for v in vectors):
        d = next(v for v in vectors if v is not None).shape[-1]
        vector = torch.stack([torch.zeros(d) if v is None else v.detach().float().cpu() for v in vectors])[:, None]
        vector = vector.to(dev, forward.dtype)
    generators = [torch.Generator(device=dev).manual_seed(s) for s in seeds] if cfg.temperature > 0 else []
    return _Batch(seq, mask, positions, vector, generators, forward.new_cache(len(prompts)) if cfg.use_cache else None)


def _step_logits(forward: HookedForward, b: _Batch, step: int, start: int, record: StepRecord | None) -> torch.Tensor:
    """Next-token logits of every row (the whole sequence on the first step or without a cache); with a
    `record`, the hook's activation of the fed positions (before the vector) goes into it."""
    fed = b.seq if (b.cache is None or step == 0) else b.seq[:, -1:]
    offset = b.seq.shape[1] - fed.shape[1]
    forward.steer_with(b.vector, start=start, offset=offset, capture=record is not None)
    if b.mask is None:
        logits = forward.logits(fed, b.cache, keep=1)[:, -1]
    else:
        pos = b.positions[:, -fed.shape[1]:]
        logits = forward.logits(fed, b.cache, keep=1, attention_mask=b.mask, position_ids=pos)[:, -1]
    if record is not None:
        record.add_resid(forward.state.captured, offset)
    return logits


def _guide_step(forward: HookedForward, b: _Batch, logits: torch.Tensor, cfg: SteerConfig, forbid: list[int],
                picks: list[int], guide: Guide, done: list[bool], position: int) -> None:
    """Guided sampling's step (`backend.steering.guide`): the rows still to guide read their likeliest tokens at the
    hook and may take one that fires a guided feature instead of their own pick (`picks`, in place)."""
    rows = guide.waiting(done)
    if not rows:
        return
    probs = sampling_probs(logits[rows], cfg, forbid)
    top, candidates = probs.topk(min(guide.top_k, probs.shape[-1]), dim=-1)
    resid = forward.candidate_residuals(b.cache, rows, candidates, b.mask, b.positions)  # [R, K, d_model]
    acts = guide.encode(resid.reshape(-1, resid.shape[-1])).reshape(len(rows), candidates.shape[1], -1)
    guide.choose(rows, top, candidates, acts, picks, position)


def _finish_record(forward: HookedForward, b: _Batch, record: StepRecord) -> None:
    """Capture the positions the loop picked but never fed (the last step's tokens): a forward that stops at
    the hook. Then keep the batch's mask and positions over all captured positions."""
    have = record.n_positions
    if b.seq.shape[1] > have:
        rest = b.seq[:, have:]
        if b.cache is None:
            rest, have = b.seq, 0
        pos = None if b.positions is None else b.positions[:, have:]
        record.add_resid(forward.residuals(rest, b.mask, pos, b.cache), have)
    record.ids = b.seq[:, : record.n_positions]
    record.mask = None if b.mask is None else b.mask[:, : record.n_positions]
    record.positions = None if b.positions is None else b.positions[:, : record.n_positions]


def generate_rows(
    forward: HookedForward,
    prompts: list[list[int]],
    vectors: list[torch.Tensor | None],
    seeds: list[int],
    cfg: SteerConfig,
    stop_ids: set[int],
    on_step: Callable[[int, list[int]], None] | None = None,
    record: StepRecord | None = None,
    guide: Guide | None = None,
) -> list[list[int]]:
    """One batched generation (KV cache, left padding) of every row: row i continues `prompts[i]` with
    `vectors[i]` added (None = unsteered), sampling from its own RNG seeded `seeds[i]`, so a row's tokens
    do not depend on the other rows. Returns the new token ids of each row, stop token excluded.
    With positions="generated" the vector is added from the first generated position on.
    `record` (a fresh StepRecord) collects what measuring the outputs needs (see StepRecord); `guide` guides
    its rows' sampling toward its features (`backend.steering.guide`; needs the KV cache)."""
    pad_id = min(stop_ids) if stop_ids else 0
    b = _batch(forward, prompts, vectors, seeds, cfg, pad_id)
    if guide is not None and b.cache is None:
        raise ValueError("Guided sampling needs the KV cache (SteerConfig.use_cache).")
    start = b.seq.shape[1] if cfg.positions == "generated" else 0
    forbid = sorted(stop_ids)
    done, out = [False] * len(prompts), [[] for _ in prompts]
    if record is not None:
        record.width = b.seq.shape[1]
    try:
        for step in range(cfg.max_new_tokens):
            logits = _step_logits(forward, b, step, start, record)
            banned = forbid if step < cfg.min_new_tokens else []
            nxt = pick_tokens(logits, cfg, b.generators, banned)
            if guide is not None:
                _guide_step(forward, b, logits, cfg, banned, nxt, guide, done, step)
            if record is not None:
                record.add_step(logits, nxt)
            for row, token in enumerate(nxt):
                if done[row]:
                    continue
                if token in stop_ids:
                    done[row] = True
                else:
                    out[row].append(token)
                if on_step is not None:
                    on_step(row, out[row])
            if all(done):
                break
            b.seq = torch.cat([b.seq, torch.tensor(nxt, dtype=torch.long, device=forward.device)[:, None]], dim=1)
            if b.mask is not None:
                b.mask = torch.cat([b.mask, b.mask.new_ones(len(nxt), 1)], dim=1)
                b.positions = torch.cat([b.positions, b.positions[:, -1:] + 1], dim=1)
        if record is not None:
            _finish_record(forward, b, record)
    finally:
        forward.reset()
    return out


def generate_batch(
    forward: HookedForward,
    prompts: list[list[int]],
    vectors: list[torch.Tensor | None],
    seeds: list[int],
    cfg: SteerConfig,
    stop_ids: set[int],
    on_step: Callable[[int, list[int]], None] | None = None,
    record: StepRecord | None = None,
    guide: Guide | None = None,
) -> list[list[int]]:
    """`generate_rows` for any backend: the HF model takes every row in one left-padded batch; the
    TransformerLens fallback (no attention mask with a KV cache) one batch per prompt length, and no `record`
    or `guide`."""
    if forward.backend == "hf":
        return generate_rows(forward, prompts, vectors, seeds, cfg, stop_ids, on_step, record, guide)
    if record is not None or guide is not None:
        raise ValueError("A StepRecord or guided sampling needs the Hugging Face model (one batch for every row).")
    out: list[list[int]] = [[] for _ in prompts]
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        sub_step = None if on_step is None else (lambda r, toks, rows=rows: on_step(rows[r], toks))
        outs = generate_rows(forward, [prompts[i] for i in rows], [vectors[i] for i in rows], [seeds[i] for i in rows],
                             cfg, stop_ids, sub_step)
        for i, o in zip(rows, outs):
            out[i] = o
    return out


def generate(
    forward: HookedForward,
    prompt_ids: list[int],
    vectors: list[torch.Tensor | None],
    cfg: SteerConfig,
    stop_ids: set[int],
    on_step: OnStep | None = None,
) -> list[list[list[int]]]:
    """Generate `cfg.n_samples` continuations of one prompt per steering vector (None = unsteered), all in
    one batch. Returns [variant][sample] -> new token ids, stop token excluded."""
    n = cfg.n_samples
    rows_vectors = [v for v in vectors for _ in range(n)]
    step = None if on_step is None else (lambda row, toks: on_step(row // n, row % n, toks))
    outs = generate_batch(forward, [prompt_ids] * len(rows_vectors), rows_vectors, cfg.seeds() * len(vectors), cfg,
                          stop_ids, step)
    return [outs[k * n:(k + 1) * n] for k in range(len(vectors))]
