"""The store package owns the workspace file: schema versions, upgrades, the replace helper, locks."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pandas as pd
import pytest

from backend.store import SCHEMA_VERSION, Store, StoreError, WorkspaceLocked
from backend.store import schema

# The core tables exactly as version 1 wrote them (no schema stamp, no data_version, no feature tables).
V1_SCHEMA = """
CREATE TABLE workspace_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE SEQUENCE corpus_ids START 1;
CREATE TABLE corpora (
    corpus_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, source VARCHAR, text_column VARCHAR,
    meta_columns VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp, n_docs INTEGER,
    status VARCHAR DEFAULT 'pending', error VARCHAR
);
CREATE TABLE documents (corpus_id INTEGER NOT NULL, doc_id INTEGER NOT NULL, text VARCHAR NOT NULL, meta VARCHAR);
CREATE TABLE doc_meta (corpus_id INTEGER, doc_id INTEGER, key VARCHAR, value VARCHAR);
CREATE TABLE doc_status (corpus_id INTEGER, doc_id INTEGER, n_tokens INTEGER, truncated BOOLEAN);
CREATE TABLE doc_features (corpus_id INTEGER, doc_id INTEGER, feature_id INTEGER, max_act FLOAT, argmax_pos INTEGER,
    n_active INTEGER, sum_act FLOAT);
"""


def make_v1(path) -> None:
    con = duckdb.connect(str(path))
    con.execute(V1_SCHEMA)
    con.execute("INSERT INTO workspace_meta VALUES ('model', ?), ('hook', ?), ('d_sae', '8')",
                [json.dumps("m"), json.dumps("blocks.0.hook_resid_post")])
    con.execute("INSERT INTO corpora (corpus_id, name, n_docs, status) VALUES (1, 'old', 1, 'ready')")
    con.execute("INSERT INTO documents VALUES (1, 0, 'kept text', NULL)")
    con.close()


def test_old_workspace_is_upgraded_in_place(tmp_path):
    path = tmp_path / "v1.duckdb"
    make_v1(path)
    store = Store(path)
    assert store.meta()["schema_version"] == SCHEMA_VERSION
    info = store.corpus("old")
    assert info.data_version == 0 and store.texts(info.corpus_id, [0]) == ["kept text"]
    tables = {r[0] for r in store.query_all("SELECT table_name FROM information_schema.tables")}
    assert set(schema.TABLES) <= tables  # every table exists up front now
    store.close()


def test_newer_workspace_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "future.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE workspace_meta SET value = ? WHERE key = 'schema_version'", [json.dumps(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(StoreError, match="newer version"):
        Store(path)


def test_not_a_duckdb_file_is_a_user_error(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("just some text, not a database")
    with pytest.raises(StoreError):
        Store(path)


def test_replace_rows_replaces_only_matching_rows_and_bumps_the_version(tmp_path):
    store = Store(tmp_path / "w.duckdb")
    cid = store.add_corpus("c", pd.DataFrame({"text": ["a", "b"]}), "text")
    rows = pd.DataFrame({"feature_id": [1, 2], "label": ["x", "y"], "score": [0.5, 0.6]})
    store.replace_rows("feature_labels", rows, where={"corpus_id": cid, "source": "auto"},
                       fixed={"corpus_id": cid, "source": "auto"})
    store.replace_rows("feature_labels", rows.head(1).assign(label="hand"), where={"source": "hand", "corpus_id": None},
                       fixed={"source": "hand", "corpus_id": None})
    v0 = store.corpus(cid).data_version
    store.replace_rows("feature_labels", rows.tail(1).assign(label="z"), where={"corpus_id": cid, "source": "auto"},
                       fixed={"corpus_id": cid, "source": "auto"})
    got = store.query_df("SELECT feature_id, label, source FROM feature_labels ORDER BY source, feature_id")
    assert got.values.tolist() == [[2, "z", "auto"], [1, "hand", "hand"]]
    assert store.corpus(cid).data_version == v0 + 1
    with pytest.raises(StoreError):
        store.replace_rows("feature_labels", rows.assign(bogus=1), where={"corpus_id": cid})
    assert len(store.query_df("SELECT * FROM feature_labels")) == 2  # the failed call changed nothing
    store.close()


HOLD = textwrap.dedent("""
    import sys, time
    from backend.store import Store
    s = Store(sys.argv[1]); print("open", flush=True); time.sleep(30)
