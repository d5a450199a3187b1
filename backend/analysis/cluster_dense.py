"""Dense baselines: clustering document embeddings (e.g. MiniLM) with scikit-learn, and the agreement
(ARI, NMI) between two labelings, to compare concept clusters with topic clusters."""
from __future__ import annotations

import numpy as np

from backend.analysis.cluster_base import NOISE_LABEL, few_threads


def dense_cluster(embeddings: np.ndarray, n_clusters: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster dense (e.g. MiniLM) embeddings, L2-normalized first so Euclidean ~ cosine.

    Methods: kmeans, spectral (kNN affinity), agglomerative (Ward), hdbscan (n_clusters ignored,
    noise = NOISE_LABEL).
    """
    from sklearn import cluster as skc

    E = np.asarray(embeddings, dtype=np.float64)
    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    with few_threads(E.shape[0]):
        return _dense_cluster(E, n_clusters, method, seed)


def _dense_cluster(E: np.ndarray, n_clusters: int, method: str, seed: int) -> np.ndarray:
    from sklearn import cluster as skc

    if method == "kmeans":
        return skc.KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(E)
    if method == "spectral":
        nn = max(2, min(10, E.shape[0] - 1))
        return skc.SpectralClustering(
            n_clusters=n_clusters, affinity="nearest_neighbors", n_neighbors=nn, random_state=seed
        ).fit_predict(E)
    if method == "agglomerative":
        return skc.AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(E)
    if method == "hdbscan":
        lab = skc.HDBSCAN(min_cluster_size=max(2, min(E.shape[0], max(5, E.shape[0] // 100)))).fit_predict(E)
        return np.where(lab < 0, NOISE_LABEL, lab)
    raise ValueError(f"unknown method {method!r}")


def agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Adjusted Rand index and normalized mutual information between two labelings."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels, truth = np.asarray(labels), np.asarray(truth)
    return {
        "ari": float(adjusted_rand_score(truth, labels)),
        "nmi": float(normalized_mutual_info_score(truth, labels)),
        "n": int(labels.size),
    }
