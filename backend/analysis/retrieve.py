"""Property-based retrieval: documents by SAE features, by a text query's features, and dense baselines.

A text query becomes its max-pooled SAE features; :func:`rank_by_query` ranks documents by cosine
with IDF-weighted query and document vectors (TF-IDF's idea: a feature firing in nearly every document
says little about relevance), and returns the weights so a page can show them. :func:`dense_retrieve`
is the MiniLM baseline shown beside it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import ndtri  # the standard normal's quantile function

from backend.analysis import as_csr, binarize, feature_counts
from backend.errors import UserError, check_count

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
        raise UserError(f"mode must be 'and' or 'or', not {mode!r}")
    top = checked_top(top)
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


def checked_query(query: str) -> str:
    """The query text, or a UserError when it has no text: an empty query would rank by noise."""
    if not isinstance(query, str) or not query.strip():
        raise UserError("The query is empty; type a few words that describe the documents you want.")
    return query


def checked_top(top: int, what: str = "documents") -> int:
    """How many documents (or `what`) to return, or a UserError: `top=-1` sliced off the last document, `top=2.5`
    raised a TypeError from inside numpy."""
    return check_count(top, f"top is how many {what} to return", 1)


def dense_retrieve(query_vec: np.ndarray, doc_vecs: np.ndarray, top: int = 50) -> pd.DataFrame:
    """Cosine similarity of one dense query vector to every document vector. Columns: row, score."""
    top = checked_top(top)
    sims = cosine_scores(query_vec, doc_vecs)
    k = min(top, sims.size)
    part = np.argpartition(-sims, k - 1)[:k] if 0 < k < sims.size else np.arange(sims.size)
    sel = part[np.lexsort((part, -sims[part]))][:k]
    return pd.DataFrame({"row": sel.astype(np.int64), "score": sims[sel]})


def cosine_scores(query_vec: np.ndarray, doc_vecs: np.ndarray) -> np.ndarray:
    """Cosine of one dense query vector with every document vector (0 for a zero vector)."""
    q = np.asarray(query_vec, dtype=np.float64).ravel()
    D = np.asarray(doc_vecs, dtype=np.float64)
    return (D @ q) / np.maximum(np.linalg.norm(D, axis=1) * np.linalg.norm(q), 1e-12)


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
    top = checked_top(top)
    weights, scores, overlap = query_scores(X, query_features, weighting, threshold)
    cand = np.flatnonzero(overlap > 0)
    if cand.size == 0:
        return QueryRanking(_empty(RANKING_COLUMNS), weights, weighting)
    order = np.lexsort((cand, -scores[cand]))[:top]
    sel = cand[order]
    table = pd.DataFrame({"row": sel.astype(np.int64), "score": scores[sel], "n_overlap": overlap[sel].astype(np.int64)})
    return QueryRanking(table, weights, weighting)


def query_scores(
    X, query_features: dict[int, float], weighting: str = "idf", threshold: float = 0.0
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(query weights, every document's score, every document's number of shared query features).

    The scores of :func:`rank_by_query` for all rows (0 where no query feature fires), for fusing
    with another ranking."""
    X = as_csr(X)
    weights, idf = _query_weights(X, query_features, _check_weighting(weighting), threshold)
    if weights.empty:
        return weights, np.zeros(X.shape[0]), np.zeros(X.shape[0], np.int64)
    fids = weights["feature_id"].to_numpy()
    w = weights["weight"].to_numpy()
    sub = X[:, fids]
    if idf is not None:
        sub = sub @ sp.diags(idf[fids])
    dots = np.asarray(sub @ w).ravel()
    overlap = np.diff((sub != 0).tocsr().indptr) if sub.nnz else np.zeros(X.shape[0], np.int64)
    scores = dots / np.maximum(row_norms(X, idf) * np.linalg.norm(w), 1e-12)
    return weights, scores, overlap


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


# --------------------------------------------------------------------------- hybrid: SAE + dense fused

