"""Storage benchmark: bytes per document of a workspace, its projection to 1M documents, and peak memory.

1. Real: `--docs` demo documents (default: the demo corpus, 2,000) embedded by the default model + SAE with the default
   settings through `Workspace.embed` (finalizing included), then closed (DuckDB checkpoints on close).
   Prints the file size per document, each table's share (per-document tables vs per-feature tables whose
   size does not grow with the corpus), and the present / raw features per document.
2. Scale: `--synthetic` documents (default 100,000) in a fresh process, bootstrapped from the real run's
   documents: their texts and metadata, and their *raw* sparse rows (every positive activation, recorded
   as the real run wrote them), written through the real store path (`Store.add_corpus_chunks`,
   `Store.write_embeddings` with the real run's presence scales, `build_feature_tables`) in batches of 256.
   Prints the file's growth per document (measured between the half and the full corpus), the file size per
   document, and the process's peak RSS (target <= 4 GB).

The projection to 1M documents is the per-feature tables of the real run (fixed) plus 1M times the growth
per document. The last line is ``bytes_per_doc <growth per document>`` (target <= 2048): what each
document of the demo corpus adds to a workspace at the default settings.

Run: ``PYTHONPATH=. .venv/bin/python bench/storage.py [--docs 2000] [--synthetic 100000] [--threads 2]``
(about 15 minutes on 2 busy cores; `--docs 500` is quicker but its documents are longer: a third are plots).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

PER_DOCUMENT_TABLES = ("documents", "doc_meta", "doc_status", "doc_features", "doc_embeddings", "ingested_shards")
BATCH = 256


def table_sizes(path: Path) -> dict[str, int]:
    """Bytes each table takes, measured by copying it alone into a fresh file (compressed as in the workspace)."""
    tmp = Path(tempfile.mkdtemp(prefix="saedash_sizes_"))
    try:
        def size_of(select: str) -> int:
            target = tmp / "t.duckdb"
            con = duckdb.connect(str(target))
            con.execute(f"ATTACH '{path}' AS src (READ_ONLY)")
            con.execute(f"CREATE TABLE t AS {select}")
            con.execute("CHECKPOINT")
            con.close()
            size = target.stat().st_size
            target.unlink()
            return size

        base = size_of("SELECT 1 AS x")
        con = duckdb.connect(str(path), read_only=True)
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        con.close()
        return {t: max(0, size_of(f"SELECT * FROM src.{t}") - base) for t in tables}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def real_run(n_docs: int, folder: Path, threads: int) -> dict:
    """Embed the demo corpus with the default model + SAE; record the raw rows for the scale run."""
    import torch

    from backend.builtin_data import demo_corpus
    from backend.store import Store
    from backend.workspace import Workspace, WorkspaceSpec

    torch.set_num_threads(threads)
    raw_parts: list[pd.DataFrame] = []

    class RecordingStore(Store):
        """The real store, also keeping each batch's raw rows (before the presence threshold) for part 2."""

        def write_embeddings(self, corpus_id, doc_ids, rows, shard=None):  # type: ignore[override]
            raw_parts.append(pd.DataFrame({
                "doc_id": np.asarray(doc_ids)[rows.doc], "feature_id": rows.feature, "max_act": rows.max_act,
                "argmax_pos": rows.argmax_pos, "n_active": rows.n_active, "sum_act": rows.sum_act}))
            raw_parts.append(pd.DataFrame({"doc_id": np.asarray(doc_ids), "n_tokens": rows.n_tokens, "feature_id": -1}))
            return super().write_embeddings(corpus_id, doc_ids, rows, shard)

    path = folder / "demo.duckdb"
    Workspace.create(path, WorkspaceSpec()).close()
    ws = Workspace(RecordingStore(path))
    docs = demo_corpus(n_docs)
    ws.add_corpus("demo", docs, text_column="text")
    t0 = time.perf_counter()
    state = ws.embed("demo")
    seconds = time.perf_counter() - t0
    summary = ws.summary()
    scales = ws.store.presence_scales()
    raw = pd.concat(raw_parts, ignore_index=True)
    quality = planted_checks(ws, raw[raw["feature_id"] >= 0], docs)
    ws.close()
    raw[raw["feature_id"] >= 0].drop(columns="n_tokens").to_parquet(folder / "raw_rows.parquet")
    raw[raw["feature_id"] < 0][["doc_id", "n_tokens"]].to_parquet(folder / "raw_docs.parquet")
    docs.to_parquet(folder / "docs.parquet")
    np.save(folder / "scales.npy", scales.scale)
    size = path.stat().st_size
    sizes = table_sizes(path)
    per_doc = sum(v for t, v in sizes.items() if t in PER_DOCUMENT_TABLES)
    fixed = sum(v for t, v in sizes.items() if t not in PER_DOCUMENT_TABLES)
    presence = summary["presence"]
    print(f"real: {n_docs} demo documents, {state.tokens_done:,} tokens embedded + finalized in {seconds:.0f} s")
    print(f"  presence: threshold {presence['threshold']}, {presence['features_per_doc']} present features per "
          f"document of {presence['raw_features_per_doc']} raw (every positive activation)")
    print(f"  file {size / 1e6:.2f} MB = {size / n_docs:,.0f} bytes per document (file size / documents)")
    for t, v in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if v:
            kind = "per document" if t in PER_DOCUMENT_TABLES else "per feature (fixed)"
            print(f"    {t:20s} {v / 1e6:7.2f} MB  {v / n_docs:8,.0f} B/doc  {kind}")
    print(f"  per-document tables {per_doc / n_docs:,.0f} B/doc; per-feature tables {fixed / 1e6:.2f} MB fixed")
    print("  planted checks (the demo's labels), raw (every positive activation) -> stored (presence threshold):")
    for name, (before, after) in quality.items():
        print(f"    {name:58s} {before:8.3f} -> {after:8.3f}")
    return {"fixed": fixed, "per_doc_tables": per_doc / n_docs, "size": size, "n_docs": n_docs,
            "features_per_doc": presence["features_per_doc"], "raw_features_per_doc": presence["raw_features_per_doc"]}


