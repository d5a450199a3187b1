"""The DuckDB workspace file: the one owner of its connection, its locks and every write.

Nothing outside this package touches the DuckDB connection. Concept modules (features, labels,
search, …) keep their query SQL next to their concept, as datasette keeps facet SQL in `facets.py`,
and run it through `Store.query_df` / `query_one` / `fetch_numpy` / `execute`, or write through
`Store.replace_rows` and `Store.transaction()` (a `Transaction`, not the raw connection).

DuckDB allows one writing process or many readers. A dashboard that keeps a workspace open would lock
the CLI out for good, so a Store can release its connection when idle (`idle_release_s`) and reopen it
on the next call; a file held by another process is refused with a `WorkspaceLocked` that names it. A
command that finds the file held asks for it (backend.store.handoff): the dashboard's Store then lets go
as soon as no call is using it, background jobs included.

This module owns the connection (`StoreConnection`: opening, schema upgrade, locks, idle release,
parameterized queries, transactions, workspace meta); `Store` composes it with one mixin per job:
the corpus catalogue (corpora.py), document reads (documents.py), ingest (ingest.py), the presence
rule's records (presence_state.py) and feature-row reads (feature_reads.py). Shared names are in
common.py, `Transaction` in transaction.py; all stay importable from here."""
from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import pandas as pd

from backend.store import handoff, schema
from backend.store.common import Corpus, CorpusInfo, Params, Pooling, StoreError, WorkspaceLocked
from backend.store.corpora import CorporaMixin
from backend.store.documents import DocumentsMixin
from backend.store.feature_reads import FeatureReadsMixin
from backend.store.ingest import IngestMixin
from backend.store.presence_state import PresenceMixin
from backend.store.transaction import Transaction

__all__ = ["Corpus", "CorpusInfo", "Params", "Pooling", "Store", "StoreConnection", "StoreError", "Transaction",
           "WorkspaceLocked"]


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


class StoreConnection:
    """The connection to one workspace file: opening and upgrading it, its locks and idle release, parameterized
    queries, transactions and the workspace meta (what every part of `Store` runs its SQL through).

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


class Store(CorporaMixin, DocumentsMixin, IngestMixin, PresenceMixin, FeatureReadsMixin, StoreConnection):
    """One DuckDB file for one (model, hook, SAE), holding many corpora.

    Thread-safe: each thread gets its own cursor on the shared connection; writes are serialized.

    Its parts, one job each: the connection (`StoreConnection`, here) and the mixins named in the module
    docstring; `Store(path, read_only=False, idle_release_s=None)` is StoreConnection's constructor."""
