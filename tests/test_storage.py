"""Compact storage: the presence threshold (planted checks), the coded sums, top-N feature_docs, streamed input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from backend.activations import SparseRows, embed_texts
from backend.analysis.diff import diff_features
from backend.errors import UserError
from backend.store import Store
from backend.store import presence

D = 16


def rows_of(entries: list[tuple[int, int, float, int]], n_docs: int) -> SparseRows:
    """SparseRows from (doc, feature, max_act, n_active); sum = max * (1 + 0.5 * (n_active - 1))."""
    doc, feat, act, n_act = (np.array(c) for c in zip(*entries))
    return SparseRows(doc.astype(np.int32), feat.astype(np.int32), act.astype(np.float32), np.ones(len(doc), np.int32),
                      n_act.astype(np.int32), (act * (1 + 0.5 * (n_act - 1))).astype(np.float32),
                      np.full(n_docs, 5, np.int32), np.zeros(n_docs, bool))


def store_with(tmp_path, name: str, threshold: float, scales: np.ndarray | None = None) -> Store:
    store = Store(tmp_path / f"{name}.duckdb")
    store.set_meta(model="m", hook="blocks.0.hook_resid_post", d_sae=D, presence_threshold=threshold)
    if scales is not None:
        store.set_presence_scales(presence.PresenceScales(scales.astype(np.float32), np.full(D, 9, np.int32), 9, 1.0))
    return store


def test_calibration_takes_each_features_90th_percentile_and_a_median_fallback():
    rng = np.random.default_rng(0)
    entries = [(d, 0, float(v), 1) for d, v in enumerate(rng.uniform(1, 3, 40))]  # feature 0: 40 documents
    entries += [(d, 1, float(v), 1) for d, v in enumerate(rng.uniform(10, 20, 10))]  # feature 1: 10 documents
    entries += [(0, 2, 100.0, 1)]  # feature 2: seen once, too few to trust
    rows = rows_of(entries, 40)
    sc = presence.calibrate(rows, 40, D)
    acts0 = np.array([a for _, f, a, _ in entries if f == 0], np.float32)
    acts1 = np.array([a for _, f, a, _ in entries if f == 1], np.float32)
    assert sc.scale[0] == pytest.approx(np.quantile(acts0, 0.9), rel=1e-6)
    assert sc.scale[1] == pytest.approx(np.quantile(acts1, 0.9), rel=1e-6)
    assert sc.fallback == pytest.approx(np.median([sc.scale[0], sc.scale[1]]), rel=1e-6)
    assert sc.scale[2] == pytest.approx(sc.fallback) and sc.scale[7] == pytest.approx(sc.fallback)
    assert sc.n_calibrated == 2 and sc.n_docs[2] == 1


def test_threshold_drops_weak_rows_relative_to_each_features_scale(tmp_path):
    scales = np.ones(D)
    scales[3] = 10.0  # feature 3 lives on a larger scale: 4.0 is weak for it, not for feature 4
    rows = rows_of([(0, 3, 4.0, 1), (0, 4, 4.0, 1), (1, 3, 9.0, 2), (1, 4, 0.7, 1), (1, 5, 0.9, 3)], 2)
    raw, compact = store_with(tmp_path, "raw", 0.0), store_with(tmp_path, "compact", 0.8, scales)
    for store in (raw, compact):
        cid = store.add_corpus("c", pd.DataFrame({"text": ["a", "b"]}), "text")
        store.write_embeddings(cid, np.array([0, 1]), rows)
    X_raw, X = raw.latents("c", "max", D).toarray(), compact.latents("c", "max", D).toarray()
    assert X_raw[0, 3] == 4.0 and X_raw[1, 4] == pytest.approx(0.7) and (X_raw > 0).sum() == 5
    assert X[0, 3] == 0 and X[0, 4] == 4.0 and X[1, 3] == 9.0 and X[1, 4] == 0 and X[1, 5] == pytest.approx(0.9)
    # max and count stay exact; the sum comes back within its coding bound
    assert compact.latents("c", "count", D).toarray()[1, 3] == 2
    assert compact.latents("c", "sum", D).toarray()[1, 3] == pytest.approx(13.5, abs=9.0 / 510 + 1e-6)
    assert raw.latents("c", "sum", D).toarray()[1, 3] == pytest.approx(13.5)
    summary = compact.presence_summary()
    assert summary["threshold"] == 0.8 and summary["raw_features_per_doc"] == 2.5 and summary["features_per_doc"] == 1.5
    raw.close(), compact.close()


def test_sum_code_error_bound():
    rng = np.random.default_rng(1)
    mx = rng.uniform(0.1, 20, 10_000)
    n = rng.integers(1, 60, 10_000)
    s = mx * (1 + rng.uniform(0, 1, 10_000) * (n - 1))
    got = presence.decode_sum(mx, n, presence.encode_sum(mx, n, s))
    assert (np.abs(got - s) <= mx * (n - 1) / 510 + 1e-9).all()
    assert np.array_equal(got[n == 1], mx[n == 1])


def test_a_diff_finds_a_planted_feature_only_with_the_presence_threshold(tmp_path):
    """Feature 7 fires strongly in half of corpus A; it also fires weakly (one token, noise) in every document
    of both corpora. Counting every positive activation hides the difference; the threshold finds it."""
    rng = np.random.default_rng(2)
    n = 200
    scales = np.ones(D)
    out = {}
    for name, threshold in (("raw", 0.0), ("compact", 0.8)):
        store = store_with(tmp_path, name, threshold, scales if threshold else None)
        for corpus in ("A", "B"):
            cid = store.add_corpus(corpus, pd.DataFrame({"text": ["t"] * n}), "text")
            entries = []
            for d in range(n):
                strong = corpus == "A" and d % 2 == 0
                entries.append((d, 7, float(rng.uniform(1.0, 2.0) if strong else rng.uniform(0.05, 0.3)), 1))
                entries.append((d, 9, float(rng.uniform(0.9, 1.5)), 1))  # same in both corpora
            store.write_embeddings(cid, np.arange(n), rows_of(entries, n))
        table = diff_features(store.latents("A", "max", D), store.latents("B", "max", D)).set_index("feature_id")
        out[name] = table
        store.close()
    assert out["raw"].loc[7, "abs_diff"] == 0  # present everywhere: no difference to see
    assert out["compact"].loc[7, "abs_diff"] == pytest.approx(0.5) and out["compact"].loc[7, "q_value"] < 1e-6
    assert int(out["compact"]["rank"].loc[7]) == 1


def test_workspace_default_is_compact_calibrated_once_and_batch_independent(tmp_path, tiny_reader, tiny_sae, tiny_sae_dir,
                                                                        tiny_docs, one_thread):
    from backend.jobs import JobConfig, embed_corpus
    from backend.workspace import Workspace, WorkspaceSpec

    docs = pd.concat([tiny_docs] * 3, ignore_index=True)
    docs["text"] = [f"{t} {'the ' * (i % 5)}".strip() for i, t in enumerate(docs["text"])]
    stored = []
    for batch in (5, 7):
        spec = WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir))
        assert spec.presence_threshold == presence.DEFAULT_PRESENCE_THRESHOLD
        ws = Workspace.create(tmp_path / f"b{batch}.duckdb", spec, reader=tiny_reader, sae=tiny_sae)
        assert ws.settings.presence_threshold == presence.DEFAULT_PRESENCE_THRESHOLD
        ws.add_corpus("t", docs, "text")
        embed_corpus(ws.store, ws.corpus("t").corpus_id, ws.reader, ws.sae, ws.hook, ws.embed_config,
                     JobConfig(docs_per_batch=batch))
        rows = embed_texts(ws.reader, ws.sae, ws.hook, docs["text"].tolist(), ws.embed_config)
        scales = ws.store.presence_scales()
        assert scales.n_calibration_docs == len(docs)  # calibrated on the corpus's first documents (all 36)
        expect_scales = presence.calibrate(rows, len(docs), ws.d_sae).scale
        assert np.allclose(scales.scale, expect_scales, rtol=1e-5)
        keep = rows.max_act >= presence.DEFAULT_PRESENCE_THRESHOLD * scales.scale[rows.feature]
        X = ws.latents("t").tocoo()
        assert sorted(zip(X.row.tolist(), X.col.tolist())) == sorted(zip(rows.doc[keep].tolist(), rows.feature[keep].tolist()))
        assert 0 < keep.sum() < len(rows)  # it dropped something, and kept something
        summary = ws.summary()["presence"]
        assert summary["threshold"] == presence.DEFAULT_PRESENCE_THRESHOLD and summary["calibration"]["n_docs"] == len(docs)
        assert summary["features_per_doc"] < summary["raw_features_per_doc"]
        stored.append(ws.store.query_df("SELECT doc_id, feature_id, max_act, argmax_pos, n_active FROM doc_features "
                                        "ORDER BY doc_id, feature_id"))
        ws.close()
    pd.testing.assert_frame_equal(stored[0].drop(columns="max_act"), stored[1].drop(columns="max_act"))
    assert np.allclose(stored[0]["max_act"], stored[1]["max_act"], atol=1e-5)


def test_presence_threshold_is_validated_and_recorded(tmp_path, tiny_reader, tiny_sae, tiny_sae_dir):
    from backend.workspace import Workspace, WorkspaceSpec

    for bad in (-0.1, 1.6, float("nan")):
        with pytest.raises(UserError, match="presence threshold"):
            WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=bad)
    ws = Workspace.create(tmp_path / "w.duckdb", WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir),
                                                               presence_threshold=0.5), reader=tiny_reader, sae=tiny_sae)
    ws.close()
    again = Workspace.open(tmp_path / "w.duckdb", reader=tiny_reader, sae=tiny_sae)
    assert again.settings.presence_threshold == 0.5 and again.store.needs_presence_calibration()
    again.close()


def test_deep_ranks_metadata_and_npmi_read_all_documents_not_only_the_top_table(tmp_path):
    """feature_docs keeps TOP_DOCS documents per feature; ranks past it and whole document sets must still be right."""
    from backend import feature_queries as Q
    from backend.feature_precompute import build_feature_tables
    from backend.workspace import Workspace

    n = 3 * Q.TOP_DOCS + 7
    store = store_with(tmp_path, "deep", 0.0)
    labels = np.where(np.arange(n) % 3 == 0, "x", "y")
    cid = store.add_corpus("c", pd.DataFrame({"text": ["t"] * n, "label": labels}), "text")
    acts = np.random.default_rng(3).permutation(np.linspace(1.0, 5.0, n))
    entries = [(d, 1, float(acts[d]), 1) for d in range(n)] + [(d, 2, 1.0, 1) for d in range(0, n, 3)]
    store.write_embeddings(cid, np.arange(n), rows_of(entries, n))
    build_feature_tables(store, cid, D)
    assert store.query_one("SELECT count(*) FROM feature_docs WHERE feature_id = 1")[0] == Q.TOP_DOCS
    order = np.argsort(-acts, kind="stable")
    got = Q.ranked_documents(store, cid, 1, range(n))
    assert got["rank"].tolist() == list(range(n)) and got["doc_id"].tolist() == order.tolist()
    assert np.allclose(got["max_act"], acts[order])
    ws = Workspace(store)
    q = Q.quantile_samples(ws, ws.corpus(cid), 1, per_bucket=3)
    assert q["max_act"].is_monotonic_decreasing and (q["rank"] >= Q.TOP_DOCS).any()
    bd = Q.metadata_breakdown(ws, ws.corpus(cid), 1, "label").set_index("value")
    assert bd.loc["x", "n_active"] == (labels == "x").sum() and bd.loc["y", "n_active"] == (labels == "y").sum()
    corr = Q.correlated_features(ws, ws.corpus(cid), 2, top=3, min_count=1)
    assert corr.set_index("feature_id").loc[1, "n_cooc"] == len(range(0, n, 3))
    store.close()


# -- streamed input ------------------------------------------------------------------------
def write_jsonl(path, n: int, width: int = 400) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": f"document {i} " + "word " * (width // 5), "group": f"g{i % 3}"}) + "\n")


def test_streamed_reader_holds_at_most_one_chunk_and_stores_everything(tmp_path):
    from backend import streaming

    path = tmp_path / "docs.jsonl"
    write_jsonl(path, 1000)
    seen = []
    for chunk in streaming.iter_document_chunks(path, chunk_rows=128):
        seen.append(len(chunk))
    assert max(seen) <= 128 and sum(seen) == 1000
    store = store_with(tmp_path, "s", 0.0)
    cid = streaming.add_corpus_streamed(store, "big", path, chunk_rows=128)
    info = store.corpus(cid)
    assert info.n_docs == 1000 and info.meta_columns == ["group"]
    assert store.texts(cid, [999])[0].startswith("document 999 ") and store.metadata(cid, "group")[998] == "g2"
    pq_path = tmp_path / "docs.parquet"
    pd.read_json(path, lines=True).to_parquet(pq_path, row_group_size=100)
    cid2 = streaming.add_corpus_streamed(store, "big-parquet", pq_path, chunk_rows=100)
    assert store.texts(cid2, [0, 999]) == store.texts(cid, [0, 999])
    store.close()


def test_a_bad_row_late_in_a_stream_stores_nothing(tmp_path):
    from backend import streaming
    from backend.corpora import CorpusError

    path = tmp_path / "bad.jsonl"
    write_jsonl(path, 300)
    with open(path, "a") as fh:
        fh.write("{not json\n")
    store = store_with(tmp_path, "bad", 0.0)
    with pytest.raises(CorpusError, match="row 301"):
        streaming.add_corpus_streamed(store, "bad", path, chunk_rows=64)
    assert store.corpora() == [] and store.query_one("SELECT count(*) FROM documents")[0] == 0
    store.close()


STREAM_RSS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from backend.workspace import Workspace

    def peak_rss() -> int:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024

    def growth_of(step) -> int:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
        base = peak_rss()
        kept = step()
        return peak_rss() - base

    ws = Workspace.open(sys.argv[1])
    ws.store.execute("SET memory_limit = '16MB'")  # DuckDB's cache, part of the budget
    ws.add_corpus("warm-up", sys.argv[3])  # first use: lazy imports and allocator arenas, whatever the size
    grew = growth_of(lambda: ws.add_corpus("big", sys.argv[2]))
    control = growth_of(lambda: Path(sys.argv[2]).read_bytes())  # the measure sees a whole-file read
    print(ws.corpus("big").n_docs, ws.corpus("big").status, grew, control)
""")


