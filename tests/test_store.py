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
