"""Throughput of the whole embedding pipeline against a bare forward to the same layer, in one run.

Pipeline = tokenize, forward to the hook's layer, SAE encode, pooling, DuckDB write (the real job loop).
Bare = the same forward on the same padded batches, nothing else. Last line: `ratio <pipeline/bare>`.
Then peak RSS of embedding --rss-docs documents in a fresh process (memory stays bounded).

    python bench/embed_throughput.py [--docs 600] [--rss-docs 10000]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_ratio(n_docs: int, repeats: int) -> None:
    import torch

    from backend.activations import pad_batch, plan_batches
    from backend.builtin_data import demo_corpus
    from backend.demo import ensure_default_sae
    from backend.jobs import JobConfig, embed_corpus
    from backend.models import load_reader, residuals
    from backend.workspace import Workspace, WorkspaceSpec

    reader = load_reader()
    spec = WorkspaceSpec(sae=str(ensure_default_sae()))
    df = demo_corpus(n_docs)
    job = JobConfig()
    print(f"device {reader.device}, threads {torch.get_num_threads()}, docs {len(df)}")

    def bare() -> tuple[int, float]:
        texts = df["text"].tolist()
        pad = reader.tokenizer.pad_token_id or 0
        cfg = ws.embed_config
        tokens, t0 = 0, time.perf_counter()
        for s in range(0, len(texts), job.docs_per_batch):
            docs = reader.encode_documents(texts[s : s + job.docs_per_batch], cfg.formatting, cfg.max_tokens)
            for batch in plan_batches(docs, cfg.batch_tokens):
                ids, _ = pad_batch(docs, batch, pad, reader.device)
                residuals(reader, ids, ws.hook)
            tokens += sum(d.n_counted for d in docs)
        return tokens, time.perf_counter() - t0

    def pipeline(i: int) -> tuple[int, float]:
        ws.add_corpus(f"run{i}", df, "text")
        t0 = time.perf_counter()
        state = embed_corpus(ws.store, f"run{i}", ws.reader, ws.sae, ws.hook, ws.embed_config, job)
        return state.tokens_done, time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "bench.duckdb", spec, reader=reader)
        ws.sae  # load before timing
        residuals(reader, torch.tensor([[0, 1, 2, 3]]), ws.hook)  # warm-up
        bare_rates, pipe_rates = [], []
        for i in range(repeats):  # interleaved so drifting machine load hits both alike
            tb, sb = bare()
            tp, sp = pipeline(i)
            bare_rates.append(tb / sb)
            pipe_rates.append(tp / sp)
            print(f"round {i + 1}: bare {tb / sb:,.0f} tok/s, pipeline {tp / sp:,.0f} tok/s ({tp:,} tokens)")
        ws.close()
    best_bare, best_pipe = max(bare_rates), max(pipe_rates)
    print(f"bare forward to the hook's layer: {best_bare:,.0f} tokens/s (best of {repeats})")
    print(f"pipeline: {best_pipe:,.0f} tokens/s (best of {repeats})")
    print(f"ratio {best_pipe / best_bare:.3f}")


def rss_child(n_docs: int) -> None:
    """Embed n_docs offline documents into a fresh workspace; print peak RSS."""
    import pandas as pd

    from backend.builtin_data import training_texts
    from backend.demo import ensure_default_sae
    from backend.workspace import Workspace, WorkspaceSpec

    texts = [t for t in training_texts() if len(t) < 600][:n_docs]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "rss.duckdb", WorkspaceSpec(sae=str(ensure_default_sae())))
        ws.add_corpus("rss", pd.DataFrame({"text": texts}), "text")
        t0 = time.perf_counter()
        state = ws.embed("rss")
        dt = time.perf_counter() - t0
        print(f"embedded {state.docs_done:,} documents ({state.tokens_done:,} tokens) in {dt:,.0f} s "
              f"({state.tokens_done / dt:,.0f} tok/s, including feature statistics)")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-docs", type=int, default=10_000, help="0 to skip the memory run")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.rss_docs:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(args.rss_docs)], capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        print("\n".join(lines[-2:]) if out.returncode == 0 else f"rss run failed: {out.stderr[-1000:]}")
    bench_ratio(args.docs, args.repeats)


if __name__ == "__main__":
    main()
