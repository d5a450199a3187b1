"""The DuckDB workspace file: the one owner of its connection, its locks and every write.

Nothing outside this package touches the DuckDB connection. Concept modules (features, labels,
search, …) keep their query SQL next to their concept, as datasette keeps facet SQL in `facets.py`,
and run it through `Store.query_df` / `query_one` / `fetch_numpy` / `execute`, or write through
`Store.replace_rows` and `Store.transaction()` (a `Transaction`, not the raw connection).

DuckDB allows one writing process or many readers. A dashboard that keeps a workspace open would lock
the CLI out for good, so a Store can release its connection when idle (`idle_release_s`) and reopen it
on the next call; a file held by another process is refused with a `WorkspaceLocked` that names it. A
command that finds the file held asks for it (backend.store.handoff): the dashboard's Store then lets go
as soon as no call is using it, background jobs included."""
from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.errors import UserError
from backend.store import handoff, presence, schema

Pooling = Literal["max", "binary", "count", "sum", "mean"]
Params = Sequence[Any] | None


class StoreError(UserError):
    """A request the workspace refuses, with a message for the user."""


class WorkspaceLocked(StoreError):
    """Another process holds the workspace file for writing."""


@dataclass(frozen=True)
class Corpus:
    """A typed handle on one corpus (what `Workspace.corpus(name_or_id)` returns).

    `data_version` changes whenever its embeddings, statistics or labels change: caches key on it."""

    corpus_id: int
    name: str
    source: str | None
    text_column: str | None
    meta_columns: list[str]
    n_docs: int
    n_embedded: int
    n_tokens: int
    status: str
    data_version: int = 0
    n_truncated: int = 0
    error: str | None = None

    @property
    def id(self) -> int:
        return self.corpus_id

    @property
    def cache_key(self) -> tuple[int, int, int, str]:
        return (self.corpus_id, self.data_version, self.n_embedded, self.status)


CorpusInfo = Corpus  # the name before the typed front door


def _locked_message(path: Path, exc: Exception) -> str:
    pid = re.search(r"PID (\d+)", str(exc))
    who = f"process {pid.group(1)}" if pid else "another process"
    return (f"The workspace {path.name} is open in {who} (a dashboard or a `python -m backend` command). "
            "DuckDB lets one process write a file at a time. A dashboard hands the file over within seconds of "
            f"a command asking for it (commands wait up to {handoff.HANDOFF_WAIT_S:.0f} s; its background jobs "
            "pause meanwhile); another command keeps it until it finishes: wait for it and try again.")


def _damaged_message(path: Path, exc: Exception) -> str:
    return (f"{path} is not a readable DuckDB workspace file: it is truncated, corrupted or not a workspace "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). The file was left as it is; restore it "
            "from a copy, or move it away and create the workspace again.")


def _lent_message(path: Path) -> str:
    return (f"The workspace {path.name} is lent to a `python -m backend` command; the dashboard takes it back "
            "when the command finishes.")


