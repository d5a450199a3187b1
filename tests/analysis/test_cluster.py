"""Tests of backend.analysis.cluster on planted clusters."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from backend.analysis import cluster as cl


def planted(n_per: int = 200, k: int = 3, seed: int = 0, n_empty: int = 30):
    """k clusters; cluster c fires features 5c..5c+4 with p=0.7, other chosen ones with p=0.05.

    Returns X (n x 40, chosen features are 0..5k-1, the rest is noise), truth, chosen ids.
    """
    rng = np.random.default_rng(seed)
    F = 40
    truth = np.repeat(np.arange(k), n_per)
    p = np.full((truth.size, F), 0.05)
    for c in range(k):
        p[truth == c, 5 * c : 5 * c + 5] = 0.7
    p[:, 5 * k :] = 0.3  # unchosen features: irrelevant
    fire = rng.random(p.shape) < p
    dense = np.where(fire, rng.uniform(0.1, 2.0, p.shape), 0.0)
    empty = np.zeros((n_empty, F))
    empty[:, 5 * k :] = dense[:n_empty, 5 * k :]  # active only on unchosen features
    X = sp.csr_matrix(np.r_[dense, empty])
    return X, np.r_[truth, np.full(n_empty, -1)], list(range(5 * k))


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
def test_planted_clusters_recovered(method):
    X, truth, chosen = planted()
    res = cl.cluster_documents(X, chosen, method=method, n_clusters=3, seed=0)
    empty = truth == -1
    assert (res.labels[empty] == cl.NONE_LABEL).all()
    assert res.n_empty >= empty.sum()
    ok = res.labels >= 0
    assert cl.agreement(res.labels[ok & ~empty], truth[ok & ~empty])["ari"] >= 0.9
    assert res.n_clusters == 3
    assert res.silhouette > 0.1
    sizes = np.bincount(res.labels[ok])
    assert (np.diff(sizes) <= 0).all()  # labels ordered by size


def test_spectral_suggests_k_and_knn_path_agrees(monkeypatch):
    X, truth, chosen = planted(seed=1)
    res = cl.cluster_documents(X, chosen, method="spectral", seed=0)
    assert res.suggested_k == 3 and res.n_clusters == 3 and res.exact
    assert cl.suggest_k(X, chosen) == 3
    monkeypatch.setattr(cl, "DENSE_PATTERN_MAX", 10)  # force the sparse kNN affinity
    res2 = cl.cluster_documents(X, chosen, method="spectral", n_clusters=3, seed=0)
    assert not res2.exact
    m = truth >= 0
    assert cl.agreement(res2.labels[m], truth[m])["ari"] >= 0.9


def test_duplicate_patterns_match_explicit_spectral_on_all_documents():
    """The pattern reduction is exact: same eigenvalues as the n x n normalized Jaccard affinity."""
    X, _, chosen = planted(n_per=30, n_empty=0, seed=2)
    B = (X[:, chosen] > 0).toarray().astype(float)
    inter = B @ B.T
    sz = B.sum(1)
    keep = sz > 0
    B, inter, sz = B[keep], inter[np.ix_(keep, keep)], sz[keep]
    W = inter / (sz[:, None] + sz[None, :] - inter)
    d = W.sum(1)
    full = np.sort(np.linalg.eigvalsh(W / np.sqrt(d[:, None] * d[None, :])))[::-1][:5]
    res = cl.cluster_documents(X, chosen, method="spectral", n_clusters=3)
    np.testing.assert_allclose(res.eigenvalues[:5], full, atol=1e-8)


def test_no_active_documents_and_single_pattern():
    X = sp.csr_matrix(np.zeros((5, 4)))
    res = cl.cluster_documents(X, [0, 1])
    assert (res.labels == cl.NONE_LABEL).all() and res.n_clusters == 0
    X = sp.csr_matrix(np.array([[1.0, 0], [1.0, 0], [0, 0]]))
    res = cl.cluster_documents(X, [0, 1])
    assert list(res.labels) == [0, 0, cl.NONE_LABEL]


def test_hdbscan_runs_and_finds_planted_groups():
    X, truth, chosen = planted(seed=3)
    res = cl.cluster_documents(X, chosen, method="hdbscan", seed=0)
    assert res.labels.shape == truth.shape
    assert (res.labels[truth == -1] == cl.NONE_LABEL).all()
    m = (res.labels >= 0) & (truth >= 0)
    assert m.sum() > 0.5 * (truth >= 0).sum()
    assert cl.agreement(res.labels[m], truth[m])["ari"] >= 0.8


def test_describe_clusters_finds_defining_features():
    X, truth, chosen = planted(seed=4)
    lab = np.where(truth >= 0, truth, -1)
    d = cl.describe_clusters(X, lab, top=5)
    for c in range(3):
        top = d[d["cluster"] == c]
        assert set(top["feature_id"]) == set(range(5 * c, 5 * c + 5))
        assert (top["in_share"] > top["out_share"]).all()
        assert (top["rank"].to_numpy() == np.arange(1, 6)).all()
    d2 = cl.describe_clusters(X, lab, feature_ids=[0, 1, 20], top=2)
    assert set(d2["feature_id"]) <= {0, 1, 20}
    row = d2[(d2["cluster"] == 0) & (d2["feature_id"] == 0)].iloc[0]
    inside = (X[lab == 0][:, 0] > 0).toarray().mean()
    assert row["in_share"] == pytest.approx(inside)


def test_dense_cluster_and_agreement():
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:3] * 5
    truth = np.repeat(np.arange(3), 40)
    E = centers[truth] + rng.normal(scale=0.3, size=(truth.size, 8))
    for method in ["kmeans", "agglomerative", "spectral"]:
        assert cl.agreement(cl.dense_cluster(E, 3, method), truth)["ari"] == pytest.approx(1.0)
    a = cl.agreement(np.r_[np.zeros(60), np.ones(60)], truth)
    assert 0 < a["ari"] < 1 and 0 < a["nmi"] < 1


def test_umap_2d_tiny_without_umap():
    X = sp.csr_matrix(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0], [0, 0]]))
    xy = cl.umap_2d(X)
    assert xy.shape == (5, 2) and np.isfinite(xy).all()
    assert np.linalg.norm(xy[0] - xy[1]) < 0.2  # duplicates jittered, not moved apart


@pytest.mark.slow
def test_umap_2d_separates_planted_clusters():
    X, truth, chosen = planted(n_per=60, n_empty=5)
    xy = cl.umap_2d(X, feature_ids=chosen, seed=0)
    assert xy.shape == (X.shape[0], 2) and np.isfinite(xy).all()
    m = truth >= 0
    from sklearn.metrics import silhouette_score

    assert silhouette_score(xy[m], truth[m]) > 0.3