@pytest.mark.slow  # 15 s of a suite near its 10-minute budget; `make test-all` runs it
def test_a_file_larger_than_the_memory_allowed_streams_into_the_workspace(tmp_path, tiny_workspace):
    """`ws.add_corpus(name, path)` stores a ~72 MB JSONL file in a process whose peak memory may grow by
    32 MB at most (DuckDB's cache included), measured after a small file warmed the same path up. Control:
    in the same process, reading the file whole grows the measured peak past the budget, so the measure
    would catch an ingest that loads the file."""
    path = tmp_path / "large.jsonl"
    with open(path, "w") as fh:
        for i in range(80_000):
            fh.write(json.dumps({"text": f"document {i} " + "word " * 180, "group": f"g{i % 3}"}) + "\n")
    small = tmp_path / "small.jsonl"
    small.write_text("".join(path.open().readlines()[:500]))
    size = path.stat().st_size
    budget = 32 * 2**20
    assert size > budget * 2
    ws_path = tiny_workspace.path
    tiny_workspace.close()
    proc = subprocess.run([sys.executable, "-c", STREAM_RSS, str(ws_path), str(path), str(small)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, status, grew, control = proc.stdout.split()
    print(f"streamed {size / 2**20:.0f} MB: peak grew {int(grew) / 2**20:.1f} MB; whole read {int(control) / 2**20:.1f} MB")
    assert int(control) > budget, f"the measure missed a whole-file read ({int(control) / 2**20:.1f} MB)"
    assert int(n) == 80_000 and status == "pending"
    assert int(grew) < budget, f"memory grew by {int(grew) / 2**20:.1f} MB for a {size / 2**20:.0f} MB file"
    from backend.store import Store

    store = Store(ws_path)
    cid = store.corpus_id("big")
    assert store.texts(cid, [0, 79_999]) == ["document 0 " + "word " * 180, "document 79999 " + "word " * 180]
    assert store.metadata(cid, "group")[79_997] == "g2" and store.metadata(cid, "group")[79_998] == "g0"
    store.close()
