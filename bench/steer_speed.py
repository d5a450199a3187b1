"""Speed of a steering run (backend.steering.steer: steered + unsteered generations of every prompt and
sample in one batched generate with a KV cache and left padding, then the measures from what that generation
recorded: no re-reading forward on the HF model; see docs/steering.md) against the fastest plain
way to make the same generations: ONE batched Hugging Face `generate` of the same rows (same model, device,
prompts x samples x 2 kinds, left padding, sampling, exactly N new tokens).

Usage: PYTHONPATH=. .venv/bin/python bench/steer_speed.py [--prompts 10] [--samples 2] [--max-new-tokens 48] [--guide 32]
Prints the seconds of each, the generation-only ratio, and last `ratio <HF generate seconds / steer run seconds>`
(the whole run, measures included; target >= 0.8). Both are measured in the same process, alternated.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from backend.config import DEFAULT_SAE_DIR
from backend.models import load_reader
from backend.runtime import runtime_for
from backend.saes import load_sae
from backend.steering import SteerConfig, format_prompt, generate_batch, resolve_scales, steer, steering_vector

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works in simple terms.",
    "What are some good habits for learning a new language?",
    "Describe your ideal weekend.",
    "Give me three tips for cooking rice.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "How do I stay focused while working from home?",
    "Summarise the plot of a detective novel you like.",
    "What should I pack for a hiking trip?",
]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def left_padded(prompt_ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    return ids, mask


def greedy_check(reader: Any, sae: Any, prompt_ids: list[list[int]], pad: int, feature: int, strength: float) -> torch.Tensor:
    """Print whether the batched step loop (no steering, left padding) reproduces batched HF generate (greedy),
    and a steered example; returns the steering vector."""
    runtime = runtime_for(reader)
    greedy = SteerConfig(n_samples=1, temperature=0.0, max_new_tokens=16, min_new_tokens=16)
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as fw:
        stop = runtime.stop_token_ids()
        loop = generate_batch(fw, prompt_ids, [None] * len(prompt_ids), [0] * len(prompt_ids), greedy, stop)
        vec = steering_vector(sae, resolve_scales(fw, sae, {feature: strength}, None, prompt_ids))
        example = generate_batch(fw, prompt_ids[:1], [vec], [0], greedy, stop)[0]
    g_ids, g_mask = left_padded(prompt_ids, pad)
    with torch.inference_mode():
        ref = runtime.hf.generate(g_ids, attention_mask=g_mask, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                  pad_token_id=pad)
    print(f"batched step loop == batched HF generate (greedy, 16 tokens, {len(prompt_ids)} prompts): "
          f"{loop == ref[:, g_ids.shape[1]:].tolist()}")
    print(f"steered example (feature {feature}, strength {strength} x residual norm): {reader.tokenizer.decode(example)!r}")
    return vec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--feature", type=int, default=100)
    ap.add_argument("--strength", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-only", action="store_true", help="also time the batched step loop alone (same rows)")
    ap.add_argument("--guide", type=int, default=None, help="SteerConfig.guide of the steer run (default: off for a "
                    "numeric strength; 32: guided sampling, what 'auto' uses)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    reader = load_reader(device="cpu")
    runtime = runtime_for(reader)
    hf = runtime.hf
    sae = load_sae(DEFAULT_SAE_DIR, device="cpu")
    print(f"model {reader.name} on cpu ({args.threads} torch threads); SAE {DEFAULT_SAE_DIR.name}; loaded in {time.time() - t0:.1f}s")
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    N, n = args.max_new_tokens, args.samples
    cfg = SteerConfig(n_samples=n, temperature=0.7, max_new_tokens=N, min_new_tokens=N, guide=args.guide)
    prompt_ids = [format_prompt(reader, p) for p in prompts]
    rows = [ids for ids in prompt_ids for _ in range(2 * n)]  # steered + unsteered rows of every prompt x sample
    pad = reader.tokenizer.pad_token_id if reader.tokenizer.pad_token_id is not None else 0
    ids, mask = left_padded(rows, pad)
    print(f"{len(prompts)} prompts x {n} samples x 2 kinds = {len(rows)} rows of {N} new tokens")

    def plain() -> int:
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=True,
                              temperature=0.7, top_k=0, pad_token_id=pad)
        return (out.shape[1] - ids.shape[1]) * len(rows)

    def steered() -> int:
        res = steer(reader, sae, {args.feature: args.strength}, prompts, cfg)
        if res.guide_top_k:
            print(f"  guided: {sum(bool(g.guided) for g in res.generations)} of {len(res.generations) // 2} steered rows")
        return sum(g.n_tokens for g in res.generations)

    vec = greedy_check(reader, sae, prompt_ids, pad, args.feature, args.strength)
    secs = {"plain": 0.0, "steer": 0.0, "gen_only": 0.0}
    for r in range(args.rounds):
        order = [("plain", plain), ("steer", steered)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            tokens, s = timed(fn)
            secs[name] += s
            print(f"round {r + 1} {name}: {tokens} tokens in {s:.1f}s")
    if not args.gen_only:
        print(f"plain batched HF generate: {secs['plain'] / args.rounds:.1f}s per run")
        print(f"steer run (one batched generate + measures): {secs['steer'] / args.rounds:.1f}s per run")
        print(f"ratio {secs['plain'] / secs['steer']:.3f}")
        return
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as fw:
        _, secs["gen_only"] = timed(lambda: generate_batch(fw, rows, [vec if i % 2 else None for i in range(len(rows))],
                                                           list(range(len(rows))), cfg, runtime.stop_token_ids()))
    secs["gen_only"] *= args.rounds
    print(f"plain batched HF generate: {secs['plain'] / args.rounds:.1f}s per run")
    print(f"steer run (one batched generate + measures): {secs['steer'] / args.rounds:.1f}s per run")
    print(f"generation only (batched step loop, same rows): {secs['gen_only'] / args.rounds:.1f}s; "
          f"ratio {secs['plain'] / secs['gen_only']:.3f}")
    print(f"ratio {secs['plain'] / secs['steer']:.3f}")


if __name__ == "__main__":
    main()