TEXT_QUERIES = (
    ("plot", "The story follows a young woman who travels to the city to find her missing father."),
    ("plot", "When a group of friends discover a secret, they must fight to survive."),
    ("fresh", "A delightful, moving film with wonderful performances. One of the best movies of the year."),
    ("rotten", "A boring, clumsy mess. The script is dull and the jokes fall flat."),
)


def planted_checks(ws, raw: pd.DataFrame, docs: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """The demo's labels as planted truth, before (raw rows) and after (stored rows) the presence threshold:
    the diff of plot summaries vs reviews, and retrieval by text query and by example (P@50)."""
    import scipy.sparse as sp

    from backend.analysis.diff import diff_features
    from backend.analysis.retrieve import retrieve_by_vector

    labels = docs["label"].to_numpy()
    n, d = len(docs), ws.d_sae
    lengths = ws.doc_lengths("demo")
    X_raw = sp.csr_matrix((raw["max_act"], (raw["doc_id"], raw["feature_id"])), shape=(n, d))
    X = ws.latents("demo")
    out: dict[str, tuple[float, float]] = {}
    for a, b in (("plot", None), ("fresh", "rotten")):
        side_a = labels == a
        side_b = ~side_a if b is None else labels == b
        name = f"{a} vs {b or 'reviews'}"
        tables = [diff_features(M[side_a], M[side_b], lengths_a=lengths[side_a], lengths_b=lengths[side_b])
                  for M in (X_raw, X)]
        if b is None:
            top = [list(t["feature_id"][:20]) for t in tables]
            out[f"diff {name}: share of the top 20 in the raw top 20"] = (1.0, len(set(top[1]) & set(top[0])) / 20)
            out[f"diff {name}: share of the top 20 in the raw top 100"] = (
                1.0, len(set(top[1]) & set(tables[0]["feature_id"][:100])) / 20)
            out[f"diff {name}: mean |length-adjusted difference| top 20"] = tuple(
                float(t.loc[~t["length_confounded"], "adj_diff"].abs().sort_values().iloc[-20:].mean()) for t in tables)
        out[f"diff {name}: features with q < 0.05"] = tuple(float((t["q_value"] < 0.05).sum()) for t in tables)
        out[f"diff {name}: mean |z| of the top 20"] = tuple(
            float(t["z"].abs().sort_values().iloc[-20:].mean()) for t in tables)
    for label, text in TEXT_QUERIES:
        query = ws.embed_text(text)
        p50 = [float((labels[retrieve_by_vector(M, query, top=50)["row"]] == label).mean()) for M in (X_raw, X)]
        out[f"text query P@50 ({label}: {text[:28]}…)"] = (p50[0], p50[1])
    rng = np.random.default_rng(0)
    examples = rng.choice(n, min(200, n), replace=False)
    p50 = []
    for M in (X_raw, X):
        hits = []
        for q in examples:
            row = M[q]
            r = retrieve_by_vector(M, dict(zip(row.indices.tolist(), row.data.tolist())), top=51)
            r = r[r["row"] != q].head(50)
            hits.append(float((labels[r["row"]] == labels[q]).mean()) if len(r) else 0.0)
        p50.append(float(np.mean(hits)))
    out["query by example P@50 (same label), 200 documents"] = (p50[0], p50[1])
    return out


def scale_run(folder: Path, n_docs: int, threads: int) -> None:
    """(In its own process.) Bootstrap n_docs documents from the real run and write them through the store."""
    from backend.activations import SparseRows
    from backend.feature_precompute import build_feature_tables
    from backend.store import Store, presence

    raw = pd.read_parquet(folder / "raw_rows.parquet").sort_values(["doc_id", "feature_id"], ignore_index=True)
    lengths = pd.read_parquet(folder / "raw_docs.parquet").set_index("doc_id")["n_tokens"]
    docs = pd.read_parquet(folder / "docs.parquet")
    scales = np.load(folder / "scales.npy")
    n_real = len(docs)
    starts = np.searchsorted(raw["doc_id"].to_numpy(), np.arange(n_real + 1))
    cols = {c: raw[c].to_numpy() for c in ("feature_id", "max_act", "argmax_pos", "n_active", "sum_act")}
    rng = np.random.default_rng(0)
    pick = rng.integers(0, n_real, n_docs)  # which real document each synthetic one copies
    path = folder / "scale.duckdb"
    store = Store(path)
    store.set_threads(threads)
    store.set_meta(model="synthetic", hook="blocks.15.hook_resid_post", d_sae=len(scales),
                   presence_threshold=presence.DEFAULT_PRESENCE_THRESHOLD)
    store.set_presence_scales(presence.PresenceScales(scales, np.full(len(scales), 99, np.int32), n_real, 1.0))
    t0 = time.perf_counter()
    chunk = 20_000
    cid = store.add_corpus_chunks("bench", (docs.iloc[pick[s:s + chunk]].reset_index(drop=True)
                                            for s in range(0, n_docs, chunk)), "text")
    half_size = 0
    for s in range(0, n_docs, BATCH):
        ids = np.arange(s, min(s + BATCH, n_docs))
        src = pick[ids]
        counts = starts[src + 1] - starts[src]
        take = np.concatenate([np.arange(starts[d], starts[d + 1]) for d in src])
        rows = SparseRows(np.repeat(np.arange(len(ids)), counts).astype(np.int32), cols["feature_id"][take],
                          cols["max_act"][take], cols["argmax_pos"][take], cols["n_active"][take], cols["sum_act"][take],
                          lengths.to_numpy()[src].astype(np.int32), np.zeros(len(ids), bool))
        store.write_embeddings(cid, ids, rows)
        if s + BATCH >= n_docs // 2 and not half_size:
            store.query_all("CHECKPOINT")
            half_size, half_docs = path.stat().st_size, s + len(ids)
    store.query_all("CHECKPOINT")
    full_size = path.stat().st_size
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_feature_tables(store, cid, len(scales))
    store.set_status(cid, "ready")
    final_s = time.perf_counter() - t0
    n_rows = store.query_one("SELECT count(*) FROM doc_features")[0]
    store.close()
    size = path.stat().st_size
    growth = (full_size - half_size) / (n_docs - half_docs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n_docs": n_docs, "rows_per_doc": n_rows / n_docs, "write_s": embed_s, "finalize_s": final_s,
                      "size": size, "growth_per_doc": growth, "peak_rss": peak}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2000, help="demo documents embedded by the real model (the demo: 2000)")
    ap.add_argument("--synthetic", type=int, default=100_000, help="documents of the scale run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--scale-only", help=argparse.SUPPRESS)  # the child process of part 2
    args = ap.parse_args()
    if args.scale_only:
        scale_run(Path(args.scale_only), args.synthetic, args.threads)
        return
    folder = Path(tempfile.mkdtemp(prefix="saedash_storage_"))
    try:
        real = real_run(args.docs, folder, args.threads)
        proc = subprocess.run([sys.executable, __file__, "--scale-only", str(folder), "--synthetic", str(args.synthetic),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=os.environ)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        scale = json.loads(proc.stdout.strip().splitlines()[-1])
        n = scale["n_docs"]
        print(f"scale: {n:,} documents bootstrapped from the real ones through Store.write_embeddings "
              f"({scale['rows_per_doc']:.0f} present features per document) in {scale['write_s']:.0f} s, "
              f"build_feature_tables {scale['finalize_s']:.0f} s")
        print(f"  file {scale['size'] / 1e6:.1f} MB = {scale['size'] / n:,.0f} bytes per document; "
              f"growth {scale['growth_per_doc']:,.0f} bytes per added document")
        print(f"  peak RSS writing and finalizing {n:,} documents: {scale['peak_rss'] / 2**30:.2f} GB (target <= 4 GB)")
        projected = real["fixed"] + 1_000_000 * scale["growth_per_doc"]
        print(f"projection to 1M documents: {projected / 1e9:.2f} GB "
              f"({real['fixed'] / 1e6:.1f} MB per-feature tables + 1M x {scale['growth_per_doc']:,.0f} B)")
        print(f"bytes_per_doc {scale['growth_per_doc']:.0f}")
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
