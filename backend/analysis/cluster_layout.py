"""The 2-D layout of documents (UMAP) for the cluster map: identical rows are laid out once on an exact
nearest-neighbour graph, duplicates jittered, empty rows set apart."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.analysis.cluster_base import MAX_CHOSEN_FEATURES, few_threads, knn_blocked, unique_rows


def umap_2d(
    X_or_dense,
    seed: int = 0,
    metric: str = "jaccard",
    feature_ids=None,
    threshold: float = 0.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
) -> np.ndarray:
    """2-D UMAP layout, one row per document.

    Input is a sparse activation matrix (optionally restricted to ``feature_ids``; binarized
    for ``jaccard``) or a dense array (e.g. sentence embeddings, use ``cosine``). Identical rows
    are embedded once (exact blocked kNN passed to UMAP) and duplicates get a small seeded
    jitter, which keeps 20k documents over a few dozen features fast. Rows with nothing active,
    and points UMAP leaves disconnected, share one spot below-left of the layout.
    ``umap`` is imported lazily (the import is slow).
    """
    uniq, inverse, counts = unique_rows(_layout_rows(X_or_dense, metric, feature_ids, threshold))
    rng = np.random.default_rng(seed)
    # rows with nothing active (jaccard) or zero norm (cosine) have no neighbours: laid out apart
    empty = ~(uniq != 0).any(axis=1)
    base = np.full((uniq.shape[0], 2), np.nan)
    base[~empty] = _layout_unique(uniq[~empty], metric, seed, n_neighbors, min_dist, n_epochs)
    lost = _place_lost(base)
    out = base[inverse].astype(np.float64)
    dup = (counts[inverse] > 1) | lost[inverse]
    if dup.any():
        scale = 0.02 * max(float(np.nanstd(base)), 1e-3)
        out[dup] += rng.normal(scale=scale, size=(int(dup.sum()), 2))
    return out


def _layout_rows(X_or_dense, metric: str, feature_ids, threshold: float) -> np.ndarray:
    """The rows :func:`umap_2d` lays out: the chosen columns, binary for ``jaccard``, as a dense array."""
    if metric not in {"jaccard", "cosine"}:
        raise ValueError("metric must be 'jaccard' or 'cosine'")
    if sp.issparse(X_or_dense):
        Xs = as_csr(X_or_dense)
        if feature_ids is not None:
            Xs = Xs[:, [int(f) for f in feature_ids]]
        if Xs.shape[1] > MAX_CHOSEN_FEATURES:
            raise ValueError("restrict to a few chosen features before a UMAP layout")
        return binarize(Xs, threshold).toarray().astype(bool) if metric == "jaccard" else Xs.toarray()
    data = np.asarray(X_or_dense)
    if feature_ids is not None:
        data = data[:, [int(f) for f in feature_ids]]
    return data > threshold if metric == "jaccard" else data.astype(np.float32)


def _place_lost(base: np.ndarray) -> np.ndarray:
    """Rows of the layout ``base`` without a position get one spot below-left of the others (in place);
    returns which rows those were."""
    lost = ~np.isfinite(base).all(axis=1)  # empty rows and vertices UMAP left disconnected (NaN)
    if lost.any():
        ok = base[~lost]
        lo = ok.min(axis=0) if ok.size else np.zeros(2)
        span = (ok.max(axis=0) - lo) if ok.size else np.ones(2)
        base[lost] = lo - 0.1 * np.maximum(span, 1e-3)  # one spot below-left of the layout
    return lost


def _layout_unique(
    uniq: np.ndarray, metric: str, seed: int, n_neighbors: int, min_dist: float, n_epochs: int | None
) -> np.ndarray:
    """UMAP on distinct non-empty rows with an exact precomputed kNN (tiny inputs: a circle)."""
    u = uniq.shape[0]
    if u <= 3:
        angle = 2 * np.pi * np.arange(u) / max(u, 1)
        return np.c_[np.cos(angle), np.sin(angle)] if u > 1 else np.zeros((u, 2))
    import umap  # lazy: importing umap/numba costs seconds

    nn = int(min(n_neighbors, u - 1))
    with few_threads(u):
        idx, sim = knn_blocked(uniq, nn - 1, metric)  # UMAP's kNN lists include the point itself first
    knn_idx = np.c_[np.arange(u), idx]
    knn_dist = np.c_[np.zeros(u, np.float32), np.clip(1.0 - sim, 0.0, None)].astype(np.float32)
    if n_epochs is None:
        n_epochs = 200 if u <= 10_000 else 120
    reducer = umap.UMAP(
        n_components=2,
        metric=metric,
        n_neighbors=nn,
        min_dist=min_dist,
        random_state=seed,
        n_epochs=n_epochs,
        init="spectral" if u > nn + 2 else "random",
        precomputed_knn=(knn_idx, knn_dist, None),
        low_memory=True,
        verbose=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reducer.fit_transform(uniq.astype(np.float32))
