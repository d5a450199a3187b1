"""Reading the stored (document, feature) rows back: a corpus as a documents x features matrix under a
pooling (`latents`), a feature's strongest documents (`top_documents`) and a document's active features
(`doc_features`) (`FeatureReadsMixin`, part of `Store`). Per-feature statistics and browser tables are
backend.feature_precompute / backend.feature_queries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.store import presence
from backend.store.common import Pooling, StoreError, row_limit


class FeatureReadsMixin:
    """`Store`'s reads of feature rows (see the module docstring)."""

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
            [cid, int(feature_id), row_limit(n), cid],
        )

    def doc_features(self, corpus: str | int, doc_id: int) -> pd.DataFrame:
        """Active features of one document, strongest first."""
        cid = self.corpus_id(corpus)
        return self.query_df(
            f"SELECT feature_id, max_act, argmax_pos, n_active, {presence.SUM_SQL} AS sum_act FROM doc_features "
            "WHERE corpus_id = ? AND doc_id = ? ORDER BY max_act DESC",
            [cid, int(doc_id)],
        )
