"""Property-based retrieval: documents by SAE features, plus dense and vector baselines."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr

RESULT_COLUMNS = ["row", "score", "n_matched"]


@dataclass(frozen=True)
class Condition:
    """A feature must fire with activation strictly greater than ``min_act``."""

    feature_id: int
    min_act: float = 0.0


def _empty(columns=RESULT_COLUMNS) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float if c == "score" else np.int64) for c in columns})


def retrieve(X, conditions: list[Condition], mode: str = "and", top: int = 50) -> pd.DataFrame:
    """Documents satisfying feature conditions, best first.

    Score = sum over matched conditions of activation / (max activation of that feature in X),
    so each condition contributes at most 1 and features on different scales weigh equally.
    ``and``: all conditions must match, ranked by score. ``or``: at least one must match,
    ranked by number matched, then score. Ties go to the lower row. Columns: row, score,
    n_matched.
    """
    if mode not in {"and", "or"}:
        raise ValueError("mode must be 'and' or 'or'")
    if not conditions:
        return _empty()
    X = as_csr(X)
    fids = [int(c.feature_id) for c in conditions]
    mins = np.array([float(c.min_act) for c in conditions])
    sub = X[:, fids].tocoo()  # n x len(conditions), one column per condition
    colmax = np.zeros(len(fids))
    if sub.nnz:
        np.maximum.at(colmax, sub.col, sub.data)
    hit = sub.data > mins[sub.col]
    rows, cols, vals = sub.row[hit], sub.col[hit], sub.data[hit]
    n = X.shape[0]
    n_matched = np.bincount(rows, minlength=n)
    score = np.bincount(rows, weights=vals / np.where(colmax[cols] > 0, colmax[cols], 1.0), minlength=n)
    need = len(fids) if mode == "and" else 1
    cand = np.flatnonzero(n_matched >= need)
    if cand.size == 0:
        return _empty()
    keys = (cand, -score[cand]) if mode == "and" else (cand, -score[cand], -n_matched[cand])
    order = np.lexsort(keys)[:top]
    sel = cand[order]
    return pd.DataFrame({"row": sel.astype(np.int64), "score": score[sel], "n_matched": n_matched[sel]})


def dense_retrieve(query_vec: np.ndarray, doc_vecs: np.ndarray, top: int = 50) -> pd.DataFrame:
    """Cosine similarity of one dense query vector to every document vector. Columns: row, score."""
    q = np.asarray(query_vec, dtype=np.float64).ravel()
    D = np.asarray(doc_vecs, dtype=np.float64)
    qn = np.linalg.norm(q)
    dn = np.linalg.norm(D, axis=1)
    sims = (D @ q) / np.maximum(dn * qn, 1e-12)
    k = min(top, sims.size)
    part = np.argpartition(-sims, k - 1)[:k] if 0 < k < sims.size else np.arange(sims.size)
    sel = part[np.lexsort((part, -sims[part]))][:k]
    return pd.DataFrame({"row": sel.astype(np.int64), "score": sims[sel]})


def retrieve_by_vector(X, query_features: dict[int, float], top: int = 50) -> pd.DataFrame:
    """Rank documents by cosine between a sparse query feature vector and each document row.

    ``query_features`` maps feature id -> weight (e.g. the SAE encoding of a query text).
    Document norms use all of a row's activations, so a document firing many unrelated
    features scores lower. Only documents sharing at least one query feature are returned.
    Columns: row, score, n_overlap.
    """
    cols = ["row", "score", "n_overlap"]
    q = {int(f): float(w) for f, w in query_features.items() if float(w) != 0.0}
    if not q:
        return _empty(cols)
    X = as_csr(X)
    fids = np.array(sorted(q))
    w = np.array([q[f] for f in fids])
    sub = X[:, fids]
    dots = np.asarray(sub @ w).ravel()
    overlap = np.diff((sub != 0).tocsr().indptr) if sub.nnz else np.zeros(X.shape[0], np.int64)
    norms = row_norms(X)
    scores = dots / np.maximum(norms * np.linalg.norm(w), 1e-12)
    cand = np.flatnonzero(overlap > 0)
    if cand.size == 0:
        return _empty(cols)
    order = np.lexsort((cand, -scores[cand]))[:top]
    sel = cand[order]
    return pd.DataFrame({"row": sel.astype(np.int64), "score": scores[sel], "n_overlap": overlap[sel]})


def row_norms(X) -> np.ndarray:
    """L2 norm of each row of a sparse matrix (O(nnz))."""
    X = as_csr(X)
    sq = sp.csr_matrix((X.data.astype(np.float64) ** 2, X.indices, X.indptr), shape=X.shape)
    return np.sqrt(np.asarray(sq.sum(axis=1)).ravel())
