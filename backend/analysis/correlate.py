"""Feature co-occurrence by normalized pointwise mutual information (NPMI).

``npmi(a, b) = log(p_ab / (p_a p_b)) / -log(p_ab)`` over documents (a feature is present when
its activation is ``> threshold``); 1 = always together, 0 = independent, -1 = never together.

``npmi_pairs`` never materializes the feature x feature co-occurrence matrix: features below
``min_count`` are dropped, and the upper triangle is counted in row blocks of ``block`` features
(``block x n_features`` counts at a time), keeping only the best pairs of each block. With numba
available (a umap-learn dependency) the per-document pair loop is compiled and blocks run on
``n_jobs`` threads; otherwise a slower scipy sparse-product fallback is used.
"""
from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize, feature_counts

try:  # numba ships with umap-learn; everything works without it, only slower
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

MAX_BITSET_FEATURES = 4096
PAIR_COLUMNS = ["feature_a", "feature_b", "count_a", "count_b", "count_ab", "npmi"]


def npmi_from_counts(c_ab, c_a, c_b, n: int) -> np.ndarray:
    """Vectorized NPMI from document counts (-1 where c_ab == 0, 0 where c_ab == n)."""
    c_ab, c_a, c_b = (np.asarray(v, dtype=float) for v in (c_ab, c_a, c_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c_ab) + np.log(n) - np.log(c_a) - np.log(c_b)
        out = pmi / (np.log(n) - np.log(c_ab))
    out = np.where(c_ab <= 0, -1.0, out)
    return np.where(c_ab >= n, 0.0, out)


# --------------------------------------------------------------------------- numba kernels

if HAVE_NUMBA:

    @njit(nogil=True, cache=True)
    def _remap_rows(indptr, indices, newid, h):  # pragma: no cover - compiled
        """Renumber columns by ``newid`` (-1 drops), ids < h first; rows stay sorted because
        ``newid`` is increasing within [0, h) and within [h, ...) in original column order."""
        n = indptr.size - 1
        indptr2 = np.zeros(n + 1, np.int64)
        for d in range(n):
            k = 0
            for p in range(indptr[d], indptr[d + 1]):
                if newid[indices[p]] >= 0:
                    k += 1
            indptr2[d + 1] = indptr2[d] + k
        out = np.empty(indptr2[n], np.int32)
        for d in range(n):
            k = indptr2[d]
            for p in range(indptr[d], indptr[d + 1]):
                v = newid[indices[p]]
                if 0 <= v < h:
                    out[k] = v
                    k += 1
            for p in range(indptr[d], indptr[d + 1]):
                v = newid[indices[p]]
                if v >= h:
                    out[k] = v
                    k += 1
        return indptr2, out

    @njit(nogil=True, cache=True)
    def _build_bits(indptr, indices, h, n_words):  # pragma: no cover - compiled
        """Document bitsets (h x n_words uint64) of the first ``h`` (frequent) features."""
        bits = np.zeros((h, n_words), np.uint64)
        for d in range(indptr.size - 1):
            w = d >> 6
            bit = np.uint64(1) << np.uint64(d & 63)
            for p in range(indptr[d], indptr[d + 1]):
                v = indices[p]
                if v >= h:
                    break
                bits[v, w] |= bit
        return bits

    @njit(inline="always")
    def _popcount(x):  # pragma: no cover - compiled
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @njit(nogil=True, cache=True)
    def _fill_bits(bits, f0, f1, out):  # pragma: no cover - compiled
        """out[i - f0, j] = |docs(i) & docs(j)| for frequent features f0 <= i < f1, i < j < h."""
        h, w = bits.shape
        for i in range(f0, f1):
            bi = bits[i]
            for j in range(i + 1, h):
                bj = bits[j]
                c = np.uint64(0)
                for k in range(w):
                    c += _popcount(bi[k] & bj[k])
                out[i - f0, j] = c

    @njit(nogil=True, cache=True)
    def _count_block(indptr, indices, f0, f1, h, out):  # pragma: no cover - compiled
        """out[i - f0, j] += 1 per document holding i < j, f0 <= i < f1, skipping pairs with both
        i and j < h (those come from the bitsets)."""
        n = indptr.size - 1
        for d in range(n):
            s = indptr[d]
            e = indptr[d + 1]
            p = s + np.searchsorted(indices[s:e], f0)
            ph = s + np.searchsorted(indices[s:e], h)
            while p < e:
                i = indices[p]
                if i >= f1:
                    break
                r = i - f0
                q0 = p + 1 if i >= h else max(p + 1, ph)
                for q in range(q0, e):
                    out[r, indices[q]] += 1
                p += 1

    @njit(nogil=True, cache=True)
    def _scan_block(out, f0, counts, logc, logn, lid, min_co, tau, collect):  # pragma: no cover
        """Row maxima of NPMI (collect=False) or all entries with NPMI >= tau (collect=True)."""
        b, F = out.shape
        rowmax = np.full(b, -2.0)
        n_hit = 0
        for r in range(b):
            i = f0 + r
            if i >= F:
                break
            for j in range(i + 1, F):
                c = out[r, j]
                if c < min_co or lid[i] == lid[j]:
                    continue
                den = logn - logc[c]
                v = (logc[c] + logn - logc[counts[i]] - logc[counts[j]]) / den if den > 0 else 0.0
                if v > rowmax[r]:
                    rowmax[r] = v
                if collect and v >= tau:
                    n_hit += 1
        ii = np.empty(n_hit, np.int64)
        jj = np.empty(n_hit, np.int64)
        cc = np.empty(n_hit, np.int64)
        vv = np.empty(n_hit, np.float64)
        if collect:
            k = 0
            for r in range(b):
                i = f0 + r
                if i >= F:
                    break
                for j in range(i + 1, F):
                    c = out[r, j]
                    if c < min_co or lid[i] == lid[j]:
                        continue
                    den = logn - logc[c]
                    v = (logc[c] + logn - logc[counts[i]] - logc[counts[j]]) / den if den > 0 else 0.0
                    if v >= tau:
                        ii[k] = i
                        jj[k] = j
                        cc[k] = c
                        vv[k] = v
                        k += 1
        return rowmax, ii, jj, cc, vv


# --------------------------------------------------------------------------- helpers


def _norm_label(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(label).lower()).strip()


def _label_ids(feature_ids: np.ndarray, labels: dict | None) -> np.ndarray:
    """Integer id per feature; features with the same normalized label share an id."""
    out = np.arange(feature_ids.size, dtype=np.int64) + 1_000_000_000  # unique by default
    if not labels:
        return out
    seen: dict[str, int] = {}
    for k, f in enumerate(feature_ids):
        lab = labels.get(int(f))
        if lab is None or not _norm_label(lab):
            continue
        out[k] = seen.setdefault(_norm_label(lab), len(seen))
    return out


def _compact(B: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """Keep only columns in ``keep`` (bool), renumbered in original order (indices stay sorted)."""
    idmap = np.full(B.shape[1], -1, dtype=np.int64)
    idmap[keep] = np.arange(int(keep.sum()))
    mapped = idmap[B.indices]
    ok = mapped >= 0
    ck = np.zeros(B.nnz + 1, dtype=np.int64)
    np.cumsum(ok, out=ck[1:])
    return sp.csr_matrix(
        (np.ones(int(ok.sum()), np.int32), mapped[ok].astype(np.int32), ck[B.indptr]),
        shape=(B.shape[0], int(keep.sum())),
    )


class _TopPairs:
    """Thread-safe running top-k of (i, j, count, npmi) candidates."""

    def __init__(self, k: int):
        self.k = k
        self.lock = threading.Lock()
        self.parts: tuple[np.ndarray, ...] = tuple(np.zeros(0, t) for t in (np.int64, np.int64, np.int64, float))

    @property
    def tau(self) -> float:
        v = self.parts[3]
        return float(v.min()) if v.size >= self.k else -np.inf

    def add(self, ii, jj, cc, vv) -> None:
        with self.lock:
            parts = tuple(np.concatenate([a, b]) for a, b in zip(self.parts, (ii, jj, cc, vv)))
            if parts[3].size > self.k:  # keep ties with the k-th value: deterministic final order
                kth = np.partition(parts[3], parts[3].size - self.k)[parts[3].size - self.k]
                sel = parts[3] >= kth
                parts = tuple(p[sel] for p in parts)
            self.parts = parts


# --------------------------------------------------------------------------- public API


def npmi_pairs(
    X,
    threshold: float = 0.0,
    min_count: int = 5,
    top: int = 100,
    exclude_same_label: dict[int, str] | None = None,
    min_cooccur: int | None = None,
    block: int = 1024,
    n_jobs: int | None = None,
    engine: str = "auto",
    dense_share: float = 0.03,
) -> pd.DataFrame:
    """Top feature pairs by NPMI (unexpectedly frequent co-occurrence).

    Both features must fire in >= ``min_count`` documents and co-occur in >= ``min_cooccur``
    (default ``min_count``) documents. Pairs whose labels are identical after normalization
    (``exclude_same_label``: feature id -> label) are skipped, which hides redundant latents.
    ``engine``: "auto" (numba if available), "numba" or "scipy"; with numba, pair counts of
    features firing in >= ``dense_share`` of documents come from document bitsets (popcount
    of AND), the rest from a per-document pair loop. Columns: feature_a <
    feature_b, count_a, count_b, count_ab, npmi; sorted by npmi then count_ab, descending.
    """
    B = binarize(as_csr(X), threshold)
    n = B.shape[0]
    min_co = max(1, int(min_count if min_cooccur is None else min_cooccur))
    counts_all = feature_counts(B)
    keep = counts_all >= max(1, min_count)
    if int(keep.sum()) < 2 or n == 0 or top <= 0:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    use_numba = HAVE_NUMBA and engine in ("auto", "numba")
    if engine == "numba" and not HAVE_NUMBA:
        raise RuntimeError("numba is not installed")
    best = _TopPairs(top)
    if use_numba:
        fids = _pairs_numba(B, counts_all, np.flatnonzero(keep), best, exclude_same_label, min_co, block, n_jobs,
                            dense_share)
    else:
        fids = _pairs_scipy(B, counts_all, keep, best, exclude_same_label, min_co, block)
    return _pairs_frame(best, fids, counts_all, top)


def _pairs_numba(B: sp.csr_matrix, counts_all: np.ndarray, fids: np.ndarray, best: _TopPairs,
                 labels: dict | None, min_co: int, block: int, n_jobs: int | None, dense_share: float) -> np.ndarray:
    """Fill ``best`` with the numba engine; returns the compact id -> feature id map its pairs use.

    Frequent features come first: their pair counts come from document bitsets (popcount)."""
    n = B.shape[0]
    dense = fids[counts_all[fids] >= dense_share * n]
    if dense.size > MAX_BITSET_FEATURES:
        dense = np.sort(dense[np.argsort(-counts_all[dense], kind="stable")[:MAX_BITSET_FEATURES]])
    h = int(dense.size)
    is_dense = np.zeros(B.shape[1], bool)
    is_dense[dense] = True
    fids = np.r_[dense, fids[~is_dense[fids]]]  # compact id -> original id
    newid = np.full(B.shape[1], -1, np.int64)
    newid[fids] = np.arange(fids.size)
    indptr, indices = _remap_rows(B.indptr.astype(np.int64), B.indices, newid, h)
    bits = _build_bits(indptr, indices, h, (n + 63) // 64)
    counts, lid = counts_all[fids], _label_ids(fids, labels)
    logc = np.log(np.maximum(np.arange(n + 1), 1)).astype(np.float64)
    logc[0] = -np.inf
    dtype, logn, top = np.uint16 if n < 65535 else np.int32, float(np.log(n)), best.k

    def run(f0: int) -> None:
        out = np.zeros((min(block, fids.size - f0), fids.size), dtype=dtype)
        f1 = f0 + out.shape[0]
        if f0 < h:
            _fill_bits(bits, f0, min(f1, h), out)
        _count_block(indptr, indices, f0, f1, h, out)
        rowmax, *_ = _scan_block(out, f0, counts, logc, logn, lid, min_co, 0.0, False)
        valid = rowmax[rowmax > -2.0]
        tau0 = np.partition(valid, valid.size - top)[valid.size - top] if valid.size >= top else -np.inf
        tau = max(tau0, best.tau)
        _, ii, jj, cc, vv = _scan_block(out, f0, counts, logc, logn, lid, min_co, tau if np.isfinite(tau) else -1.0,
                                        True)
        best.add(ii, jj, cc, vv)

    starts = list(range(0, fids.size, block))
    workers = max(1, min(n_jobs or min(2, os.cpu_count() or 1), len(starts)))
    if workers == 1:
        for f0 in starts:
            run(f0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return fids


def _pairs_scipy(B: sp.csr_matrix, counts_all: np.ndarray, keep: np.ndarray, best: _TopPairs,
                 labels: dict | None, min_co: int, block: int) -> np.ndarray:
    """Fill ``best`` from sparse products, a block of features at a time; returns compact id -> feature id."""
    n, fids = B.shape[0], np.flatnonzero(keep)
    Bk = _compact(B, keep)
    counts, lid = counts_all[fids], _label_ids(fids, labels)
    Bc = Bk.tocsc()
    for f0 in range(0, fids.size, block):
        f1 = min(f0 + block, fids.size)
        C = (Bc[:, f0:f1].T @ Bk).tocoo()
        m = (C.col > C.row + f0) & (C.data >= min_co)
        ii, jj, cc = C.row[m] + f0, C.col[m], C.data[m].astype(np.int64)
        m2 = lid[ii] != lid[jj]
        ii, jj, cc = ii[m2], jj[m2], cc[m2]
        best.add(ii, jj, cc, npmi_from_counts(cc, counts[ii], counts[jj], n))
    return fids


def _pairs_frame(best: _TopPairs, fids: np.ndarray, counts_all: np.ndarray, top: int) -> pd.DataFrame:
    """The ``top`` pairs as a table, feature_a < feature_b, by npmi then count_ab (descending)."""
    ii, jj, cc, vv = best.parts
    a, b = np.minimum(fids[ii], fids[jj]), np.maximum(fids[ii], fids[jj])
    df = pd.DataFrame(
        {
            "feature_a": a.astype(np.int64),
            "feature_b": b.astype(np.int64),
            "count_a": counts_all[a],
            "count_b": counts_all[b],
            "count_ab": cc,
            "npmi": vv,
        }
    )
    df = df.sort_values(["npmi", "count_ab", "feature_a", "feature_b"], ascending=[False, False, True, True])
    return df.head(top).reset_index(drop=True)


def npmi_with(
    X,
    feature_id: int,
    top: int = 20,
    threshold: float = 0.0,
    min_count: int = 5,
    min_cooccur: int = 1,
    counts: np.ndarray | None = None,
) -> pd.DataFrame:
    """Features most associated (by NPMI) with one feature: one sparse row gather + bincount.

    ``counts`` (documents per feature at this threshold) can be passed to skip one O(nnz)
    pass. Columns: feature_id, count, count_ab, npmi (partner features with >= ``min_count``
    documents, sorted by npmi descending; the feature itself is excluded).
    """
    X = as_csr(X)
    B = binarize(X, threshold)
    n = B.shape[0]
    f = int(feature_id)
    counts = feature_counts(B) if counts is None else np.asarray(counts)
    col = X[:, [f]].tocoo()
    rows = col.row[col.data > threshold]
    if rows.size == 0:
        return pd.DataFrame(columns=["feature_id", "count", "count_ab", "npmi"])
    co = np.bincount(B[rows].indices, minlength=B.shape[1])
    cand = np.flatnonzero((co >= max(1, min_cooccur)) & (counts >= min_count))
    cand = cand[cand != f]
    v = npmi_from_counts(co[cand], counts[f], counts[cand], n)
    order = np.lexsort((cand, -co[cand], -v))[:top]
    return pd.DataFrame(
        {"feature_id": cand[order].astype(np.int64), "count": counts[cand[order]],
         "count_ab": co[cand[order]], "npmi": v[order]}
    )


def npmi_for_pairs(X, pairs, threshold: float = 0.0) -> np.ndarray:
    """NPMI for an explicit list of (feature_a, feature_b) pairs."""
    B = binarize(as_csr(X), threshold)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    feats = np.unique(pairs)
    sub = B[:, feats].tocsc()
    pos = {int(f): k for k, f in enumerate(feats)}
    rows = [sub.indices[sub.indptr[k]:sub.indptr[k + 1]] for k in range(feats.size)]
    c_a = np.array([rows[pos[int(a)]].size for a, _ in pairs])
    c_b = np.array([rows[pos[int(b)]].size for _, b in pairs])
    c_ab = np.array([np.intersect1d(rows[pos[int(a)]], rows[pos[int(b)]], assume_unique=True).size for a, b in pairs])
    return npmi_from_counts(c_ab, c_a, c_b, B.shape[0])


def feature_vs_metadata(
    X,
    meta_column: pd.Series,
    top: int = 20,
    threshold: float = 0.0,
    min_count: int = 5,
    max_categories: int = 50,
) -> pd.DataFrame:
    """Per metadata value, the features most associated with it (NPMI of presence x category).

    Uses the ``max_categories`` most frequent non-null values. Columns: category,
    n_category, feature_id, count_feature, count_both, share_in_category, share_overall,
    npmi, rank (within category).
    """
    B = binarize(as_csr(X), threshold)
    n = B.shape[0]
    col = pd.Series(meta_column).reset_index(drop=True)
    if len(col) != n:
        raise ValueError("meta_column must have one value per document")
    cats = col.value_counts(dropna=True).index[:max_categories]
    code = pd.Categorical(col, categories=cats).codes
    rows = np.flatnonzero(code >= 0)
    ind = sp.csr_matrix((np.ones(rows.size, np.int32), (code[rows], rows)), shape=(len(cats), n))
    both = np.asarray((ind @ B).toarray(), dtype=np.int64)
    counts = feature_counts(B)
    n_cat = np.bincount(code[rows], minlength=len(cats))
    frames = []
    for k, cat in enumerate(cats):
        cand = np.flatnonzero((counts >= min_count) & (both[k] > 0))
        if cand.size == 0:
            continue
        v = npmi_from_counts(both[k, cand], n_cat[k], counts[cand], n)
        order = np.lexsort((cand, -both[k, cand], -v))[:top]
        sel = cand[order]
        frames.append(
            pd.DataFrame(
                {
                    "category": cat,
                    "n_category": int(n_cat[k]),
                    "feature_id": sel.astype(np.int64),
                    "count_feature": counts[sel],
                    "count_both": both[k, sel],
                    "share_in_category": both[k, sel] / n_cat[k],
                    "share_overall": counts[sel] / n,
                    "npmi": v[order],
                    "rank": np.arange(1, sel.size + 1),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


QUICK_SCIPY_MAX_NNZ = 2_000_000  # below this the sparse-product engine is fast and needs no JIT compilation


def quick_engine(X) -> str:
    """The npmi_pairs engine that answers an interactive request soonest: the sparse-product engine for
    small corpora (numba's first call compiles for seconds), "auto" beyond QUICK_SCIPY_MAX_NNZ entries."""
    return "scipy" if as_csr(X).nnz <= QUICK_SCIPY_MAX_NNZ else "auto"


def cofiring_documents(X, feature_a: int, feature_b: int, threshold: float = 0.0) -> np.ndarray:
    """Rows where both features fire (> threshold), strongest pair first.

    A document's strength is the weaker of the two activations, each scaled to that feature's peak in the
    corpus, so a document ranks high only when *both* fire strongly (a sum would let one feature carry it).
    Ties go to the lower row."""
    sub = as_csr(X)[:, [int(feature_a), int(feature_b)]].toarray()
    both = np.flatnonzero((sub[:, 0] > threshold) & (sub[:, 1] > threshold))
    peak = np.maximum(sub.max(axis=0), 1e-9)
    strength = (sub[both] / peak).min(axis=1)
    return both[np.lexsort((both, -strength))].astype(np.int64)
