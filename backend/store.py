"""The DuckDB workspace file: schema, corpus and document storage, sparse SAE embeddings.

This is the one module that writes SQL for the core tables; every query is parameterized."""
from __future__ import annotations

from backend.errors import UserError

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp

Pooling = Literal["max", "binary", "count", "sum", "mean"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS workspace_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE SEQUENCE IF NOT EXISTS corpus_ids START 1;
CREATE TABLE IF NOT EXISTS corpora (
    corpus_id INTEGER PRIMARY KEY, name VARCHAR UNIQUE NOT NULL, source VARCHAR, text_column VARCHAR,
    meta_columns VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp, n_docs INTEGER,
    status VARCHAR DEFAULT 'pending', error VARCHAR
);
CREATE TABLE IF NOT EXISTS documents (
    corpus_id INTEGER NOT NULL, doc_id INTEGER NOT NULL, text VARCHAR NOT NULL, meta VARCHAR
);
CREATE TABLE IF NOT EXISTS doc_meta (corpus_id INTEGER, doc_id INTEGER, key VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS doc_status (corpus_id INTEGER, doc_id INTEGER, n_tokens INTEGER, truncated BOOLEAN);
CREATE TABLE IF NOT EXISTS doc_features (
    corpus_id INTEGER, doc_id INTEGER, feature_id INTEGER, max_act FLOAT, argmax_pos INTEGER,
    n_active INTEGER, sum_act FLOAT
);
"""


class StoreError(UserError):
    """A request the workspace refuses, with a message for the user."""


@dataclass(frozen=True)
class CorpusInfo:
    corpus_id: int
    name: str
    source: str | None
    text_column: str | None
    meta_columns: list[str]
    n_docs: int
    n_embedded: int
    n_tokens: int
    status: str


class Store:
    """One DuckDB file for one (model, hook, SAE), holding many corpora.

    Thread-safe: each thread gets its own cursor on the shared connection."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path), read_only=read_only)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        if not read_only:
            self._con.execute(SCHEMA)

    # -- connection plumbing -------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
        return cur

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing writes (a killed job leaves no partial batch)."""
        with self._write_lock:
            con = self.con
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def close(self) -> None:
        self._con.close()

    def query_df(self, sql: str, params: list | tuple | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def query_one(self, sql: str, params: list | tuple | None = None) -> tuple | None:
        """First row or None (fetches fully: DuckDB refuses new work on a half-read result)."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0] if rows else None

    # -- workspace meta ------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.transaction() as con:
            for k, v in values.items():
                con.execute(
                    "INSERT OR REPLACE INTO workspace_meta VALUES (?, ?)", [k, json.dumps(v, default=str)]
                )

    def meta(self) -> dict[str, Any]:
        rows = self.con.execute("SELECT key, value FROM workspace_meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    # -- corpora -------------------------------------------------------------
    def add_corpus(self, name: str, df: pd.DataFrame, text_column: str, source: str | None = None) -> int:
        """Store documents (text + metadata); embedding happens later, resumably."""
        name = name.strip()
        if not name:
            raise StoreError("A corpus needs a name.")
        if self.corpus_exists(name):
            raise StoreError(f"A corpus named {name!r} already exists; choose another name or delete it first.")
        if text_column not in df.columns:
            raise StoreError(f"No column {text_column!r}; columns are: {', '.join(map(str, df.columns))}.")
        if len(df) == 0:
            raise StoreError("The corpus has no documents.")
        texts = df[text_column]
        if texts.isna().any():
            raise StoreError(f"Column {text_column!r} has {int(texts.isna().sum())} empty value(s) (first at row {int(np.flatnonzero(texts.isna())[0]) + 1}).")
        meta_cols = [c for c in df.columns if c != text_column]
        meta_df = df[meta_cols]
        docs = pd.DataFrame(
            {
                "doc_id": np.arange(len(df), dtype=np.int32),
                "text": texts.astype(str).to_numpy(),
                "meta": meta_df.apply(lambda r: json.dumps(r.to_dict(), default=str), axis=1).to_numpy()
                if meta_cols
                else None,
            }
        )
        long_meta = (
            meta_df.astype(str).where(meta_df.notna(), None).assign(doc_id=docs["doc_id"]).melt(id_vars="doc_id", var_name="key", value_name="value")
            if meta_cols
            else pd.DataFrame({"doc_id": [], "key": [], "value": []})
        )
        with self.transaction() as con:
            cid = int(con.execute("SELECT nextval('corpus_ids')").fetchall()[0][0])
            con.execute(
                "INSERT INTO corpora (corpus_id, name, source, text_column, meta_columns, n_docs, status) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                [cid, name, source, text_column, json.dumps([str(c) for c in meta_cols]), len(df)],
            )
            con.register("_docs", docs)
            con.execute("INSERT INTO documents SELECT ?, doc_id, text, meta FROM _docs", [cid])
            con.unregister("_docs")
            if meta_cols:
                con.register("_meta", long_meta)
                con.execute("INSERT INTO doc_meta SELECT ?, doc_id, key, value FROM _meta", [cid])
                con.unregister("_meta")
        return cid

    def corpus_exists(self, name: str) -> bool:
        return self.con.execute("SELECT count(*) FROM corpora WHERE name = ?", [name]).fetchall()[0][0] > 0

    def corpus_id(self, corpus: str | int) -> int:
        if isinstance(corpus, (int, np.integer)):
            row = self.con.execute("SELECT corpus_id FROM corpora WHERE corpus_id = ?", [int(corpus)]).fetchall()
        else:
            row = self.con.execute("SELECT corpus_id FROM corpora WHERE name = ?", [corpus]).fetchall()
        if not row:
            raise StoreError(f"No corpus {corpus!r} in this workspace.")
        return int(row[0][0])

    def corpora(self) -> list[CorpusInfo]:
        rows = self.con.execute(
            """SELECT c.corpus_id, c.name, c.source, c.text_column, c.meta_columns, c.n_docs,
                      coalesce(s.n, 0), coalesce(s.t, 0), c.status
               FROM corpora c LEFT JOIN (SELECT corpus_id, count(*) n, sum(n_tokens) t FROM doc_status GROUP BY 1) s
               USING (corpus_id) ORDER BY c.corpus_id"""
        ).fetchall()
        return [
            CorpusInfo(r[0], r[1], r[2], r[3], json.loads(r[4] or "[]"), int(r[5]), int(r[6]), int(r[7]), r[8])
            for r in rows
        ]

    def corpus(self, corpus: str | int) -> CorpusInfo:
        cid = self.corpus_id(corpus)
        return next(c for c in self.corpora() if c.corpus_id == cid)

    def set_status(self, corpus: str | int, status: str, error: str | None = None) -> None:
        with self.transaction() as con:
            con.execute("UPDATE corpora SET status = ?, error = ? WHERE corpus_id = ?", [status, error, self.corpus_id(corpus)])

    def rename_corpus(self, corpus: str | int, new_name: str) -> None:
        new_name = new_name.strip()
        if not new_name:
            raise StoreError("A corpus needs a name.")
        if self.corpus_exists(new_name):
            raise StoreError(f"A corpus named {new_name!r} already exists.")
        cid = self.corpus_id(corpus)
        with self.transaction() as con:
            con.execute("UPDATE corpora SET name = ? WHERE corpus_id = ?", [new_name, cid])

    def delete_corpus(self, corpus: str | int) -> None:
        cid = self.corpus_id(corpus)
        with self.transaction() as con:
            for table in self.corpus_tables():
                con.execute(f"DELETE FROM {table} WHERE corpus_id = ?", [cid])
            con.execute("DELETE FROM corpora WHERE corpus_id = ?", [cid])

    def corpus_tables(self) -> list[str]:
        """Every table with a corpus_id column other than `corpora` (extensions add their own)."""
        rows = self.con.execute(
            "SELECT DISTINCT table_name FROM information_schema.columns WHERE column_name = 'corpus_id' AND table_name <> 'corpora'"
        ).fetchall()
        return [r[0] for r in rows]

    # -- documents -----------------------------------------------------------
    def pending_doc_ids(self, corpus: str | int) -> np.ndarray:
        cid = self.corpus_id(corpus)
        rows = self.con.execute(
            """SELECT d.doc_id FROM documents d ANTI JOIN doc_status s ON d.corpus_id = s.corpus_id AND d.doc_id = s.doc_id
               WHERE d.corpus_id = ? ORDER BY d.doc_id""",
            [cid],
        ).fetchnumpy()
        return rows["doc_id"].astype(np.int64)

    def texts(self, corpus: str | int, doc_ids: np.ndarray | list[int]) -> list[str]:
        """Texts in the order of doc_ids."""
        cid = self.corpus_id(corpus)
        ids = pd.DataFrame({"doc_id": np.asarray(doc_ids, dtype=np.int64), "ord": np.arange(len(doc_ids))})
        con = self.con
        con.register("_ids", ids)
        try:
            out = con.execute(
                "SELECT d.text FROM _ids i JOIN documents d ON d.doc_id = i.doc_id AND d.corpus_id = ? ORDER BY i.ord", [cid]
            ).fetchall()
        finally:
            con.unregister("_ids")
        return [r[0] for r in out]

    def documents(self, corpus: str | int, doc_ids: list[int] | np.ndarray | None = None, limit: int | None = None) -> pd.DataFrame:
        """doc_id, text, n_tokens and metadata columns (in doc_ids order when given)."""
        info = self.corpus(corpus)
        sql = """SELECT d.doc_id, d.text, d.meta, s.n_tokens FROM documents d
                 LEFT JOIN doc_status s ON s.corpus_id = d.corpus_id AND s.doc_id = d.doc_id WHERE d.corpus_id = ?"""
        params: list[Any] = [info.corpus_id]
        if doc_ids is not None:
            sql += " AND d.doc_id IN (SELECT unnest(?::INTEGER[]))"
            params.append([int(i) for i in doc_ids])
        sql += " ORDER BY d.doc_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        df = self.con.execute(sql, params).df()
        meta = pd.DataFrame([json.loads(m) if m else {} for m in df.pop("meta")], index=df.index)
        for c in info.meta_columns:
            df[c] = meta[c] if c in meta else None
        if doc_ids is not None:
            df = df.set_index("doc_id").loc[[int(i) for i in doc_ids if int(i) in set(df["doc_id"])]].reset_index()
        return df

    def metadata(self, corpus: str | int, column: str) -> pd.Series:
        """One metadata column as strings, indexed by doc_id (missing values are NaN)."""
        info = self.corpus(corpus)
        if column not in info.meta_columns:
            raise StoreError(f"Corpus {info.name!r} has no metadata column {column!r}; it has {info.meta_columns}.")
        df = self.con.execute(
            "SELECT doc_id, value FROM doc_meta WHERE corpus_id = ? AND key = ? ORDER BY doc_id", [info.corpus_id, column]
        ).df()
        s = pd.Series(index=np.arange(info.n_docs), dtype=object)
        s.loc[df["doc_id"].to_numpy()] = df["value"].to_numpy()
        return s

    def doc_lengths(self, corpus: str | int) -> np.ndarray:
        """Counted tokens per doc_id (0 where not embedded yet)."""
        info = self.corpus(corpus)
        r = self.con.execute("SELECT doc_id, n_tokens FROM doc_status WHERE corpus_id = ?", [info.corpus_id]).fetchnumpy()
        out = np.zeros(info.n_docs, np.int64)
        out[r["doc_id"].astype(np.int64)] = r["n_tokens"]
        return out

    # -- embeddings ----------------------------------------------------------
    def write_embeddings(self, corpus_id: int, doc_ids: np.ndarray, rows: Any) -> None:
        """Write one batch's sparse rows and mark its documents done, in one transaction.

        `rows` is an activations.SparseRows whose `doc` indexes `doc_ids`."""
        doc_ids = np.asarray(doc_ids, dtype=np.int32)
        feats = pd.DataFrame(
            {
                "doc_id": doc_ids[rows.doc],
                "feature_id": rows.feature,
                "max_act": rows.max_act,
                "argmax_pos": rows.argmax_pos,
                "n_active": rows.n_active,
                "sum_act": rows.sum_act,
            }
        )
        status = pd.DataFrame({"doc_id": doc_ids, "n_tokens": rows.n_tokens, "truncated": rows.truncated})
        with self.transaction() as con:
            con.register("_f", feats)
            con.register("_s", status)
            con.execute(
                "INSERT INTO doc_features SELECT ?, doc_id, feature_id, max_act, argmax_pos, n_active, sum_act FROM _f",
                [corpus_id],
            )
            con.execute("INSERT INTO doc_status SELECT ?, doc_id, n_tokens, truncated FROM _s", [corpus_id])
            con.unregister("_f")
            con.unregister("_s")

    def latents(
        self, corpus: str | int, pooling: Pooling = "max", d_sae: int | None = None, threshold: float = 0.0
    ) -> sp.csr_matrix:
        """Documents x features as a scipy CSR matrix (rows = doc_id), never dense.

        max: max activation; binary: 1 where max > threshold; count: tokens where it fired;
        sum: summed activation; mean: sum / counted tokens of the document."""
        info = self.corpus(corpus)
        d = int(d_sae if d_sae is not None else self.meta().get("d_sae", 0))
        r = self.con.execute(
            "SELECT doc_id, feature_id, max_act, n_active, sum_act FROM doc_features WHERE corpus_id = ? AND max_act > ?",
            [info.corpus_id, float(threshold)],
        ).fetchnumpy()
        rows, cols = r["doc_id"].astype(np.int64), r["feature_id"].astype(np.int64)
        if pooling == "max":
            vals = r["max_act"].astype(np.float32)
        elif pooling == "binary":
            vals = np.ones(len(rows), np.float32)
        elif pooling == "count":
            vals = r["n_active"].astype(np.float32)
        elif pooling == "sum":
            vals = r["sum_act"].astype(np.float32)
        elif pooling == "mean":
            lengths = np.maximum(self.doc_lengths(info.corpus_id), 1)
            vals = (r["sum_act"] / lengths[rows]).astype(np.float32)
        else:
            raise StoreError(f"Unknown pooling {pooling!r}; use max, binary, count, sum or mean.")
        if d == 0:
            d = int(cols.max()) + 1 if len(cols) else 0
        return sp.csr_matrix((vals, (rows, cols)), shape=(info.n_docs, d))

    def top_documents(self, corpus: str | int, feature_id: int, n: int = 10) -> pd.DataFrame:
        """Documents where the feature fires most: doc_id, max_act, argmax_pos, n_active, text."""
        cid = self.corpus_id(corpus)
        return self.con.execute(
            """SELECT f.doc_id, f.max_act, f.argmax_pos, f.n_active, d.text FROM
                 (SELECT doc_id, max_act, argmax_pos, n_active FROM doc_features WHERE corpus_id = ? AND feature_id = ?
                  ORDER BY max_act DESC LIMIT ?) f
               JOIN documents d ON d.corpus_id = ? AND d.doc_id = f.doc_id ORDER BY f.max_act DESC""",
            [cid, int(feature_id), int(n), cid],
        ).df()

    def doc_features(self, corpus: str | int, doc_id: int) -> pd.DataFrame:
        """Active features of one document, strongest first."""
        cid = self.corpus_id(corpus)
        return self.con.execute(
            "SELECT feature_id, max_act, argmax_pos, n_active, sum_act FROM doc_features WHERE corpus_id = ? AND doc_id = ? ORDER BY max_act DESC",
            [cid, int(doc_id)],
        ).df()
