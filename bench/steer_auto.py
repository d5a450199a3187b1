"""Does steering work across features of varied density? The share of features that, steered, fire (the
max-pooled `fires` measure of backend.steering.measures) in >= 80% of generations at <= 2x perplexity (median
per-generation perplexity of the steered text over the unsteered text, both read by the unsteered model).

Before: fixed strength 1.0 in the old unit (the feature's p99 activation in the corpus), plain sampling.
After: strength "auto" in the residual unit (the largest strength whose median perplexity stays within 1.5x), with
ws.steer's default guided sampling (its 32 likeliest tokens, once per feature; --guide 0: the residual alone).

Real default model and SAE: a Workspace with the default spec on CPU, a small embedded demo corpus (density
and p99 activation of each feature come from it), features chosen evenly over log-density.

Both runs use ws.steer's defaults (SteerConfig: 48 new tokens, temperature 0.7; AutoConfig: its grid, two narrowing
rounds, probes of 16 tokens on at most 4 prompts x 2 samples); --max-new-tokens and --probe-tokens change them.

Usage: PYTHONPATH=. .venv/bin/python bench/steer_auto.py [--features 30] [--docs 40] [--max-new-tokens 48]
       [--guide K] [--no-before]
The last line printed is `share <before> -> <after>` (target after >= 0.8).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backend.builtin_data import demo_corpus
from backend.config import DEFAULT_SAE_DIR
from backend.features import feature_table
from backend.steering import AutoConfig, SteerConfig, SteerResult, activation_levels, steer, typical_units
from backend.workspace import Workspace, WorkspaceSpec

PROMPTS = ["Describe your ideal weekend.", "Write a few sentences about a city you like.",
           "Tell me about something you learned recently."]
FIRE_SHARE, PPL_FACTOR = 0.8, 2.0


def build_workspace(path: Path, n_docs: int) -> Workspace:
    ws = Workspace.create(path, WorkspaceSpec(sae=str(DEFAULT_SAE_DIR)), device="cpu")
    ws.add_corpus("demo", demo_corpus(n_docs, seed=3), "text")
    ws.embed("demo")
    return ws


def pick_features(ws: Workspace, n: int) -> list[tuple[int, float]]:
    """n features spread evenly over log-density (those active in at least 2 documents), densest last."""
    table = feature_table(ws, "demo", sort_by="density", limit=None)
    table = table[table["n_docs_active"] >= 2].sort_values("density").reset_index(drop=True)
    logd = np.log(table["density"].to_numpy())
    targets = np.linspace(logd.min(), logd.max(), n)
    picked: list[int] = []
    for t in targets:
        order = np.argsort(np.abs(logd - t))
        picked.append(next(int(i) for i in order if int(i) not in picked))
    # Interleaved (sparsest, densest, 2nd sparsest, ...) so that a run cut short still spans the densities.
    order = [picked[i] for pair in zip(range(n), range(n - 1, -1, -1)) for i in pair][:n]
    order = list(dict.fromkeys(order))
    return [(int(table["feature_id"][i]), float(table["density"][i])) for i in order]


def outcome(res: SteerResult, f: int) -> tuple[float, float, float]:
    """(share of steered generations where f fires, median perplexity ratio, share firing unsteered)."""
    def median_ppl(kind: str) -> float:
        return statistics.median(g.perplexity for g in res.generations if g.kind == kind and g.n_tokens)

    fires = res.summary()[f"share_fires_{f}"]
    return float(fires["steered"]), median_ppl("steered") / median_ppl("unsteered"), float(fires["unsteered"])


def guided_share(res: SteerResult) -> float:
    """Share of steered generations where guided sampling picked a token."""
    steered = [g for g in res.generations if g.kind == "steered"]
    return sum(bool(g.guided) for g in steered) / max(len(steered), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=SteerConfig().max_new_tokens)
    ap.add_argument("--probe-tokens", type=int, default=AutoConfig().probe_tokens)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workspace", type=Path, default=None, help="reuse (or build once at) this workspace file")
    ap.add_argument("--guide", type=int, default=None, help="SteerConfig.guide for the auto runs (default: its default, "
                    "guided sampling with auto strength; 0: the residual intervention alone)")
    ap.add_argument("--no-before", action="store_true", help="skip the fixed-strength runs (the 'before' column)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = args.workspace or Path(tempfile.mkdtemp()) / "auto.duckdb"
    ws = Workspace.open(path) if path.exists() else build_workspace(path, args.docs)
    features = pick_features(ws, args.features)
    print(f"workspace ({args.docs} demo docs) built in {time.time() - t0:.0f}s; {len(features)} features, density "
          f"{min(d for _, d in features):.3f}..{max(d for _, d in features):.3f}", flush=True)
    cfg = SteerConfig(n_samples=args.samples, temperature=0.7, seed=0, max_new_tokens=args.max_new_tokens, guide=args.guide)
    auto_cfg = AutoConfig(probe_tokens=args.probe_tokens)
    ok = {"before": 0, "after": 0}
    for k, (f, density) in enumerate(features):
        t1 = time.time()
        # backend.steering.steer directly: ws.steer's numbers, without the MiniLM concept similarity (not scored here)
        p99 = typical_units(activation_levels(ws, "demo", [f]), "p99_act")
        before = (math.nan, math.nan, math.nan) if args.no_before else \
            outcome(steer(ws.reader, ws.sae, {f: 1.0}, PROMPTS, dataclasses.replace(cfg, guide=0), typical_acts=p99), f)
        res = steer(ws.reader, ws.sae, {f: "auto"}, PROMPTS, cfg, auto=auto_cfg)
        after = outcome(res, f)
        for name, (share, ratio, _) in (("before", before), ("after", after)):
            ok[name] += share >= FIRE_SHARE and ratio <= PPL_FACTOR
        probes = " ".join(f"{s:g}:{r:.2f}" for s, r in sorted(res.auto.probes.items()))
        print(f"[{k + 1}/{len(features)}] feature {f} density {density:.3f} | before (p99 x1.0): fires {before[0]:.0%} "
              f"ppl x{before[1]:.2f} | after (auto {res.auto.strength:.3g} x resid): fires {after[0]:.0%} ppl "
              f"x{after[1]:.2f} (unsteered fires {after[2]:.0%}; guided picks in {guided_share(res):.0%}) | probes {probes} "
              f"| {time.time() - t1:.0f}s", flush=True)
    ws.close()
    n = len(features)
    before = "skipped" if args.no_before else f"{ok['before']}/{n}"
    print(f"features firing in >= {FIRE_SHARE:.0%} of generations at <= {PPL_FACTOR:g}x perplexity: "
          f"before {before}, after {ok['after']}/{n}; total {time.time() - t0:.0f}s")
    print(f"share {'skipped' if args.no_before else format(ok['before'] / n, '.2f')} -> {ok['after'] / n:.2f}")


if __name__ == "__main__":
    if not (DEFAULT_SAE_DIR / "cfg.json").exists():
        raise SystemExit("the default SAE is not in data/sae/")
    main()
