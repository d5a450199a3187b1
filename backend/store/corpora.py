"""The corpus catalogue: finding a corpus by name or id, listing corpora with their counts, and renaming,
re-statusing, re-versioning or deleting one (`CorporaMixin`, part of `Store`). Adding a corpus is
backend.store.ingest; its methods run their SQL through the connection's parameterized queries
(backend.store.database)."""
from __future__ import annotations

import json

import numpy as np

from backend.store import schema
from backend.store.common import Corpus, StoreError


class CorporaMixin:
    """`Store`'s corpus catalogue (see the module docstring)."""

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
