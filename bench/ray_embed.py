"""Ray engine vs local engine on the same demo documents, in one run.

Local: `backend.jobs.embed_corpus` in this process with 2 torch threads (model loading included).
Ray: `backend.engines.ray_engine.embed_with_ray` with 2 actors x 1 thread; the clock includes starting the
local Ray (as `--engine ray` without `--address` does), the actors loading the model and the SAE (the HF
layers up to the hook and the SAE's encoder, backend.engines.lite), exporting the inputs and ingesting every
shard. Both sides time all the work a user waits for. Both use the default model + SAE and default settings and
write into their own workspace; the rows are compared afterwards.

Prints both throughputs, the workers' rate (documents and tokens over the seconds the actors spent on their
batches, reported with each shard), when the first shard arrived and when the first documents were stored (after
the presence calibration's documents), the projected hours for 1M and 10M documents with N such workers, and
last ``ratio <ray tokens/s / local tokens/s>`` (target >= 0.8).

Run: ``PYTHONPATH=. .venv/bin/python bench/ray_embed.py [--docs 800] [--workers 2]``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=800)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-threads", type=int, default=2)
    ap.add_argument("--docs-per-batch", type=int, default=None, help="default: the engine's (RayConfig)")
    args = ap.parse_args()

    import torch

    from backend.builtin_data import demo_corpus
    from backend.engines.ray_engine import RayConfig, embed_with_ray
    from backend.jobs import embed_corpus
    from backend.workspace import Workspace, WorkspaceSpec

    folder = Path(tempfile.mkdtemp(prefix="saedash_ray_bench_"))
    docs = demo_corpus(args.docs)
    try:
        # -- local engine --------------------------------------------------------------------
        torch.set_num_threads(args.local_threads)
        ws = Workspace.create(folder / "local.duckdb", WorkspaceSpec())
        ws.add_corpus("demo", docs, text_column="text")
        t0 = time.perf_counter()
        state = embed_corpus(ws.store, ws.corpus("demo").corpus_id, ws.reader, ws.sae, ws.hook, ws.embed_config)
        local_s = time.perf_counter() - t0
        local_tps = state.tokens_done / local_s
        print(f"local engine ({args.local_threads} threads): {state.docs_done} docs, {state.tokens_done:,} tokens in "
              f"{local_s:.1f} s = {local_tps:,.0f} tokens/s, {state.docs_done / local_s:.1f} docs/s (model load included)",
              flush=True)
        local_rows = ws.store.query_df("SELECT doc_id, feature_id, max_act FROM doc_features ORDER BY doc_id, feature_id")
        ws.close()
        torch.set_num_threads(1)

        # -- Ray engine ------------------------------------------------------------------------
        ws = Workspace.create(folder / "ray.duckdb", WorkspaceSpec())
        ws.add_corpus("demo", docs, text_column="text")
        reports: list[tuple[float, int, int]] = []
        shards: list[tuple[float, dict]] = []
        cfg = RayConfig(workers=args.workers, threads_per_worker=1,
                        **({"docs_per_batch": args.docs_per_batch} if args.docs_per_batch else {}))
        t0 = time.perf_counter()  # the engine starts its own local Ray inside the clock, as `--engine ray` does
        state = embed_with_ray(ws, "demo", cfg,
                               progress=lambda p: reports.append((time.perf_counter(), p.docs_done, p.tokens_done)),
                               on_shard=lambda s: shards.append((time.perf_counter(), s)))
        ray_s = time.perf_counter() - t0
        ray_tps = state.tokens_done / ray_s
        print(f"ray engine ({args.workers} workers x 1 thread, {cfg.docs_per_batch} docs per batch): {state.docs_done} docs, "
              f"{state.tokens_done:,} tokens in {ray_s:.1f} s = {ray_tps:,.0f} tokens/s, {state.docs_done / ray_s:.1f} docs/s "
              f"(Ray start, actor start, model load, export and ingest included)")
        if shards:
            busy = sum(s["seconds"] for _, s in shards)
            per_worker_docs = sum(s["n_docs"] for _, s in shards) / busy
            per_worker_tokens = sum(s["n_tokens"] for _, s in shards) / busy
            stored = next((r[0] for r in reports if r[1] > 0), float("nan"))
            print(f"  workers' rate: {per_worker_docs:.2f} docs/s = {per_worker_tokens:,.0f} tokens/s per worker (CPU, 1 thread; "
                  f"{len(shards)} shards over {busy:.1f} s of the actors' time); first shard after {shards[0][0] - t0:.1f} s, "
                  f"first documents stored after {stored - t0:.1f} s (once the presence calibration's are in)")
            for n_workers in (8, 64, 256):
                hours = [n / (per_worker_docs * n_workers) / 3600 for n in (1_000_000, 10_000_000)]
                print(f"  projected with {n_workers:3d} such workers: 1M docs {hours[0]:7.1f} h, 10M docs {hours[1]:8.1f} h")
        ray_rows = ws.store.query_df("SELECT doc_id, feature_id, max_act FROM doc_features ORDER BY doc_id, feature_id")
        ws.close()
        same = (len(ray_rows) == len(local_rows)
                and (ray_rows[["doc_id", "feature_id"]].to_numpy() == local_rows[["doc_id", "feature_id"]].to_numpy()).all())
        diff = float(np.abs(ray_rows["max_act"].to_numpy() - local_rows["max_act"].to_numpy()).max()) if same else float("nan")
        print(f"same rows as the local engine: {same} ({len(ray_rows):,} rows, max |max_act difference| {diff:.2e})")
        print(f"ratio {ray_tps / local_tps:.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