class Transaction:
    """The writes of one all-or-nothing transaction (what `Store.transaction()` yields)."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cur = cursor

    def execute(self, sql: str, params: Params = None) -> list[tuple]:
        return self._cur.execute(sql, list(params or [])).fetchall()

    def insert_df(self, table: str, rows: pd.DataFrame, fixed: dict[str, Any] | None = None) -> None:
        """Bulk-insert rows (columns by name) into `table`; `fixed` gives constant columns (e.g. corpus_id)."""
        fixed = fixed or {}
        known = schema.table_columns(table)
        columns = [*fixed, *rows.columns]
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise StoreError(f"Table {table} has no column(s) {unknown}.")
        select = ", ".join(["?"] * len(fixed) + [f'"{c}"' for c in rows.columns])
        self._cur.register("_bulk_rows", rows)
        try:
            self._cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} FROM _bulk_rows",
                              list(fixed.values()))
        finally:
            self._cur.unregister("_bulk_rows")

    def delete_where(self, table: str, where: dict[str, Any]) -> None:
        """DELETE rows matching every `column = value` (None matches NULL; a list matches any of its values)."""
        if table not in schema.TABLES:
            raise StoreError(f"No table {table!r}.")
        clauses, params = [], []
        for col, value in where.items():
            if col not in schema.table_columns(table):
                raise StoreError(f"Table {table} has no column {col!r}.")
            if isinstance(value, (list, tuple, np.ndarray)):
                clauses.append(f"{col} IN (SELECT unnest(?::{_sql_list_type(value)}))")
                params.append([v.item() if isinstance(v, np.generic) else v for v in value])
            else:
                clauses.append(f"{col} IS NOT DISTINCT FROM ?")
                params.append(value.item() if isinstance(value, np.generic) else value)
        self._cur.execute(f"DELETE FROM {table}" + (" WHERE " + " AND ".join(clauses) if clauses else ""), params)


def _sql_list_type(values: Any) -> str:
    first = next(iter(values), 0)
    return "VARCHAR[]" if isinstance(first, str) else "BIGINT[]"


class Store:
    """One DuckDB file for one (model, hook, SAE), holding many corpora.

    Thread-safe: each thread gets its own cursor on the shared connection; writes are serialized."""

    def __init__(self, path: str | Path, read_only: bool = False, idle_release_s: float | None = None):
        self.path = Path(path)
        self.read_only = read_only
        self.idle_release_s = idle_release_s
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._state_lock = threading.RLock()  # guards opening/closing the connection
        self._write_lock = threading.RLock()  # one writer at a time within this process
        self._con: duckdb.DuckDBPyConnection | None = None
        self._generation = 0
        self._in_use = 0
        self._last_use = time.monotonic()
        self._local = threading.local()
        self._closed = False
        self._presence: tuple[float, np.ndarray | None] | None = None  # (threshold, threshold * scale) cache
        self._open()
        if idle_release_s:
            threading.Thread(target=self._release_when_idle, daemon=True, name=f"store-idle-{self.path.name}").start()

    # -- connection plumbing (private: nothing outside the store package reaches the connection) ------
    def _open(self) -> None:
        with self._state_lock:
            if self._con is not None:
                return
            if self.idle_release_s and handoff.requested(self.path):
                raise WorkspaceLocked(_lent_message(self.path))
            try:
                self._con = duckdb.connect(str(self.path), read_only=self.read_only)
            except duckdb.IOException as exc:
                if "lock" in str(exc).lower():
                    raise WorkspaceLocked(_locked_message(self.path, exc)) from None
                raise StoreError(f"{self.path} cannot be opened as a workspace: {exc}") from None
            except duckdb.Error as exc:
                raise StoreError(_damaged_message(self.path, exc)) from None
            self._generation += 1
            if not self.read_only:
                try:
                    self._create_or_upgrade()
                except duckdb.Error as exc:  # a truncated file opens, then fails on its first read
                    if self._con is not None:
                        self._con.close()
                    self._con = None
                    raise StoreError(_damaged_message(self.path, exc)) from None

    def _create_or_upgrade(self) -> None:
        con = self._con
        assert con is not None
        found = self._stored_version(con)
        if found > schema.SCHEMA_VERSION:
            con.close()
            self._con = None
            raise StoreError(
                f"{self.path.name} was written by a newer version of this tool (workspace schema {found}; this "
                f"version reads up to {schema.SCHEMA_VERSION}). Update the tool, or open a copy made for this version.")
        for stmt in schema.create_statements():
            con.execute(stmt)
        existing = {(t, c) for t, c in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns").fetchall()}
        for stmt in schema.upgrade_statements(existing):
            con.execute(stmt)
        if found != schema.SCHEMA_VERSION:
            con.execute("INSERT OR REPLACE INTO workspace_meta VALUES ('schema_version', ?)",
                        [json.dumps(schema.SCHEMA_VERSION)])

    @staticmethod
    def _stored_version(con: duckdb.DuckDBPyConnection) -> int:
        has_meta = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'workspace_meta'").fetchall()[0][0]
        if not has_meta:
            return 0
        row = con.execute("SELECT value FROM workspace_meta WHERE key = 'schema_version'").fetchall()
        return int(json.loads(row[0][0])) if row else 1

    def _release_when_idle(self) -> None:
        while not self._closed:
            time.sleep(min(2.0, max(0.5, (self.idle_release_s or 1) / 4)))  # a hand-off request waits <= 2 s
            self.release_if_idle()

    def release_if_idle(self) -> bool:
        """Close the connection if nothing used it for idle_release_s, or nothing uses it now and another
        process asks for the file (backend.store.handoff); that process may then open it."""
        with self._state_lock:
            if self._con is None or self._in_use or not self.idle_release_s:
                return False
            if time.monotonic() - self._last_use < self.idle_release_s and not handoff.requested(self.path):
                return False
            self._con.close()
            self._con = None
            return True

    def _checkout(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor, opening the connection if released; counts the call as in use."""
        with self._state_lock:
            if self._closed:
                raise StoreError(f"The workspace {self.path.name} is closed.")
            self._open()
            self._in_use += 1
            generation = self._generation
            cur = getattr(self._local, "cur", None)
            if cur is None or getattr(self._local, "generation", None) != generation:
                cur = self._con.cursor()  # type: ignore[union-attr]
                self._local.cur, self._local.generation = cur, generation
            return cur

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        while True:
            try:
                cur = self._checkout()
                break
            except WorkspaceLocked:
                # a background job's thread waits (outside the state lock, pages stay served) while a
                # command holds or asks for the file, instead of failing
                if not (self.idle_release_s and handoff.patient()):
                    raise
                time.sleep(handoff.POLL_S)
        try:
            yield cur
        finally:
            with self._state_lock:
                self._in_use -= 1
                self._last_use = time.monotonic()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All-or-nothing writes (a killed job leaves no partial batch)."""
        with self._write_lock, self._cursor() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield Transaction(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def set_threads(self, n: int) -> None:
        """DuckDB worker threads for this connection (benchmarks pin it)."""
        with self._cursor() as cur:
            cur.execute(f"SET threads = {int(n)}")

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- queries (parameterized; concept modules bring their SQL) ---------------------------------
    def query_df(self, sql: str, params: Params = None) -> pd.DataFrame:
        with self._cursor() as cur:
            return cur.execute(sql, list(params or [])).df()

    def query_one(self, sql: str, params: Params = None) -> tuple | None:
        """First row or None (fetches fully: DuckDB refuses new work on a half-read result)."""
        with self._cursor() as cur:
            rows = cur.execute(sql, list(params or [])).fetchall()
        return rows[0] if rows else None

    def query_all(self, sql: str, params: Params = None) -> list[tuple]:
        with self._cursor() as cur:
            return cur.execute(sql, list(params or [])).fetchall()

    def fetch_numpy(self, sql: str, params: Params = None) -> dict[str, np.ndarray]:
        """Columns as numpy arrays (the fast path for large numeric reads)."""
        with self._cursor() as cur:
            return cur.execute(sql, list(params or [])).fetchnumpy()

    def execute(self, sql: str, params: Params = None) -> None:
        """One write statement in its own transaction."""
        with self.transaction() as tx:
            tx.execute(sql, params)

    def replace_rows(self, table: str, rows: pd.DataFrame, where: dict[str, Any],
                     fixed: dict[str, Any] | None = None) -> None:
        """Delete the rows of `table` matching `where`, insert `rows` (+ `fixed` constant columns), atomically.

        The one helper behind every "recompute and store" step (statistics, contexts, labels, vectors)."""
        with self.transaction() as tx:
            tx.delete_where(table, where)
            if len(rows):
                tx.insert_df(table, rows, fixed)
            cid = where.get("corpus_id", (fixed or {}).get("corpus_id"))
            if isinstance(cid, (int, np.integer)):
                tx.execute("UPDATE corpora SET data_version = data_version + 1 WHERE corpus_id = ?", [int(cid)])

    # -- workspace meta ------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        self._presence = None
        with self.transaction() as tx:
            for k, v in values.items():
                tx.execute(
                    "INSERT OR REPLACE INTO workspace_meta VALUES (?, ?)", [k, json.dumps(v, default=str)]
                )

    def meta(self) -> dict[str, Any]:
        rows = self.query_all("SELECT key, value FROM workspace_meta")
        return {k: json.loads(v) for k, v in rows}

    # -- corpora -------------------------------------------------------------
    def add_corpus(self, name: str, df: pd.DataFrame, text_column: str, source: str | None = None) -> int:
        """Store documents (text + metadata); embedding happens later, resumably."""
        return self.add_corpus_chunks(name, [df], text_column, source)

    def add_corpus_chunks(self, name: str, chunks: Iterable[pd.DataFrame], text_column: str,
                          source: str | None = None, commit_each: bool = False) -> int:
        """Store documents that arrive in chunks (a file larger than memory, see backend.streaming).

        One transaction by default: an error in any chunk (or in the iterator that reads them) stores nothing.
        DuckDB holds a transaction's rows in memory, so `commit_each` commits chunk by chunk instead: the
        corpus reads 'failed' ("still being added") until its last chunk is in, an error deletes it, and a
        process killed mid-way leaves it 'failed' with that message. Every chunk must have the first chunk's
        columns; doc ids continue across chunks."""
        name = name.strip()
        if not name:
            raise StoreError("A corpus needs a name.")
        if self.corpus_exists(name):
            raise StoreError(f"A corpus named {name!r} already exists; choose another name or delete it first.")
        cid, n_docs, meta_cols = None, 0, None
        if not commit_each:
            with self.transaction() as tx:
                for df in chunks:
                    cid, meta_cols = self._add_chunk(tx, cid, meta_cols, name, df, text_column, source, n_docs, False)
                    n_docs += len(df)
                return self._finish_corpus(tx, cid, n_docs)
        try:
            for df in chunks:
                with self.transaction() as tx:
                    cid, meta_cols = self._add_chunk(tx, cid, meta_cols, name, df, text_column, source, n_docs, True)
                n_docs += len(df)
            with self.transaction() as tx:
                return self._finish_corpus(tx, cid, n_docs)
        except BaseException:
            if cid is not None:
                self.delete_corpus(cid)
            raise

    def _add_chunk(self, tx: Transaction, cid: int | None, meta_cols: list | None, name: str, df: pd.DataFrame,
                   text_column: str, source: str | None, first_doc_id: int, importing: bool) -> tuple[int, list]:
        """Insert one chunk (creating the corpus row at the first); returns (corpus id, metadata columns)."""
        if cid is None or meta_cols is None:
            if text_column not in df.columns:
                raise StoreError(f"No column {text_column!r}; columns are: {', '.join(map(str, df.columns))}.")
            meta_cols = [c for c in df.columns if c != text_column]
            cid = int(tx.execute("SELECT nextval('corpus_ids')")[0][0])
            status, error = ("failed", f"Still being added from {source}; if this stays, adding was interrupted: "
                                       "delete the corpus and add the file again.") if importing else ("pending", None)
            tx.execute(
                "INSERT INTO corpora (corpus_id, name, source, text_column, meta_columns, n_docs, status, error) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                [cid, name, source, text_column, json.dumps([str(c) for c in meta_cols]), status, error])
        elif list(df.columns) != [text_column, *meta_cols] and set(df.columns) != {text_column, *meta_cols}:
            raise StoreError(f"Rows {first_doc_id + 1:,} onwards have the columns {list(map(str, df.columns))}, "
                             f"not those of the first rows ({[text_column, *map(str, meta_cols)]}).")
        if len(df):
            self._insert_documents(tx, cid, df, text_column, meta_cols, first_doc_id)
        return cid, meta_cols

    @staticmethod
    def _finish_corpus(tx: Transaction, cid: int | None, n_docs: int) -> int:
        if cid is None or n_docs == 0:
            raise StoreError("The corpus has no documents.")
        tx.execute("UPDATE corpora SET n_docs = ?, status = 'pending', error = NULL WHERE corpus_id = ?", [n_docs, cid])
        return cid

    @staticmethod
    def _insert_documents(tx: Transaction, cid: int, df: pd.DataFrame, text_column: str, meta_cols: list,
                          first_doc_id: int) -> None:
        texts = df[text_column]
        if texts.isna().any():
            raise StoreError(f"Column {text_column!r} has {int(texts.isna().sum())} empty value(s) (first at row "
                             f"{first_doc_id + int(np.flatnonzero(texts.isna())[0]) + 1}).")
        meta_df = df[meta_cols]
        doc_ids = np.arange(first_doc_id, first_doc_id + len(df), dtype=np.int32)
        docs = pd.DataFrame(
            {
                "doc_id": doc_ids,
                "text": texts.astype(str).to_numpy(),
                "meta": meta_df.apply(lambda r: json.dumps(r.to_dict(), default=str), axis=1).to_numpy()
                if meta_cols
                else None,
            }
        )
        tx.insert_df("documents", docs, fixed={"corpus_id": cid})
        if meta_cols:
            long_meta = (meta_df.astype(str).where(meta_df.notna(), None).assign(doc_id=doc_ids)
                         .melt(id_vars="doc_id", var_name="key", value_name="value"))
            tx.insert_df("doc_meta", long_meta[["doc_id", "key", "value"]], fixed={"corpus_id": cid})

    def corpus_exists(self, name: str) -> bool:
        return self.query_all("SELECT count(*) FROM corpora WHERE name = ?", [name])[0][0] > 0

    def corpus_id(self, corpus: "str | int | Corpus") -> int:
        if isinstance(corpus, Corpus):
            corpus = corpus.corpus_id
        if isinstance(corpus, (int, np.integer)) and not isinstance(corpus, bool):
            row = self.query_all("SELECT corpus_id FROM corpora WHERE corpus_id = ?", [int(corpus)])
        else:
            row = self.query_all("SELECT corpus_id FROM corpora WHERE name = ?", [str(corpus)])
        if not row:
            raise StoreError(f"No corpus {corpus!r} in this workspace.")
        return int(row[0][0])

    def corpora(self) -> list[Corpus]:
        rows = self.query_all(
            """SELECT c.corpus_id, c.name, c.source, c.text_column, c.meta_columns, c.n_docs,
                      coalesce(s.n, 0), coalesce(s.t, 0), c.status, c.data_version, coalesce(s.tr, 0), c.error
               FROM corpora c LEFT JOIN (SELECT corpus_id, count(*) n, sum(n_tokens) t, count_if(truncated) tr
                                         FROM doc_status GROUP BY 1) s
               USING (corpus_id) ORDER BY c.corpus_id"""
        )
        return [
            Corpus(r[0], r[1], r[2], r[3], json.loads(r[4] or "[]"), int(r[5]), int(r[6]), int(r[7]), r[8],
                       int(r[9] or 0), int(r[10]), r[11])
            for r in rows
        ]

    def corpus(self, corpus: str | int) -> Corpus:
        cid = self.corpus_id(corpus)
        return next(c for c in self.corpora() if c.corpus_id == cid)

    def set_status(self, corpus: str | int, status: str, error: str | None = None) -> None:
        cid = self.corpus_id(corpus)
        with self.transaction() as tx:
            tx.execute("UPDATE corpora SET status = ?, error = ?, data_version = data_version + 1 WHERE corpus_id = ?",
                       [status, error, cid])

    def bump_version(self, corpus_id: int) -> None:
        """Mark the corpus's derived data as changed (page caches key on data_version)."""
        self.execute("UPDATE corpora SET data_version = data_version + 1 WHERE corpus_id = ?", [int(corpus_id)])

    def rename_corpus(self, corpus: str | int, new_name: str) -> None:
        new_name = new_name.strip()
        if not new_name:
            raise StoreError("A corpus needs a name.")
        if self.corpus_exists(new_name):
            raise StoreError(f"A corpus named {new_name!r} already exists.")
        cid = self.corpus_id(corpus)
        self.execute("UPDATE corpora SET name = ? WHERE corpus_id = ?", [new_name, cid])

    def delete_corpus(self, corpus: str | int) -> None:
        cid = self.corpus_id(corpus)
        with self.transaction() as tx:
            for table in self.corpus_tables():
                tx.delete_where(table, {"corpus_id": cid})
            tx.execute("DELETE FROM corpora WHERE corpus_id = ?", [cid])

    @staticmethod
    def corpus_tables() -> list[str]:
        """Every table with a corpus_id column other than `corpora`."""
        return [t for t in schema.TABLES if t != "corpora" and "corpus_id" in schema.table_columns(t)]

    # -- documents -----------------------------------------------------------
    def pending_doc_ids(self, corpus: str | int) -> np.ndarray:
        cid = self.corpus_id(corpus)
        rows = self.fetch_numpy(
            """SELECT d.doc_id FROM documents d ANTI JOIN doc_status s ON d.corpus_id = s.corpus_id AND d.doc_id = s.doc_id
               WHERE d.corpus_id = ? ORDER BY d.doc_id""",
            [cid],
        )
        return rows["doc_id"].astype(np.int64)

    def texts(self, corpus: str | int, doc_ids: np.ndarray | list[int]) -> list[str]:
        """Texts in the order of doc_ids."""
        cid = self.corpus_id(corpus)
        ids = [int(i) for i in np.asarray(doc_ids, dtype=np.int64)]
        if not ids:
            return []
        rows = self.query_all(
            "SELECT doc_id, text FROM documents WHERE corpus_id = ? AND doc_id IN (SELECT unnest(?::BIGINT[]))", [cid, ids])
        by_id = dict(rows)
        return [by_id[i] for i in ids if i in by_id]

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
        df = self.query_df(sql, params)
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
        df = self.query_df(
            "SELECT doc_id, value FROM doc_meta WHERE corpus_id = ? AND key = ? ORDER BY doc_id", [info.corpus_id, column])
        s = pd.Series(index=np.arange(info.n_docs), dtype=object)
        s.loc[df["doc_id"].to_numpy()] = df["value"].to_numpy()
        return s

    def doc_lengths(self, corpus: str | int) -> np.ndarray:
        """Counted tokens per doc_id (0 where not embedded yet)."""
        info = self.corpus(corpus)
        r = self.fetch_numpy("SELECT doc_id, n_tokens FROM doc_status WHERE corpus_id = ?", [info.corpus_id])
        out = np.zeros(info.n_docs, np.int64)
        out[r["doc_id"].astype(np.int64)] = r["n_tokens"]
        return out

    # -- embeddings ----------------------------------------------------------
    def write_embeddings(self, corpus_id: int, doc_ids: np.ndarray, rows: presence.RowsLike,
                         shard: str | None = None) -> int:
        """Write one batch's sparse rows and mark its documents done, in one transaction; returns documents written.

        `rows` is an activations.SparseRows whose `doc` indexes `doc_ids`. Only present rows are stored (the
        workspace's presence threshold, backend.store.presence). With `shard` (a Ray engine shard name) the
        shard is recorded in the same transaction; a shard already recorded, and documents already done, are
        skipped, so ingesting a shard twice changes nothing."""
        doc_ids = np.asarray(doc_ids, dtype=np.int32)
        threshold, cutoff = self._presence_state()
        if threshold > 0 and cutoff is None:
            raise StoreError("This workspace's presence scales are not calibrated yet; embed through "
                             "backend.jobs.embed_corpus (or call Store.set_presence_scales) first.")
        batch_doc = np.asarray(rows.doc, np.int64)
        acts = np.asarray(rows.max_act, np.float32)
        keep = acts > 0 if cutoff is None else acts >= cutoff[np.asarray(rows.feature, np.int64)]
        n_raw = np.bincount(batch_doc[acts > 0], minlength=len(doc_ids)).astype(np.int32)
        feats = pd.DataFrame(
            {
                "doc_id": doc_ids[batch_doc[keep]],
                "feature_id": np.asarray(rows.feature, np.int32)[keep],
                "max_act": acts[keep],
                "argmax_pos": np.asarray(rows.argmax_pos, np.int32)[keep],
                "n_active": np.asarray(rows.n_active, np.int32)[keep],
            }
        )
        if threshold > 0:
            feats["sum_code"] = presence.encode_sum(feats["max_act"].to_numpy(), feats["n_active"].to_numpy(),
                                                    np.asarray(rows.sum_act)[keep])
        else:
            feats["sum_act"] = np.asarray(rows.sum_act, np.float32)[keep]
        status = pd.DataFrame({"doc_id": doc_ids, "n_tokens": rows.n_tokens, "truncated": rows.truncated,
                               "n_raw_features": n_raw})
        with self.transaction() as tx:
            if shard is not None:
                if tx.execute("SELECT count(*) FROM ingested_shards WHERE corpus_id = ? AND shard = ?",
                              [int(corpus_id), shard])[0][0]:
                    return 0
                done = {r[0] for r in tx.execute(
                    "SELECT doc_id FROM doc_status WHERE corpus_id = ? AND doc_id = ANY(?::INTEGER[])",
                    [int(corpus_id), doc_ids.tolist()])}
                if done:
                    feats = feats[~feats["doc_id"].isin(done)]
                    status = status[~status["doc_id"].isin(done)]
                tx.execute("INSERT INTO ingested_shards (corpus_id, shard, n_docs) VALUES (?, ?, ?)",
                           [int(corpus_id), shard, len(status)])
            tx.insert_df("doc_features", feats, fixed={"corpus_id": int(corpus_id)})
            tx.insert_df("doc_status", status, fixed={"corpus_id": int(corpus_id)})
        return len(status)

    def ingested_shards(self, corpus_id: int) -> set[str]:
        """Names of the shards already written into the corpus (Ray engine)."""
        return {r[0] for r in self.query_all("SELECT shard FROM ingested_shards WHERE corpus_id = ?", [int(corpus_id)])}

    def export_pending_texts(self, corpus_id: int, folder: str | Path, rows_per_file: int = 10_000,
                             rows_per_group: int | None = None, by_length: bool = False,
                             head: int = 0) -> list[Path]:
        """Write the corpus's not-yet-embedded documents (doc_id, text) as Parquet files in `folder`.

        Streamed from DuckDB in record batches, so a corpus larger than memory exports in bounded memory.
        `rows_per_group` sets the Parquet row groups (what a distributed engine hands one worker at a time).
        `by_length` orders each file's rows longest text first, so a row group holds documents of similar
        length (a padded batch wastes little) and the longest batches start first; the export's first `head`
        documents (by doc id) still come first, in groups of their own as far as `rows_per_group` allows."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        seen = 0
        with self._cursor() as cur:
            reader = cur.sql(
                """SELECT d.doc_id, d.text FROM documents d ANTI JOIN doc_status s
                   ON d.corpus_id = s.corpus_id AND d.doc_id = s.doc_id WHERE d.corpus_id = $cid ORDER BY d.doc_id""",
                params={"cid": int(corpus_id)}).to_arrow_reader(int(rows_per_file))
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                table = pa.Table.from_batches([batch])
                if by_length:
                    n = table.num_rows
                    length = pc.fill_null(pc.utf8_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
                    in_head = np.arange(seen, seen + n) < int(head)
                    table = table.take(pa.array(np.lexsort((-length.astype(np.int64), ~in_head))))
                seen += table.num_rows
                path = folder / f"part-{len(paths):06d}.parquet"
                pq.write_table(table, path, row_group_size=rows_per_group or table.num_rows)
                paths.append(path)
        return paths

    # -- presence (what counts as present: backend.store.presence) -------------------------
    @property
    def presence_threshold(self) -> float:
        """0 for a raw workspace (and for files made before version 3, which stored every positive activation)."""
        return self._presence_state()[0]

    def _presence_state(self) -> tuple[float, np.ndarray | None]:
        """(threshold, per-feature cutoff threshold * scale or None), read once and cached."""
        state = self._presence
        if state is None:
            threshold = float(self.meta().get("presence_threshold") or 0.0)
            scales = self.presence_scales() if threshold > 0 else None
            state = (threshold, None if scales is None else (np.float32(threshold) * scales.scale).astype(np.float32))
            self._presence = state
        return state

    def presence_scales(self) -> presence.PresenceScales | None:
        """The calibrated per-feature scales, or None before calibration (and in a raw workspace)."""
        r = self.fetch_numpy("SELECT feature_id, scale, n_docs FROM presence_scales ORDER BY feature_id")
        if len(r["feature_id"]) == 0:
            return None
        cal = self.meta().get("presence_calibration") or {}
        d = int(r["feature_id"].max()) + 1
        scale, n_docs = np.zeros(d, np.float32), np.zeros(d, np.int32)
        scale[r["feature_id"]] = r["scale"]
        n_docs[r["feature_id"]] = r["n_docs"]
        return presence.PresenceScales(scale, n_docs, int(cal.get("n_docs") or 0), float(cal.get("fallback") or 0.0))

    def presence_summary(self) -> dict[str, Any]:
        """What counts as present in this workspace, and what it kept: for `Workspace.summary()`."""
        threshold = self.presence_threshold
        row = self.query_one(
            "SELECT count(*), sum(n_raw_features), count(n_raw_features) FROM doc_status")
        n_docs, n_raw, n_with_raw = (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)) if row else (0, 0, 0)
        n_rows = int(self.query_one("SELECT count(*) FROM doc_features")[0])
        out: dict[str, Any] = {
            "threshold": threshold,
            "mode": "raw: every positive activation, exact" if threshold <= 0 else
                    f"compact: a feature is present when its max activation >= {threshold:g} x its scale "
                    f"(the {presence.SCALE_QUANTILE:.0%} quantile of its per-document max on the calibration documents)",
            "features_per_doc": round(n_rows / n_docs, 1) if n_docs else None,
            "raw_features_per_doc": round(n_raw / n_with_raw, 1) if n_with_raw else None,
        }
        if threshold > 0:
            out["calibration"] = self.meta().get("presence_calibration")
            out["raw_values"] = "create a workspace with presence_threshold=0 to store every positive activation"
        return out

    def needs_presence_calibration(self) -> bool:
        threshold, cutoff = self._presence_state()
        return threshold > 0 and cutoff is None

    def set_presence_scales(self, scales: presence.PresenceScales, corpus_id: int | None = None) -> None:
        """Record the workspace's per-feature scales (once: every later row is judged by them)."""
        rows = pd.DataFrame({"feature_id": np.arange(len(scales.scale), dtype=np.int32), "scale": scales.scale,
                             "n_docs": scales.n_docs})
        self.replace_rows("presence_scales", rows, where={})
        self.set_meta(presence_calibration={
            "corpus_id": corpus_id, "n_docs": scales.n_calibration_docs, "quantile": presence.SCALE_QUANTILE,
            "min_docs": presence.MIN_CALIBRATION_DOCS, "fallback": scales.fallback,
            "n_features_calibrated": scales.n_calibrated})

    def latents(
        self, corpus: str | int, pooling: Pooling = "max", d_sae: int | None = None, threshold: float = 0.0
    ) -> sp.csr_matrix:
        """Documents x features as a scipy CSR matrix (rows = doc_id), never dense.

        max: max activation; binary: 1 where max > threshold; count: tokens where it fired;
        sum: summed activation; mean: sum / counted tokens of the document.

        Only stored rows exist: in a workspace with a presence threshold (backend.store.presence) a feature
        under it in a document is absent (0) whatever `threshold` asks; `threshold` is an absolute activation
        on top of that. A raw workspace (presence_threshold=0) keeps every positive activation, exactly."""
        info = self.corpus(corpus)
        d = int(d_sae if d_sae is not None else self.meta().get("d_sae", 0))
        if pooling not in ("max", "binary", "count", "sum", "mean"):
            raise StoreError(f"Unknown pooling {pooling!r}; use max, binary, count, sum or mean.")
        r = self.fetch_numpy(
            f"SELECT doc_id, feature_id, max_act, n_active, {presence.SUM_SQL} AS sum_act FROM doc_features "
            "WHERE corpus_id = ? AND max_act > ?",
            [info.corpus_id, float(threshold)],
        )
        rows, cols = r["doc_id"].astype(np.int64), r["feature_id"].astype(np.int64)
        if pooling == "max":
            vals = r["max_act"].astype(np.float32)
        elif pooling == "binary":
            vals = np.ones(len(rows), np.float32)
        elif pooling == "count":
            vals = r["n_active"].astype(np.float32)
        elif pooling == "sum":
            vals = r["sum_act"].astype(np.float32)
        else:
            lengths = np.maximum(self.doc_lengths(info.corpus_id), 1)
            vals = (r["sum_act"] / lengths[rows]).astype(np.float32)
        if d == 0:
            d = int(cols.max()) + 1 if len(cols) else 0
        return sp.csr_matrix((vals, (rows, cols)), shape=(info.n_docs, d))

    def top_documents(self, corpus: str | int, feature_id: int, n: int = 10) -> pd.DataFrame:
        """Documents where the feature fires most: doc_id, max_act, argmax_pos, n_active, text."""
        cid = self.corpus_id(corpus)
        return self.query_df(
            """SELECT f.doc_id, f.max_act, f.argmax_pos, f.n_active, d.text FROM
                 (SELECT doc_id, max_act, argmax_pos, n_active FROM doc_features WHERE corpus_id = ? AND feature_id = ?
                  ORDER BY max_act DESC LIMIT ?) f
               JOIN documents d ON d.corpus_id = ? AND d.doc_id = f.doc_id ORDER BY f.max_act DESC""",
            [cid, int(feature_id), int(n), cid],
        )

    def doc_features(self, corpus: str | int, doc_id: int) -> pd.DataFrame:
        """Active features of one document, strongest first."""
        cid = self.corpus_id(corpus)
        return self.query_df(
            f"SELECT feature_id, max_act, argmax_pos, n_active, {presence.SUM_SQL} AS sum_act FROM doc_features "
            "WHERE corpus_id = ? AND doc_id = ? ORDER BY max_act DESC",
            [cid, int(doc_id)],
        )
