"""Each corpus's documents <-> features lists, held per process, and the ranked-document lookup they serve.

feature_docs keeps only each feature's TOP_DOCS strongest documents; deeper ranks, co-occurrence and metadata
breakdowns need all of a feature's documents, which these caches load once from doc_features (the one full
copy of the embeddings). Finalizing a corpus invalidates them (backend.feature_precompute). Below both the
feature queries and the labels, which read ranked documents."""
from __future__ import annotations

import json
import threading
from typing import Iterable

import numpy as np
import pandas as pd

from backend.store import Store, StoreError

TOP_DOCS = 20  # documents per feature kept in feature_docs (the top documents and contexts read them)


class DocFeatureCache:
    """Per process: each corpus's document -> active features lists (CSR arrays), loaded once.

    Co-occurrence needs the features of arbitrary documents; DuckDB reads whole row groups for
    that, so these lists are kept in memory (4 bytes per (document, active feature))."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def invalidate(self, store: Store, corpus_id: int) -> None:
        with self._lock:
            self._data.pop((str(store.path), int(corpus_id)), None)

    def get(self, store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, features, n_docs_active): features of doc d are features[indptr[d]:indptr[d + 1]];
        n_docs_active[f] = documents where feature f fires."""
        key = (str(store.path), int(corpus_id))
        with self._lock:
            if key not in self._data:
                self._data[key] = self._load(store, corpus_id)
            return self._data[key]

    @staticmethod
    def _load(store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = store.fetch_numpy("SELECT doc_id, feature_id FROM doc_features WHERE corpus_id = ? AND max_act > 0",
                              [corpus_id])
        docs, feats = np.asarray(r["doc_id"], np.int64), np.asarray(r["feature_id"], np.int32)
        if len(docs) and (np.diff(docs) < 0).any():  # written in doc order, but be safe
            order = np.argsort(docs, kind="stable")
            docs, feats = docs[order], feats[order]
        n_docs = int(docs.max()) + 1 if len(docs) else 0
        indptr = np.zeros(n_docs + 1, np.int64)
        np.cumsum(np.bincount(docs, minlength=n_docs), out=indptr[1:])
        st = store.fetch_numpy("SELECT feature_id, n_docs_active FROM feature_stats WHERE corpus_id = ?", [corpus_id])
        n_active = np.zeros(int(st["feature_id"].max()) + 1 if len(st["feature_id"]) else 0, np.int64)
        n_active[np.asarray(st["feature_id"], np.int64)] = st["n_docs_active"]
        return indptr, feats, n_active


DOC_FEATURES = DocFeatureCache()


class FeatureDocsCache:
    """Per process: each corpus's feature -> documents lists in rank order (CSC arrays), loaded once.

    What feature_docs held for every rank before it kept only the top documents: quantile samples, NPMI's
    stratified sample and the metadata breakdown need all of a feature's documents, and doc_features is
    ordered by document. 4 bytes per (document, present feature), from one sorted scan."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def invalidate(self, store: Store, corpus_id: int) -> None:
        with self._lock:
            self._data.pop((str(store.path), int(corpus_id)), None)

    def get(self, store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, docs): the documents of feature f, strongest first (ties: lower doc_id), are
        docs[indptr[f]:indptr[f + 1]]."""
        key = (str(store.path), int(corpus_id))
        with self._lock:
            if key not in self._data:
                self._data[key] = self._load(store, corpus_id)
            return self._data[key]

    def docs_of(self, store: Store, corpus_id: int, feature_id: int) -> np.ndarray:
        indptr, docs = self.get(store, corpus_id)
        f = int(feature_id)
        return docs[indptr[f]:indptr[f + 1]] if f + 1 < len(indptr) else docs[:0]

    @staticmethod
    def _load(store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray]:
        r = store.fetch_numpy("SELECT feature_id, doc_id FROM doc_features WHERE corpus_id = ? AND max_act > 0 "
                              "ORDER BY feature_id, max_act DESC, doc_id", [corpus_id])
        feats = np.asarray(r["feature_id"], np.int64)
        n_features = int(feats.max()) + 1 if len(feats) else 0
        indptr = np.zeros(n_features + 1, np.int64)
        np.cumsum(np.bincount(feats, minlength=n_features), out=indptr[1:])
        return indptr, np.asarray(r["doc_id"], np.int32)


FEATURE_DOCS = FeatureDocsCache()


class MetaCodeCache:
    """Per process: one metadata column of a corpus as integer codes per embedded document, loaded once."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def invalidate(self, store: Store, corpus_id: int) -> None:
        with self._lock:
            for key in [k for k in self._data if k[:2] == (str(store.path), int(corpus_id))]:
                del self._data[key]

    def get(self, store: Store, corpus_id: int, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, codes): codes[doc_id] indexes values, -1 for documents not embedded."""
        key = (str(store.path), int(corpus_id), column)
        with self._lock:
            if key not in self._data:
                self._data[key] = self._load(store, corpus_id, column)
            return self._data[key]

    @staticmethod
    def _load(store: Store, corpus_id: int, column: str) -> tuple[np.ndarray, np.ndarray]:
        name, cols, n_docs = store.query_one("SELECT name, meta_columns, n_docs FROM corpora WHERE corpus_id = ?", [corpus_id])
        if column not in json.loads(cols or "[]"):
            raise StoreError(f"Corpus {name!r} has no metadata column {column!r}; it has {json.loads(cols or '[]')}.")
        df = store.query_df(
            """SELECT m.doc_id, coalesce(m.value, '(missing)') AS value FROM doc_meta m
               SEMI JOIN doc_status s ON s.corpus_id = m.corpus_id AND s.doc_id = m.doc_id
               WHERE m.corpus_id = ? AND m.key = ?""", [corpus_id, column])
        values, inv = np.unique(df["value"].astype(str).to_numpy(), return_inverse=True)
        codes = np.full(int(n_docs), -1, np.int64)
        codes[df["doc_id"].to_numpy(np.int64)] = inv
        return values, codes


META_CODES = MetaCodeCache()


def ranked_documents(store: Store, cid: int, fid: int, ranks: Iterable[int]) -> pd.DataFrame:
    """rank, doc_id, max_act, argmax_pos, n_active of the feature's documents at these ranks (0 = strongest).

    The top ranks come from feature_docs; deeper ones from FEATURE_DOCS (each feature's documents in rank
    order, per process) and a point lookup in doc_features (its zone maps on doc_id make it cheap)."""
    ranks = sorted({int(r) for r in ranks})
    df = store.query_df(
        "SELECT rank, doc_id, max_act, argmax_pos, n_active FROM feature_docs WHERE corpus_id = ? AND feature_id = ? "
        "AND rank IN (SELECT unnest(?::INTEGER[])) ORDER BY rank", [cid, fid, ranks])
    deep = sorted(set(r for r in ranks if r >= TOP_DOCS) - set(df["rank"].astype(int)))
    if deep:
        ordered = FEATURE_DOCS.docs_of(store, cid, fid)
        deep = [r for r in deep if r < len(ordered)]
    if deep:
        docs = ordered[deep]
        extra = store.query_df(
            "SELECT doc_id, max_act, argmax_pos, n_active FROM doc_features WHERE corpus_id = ? AND feature_id = ? "
            "AND doc_id = ANY(?::INTEGER[])", [cid, fid, [int(d) for d in docs]])
        extra = pd.DataFrame({"rank": deep, "doc_id": docs}).merge(extra, on="doc_id")
        df = pd.concat([df, extra[df.columns]], ignore_index=True).sort_values("rank", ignore_index=True)
        df = df.astype({"rank": np.int32, "doc_id": np.int32})
    return df