""")


def test_a_workspace_held_by_another_process_is_refused_by_name(tmp_path):
    path = tmp_path / "held.duckdb"
    Store(path).close()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(WorkspaceLocked, match="open in process"):
            Store(path)
    finally:
        proc.kill()
        proc.wait()


def test_an_idle_store_releases_the_file_and_reopens_on_use(tmp_path):
    path = tmp_path / "idle.duckdb"
    store = Store(path, idle_release_s=0.05)
    cid = store.add_corpus("c", pd.DataFrame({"text": ["a"]}), "text")
    import time

    time.sleep(0.1)
    assert store.release_if_idle() or store._con is None  # released (by the call or the background thread)
    other = Store(path)  # another process/connection can now open it for writing
    other.close()
    assert store.texts(cid, np.array([0])) == ["a"]  # and the first store reopens transparently
    store.close()


# The tables version 2 wrote that version 3 changed (the others were created as they still are).
V2_SCHEMA = """
CREATE TABLE workspace_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE SEQUENCE corpus_ids START 2;
CREATE TABLE corpora (
    corpus_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, source VARCHAR, text_column VARCHAR,
    meta_columns VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp, n_docs INTEGER,
    status VARCHAR DEFAULT 'pending', error VARCHAR, data_version INTEGER DEFAULT 0
);
CREATE TABLE documents (corpus_id INTEGER NOT NULL, doc_id INTEGER NOT NULL, text VARCHAR NOT NULL, meta VARCHAR);
CREATE TABLE doc_meta (corpus_id INTEGER, doc_id INTEGER, key VARCHAR, value VARCHAR);
CREATE TABLE doc_status (corpus_id INTEGER, doc_id INTEGER, n_tokens INTEGER, truncated BOOLEAN);
CREATE TABLE doc_features (corpus_id INTEGER, doc_id INTEGER, feature_id INTEGER, max_act FLOAT, argmax_pos INTEGER,
    n_active INTEGER, sum_act FLOAT);
CREATE TABLE feature_docs (corpus_id INTEGER, feature_id INTEGER, rank INTEGER, doc_id INTEGER, max_act FLOAT,
    argmax_pos INTEGER, n_active INTEGER);
CREATE TABLE feature_stats (corpus_id INTEGER, feature_id INTEGER, n_docs INTEGER, n_docs_active INTEGER, density DOUBLE,
    max_act FLOAT, mean_act FLOAT, p25_act FLOAT, p50_act FLOAT, p75_act FLOAT, p99_act FLOAT, mean_tokens_active FLOAT);
