"""What the clustering modules share: the label conventions (the none and noise groups, labels ordered by
size, how a label reads), documents as the unique binary patterns of the chosen features, exact blocked
nearest neighbours on such rows, and one thread for small problems."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from backend.analysis import as_csr, binarize

NONE_LABEL = -1  # no chosen feature fires in the document
NOISE_LABEL = -2  # HDBSCAN noise
MAX_CHOSEN_FEATURES = 2000


def cluster_name(label: int) -> str:
    """How a cluster label reads: "cluster 0", "none of the chosen concepts", "noise"."""
    if label == NONE_LABEL:
        return "none of the chosen concepts"
    if label == NOISE_LABEL:
        return "noise"
    return f"cluster {int(label)}"


@dataclass
class Patterns:
    """Unique non-empty binary patterns and the map from documents to them."""

    U: np.ndarray  # (u, k) bool, unique non-empty patterns
    counts: np.ndarray  # (u,) documents per pattern
    doc_pattern: np.ndarray  # (n,) pattern index per document, -1 for empty documents


def unique_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique rows, inverse, counts) of a 2-D array via a byte view (fast for bool/float)."""
    A = np.ascontiguousarray(A)
    if A.shape[1] == 0:
        return A[:1], np.zeros(A.shape[0], np.int64), np.array([A.shape[0]])
    packed = np.packbits(A, axis=1) if A.dtype == bool else A
    packed = np.ascontiguousarray(packed)
    view = packed.view(np.dtype((np.void, packed.dtype.itemsize * packed.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(view, return_index=True, return_inverse=True, return_counts=True)
    return A[first], inverse.ravel(), counts


def chosen_patterns(X, feature_ids, threshold: float = 0.0) -> Patterns:
    """Binarize the chosen columns of X and deduplicate document patterns."""
    feature_ids = [int(f) for f in feature_ids]
    if not feature_ids:
        raise ValueError("choose at least one feature")
    if len(feature_ids) > MAX_CHOSEN_FEATURES:
        raise ValueError(f"at most {MAX_CHOSEN_FEATURES} features can be chosen for clustering")
    dense = binarize(as_csr(X)[:, feature_ids], threshold).toarray().astype(bool)
    U, inverse, counts = unique_rows(dense)
    nonempty = U.any(axis=1)
    remap = np.full(U.shape[0], -1, np.int64)
    remap[nonempty] = np.arange(int(nonempty.sum()))
    return Patterns(U=U[nonempty], counts=counts[nonempty], doc_pattern=remap[inverse])


def knn_blocked(U: np.ndarray, k: int, metric: str = "jaccard", block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self excluded) by blocked matrix products.

    ``jaccard`` on boolean rows (no all-zero rows expected) or ``cosine`` on real rows.
    Returns (indices (u, k), similarities (u, k)), most similar first. Memory is
    ``block x u`` floats at a time.
    """
    u = U.shape[0]
    k = int(min(k, u - 1))
    if metric == "jaccard":
        A = U.astype(np.float32)
        sizes = A.sum(axis=1)
    else:
        A = U.astype(np.float32)
        A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
    idx_out = np.empty((u, k), np.int64)
    sim_out = np.empty((u, k), np.float32)
    for start in range(0, u, block):
        stop = min(start + block, u)
        sims = A[start:stop] @ A.T
        if metric == "jaccard":
            sims /= np.maximum(sizes[start:stop, None] + sizes[None, :] - sims, 1e-12)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # exclude self
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sims, nn, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx_out[start:stop] = np.take_along_axis(nn, order, axis=1)
        sim_out[start:stop] = np.take_along_axis(vals, order, axis=1)
    return idx_out, sim_out


def few_threads(n_points: int):
    """One OpenMP/BLAS thread for small problems: sklearn's thread start-up and spinning cost
    seconds on a busy machine, far more than the work itself."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n_points < 50_000 else contextlib.nullcontext()


def order_by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel non-negative labels 0..k-1 by decreasing size; negative labels are kept."""
    out = labels.copy()
    pos = labels >= 0
    if not pos.any():
        return out
    uniq, cnt = np.unique(labels[pos], return_counts=True)
    order = uniq[np.lexsort((uniq, -cnt))]
    mapping = {old: new for new, old in enumerate(order)}
    out[pos] = np.array([mapping[v] for v in labels[pos]])
    return out


def unit_rows(A: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)
