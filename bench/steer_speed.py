"""Tokens/s of steered generation (one feature, KV cache, backend.steering on the reader's runtime) against
plain Hugging Face `generate` of the same model, device, prompts and number of new tokens (greedy, exactly N new
tokens).

Usage: PYTHONPATH=. .venv/bin/python bench/steer_speed.py [--max-new-tokens 32] [--rounds 2]
The last line printed is `ratio <steered/plain>` (target >= 0.8 on CPU).
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch

from backend.config import DATA_DIR, DEFAULT_HOOK
from backend.models import load_reader
from backend.runtime import runtime_for
from backend.steering import SteerConfig, feature_scale, format_prompt, generate_steered

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works in simple terms.",
    "What are some good habits for learning a new language?",
]


def load_sae(d_in: int) -> tuple[Any, str]:
    """The first SAE under data/sae/ when one exists, else a random fixed-weight TopK SAE at DEFAULT_HOOK."""
    from sae_lens import SAE, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    for cfg_file in sorted((DATA_DIR / "sae").glob("*/cfg.json")):
        sae = SAE.load_from_disk(str(cfg_file.parent), device="cpu")
        if sae.cfg.d_in == d_in:
            return sae, f"real SAE {cfg_file.parent.name} ({sae.cfg.metadata.hook_name}, d_sae {sae.cfg.d_sae})"
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=1024, k=32, dtype="float32", device="cpu",
                                metadata=SAEMetadata(model_name="smollm2-135m-instruct", hook_name=DEFAULT_HOOK)))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1024, d_in, generator=g)
    with torch.no_grad():
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae, f"random fixed-weight SAE at {DEFAULT_HOOK} (no data/sae/*/cfg.json)"


def timed(fn: Callable[[], int], device: torch.device) -> tuple[int, float]:
    """(new tokens, seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--feature", type=int, default=0)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.time()
    reader = load_reader(device=args.device)
    runtime = runtime_for(reader)
    hf = runtime.hf
    sae, sae_desc = load_sae(reader.d_model)
    print(f"device {reader.device} (torch threads {torch.get_num_threads()}); model {reader.name}; loaded in {time.time() - t0:.1f}s")
    print(f"sae: {sae_desc}")
    N, f = args.max_new_tokens, args.feature
    prompt_ids = [format_prompt(reader, p) for p in PROMPTS]

    # Strength units measured once (as a UI would pass the workspace's typical activations).
    norms = torch.cat([runtime.residuals(torch.tensor([ids]), sae.cfg.metadata.hook_name)[0, 1:].norm(dim=-1).cpu()
                       for ids in prompt_ids])
    scale = feature_scale(sae, f, strength=args.strength, resid_norm=float(norms.median()))
    typical = {f: scale.unit}
    print(f"feature {f}, strength {args.strength} -> raw coef {scale.raw_coef:.3f}, added norm {scale.vector_norm:.2f} ({scale.source})")
    cfg = SteerConfig(n_samples=1, temperature=0.0, max_new_tokens=N, min_new_tokens=N, use_cache=True)

    def plain(i: int) -> Callable[[], int]:
        def run() -> int:
            ids = torch.tensor([prompt_ids[i]], device=reader.device)
            with torch.inference_mode():
                out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                                  do_sample=False, pad_token_id=reader.tokenizer.pad_token_id)
            return out.shape[1] - ids.shape[1]
        return run

    def steered(i: int) -> Callable[[], int]:
        return lambda: len(generate_steered(reader, sae, {f: args.strength}, [PROMPTS[i]], cfg, typical)[0][0])

    # Warm-up, and a check that the step loop without steering reproduces HF generate exactly.
    ids = torch.tensor([prompt_ids[0]], device=reader.device)
    with torch.inference_mode():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                          do_sample=False, pad_token_id=reader.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    loop = generate_steered(reader, sae, {}, [PROMPTS[0]], cfg)[0][0]
    print(f"unsteered step loop == HF generate (greedy, {N} tokens): {loop == ref}")
    steered(0)()
    example = generate_steered(reader, sae, {f: args.strength}, [PROMPTS[0]], cfg, typical)[0][0]
    print(f"steered example: {reader.tokenizer.decode(example)!r}")

    totals = {"plain": [0, 0.0], "steered": [0, 0.0]}
    for r in range(args.rounds):
        for i in range(len(PROMPTS)):
            order = [("plain", plain(i)), ("steered", steered(i))]
            for name, fn in (order if (r + i) % 2 == 0 else order[::-1]):  # alternate to spread drift
                n, s = timed(fn, reader.device)
                totals[name][0] += n
                totals[name][1] += s
    tps = {k: n / s for k, (n, s) in totals.items()}
    print(f"plain HF generate: {totals['plain'][0]} tokens in {totals['plain'][1]:.2f}s = {tps['plain']:.1f} tokens/s")
    print(f"steered (KV cache): {totals['steered'][0]} tokens in {totals['steered'][1]:.2f}s = {tps['steered']:.1f} tokens/s")
    print(f"ratio {tps['steered'] / tps['plain']:.3f}")


if __name__ == "__main__":
    main()