FUSIONS = ("adaptive", "zscore", "rrf")
RRF_K = 60  # Cormack, Clarke & Buettcher (2009): 1 / (60 + rank)
CLARITY_K = 50  # documents in the top tail that decides a ranker's weight under "adaptive"


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every row by decreasing score, ties to the lower row."""
    order = np.lexsort((np.arange(scores.size), -scores))
    ranks = np.empty(scores.size, np.int64)
    ranks[order] = np.arange(1, scores.size + 1)
    return ranks


def _standardized(scores: np.ndarray, robust: bool = False) -> np.ndarray:
    """(score - centre) / spread over all documents: mean and std, or median and 1.4826 x MAD (the std of
    a normal) when ``robust``, so the relevant documents themselves do not widen the spread. Zeros when
    the scores do not vary."""
    centre, spread = float(scores.mean()), float(scores.std())
    if robust:
        median = float(np.median(scores))
        mad = 1.4826 * float(np.median(np.abs(scores - median)))
        centre, spread = median, (mad if mad > 1e-12 else spread)
    return (scores - centre) / spread if spread > 1e-12 else np.zeros_like(scores)


def tail_excess(z: np.ndarray, k: int = CLARITY_K) -> float:
    """How far a ranker's top ``k`` standardized scores stand above the top ``k`` of as many normal draws.

    ~0 for a ranker whose scores are noise for this query (its best documents are just the largest of many
    draws), large when a group of documents stands apart: a query-performance estimate from the score
    distribution alone (no relevance labels), the weight of that ranker under ``fusion="adaptive"``."""
    n = z.size
    k = int(min(k, n))
    if k == 0:
        return 0.0
    top = np.partition(z, n - k)[n - k:].mean()
    expected = ndtri(1 - (np.arange(1, k + 1) - 0.375) / (n + 0.25)).mean()  # Blom's normal order statistics
    return max(float(top - expected), 0.0)


def log_scaled(scores: np.ndarray) -> np.ndarray:
    """log(score + a tenth of the median score): scores that are non-negative with a long right tail (an IDF-
    weighted cosine over sparse features: most documents near 0, a few far out) brought near a normal bulk.
    :func:`tail_excess` compares a ranker's top to normal order statistics, and such a tail stands above them
    even where the ranker is noise for the query. Scores with a negative value are returned as they are."""
    if scores.size == 0 or float(scores.min()) < 0:
        return scores
    positive = scores[scores > 0]
    floor = 0.1 * float(np.median(scores)) if float(np.median(scores)) > 0 else (
        0.1 * float(positive.min()) if positive.size else 1.0)
    return np.log(scores + floor)


def _fusion_terms(vectors: dict[str, np.ndarray], ranks: dict[str, np.ndarray], fusion: str,
                  rrf_k: int, log_scale: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Each ranker's term of the fused score, before the user's weights."""
    if fusion == "rrf":
        return {n: 1.0 / (rrf_k + r) for n, r in ranks.items()}
    if fusion == "zscore":
        return {n: _standardized(v) for n, v in vectors.items()}
    z = {n: _standardized(log_scaled(v) if n in log_scale else v, robust=True) for n, v in vectors.items()}
    clarity = {n: tail_excess(v) for n, v in z.items()}
    total = sum(clarity.values())
    share = {n: (c / total if total > 0 else 1.0 / len(z)) for n, c in clarity.items()}
    return {n: share[n] * z[n] for n in z}


def fuse_scores(scores: dict[str, np.ndarray], top: int = 50, fusion: str = "adaptive",
                weights: dict[str, float] | None = None, rrf_k: int = RRF_K,
                log_scale: Collection[str] = ()) -> pd.DataFrame:
    """One ranking from several rankers' scores of every document, best first.

    ``fusion="adaptive"`` (default): each ranker's scores are standardized robustly (median, MAD) and
    summed, weighted by :func:`tail_excess`, how clearly its best documents stand apart for this query.
    So a query is led by the signal that separates documents (MiniLM on a topic, SAE features on a
    property such as hedging, where every sentence looks alike to MiniLM), and both count when both do.
    ``"zscore"``: the unweighted sum of standardized scores (CombSUM); ``"rrf"``: reciprocal rank fusion, sum
    of 1 / (rrf_k + rank). Both weigh a ranker that is noise for this query as much as one that is not. ``weights``
    scale each ranker's term (default 1). ``log_scale``: the rankers whose scores the adaptive fusion reads on a
    log scale (:func:`log_scaled`; the SAE's, in :func:`hybrid_ranking`). Columns: row, score, and per ranker
    ``<name>_rank`` (1-based, over all documents) and ``<name>_score``; ties go to the lower row."""
    if fusion not in FUSIONS:
        raise UserError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
    top = checked_top(top)
    vectors = {n: np.asarray(v, dtype=np.float64).ravel() for n, v in scores.items()}
    sizes = {v.size for v in vectors.values()}
    if len(sizes) != 1:
        raise UserError(f"every ranker must score the same documents, got sizes {sorted(sizes)}")
    n_docs = sizes.pop()
    ranks = {n: _ranks(v) for n, v in vectors.items()}
    terms = _fusion_terms(vectors, ranks, fusion, rrf_k, log_scale)
    fused = sum((weights or {}).get(n, 1.0) * t for n, t in terms.items())
    sel = np.lexsort((np.arange(n_docs), -fused))[:top]
    out = pd.DataFrame({"row": sel.astype(np.int64), "score": fused[sel]})
    for n in vectors:
        out[f"{n}_rank"] = ranks[n][sel]
        out[f"{n}_score"] = vectors[n][sel]
    return out


