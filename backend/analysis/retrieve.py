"""Property-based retrieval: documents by SAE features, by a text query's features, and dense baselines.

A text query becomes its max-pooled SAE features; :func:`rank_by_query` ranks documents by cosine
with IDF-weighted query and document vectors (TF-IDF's idea: a feature firing in nearly every document
says little about relevance), and returns the weights so a page can show them. :func:`dense_retrieve`
is the MiniLM baseline shown beside it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize, feature_counts
from backend.errors import UserError

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


WEIGHTINGS = ("idf", "none")
RANKING_COLUMNS = ["row", "score", "n_overlap"]
WEIGHT_COLUMNS = ["feature_id", "query_act", "doc_freq", "idf", "weight"]


def inverse_document_frequency(X, threshold: float = 0.0) -> np.ndarray:
    """Smoothed IDF per feature, ``log((N + 1) / (df + 1)) + 1`` with df the documents where it fires.

    A feature firing in every document keeps weight ~1; one firing in a handful weighs ~log(N). The
    same formula as scikit-learn's ``smooth_idf``."""
    B = binarize(as_csr(X), threshold)
    n_docs = B.shape[0]
    return np.log((n_docs + 1.0) / (feature_counts(B) + 1.0)) + 1.0


@dataclass(frozen=True)
class QueryRanking:
    """A text query's document ranking and the feature weights that produced it.

    ``table``: row, score, n_overlap (best first). ``weights``: one row per query feature with
    feature_id, query_act (its activation in the query), doc_freq (documents where it fires), idf
    (1.0 everywhere under ``weighting="none"``) and weight (query_act x idf, the query vector's entry),
    heaviest first. ``weighting`` names the scheme used."""

    table: pd.DataFrame
    weights: pd.DataFrame
    weighting: str


def query_weights(X, query_features: dict[int, float], weighting: str = "idf", threshold: float = 0.0) -> pd.DataFrame:
    """The query vector a weighting makes of ``query_features``: see :class:`QueryRanking` ``weights``."""
    return _query_weights(as_csr(X), query_features, _check_weighting(weighting), threshold)[0]


def _check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise UserError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    return weighting


def _query_weights(X: sp.csr_matrix, query_features: dict[int, float], weighting: str,
                   threshold: float) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(weights frame, per-feature idf over the whole vocabulary or None for no weighting)."""
    q = {int(f): float(w) for f, w in query_features.items() if float(w) != 0.0}
    bad = [f for f in q if not 0 <= f < X.shape[1]]
    if bad:
        raise UserError(f"query feature ids {bad[:5]} are outside 0..{X.shape[1] - 1}")
    fids = np.array(sorted(q), dtype=np.int64)
    acts = np.array([q[f] for f in fids], dtype=np.float64)
    doc_freq = feature_counts(binarize(X[:, fids], threshold)) if fids.size else np.zeros(0, np.int64)
    idf = inverse_document_frequency(X, threshold) if weighting == "idf" else None
    f_idf = idf[fids] if idf is not None else np.ones(fids.size)
    frame = pd.DataFrame({"feature_id": fids, "query_act": acts, "doc_freq": doc_freq.astype(np.int64),
                          "idf": f_idf, "weight": acts * f_idf})
    order = np.lexsort((frame["feature_id"].to_numpy(), -frame["weight"].to_numpy()))
    return frame.iloc[order].reset_index(drop=True)[WEIGHT_COLUMNS], idf


def rank_by_query(
    X, query_features: dict[int, float], top: int = 50, weighting: str = "idf", threshold: float = 0.0
) -> QueryRanking:
    """Rank documents by cosine between a query's feature vector and each document row.

    ``query_features`` maps feature id -> activation (e.g. the max-pooled SAE encoding of the query
    text, ``Workspace.embed_text``). With ``weighting="idf"`` (default) query and document entries are
    multiplied by :func:`inverse_document_frequency`, so features that fire in most documents
    (punctuation, sentence starts, frequent words) stop drowning the query's rarer, topical features;
    ``"none"`` is plain cosine. Document norms use all of a row's (weighted) activations, so a document
    firing many unrelated features scores lower. Only documents sharing at least one query feature
    are ranked; ties go to the lower row. Features fire above ``threshold`` for document frequencies.
    """
    X = as_csr(X)
    weights, idf = _query_weights(X, query_features, _check_weighting(weighting), threshold)
    if weights.empty:
        return QueryRanking(_empty(RANKING_COLUMNS), weights, weighting)
    fids = weights["feature_id"].to_numpy()
    w = weights["weight"].to_numpy()
    sub = X[:, fids]
    if idf is not None:
        sub = sub @ sp.diags(idf[fids])
    dots = np.asarray(sub @ w).ravel()
    overlap = np.diff((sub != 0).tocsr().indptr) if sub.nnz else np.zeros(X.shape[0], np.int64)
    norms = row_norms(X, idf)
    scores = dots / np.maximum(norms * np.linalg.norm(w), 1e-12)
    cand = np.flatnonzero(overlap > 0)
    if cand.size == 0:
        return QueryRanking(_empty(RANKING_COLUMNS), weights, weighting)
    order = np.lexsort((cand, -scores[cand]))[:top]
    sel = cand[order]
    table = pd.DataFrame({"row": sel.astype(np.int64), "score": scores[sel], "n_overlap": overlap[sel].astype(np.int64)})
    return QueryRanking(table, weights, weighting)


def retrieve_by_vector(
    X, query_features: dict[int, float], top: int = 50, weighting: str = "idf", threshold: float = 0.0
) -> pd.DataFrame:
    """The ranking table of :func:`rank_by_query` (columns: row, score, n_overlap).

    IDF-weighted by default; ``weighting="none"`` is the earlier plain cosine."""
    return rank_by_query(X, query_features, top=top, weighting=weighting, threshold=threshold).table


def row_norms(X, column_weights: np.ndarray | None = None) -> np.ndarray:
    """L2 norm of each row of a sparse matrix (O(nnz)), optionally after scaling column j by
    ``column_weights[j]``."""
    X = as_csr(X)
    vals = X.data.astype(np.float64)
    if column_weights is not None:
        vals = vals * np.asarray(column_weights, dtype=np.float64)[X.indices]
    sq = sp.csr_matrix((vals**2, X.indices, X.indptr), shape=X.shape)
    return np.sqrt(np.asarray(sq.sum(axis=1)).ravel())