CREATE TABLE feature_hist (corpus_id INTEGER, feature_id INTEGER, bin INTEGER, lo FLOAT, hi FLOAT, count INTEGER);
"""


def make_v2(path) -> None:
    """A version-2 file: one embedded corpus of two documents, every positive activation stored exactly."""
    con = duckdb.connect(str(path))
    con.execute(V2_SCHEMA)
    con.execute("INSERT INTO workspace_meta VALUES ('model', ?), ('hook', ?), ('d_sae', '8'), ('schema_version', '2')",
                [json.dumps("m"), json.dumps("blocks.0.hook_resid_post")])
    con.execute("INSERT INTO corpora (corpus_id, name, n_docs, status) VALUES (1, 'old', 2, 'ready')")
    con.execute("INSERT INTO documents VALUES (1, 0, 'first', NULL), (1, 1, 'second', NULL)")
    con.execute("INSERT INTO doc_status VALUES (1, 0, 3, false), (1, 1, 4, false)")
    con.execute("INSERT INTO doc_features VALUES (1, 0, 2, 0.5, 1, 2, 0.75), (1, 1, 2, 0.01, 2, 1, 0.01), "
                "(1, 1, 5, 2.0, 3, 3, 4.5)")
    con.close()


def test_v2_workspace_is_upgraded_to_v3_and_stays_raw(tmp_path):
    from backend.activations import SparseRows
    from backend.feature_precompute import build_feature_tables
    from backend.feature_queries import _q_histogram

    path = tmp_path / "v2.duckdb"
    make_v2(path)
    store = Store(path)
    assert store.meta()["schema_version"] == SCHEMA_VERSION
    cols = {(t, c) for t, c in store.query_all("SELECT table_name, column_name FROM information_schema.columns")}
    assert {("doc_features", "sum_code"), ("doc_status", "n_raw_features"), ("presence_scales", "scale"),
            ("ingested_shards", "shard")} <= cols
    # a version-2 file stored every positive activation: it stays raw, its rows and sums exactly as they were
    assert store.presence_threshold == 0.0 and not store.needs_presence_calibration()
    assert np.array_equal(store.latents("old", "sum", d_sae=8).toarray()[:, [2, 5]],
                          np.array([[0.75, 0.0], [0.01, 4.5]], np.float32))
    assert store.latents("old", "max", d_sae=8).nnz == 3  # the weak 0.01 row is kept
    # new writes go through the new path (raw: exact sums, raw counts recorded) and v2's feature_hist still works
    cid = store.add_corpus("new", pd.DataFrame({"text": ["x", "y"]}), "text")
    rows = SparseRows(np.array([0, 1], np.int32), np.array([3, 3], np.int32), np.array([1.0, 0.002], np.float32),
                      np.array([1, 1], np.int32), np.array([1, 2], np.int32), np.array([1.0, 0.003], np.float32),
                      np.array([2, 2], np.int32), np.zeros(2, bool))
    store.write_embeddings(cid, np.array([0, 1]), rows)
    assert store.latents(cid, "sum", d_sae=8).toarray()[:, 3] == pytest.approx([1.0, 0.003])
    build_feature_tables(store, 1, 8)
    hist = _q_histogram(store, 1, 2)
    assert hist["count"].sum() == 2 and hist["hi"].max() == pytest.approx(0.5)
    assert store.presence_summary()["mode"].startswith("raw")
    store.close()


def test_v3_workspace_gains_the_feature_search_index_table(tmp_path):
    """Version 4 adds `feature_search_index` (what a chunked feature-search build covers); a version-3 file
    gains it when opened and keeps the feature vectors it had."""
    path = tmp_path / "v3.duckdb"
    store = Store(path)
    cid = store.add_corpus("old", pd.DataFrame({"text": ["a", "b"]}), "text")
    store.execute("INSERT INTO feature_embeddings VALUES (?, 3, 'label', 'kept', ?)", [cid, [0.5] * schema.DOC_VECTOR_DIM])
    store.close()
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE feature_search_index")
    con.execute("UPDATE workspace_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    store = Store(path)
    assert SCHEMA_VERSION == 4 and store.meta()["schema_version"] == 4
    cols = [c for t, c in store.query_all("SELECT table_name, column_name FROM information_schema.columns "
                                          "ORDER BY ordinal_position") if t == "feature_search_index"]
    assert cols == schema.table_columns("feature_search_index") == [
        "corpus_id", "n_features", "source", "started_at", "finished_at"]
    assert store.query_all("SELECT feature_id, text FROM feature_embeddings") == [(3, "kept")]
    store.execute("INSERT INTO feature_search_index (corpus_id, n_features, source) VALUES (?, 5, 'x')", [cid])
    assert store.query_one("SELECT n_features, finished_at FROM feature_search_index")[0:2] == (5, None)
    store.delete_corpus(cid)  # a per-corpus table: deleting the corpus clears its row
    assert store.query_one("SELECT count(*) FROM feature_search_index")[0] == 0
    store.close()