def explain_hits(X, weights: pd.DataFrame, rows, top: int = 5, threshold: float = 0.0) -> pd.DataFrame:
    """Which of the query's features make each hit relevant to it, strongest first.

    ``weights``: the query's features (:func:`query_weights`: feature_id, idf, weight). A feature's
    contribution to a document is its term of the SAE score's dot product, activation x idf x query
    weight; ``shares`` are those terms over the document's whole dot product (they sum to 1 over all
    the shared features, of which the ``top`` strongest are listed). Columns: row, feature_ids,
    shares (tuples, aligned), n_shared."""
    X = as_csr(X)
    rows = np.asarray(rows, dtype=np.int64)
    fids = weights["feature_id"].to_numpy(np.int64)
    if fids.size == 0 or rows.size == 0:
        return pd.DataFrame({"row": rows, "feature_ids": [()] * rows.size, "shares": [()] * rows.size,
                             "n_shared": np.zeros(rows.size, np.int64)})
    term = (weights["idf"].to_numpy() * weights["weight"].to_numpy())
    acts = X[rows][:, fids].toarray()
    contrib = np.where(acts > threshold, acts, 0.0) * term
    total = contrib.sum(axis=1)
    ids, shares = [], []
    for r in range(rows.size):
        order = np.lexsort((fids, -contrib[r]))[:top]
        order = order[contrib[r, order] > 0]
        ids.append(tuple(int(f) for f in fids[order]))
        shares.append(tuple(float(x) for x in contrib[r, order] / max(total[r], 1e-12)))
    return pd.DataFrame({"row": rows, "feature_ids": ids, "shares": shares,
                         "n_shared": (contrib > 0).sum(axis=1).astype(np.int64)})


HYBRID_COLUMNS = ["row", "score", "sae_rank", "dense_rank", "sae_score", "dense_score", "features", "why"]


def hybrid_ranking(X, weights: pd.DataFrame, sae_scores: np.ndarray, dense_scores: np.ndarray,
                   labels: dict[int, str] | None = None, top: int = 50, fusion: str = "adaptive",
                   n_why: int = 3) -> pd.DataFrame:
    """The SAE and dense rankings of one query fused (:func:`fuse_scores`), each hit explained.

    ``weights``/``sae_scores``: :func:`query_scores` of the query; ``dense_scores``: e.g. MiniLM cosines
    (:func:`cosine_scores`). Columns: row, score (fused), sae_rank, dense_rank (1-based over all
    documents), sae_score, dense_score, features (the query features present in the document that
    weigh most in its SAE score, :func:`explain_hits`) and why (those features as "label (share)")."""
    fused = fuse_scores({"sae": sae_scores, "dense": dense_scores}, top=top, fusion=fusion, log_scale=("sae",))
    hits = explain_hits(X, weights, fused["row"].to_numpy(), top=n_why)
    labels = labels or {}
    fused["features"] = hits["feature_ids"].to_numpy()
    fused["why"] = [" · ".join(f"{labels.get(f) or f'feature {f}'} ({s:.0%})" for f, s in zip(ids, shares))
                    for ids, shares in zip(hits["feature_ids"], hits["shares"])]
    return fused[HYBRID_COLUMNS]
