"""Speed benchmark of the feature browser's queries on a synthetic workspace.

Builds a DuckDB workspace (in a temp dir unless --db is given) with 100,000 short synthetic
documents with metadata and their sparse SAE embeddings over 16,384 features (~300-700 active
features per document, Zipfian feature frequencies), written in bulk through the Store; builds the
feature tables (backend.features.build_feature_tables, timed) and fills the model-derived tables
(top tokens, contexts, labels, logit lens) with synthetic rows. No model is loaded: the timed
queries are the SQL behind the feature pages.

Timed, over ~50 random features of varying density: stats, histogram, top documents, quantile
samples, correlated features (NPMI), metadata breakdown, feature table page, and the full detail
page (feature_detail + metadata_breakdown).

Run: ``PYTHONPATH=. .venv/bin/python bench/feature_queries.py [--docs 100000] [--db path] [--keep] [--threads N]``.
The last line is ``p95_ms <p95 of the full detail page in ms>`` (target <= 100 ms on CPU).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from backend import features as F
from backend import labels as L
from backend.activations import SparseRows
from backend.store import Store
from backend.workspace import Workspace

N_FEATURES = 16_384
WORDS = np.array(("the a of and to in is was it for on with as at by movie film plot story actor great good bad "
                  "python code data error city night music family police water fire house car dog cat money war "
                  "love hate funny boring scene ending").split())
SOURCES = np.array(["news", "reviews", "forum", "code", "wiki", "books", "mail", "chat"])


def feature_probs(rng: np.random.Generator, n_features: int, zipf_s: float = 1.05) -> np.ndarray:
    ranks = rng.permutation(n_features)  # frequent features scattered over ids
    p = 1.0 / (ranks + 10.0) ** zipf_s
    return p / p.sum()


def synthetic_rows(rng: np.random.Generator, n_docs: int, p: np.ndarray, active=(300, 700)) -> SparseRows:
    """Sparse rows for n_docs documents (doc indexes 0..n_docs-1), sorted by (doc, feature)."""
    nf = len(p)
    m = rng.integers(active[0], active[1] + 1, size=n_docs)
    reps = np.round(m * 1.45).astype(np.int64)  # Zipfian draws repeat; 1.45x draws give ~m distinct features
    cols = rng.choice(nf, size=int(reps.sum()), p=p)
    key = np.unique(np.repeat(np.arange(n_docs, dtype=np.int64), reps) * nf + cols)
    n = len(key)
    n_tokens = rng.integers(40, 400, size=n_docs).astype(np.int32)
    doc = (key // nf).astype(np.int32)
    n_active = rng.geometric(0.4, size=n).astype(np.int32)
    max_act = (rng.exponential(1.0, size=n) + 0.01).astype(np.float32)
    return SparseRows(doc, (key % nf).astype(np.int32), max_act, (rng.random(n) * n_tokens[doc]).astype(np.int32) + 1,
                      n_active, (max_act * n_active * 0.7).astype(np.float32), n_tokens, np.zeros(n_docs, bool))


def build_workspace(path: Path, n_docs: int, chunk: int = 5000, seed: int = 0) -> Workspace:
    rng = np.random.default_rng(seed)
    store = Store(path)
    store.set_meta(model="synthetic", hook="blocks.0.hook_resid_post", d_sae=N_FEATURES, d_in=64, formatting="raw", max_tokens=512)
    t0 = time.perf_counter()
    words = WORDS[rng.integers(0, len(WORDS), size=(n_docs, 16))]
    docs = pd.DataFrame({"text": [" ".join(w) for w in words], "source": SOURCES[rng.integers(0, len(SOURCES), n_docs)],
                         "year": rng.integers(2015, 2025, n_docs).astype(str)})
    cid = store.add_corpus("bench", docs, "text")
    print(f"documents: {n_docs} ({time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    p = feature_probs(rng, N_FEATURES)
    n_rows = 0
    for s in range(0, n_docs, chunk):
        ids = np.arange(s, min(s + chunk, n_docs))
        rows = synthetic_rows(rng, len(ids), p)
        store.write_embeddings(cid, ids, rows)
        n_rows += len(rows)
    store.set_status(cid, "ready")
    print(f"doc_features: {n_rows:,} rows, {n_rows / n_docs:.0f} per document ({time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    F.build_feature_tables(store, cid, N_FEATURES)
    print(f"build_feature_tables: {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    fill_model_tables(store, cid, rng)
    print(f"synthetic top tokens / contexts / labels / logits: {time.perf_counter() - t0:.1f} s", flush=True)
    return Workspace(store)


def fill_model_tables(store: Store, cid: int, rng: np.random.Generator) -> None:
    """What finalize_corpus derives with the model, as synthetic rows of the same shape."""
    alive = store.query_df("SELECT feature_id FROM feature_stats WHERE corpus_id = ? AND n_docs_active > 0", [cid])["feature_id"].to_numpy()
    k = 5
    fid = np.repeat(alive, k)
    tok = WORDS[rng.integers(0, len(WORDS), len(fid))]
    F.write_top_tokens(store, cid, pd.DataFrame({"feature_id": fid, "token": tok, "count": np.tile(np.arange(k, 0, -1), len(alive)),
                                                 "mean_act": rng.random(len(fid))}))
    ctx = store.query_df("SELECT feature_id, rank, doc_id, max_act FROM feature_docs WHERE corpus_id = ? AND rank < ?", [cid, k])
    ctx["before"], ctx["token"], ctx["after"] = "the movie was", " great", " and funny"
    F.write_contexts(store, cid, ctx)
    L.write_labels(store, pd.DataFrame({"feature_id": alive, "label": [f"top tokens: '{w}'" for w in WORDS[alive % len(WORDS)]],
                                        "score": rng.random(len(alive))}), "auto", cid)
    n = 20
    logits = pd.DataFrame({"feature_id": np.repeat(np.arange(N_FEATURES), 2 * n), "rank": np.tile(np.arange(n), 2 * N_FEATURES),
                           "token": WORDS[rng.integers(0, len(WORDS), 2 * n * N_FEATURES)],
                           "value": rng.normal(size=2 * n * N_FEATURES).astype(np.float32),
                           "kind": np.tile(np.repeat(["promoted", "suppressed"], n), N_FEATURES)})
    F.write_logits(store, logits)


def pick_features(ws: Workspace, cid: int, n: int, seed: int) -> np.ndarray:
    """n live features spread over the density range (evenly over density ranks, jittered)."""
    st = ws.store.query_df("SELECT feature_id, n_docs_active FROM feature_stats WHERE corpus_id = ? AND n_docs_active > 0 "
                           "ORDER BY n_docs_active", [cid])
    rng = np.random.default_rng(seed)
    pos = np.clip((np.linspace(0, 1, n) * (len(st) - 1) + rng.integers(-20, 21, n)).astype(int), 0, len(st) - 1)
    return st["feature_id"].to_numpy()[pos]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, process CPU ms: all threads; close to wall on an idle machine with 1 DuckDB thread)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def run_queries(ws: Workspace, cid: int, feats: np.ndarray) -> dict[str, list[tuple[float, float]]]:
    queries: dict[str, Callable[[int], object]] = {
        "stats": lambda f: F.feature_stats(ws, cid, f),
        "histogram": lambda f: F.feature_histogram(ws, cid, f),
        "top_documents": lambda f: F.top_documents(ws, cid, f, 10),
        "quantile_samples": lambda f: F.quantile_samples(ws, cid, f),
        "correlated_npmi": lambda f: F.correlated_features(ws, cid, f),
        "metadata_breakdown": lambda f: F.metadata_breakdown(ws, cid, f, "source"),
        "feature_table_page": lambda f: F.feature_table(ws, cid, min_density=0.001, sort_by="density", limit=50, offset=int(f) % 200),
        "detail_page": lambda f: (F.feature_detail(ws, cid, f), F.metadata_breakdown(ws, cid, f, "source")),
    }
    for q in queries.values():  # warm up
        q(int(feats[0]))
    return {name: [timed(lambda: q(int(f))) for f in feats] for name, q in queries.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=50, help="features timed")
    ap.add_argument("--db", type=str, default=None, help="workspace file (reused when it exists)")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's own default)")
    args = ap.parse_args()
    tmp = None
    if args.db:
        path = Path(args.db)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="saedash_bench_"))
        path = tmp / "bench.duckdb"
    try:
        t0 = time.perf_counter()
        ws = Workspace(Store(path)) if path.exists() else build_workspace(path, args.docs, seed=args.seed)
        print(f"workspace ready: {path} ({time.perf_counter() - t0:.1f} s, {path.stat().st_size / 2**30:.2f} GiB)", flush=True)
        if args.threads:
            ws.store.set_threads(args.threads)
        threads = ws.store.query_one("SELECT current_setting('threads')")[0]
        cid = ws.store.corpus_id("bench")
        t0 = time.perf_counter()
        F.DOC_FEATURES.get(ws.store, cid)
        print(f"DuckDB threads {threads}; document -> features cache loaded in {time.perf_counter() - t0:.1f} s (once per process)")
        feats = pick_features(ws, cid, args.features, args.seed)
        dens = ws.store.query_df("SELECT density FROM feature_stats WHERE corpus_id = ? AND feature_id IN (SELECT unnest(?::INTEGER[]))",
                                 [cid, feats.tolist()])["density"]
        print(f"timing {len(feats)} features, density {dens.min():.5f} .. {dens.max():.3f} (median {dens.median():.4f})")
        times = run_queries(ws, cid, feats)
        print(f"load average before timing: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
        for name, pairs in times.items():
            ms, cpu = np.array(pairs).T
            print(f"{name:20s} p50 {np.percentile(ms, 50):7.1f} ms   p95 {np.percentile(ms, 95):7.1f} ms   "
                  f"max {ms.max():7.1f} ms   (cpu p50 {np.percentile(cpu, 50):6.1f} ms, p95 {np.percentile(cpu, 95):6.1f} ms)")
        ws.close()
        print(f"p95_ms {np.percentile(np.array(times['detail_page'])[:, 0], 95):.1f}")
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
