"""Reading a corpus's documents back: texts, documents with their metadata and token counts, one metadata
column, and document lengths in characters and in tokens (`DocumentsMixin`, part of `Store`), through the connection's parameterized
queries (backend.store.database)."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from backend.store.common import StoreError, row_limit


class DocumentsMixin:
    """`Store`'s document reads (see the module docstring)."""

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
            params.append(row_limit(limit, "limit"))
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

    def text_chars(self, corpus: str | int) -> np.ndarray:
        """Characters of each doc_id's text (0 for a doc_id without a row), read without the texts themselves."""
        return self._per_doc(corpus, "SELECT doc_id, length(text) AS n FROM documents WHERE corpus_id = ?")

    def doc_lengths(self, corpus: str | int) -> np.ndarray:
        """Counted tokens per doc_id (0 where not embedded yet)."""
        return self._per_doc(corpus, "SELECT doc_id, n_tokens AS n FROM doc_status WHERE corpus_id = ?")

    def _per_doc(self, corpus: str | int, sql: str) -> np.ndarray:
        """One integer per doc_id from `sql` (doc_id, n; the corpus id its one parameter), 0 where it has no row."""
        info = self.corpus(corpus)
        r = self.fetch_numpy(sql, [info.corpus_id])
        out = np.zeros(info.n_docs, np.int64)
        out[r["doc_id"].astype(np.int64)] = r["n"]
        return out
