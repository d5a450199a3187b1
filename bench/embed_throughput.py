"""Throughput of the whole embedding pipeline against the fastest bare forward to the same layer, in one run.

Pipeline = the real job loop: tokenize, the runtime's stop-at-layer forward, sparse SAE encode, pooling,
DuckDB writes. Bare = the Hugging Face model with the layers after the hook's removed, on the same padded
batches in the same dtype, nothing else (not even tokenizing). Rounds interleave the two so drifting machine
load hits both alike; each side keeps its best round. Printed for float32 and bfloat16; the last line is
`ratio <pipeline/bare>` in the dtype the runtime ships for this device ("auto").
`--clock cpu` times with this process's CPU time instead of the wall clock, for machines shared with other jobs.
With --rss-docs N, first the peak RSS of embedding N documents in a fresh process.

    python bench/embed_throughput.py [--docs 120] [--other-docs 12] [--repeats 3] [--dtypes float32,bfloat16]

--other-docs sizes the run of the dtype not shipped here (bf16 on a CPU without native bf16 runs ~6x slower).
"""
from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def truncated_decoder(hf: torch.nn.Module, n_layers: int) -> torch.nn.Module:
    """The HF model's decoder stack keeping only its first `n_layers` blocks (weights shared, original untouched)."""
    from backend.runtime import decoder_layers

    layers = decoder_layers(hf)
    base = next(m for m in hf.modules() if any(child is layers for child in m.children()))
    bare = copy.copy(base)
    bare._modules = dict(base._modules)
    for name, child in base._modules.items():
        if child is layers:
            bare._modules[name] = torch.nn.ModuleList(list(layers)[:n_layers])
    return bare


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_dtype(dtype: str, df, repeats: int, results: dict, clock=time.perf_counter) -> None:
    from backend.activations import pad_batch, plan_batches
    from backend.demo import ensure_default_sae
    from backend.jobs import JobConfig, embed_corpus
    from backend.models import hook_layer, load_reader
    from backend.runtime import runtime_for
    from backend.workspace import Workspace, WorkspaceSpec

    reader = load_reader(dtype=dtype)
    runtime = runtime_for(reader)
    job = JobConfig()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "bench.duckdb", WorkspaceSpec(sae=str(ensure_default_sae()), dtype=dtype),
                              reader=reader)
        cfg, hook, pad = ws.embed_config, ws.hook, reader.tokenizer.pad_token_id or 0
        texts = df["text"].tolist()
        batches, counted = [], 0
        for s in range(0, len(texts), job.docs_per_batch):  # the job loop's chunks and token-budget batches
            docs = reader.encode_documents(texts[s : s + job.docs_per_batch], cfg.formatting, cfg.max_tokens)
            batches += [pad_batch(docs, b, pad, reader.device)[0] for b in plan_batches(docs, cfg.batch_tokens)]
            counted += sum(d.n_counted for d in docs)
        bare_model = truncated_decoder(runtime.hf, hook_layer(hook) + 1)

        def bare() -> float:
            synchronize(reader.device)
            t0 = clock()
            with torch.inference_mode():
                for ids in batches:
                    bare_model(input_ids=ids, use_cache=False)
            synchronize(reader.device)
            return counted / (clock() - t0)

        def pipeline(i: int) -> float:
            ws.add_corpus(f"run{i}", df, "text")
            t0 = clock()
            state = embed_corpus(ws.store, f"run{i}", ws.reader, ws.sae, hook, cfg, job)
            assert state.tokens_done == counted
            return state.tokens_done / (clock() - t0)

        ws.sae  # load before timing
        with torch.inference_mode():  # warm-up (and lazy loads) of both paths
            bare_model(input_ids=batches[0], use_cache=False)
            runtime.residuals(batches[0], hook)
        bare_rates, pipe_rates = [], []
        for i in range(repeats):
            bare_rates.append(bare())
            pipe_rates.append(pipeline(i))
            print(f"{dtype} round {i + 1}: bare {bare_rates[-1]:,.0f} tok/s, pipeline {pipe_rates[-1]:,.0f} tok/s "
                  f"({counted:,} tokens)", flush=True)
        ws.close()
    results[dtype] = (max(bare_rates), max(pipe_rates))
    print(f"{dtype}: fastest bare forward {results[dtype][0]:,.0f} tokens/s, pipeline {results[dtype][1]:,.0f} tokens/s, "
          f"ratio {results[dtype][1] / results[dtype][0]:.3f} (best of {repeats})", flush=True)


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
    ap.add_argument("--docs", type=int, default=120, help="documents for the shipped dtype")
    ap.add_argument("--other-docs", type=int, default=12, help="documents for the other dtypes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (steadier on a machine shared with other jobs; use --threads 1)")
    ap.add_argument("--rss-docs", type=int, default=0, help="embed this many documents in a child for peak RSS")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.rss_docs:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(args.rss_docs)], capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        print("\n".join(lines[-2:]) if out.returncode == 0 else f"rss run failed: {out.stderr[-1000:]}")

    from backend.builtin_data import demo_corpus
    from backend.config import pick_device
    from backend.runtime import DTYPES, resolve_dtype

    device = pick_device(None)
    shipped = next(name for name, dt in DTYPES.items() if dt == resolve_dtype("auto", device))
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    dtypes = sorted(set(dtypes) | {shipped}, key=lambda d: (d != shipped, d))
    df = demo_corpus(args.docs)
    from backend.runtime import cpu_has_native_bf16

    print(f"device {device}, torch threads {torch.get_num_threads()}, shipped dtype {shipped}, {args.clock} clock, "
          f"native bf16 on this CPU: {cpu_has_native_bf16()}", flush=True)
    results: dict[str, tuple[float, float]] = {}
    for dtype in dtypes:
        docs = df if dtype == shipped else df.head(args.other_docs)
        print(f"{dtype}: {len(docs)} documents", flush=True)
        bench_dtype(dtype, docs, args.repeats, results, time.perf_counter if args.clock == "wall" else time.process_time)
    for dtype, (bare_rate, pipe_rate) in results.items():
        print(f"{dtype}: bare {bare_rate:,.0f} tokens/s, pipeline {pipe_rate:,.0f} tokens/s")
    bare_rate, pipe_rate = results[shipped]
    print(f"ratio {pipe_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
