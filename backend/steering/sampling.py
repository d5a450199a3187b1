"""Steered sampling: prompts to token ids, and a step loop with a KV cache that generates every steering
variant of a prompt in lockstep (same seeds, so variants differ only through the steering)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from backend.models import ReaderModel
from backend.runtime import HookedForward, runtime_for
from backend.steering.config import SteerConfig

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


def pick_tokens(logits: torch.Tensor, cfg: SteerConfig, generators: list[torch.Generator], forbid: list[int]) -> list[int]:
    """Next token of each row: greedy at temperature 0, else a top-p draw from the row's own generator."""
    logits = logits.float()
    if forbid:
        logits[:, forbid] = -math.inf
    if cfg.temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs * ((sorted_probs.cumsum(-1) - sorted_probs) < cfg.top_p)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    # Inverse-CDF draw with one uniform per row from that row's generator (torch.multinomial is
    # ~100x slower on a CPU for a 50k vocabulary).
    u = torch.stack([torch.rand((), generator=g, device=g.device, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp_(max=probs.shape[-1] - 1).tolist()


@dataclass
class _Stream:
    """One batch of `n_samples` rows sharing a prompt and a steering vector."""

    vector: torch.Tensor | None
    seq: torch.Tensor
    cache: Any
    generators: list[torch.Generator]
    done: list[bool]
    out: list[list[int]]


def _streams(forward: HookedForward, prompt_ids: list[int], vectors: list[torch.Tensor | None], cfg: SteerConfig) -> list[_Stream]:
    n, dev = cfg.n_samples, forward.device
    streams = []
    for v in vectors:
        generators = [torch.Generator(device=dev).manual_seed(s) for s in cfg.seeds()] if cfg.temperature > 0 else []
        streams.append(_Stream(
            vector=None if v is None else v.to(dev, forward.dtype),
            seq=torch.tensor([prompt_ids] * n, dtype=torch.long, device=dev),
            cache=forward.new_cache(n) if cfg.use_cache else None,
            generators=generators, done=[False] * n, out=[[] for _ in range(n)],
        ))
    return streams


def generate(
    forward: HookedForward,
    prompt_ids: list[int],
    vectors: list[torch.Tensor | None],
    cfg: SteerConfig,
    stop_ids: set[int],
    on_step: OnStep | None = None,
) -> list[list[list[int]]]:
    """Generate `cfg.n_samples` continuations per steering vector (None = unsteered), stepping the
    variants in lockstep. Returns [variant][sample] -> new token ids, stop token excluded."""
    start = len(prompt_ids) if cfg.positions == "generated" else 0
    forbid = sorted(stop_ids)
    streams = _streams(forward, prompt_ids, vectors, cfg)
    for step in range(cfg.max_new_tokens):
        for variant, s in enumerate(streams):
            if all(s.done):
                continue
            fed = s.seq if (s.cache is None or step == 0) else s.seq[:, -1:]
            forward.steer_with(s.vector, start=start, offset=s.seq.shape[1] - fed.shape[1])
            logits = forward.logits(fed, s.cache, keep=1)[:, -1]
            nxt = pick_tokens(logits, cfg, s.generators, forbid if step < cfg.min_new_tokens else [])
            for row, token in enumerate(nxt):
                if s.done[row]:
                    continue
                if token in stop_ids:
                    s.done[row] = True
                else:
                    s.out[row].append(token)
                if on_step is not None:
                    on_step(variant, row, s.out[row])
            s.seq = torch.cat([s.seq, torch.tensor(nxt, dtype=torch.long, device=forward.device)[:, None]], dim=1)
        if all(all(s.done) for s in streams):
            break
    forward.reset()
    return [s.out for s in streams]
