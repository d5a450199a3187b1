"""What sets each cluster apart, feature by feature: the features over-represented in a cluster
(:func:`describe_clusters`, by share difference) and the SAE features most over- and under-represented
in any grouping of documents, ranked by a log-odds z (:func:`distinctive_features`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.errors import UserError


def describe_clusters(
    X,
    labels: np.ndarray,
    feature_ids=None,
    top: int = 10,
    threshold: float = 0.0,
    smoothing: float = 1.0,
) -> pd.DataFrame:
    """Over-represented features per cluster, computed with one sparse product.

    Columns: cluster, cluster_size, feature_id, n_in, in_share, out_share, diff (in - out),
    ratio ((n_in+s)/(size+s) over (n_out+s)/(rest+s), s=smoothing), rank within cluster
    (by diff). ``feature_ids`` restricts the candidate features.
    """
    B = binarize(as_csr(X), threshold)
    fids = np.arange(B.shape[1]) if feature_ids is None else np.asarray([int(f) for f in feature_ids])
    if feature_ids is not None:
        B = B[:, fids]
    labels = np.asarray(labels)
    n = B.shape[0]
    clusters, inv = np.unique(labels, return_inverse=True)
    if clusters.size * B.shape[1] > 100_000_000:
        raise ValueError("too many clusters x features to describe; pass feature_ids or fewer clusters")
    ind = sp.csr_matrix((np.ones(n, np.int32), (inv.ravel(), np.arange(n))), shape=(clusters.size, n))
    counts = np.asarray((ind @ B).toarray(), dtype=float)  # (n_clusters, F)
    total = counts.sum(axis=0)
    sizes = np.bincount(inv.ravel(), minlength=clusters.size).astype(float)
    frames = [_cluster_frame(c, sizes[ci], n - sizes[ci], counts[ci], total, fids, top, smoothing)
              for ci, c in enumerate(clusters)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cluster_frame(c, size: float, rest: float, n_in: np.ndarray, total: np.ndarray, fids: np.ndarray, top: int,
                   smoothing: float) -> pd.DataFrame:
    """One cluster's rows of :func:`describe_clusters`: its ``top`` features by share difference."""
    in_share = n_in / size
    out_share = (total - n_in) / rest if rest > 0 else np.zeros_like(n_in)
    diff = in_share - out_share
    ratio = ((n_in + smoothing) / (size + smoothing)) / ((total - n_in + smoothing) / (rest + smoothing))
    k = min(top, diff.size)
    sel = np.argpartition(-diff, k - 1)[:k] if k < diff.size else np.arange(diff.size)
    sel = sel[np.lexsort((fids[sel], -diff[sel]))]
    return pd.DataFrame(
        {
            "cluster": c,
            "cluster_size": int(size),
            "feature_id": fids[sel].astype(np.int64),
            "n_in": n_in[sel].astype(np.int64),
            "in_share": in_share[sel],
            "out_share": out_share[sel],
            "diff": diff[sel],
            "ratio": ratio[sel],
            "rank": np.arange(1, sel.size + 1),
        }
    )


READING_SIDES = ("over", "under")
READING_COLUMNS = ["cluster", "side", "rank", "feature_id", "n_in", "in_share", "out_share", "lift", "log_odds", "z"]


def _group_counts(X, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(groups, documents per group, (groups x features) count of documents where each feature fires)."""
    B = binarize(as_csr(X), threshold)
    groups, inv = np.unique(np.asarray(labels), return_inverse=True)
    if groups.size * B.shape[1] > 100_000_000:
        raise UserError("too many clusters x features to describe; ask for fewer clusters")
    n = B.shape[0]
    ind = sp.csr_matrix((np.ones(n, np.int32), (inv.ravel(), np.arange(n))), shape=(groups.size, n))
    return groups, np.bincount(inv.ravel(), minlength=groups.size).astype(float), np.asarray((ind @ B).toarray(), float)


def distinctive_features(X, labels, top: int = 5, min_support: int = 5, max_share: float = 0.5,
                         threshold: float = 0.0, prior: float = 0.5) -> pd.DataFrame:
    """Per group of ``labels``, the SAE features most over- and under-represented against the rest.

    Each feature's presence inside vs outside the group is a 2x2 table; its log-odds ratio (``prior``
    added to every cell) over its standard error is ``z``, which ranks (a large difference on few
    documents does not outrank a clear one on many). Near-constant features are skipped: those firing in
    more than ``max_share`` of all documents (punctuation, sentence starts) or in fewer than
    ``min_support``. An "over" feature must fire in at least ``min_support`` documents of the group;
    an "under" one must be expected there that often at its rate outside. Columns: cluster, side
    (over/under), rank, feature_id, n_in, in_share, out_share, lift (in_share / out_share, smoothed),
    log_odds, z."""
    if not 0 < max_share <= 1:
        raise UserError("max_share is a share of documents, in (0, 1]")
    groups, sizes, counts = _group_counts(X, labels, threshold)
    n, total = sizes.sum(), counts.sum(axis=0)
    common = (total >= min_support) & (total <= max_share * n)
    frames = []
    for gi, group in enumerate(groups):
        size, rest = sizes[gi], n - sizes[gi]
        n_in, n_out = counts[gi], total - counts[gi]
        a, b, c, d = n_in + prior, size - n_in + prior, n_out + prior, rest - n_out + prior
        log_odds = np.log(a / b) - np.log(c / d)
        z = log_odds / np.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
        out_share = n_out / max(rest, 1.0)
        ok = {"over": common & (n_in >= min_support) & (z > 0),
              "under": common & (out_share * size >= min_support) & (z < 0)}
        for side in READING_SIDES:
            cand = np.flatnonzero(ok[side])
            sel = cand[np.lexsort((cand, -np.abs(z[cand])))][:top]
            frames.append(pd.DataFrame({
                "cluster": int(group), "side": side, "rank": np.arange(1, sel.size + 1), "feature_id": sel.astype(np.int64),
                "n_in": n_in[sel].astype(np.int64), "in_share": n_in[sel] / size, "out_share": out_share[sel],
                "lift": (a[sel] / (size + 2 * prior)) / (c[sel] / (rest + 2 * prior)), "log_odds": log_odds[sel],
                "z": z[sel]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=READING_COLUMNS)
