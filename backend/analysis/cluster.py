"""Clustering documents along chosen SAE features (the paper's "cluster by concept").

Each document is represented by the binarized activations of the chosen features only. With a
few dozen features many documents share an identical binary pattern, so all methods work on the
*unique patterns* weighted by how many documents carry them and map the result back:

- ``spectral`` (the paper's method): spectral clustering on Jaccard similarity. For up to
  ``DENSE_PATTERN_MAX`` unique patterns the pattern affinity is dense and the reduction is
  exact (the top eigenvectors of the n x n normalized Jaccard affinity are constant on
  duplicate rows and equal those of ``D^-1/2 C^1/2 W C^1/2 D^-1/2`` on patterns, with C the
  pattern counts and D = W c). Above that a sparse k-nearest-neighbour Jaccard graph over
  patterns (computed in blocks) replaces W.
- ``kmeans``: count-weighted k-means on the unique binary patterns (exact k-means on docs).
- ``hdbscan``: HDBSCAN on the documents' spectral embedding (noise gets ``NOISE_LABEL``).

Documents where none of the chosen features fires get ``NONE_LABEL`` (-1) and are excluded
from clustering. Cluster labels 0..k-1 are ordered by size, largest first.

:func:`cluster_along` is the front door (``Workspace.cluster``): the pattern methods above, or
``concepts``: the chosen features are first folded into concepts (backend.analysis.concepts) and
documents are grouped by which concepts they carry, the first split being "carries a concept" vs
"carries none". Its :class:`DocumentClusters` holds labels in document order and cluster descriptions.

Here: the pattern methods (:func:`cluster_documents`) and the front door (:func:`cluster_along`). The rest
lives beside it, one job each, and is re-exported here: ``cluster_base`` (label conventions, unique
patterns, blocked kNN), ``cluster_layout`` (the 2-D UMAP layout), ``cluster_describe`` (features
that set clusters apart), ``cluster_dense`` (dense-embedding baselines and agreement) and
``cluster_reading`` (any clustering read through SAE features and typical documents).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from backend.analysis import as_csr
from backend.analysis.cluster_base import (
    NOISE_LABEL, NONE_LABEL, Patterns, chosen_patterns, cluster_name, few_threads, knn_blocked, order_by_size,
    unit_rows)
from backend.analysis.concepts import Concept, ConceptConfig, concept_presence, describe_by_concepts, fold_concepts
from backend.errors import UserError
# Re-exported: `from backend.analysis.cluster import X` keeps working for every public name it had.
from backend.analysis.cluster_base import MAX_CHOSEN_FEATURES  # noqa: F401
from backend.analysis.cluster_dense import agreement, dense_cluster  # noqa: F401
from backend.analysis.cluster_describe import (  # noqa: F401
    READING_COLUMNS, READING_SIDES, describe_clusters, distinctive_features)
from backend.analysis.cluster_layout import umap_2d  # noqa: F401
from backend.analysis.cluster_reading import (  # noqa: F401
    ClusterReading, about_names, cluster_dense_read, read_clusters, typical_documents)

DENSE_PATTERN_MAX = 3000  # unique patterns up to which the Jaccard affinity is dense (exact)
KNN_NEIGHBORS = 30
K_MAX = 15


@dataclass
class ClusterResult:
    """Cluster assignment per document plus diagnostics."""

    labels: np.ndarray
    n_clusters: int
    method: str
    suggested_k: int | None
    silhouette: float
    feature_ids: list[int]
    n_unique_patterns: int
    n_empty: int
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    exact: bool = True  # False when the kNN affinity approximation was used


# --------------------------------------------------------------------------- patterns & affinity


def _jaccard_block(Ub: np.ndarray, U: np.ndarray, sizes_b: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    inter = Ub.astype(np.float32) @ U.astype(np.float32).T
    return inter / (sizes_b[:, None] + sizes[None, :] - inter)


def pattern_affinity(U: np.ndarray, n_neighbors: int = KNN_NEIGHBORS) -> tuple[sp.spmatrix | np.ndarray, bool]:
    """Jaccard affinity between unique non-empty patterns: dense if small, else symmetric kNN.

    Returns (W, exact). The diagonal is 1 (a pattern is identical to itself).
    """
    u = U.shape[0]
    sizes = U.sum(axis=1).astype(np.float32)
    if u <= DENSE_PATTERN_MAX:
        return _jaccard_block(U, U, sizes, sizes).astype(np.float64), True
    idx, sim = knn_blocked(U, n_neighbors, "jaccard")
    rows = np.repeat(np.arange(u), idx.shape[1])
    W = sp.csr_matrix((sim.ravel().astype(np.float64), (rows, idx.ravel())), shape=(u, u))
    W = W.maximum(W.T) + sp.identity(u, format="csr")
    W.eliminate_zeros()
    return W.tocsr(), False


def _normalized(W, counts: np.ndarray):
    """M = D^-1/2 C^1/2 W C^1/2 D^-1/2 with D = W c (document-level degrees)."""
    c = counts.astype(float)
    deg = np.asarray(W @ c).ravel()
    s = np.sqrt(c) / np.sqrt(np.maximum(deg, 1e-12))
    if sp.issparse(W):
        S = sp.diags(s)
        return (S @ W @ S).tocsr()
    return W * s[:, None] * s[None, :]


def _top_eigen(M, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``k`` eigenpairs of symmetric M, eigenvalues descending."""
    u = M.shape[0]
    k = max(1, min(k, u))
    if u <= 500 or k >= u - 1:
        dense = M.toarray() if sp.issparse(M) else M
        vals, vecs = np.linalg.eigh(dense)
        vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    else:
        v0 = np.random.default_rng(seed).random(u)
        vals, vecs = eigsh(M, k=k, which="LA", v0=v0, tol=1e-6, maxiter=u * 20)
        order = np.argsort(-vals)
        vals, vecs = vals[order], vecs[:, order]
    return vals, vecs


def eigengap_k(eigenvalues: np.ndarray, k_max: int = K_MAX) -> int:
    """Number of clusters from the largest gap among the top affinity eigenvalues (k >= 2)."""
    ev = np.sort(np.asarray(eigenvalues))[::-1]
    if ev.size < 3:
        return max(1, min(2, ev.size))
    kk = min(k_max, ev.size - 1)  # candidate k = 2..kk, gap_k = lambda_k - lambda_{k+1}
    gaps = ev[1:kk] - ev[2 : kk + 1]
    return int(np.argmax(gaps)) + 2 if gaps.size else 2


def suggest_k(X, feature_ids, threshold: float = 0.0, k_max: int = K_MAX, seed: int = 0) -> int:
    """Eigengap heuristic on the count-weighted normalized Jaccard affinity of patterns."""
    pats = chosen_patterns(X, feature_ids, threshold)
    if pats.U.shape[0] < 2:
        return pats.U.shape[0]
    with few_threads(pats.U.shape[0]):
        W, _ = pattern_affinity(pats.U)
        vals, _ = _top_eigen(_normalized(W, pats.counts), k_max + 1, seed)
    return min(eigengap_k(vals, k_max), pats.U.shape[0])


# --------------------------------------------------------------------------- clustering


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed)
    with few_threads(points.shape[0]):
        return km.fit_predict(points, sample_weight=weights)


def _silhouette(pats: Patterns, labels: np.ndarray, seed: int, sample: int = 2000) -> float:
    from sklearn.metrics import silhouette_score

    keep = np.flatnonzero(labels >= 0)
    if keep.size < 3 or np.unique(labels[keep]).size < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    if keep.size > sample:
        keep = rng.choice(keep, sample, replace=False)
    lab = labels[keep]
    if np.unique(lab).size < 2 or np.unique(lab).size >= keep.size:
        return float("nan")
    rows = pats.U[pats.doc_pattern[keep]]
    try:
        return float(silhouette_score(rows, lab, metric="jaccard"))
    except ValueError:
        return float("nan")


def cluster_documents(
    X,
    feature_ids,
    method: str = "spectral",
    n_clusters: int | None = None,
    threshold: float = 0.0,
    seed: int = 0,
    min_cluster_size: int | None = None,
) -> ClusterResult:
    """Cluster documents by which of ``feature_ids`` fire (binarized at ``threshold``).

    ``n_clusters=None`` uses the eigengap suggestion (ignored by ``hdbscan``). Documents with
    no chosen feature active get label ``NONE_LABEL`` (-1); HDBSCAN noise gets ``NOISE_LABEL``.
    ``min_cluster_size`` (HDBSCAN only) defaults to max(15, 5% of the clustered documents), capped at their number.
    """
    if method not in {"spectral", "kmeans", "hdbscan"}:
        raise ValueError(f"unknown method {method!r}")
    feature_ids = [int(f) for f in feature_ids]
    pats = chosen_patterns(X, feature_ids, threshold)
    u = pats.U.shape[0]
    labels = np.full(pats.doc_pattern.size, NONE_LABEL, np.int64)
    base = dict(method=method, feature_ids=feature_ids, n_unique_patterns=u, n_empty=int((pats.doc_pattern < 0).sum()))
    if u <= 1:  # nothing fires, or one pattern: no clustering to do
        labels[pats.doc_pattern >= 0] = 0
        return ClusterResult(labels=labels, n_clusters=u, suggested_k=u, silhouette=float("nan"), **base)
    with few_threads(u):
        W, exact = pattern_affinity(pats.U)
        k_req = None if n_clusters is None else max(1, min(int(n_clusters), u))
        vals, vecs = _top_eigen(_normalized(W, pats.counts), min(max(K_MAX + 1, k_req or 0), u), seed)
    suggested = min(eigengap_k(vals, K_MAX), u)
    labels = order_by_size(_assign(method, pats, vecs, k_req or suggested, seed, min_cluster_size, labels))
    return ClusterResult(labels=labels, n_clusters=int(np.unique(labels[labels >= 0]).size), suggested_k=suggested,
                         silhouette=_silhouette(pats, labels, seed), eigenvalues=vals, exact=exact, **base)


def _assign(method: str, pats: Patterns, vecs: np.ndarray, k: int, seed: int, min_cluster_size: int | None,
            labels: np.ndarray) -> np.ndarray:
    """Document labels (``labels`` filled in place for documents with a pattern) by one method."""
    has = pats.doc_pattern >= 0
    if method == "hdbscan":  # on the documents' spectral embedding
        from sklearn.cluster import HDBSCAN

        docs = np.flatnonzero(has)
        emb = unit_rows(vecs[:, :max(2, k)])
        min_size = min_cluster_size or max(2, min(docs.size, max(15, docs.size // 20)))
        with few_threads(docs.size):
            hl = HDBSCAN(min_cluster_size=min_size, copy=True).fit_predict(emb[pats.doc_pattern[docs]])
        labels[docs] = np.where(hl < 0, NOISE_LABEL, hl)
        return labels
    points = pats.U.astype(float) if method == "kmeans" else unit_rows(vecs[:, :k])
    plab = _weighted_kmeans(points, pats.counts, k, seed) if k > 1 else np.zeros(pats.U.shape[0], int)
    labels[has] = plab[pats.doc_pattern[has]]
    return labels


# --------------------------------------------------------------------------- along concepts (front door)

METHODS = ("concepts", "spectral", "kmeans", "hdbscan")
CLUSTER_COLUMNS = ["cluster", "name", "size", "share", "top_concepts", "top_features"]


@dataclass(eq=False)
class DocumentClusters:
    """Documents grouped along chosen concepts, with what describes each group.

    ``labels``: one per document, in row (doc_id) order: 0..n_clusters-1 by decreasing size,
    ``NONE_LABEL`` (-1) for documents carrying none of the chosen concepts (an explicit group, never
    dropped; under ``concepts``, background concepts do not count), ``NOISE_LABEL`` (-2) for HDBSCAN
    noise. ``clusters``: one row per group (clusters first,
    then none, then noise) with name, size, share of documents, and the ids of the concepts (and their
    lead features) more common inside than outside, strongest first. ``descriptions``: per group, the
    top concepts with n_in, in_share, out_share, diff (see ``describe_by_concepts``) plus name and
    cluster_size. ``concepts``: the chosen features folded into concepts (the pattern methods fold
    them too, for the descriptions). ``suggested_k``: the eigengap suggestion, counted like ``k``.
    ``detail``: the underlying :class:`ClusterResult` (silhouette, eigenvalues, exactness); under
    ``concepts`` its "features" are concept ids.
    """

    labels: np.ndarray
    method: str
    concepts: list[Concept]
    clusters: pd.DataFrame
    descriptions: pd.DataFrame
    suggested_k: int | None
    detail: ClusterResult

    @property
    def n_clusters(self) -> int:
        """Clusters of documents that carry something (the none and noise groups not counted)."""
        return int(np.unique(self.labels[self.labels >= 0]).size)

    @property
    def n_none(self) -> int:
        return int((self.labels == NONE_LABEL).sum())

    def rows(self, label: int) -> np.ndarray:
        """Rows (doc ids) of one group."""
        return np.flatnonzero(self.labels == int(label))


def cluster_along(X, feature_ids, k: int | None = None, method: str = "concepts", groups: list[list[int]] | None = None,
                  config: ConceptConfig = ConceptConfig(), seed: int = 0, min_cluster_size: int | None = None,
                  describe_top: int = 5) -> DocumentClusters:
    """Cluster documents along chosen features (and explicit concept ``groups``).

    ``method="concepts"``: the features are folded into concepts (each of ``groups`` as given, the
    rest by co-firing, see ``ConceptConfig``); a document's representation is which non-background
    concepts it carries. Documents carrying none form the explicit none group, which counts toward
    ``k``: with ``k=2`` the groups are "carries a chosen concept" vs "carries none", so choosing one
    concept family (e.g. thirty hedge-word features given as one group, or whose other members are
    too common to split documents) separates documents that have it from those that do not. It
    follows the concept as well as the chosen features do: a chosen feature that also fires on
    unrelated documents pulls them in (its ``out_share`` in the descriptions shows it). Larger ``k``
    splits the carriers by their concept patterns (spectral on Jaccard). ``k`` is capped by the
    number of distinct patterns; ``None`` uses the eigengap suggestion (+1 for the none group).

    ``method`` in spectral / kmeans / hdbscan: :func:`cluster_documents` on the raw feature
    patterns, as before (``k`` counts clusters of documents where some feature fires; the none
    group comes on top; hdbscan ignores ``k``).
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if k is not None and int(k) < 2:
        raise UserError("ask for at least 2 clusters (or none, for the suggestion)")
    X = as_csr(X)
    concepts = fold_concepts(X, feature_ids, groups, config)
    presence = concept_presence(X, concepts, config.threshold)
    if method == "concepts":
        detail, suggested = _split_by_concepts(presence, concepts, k, seed)
    else:
        chosen = list(dict.fromkeys([int(f) for f in feature_ids] + [int(f) for g in groups or [] for f in g]))
        detail = cluster_documents(X, chosen, method=method, n_clusters=k, threshold=config.threshold, seed=seed,
                                   min_cluster_size=min_cluster_size)
        suggested = detail.suggested_k
    labels = detail.labels
    desc = _descriptions(presence, labels, concepts, describe_top)
    return DocumentClusters(labels=labels, method=method, concepts=concepts, clusters=_cluster_table(labels, desc),
                            descriptions=desc, suggested_k=suggested, detail=detail)


def _split_by_concepts(presence: sp.csr_matrix, concepts: list[Concept], k: int | None,
                       seed: int) -> tuple[ClusterResult, int | None]:
    """Spectral clustering of the documents by the non-background concepts they carry; the none group is
    one of the ``k``. Returns the clustering and the suggested k (counting the none group)."""
    split = [c.concept_id for c in concepts if not c.background]
    carries = presence[:, split].getnnz(axis=1) > 0
    extra = int(not carries.all())  # the none group is one of the k
    detail = cluster_documents(presence, split, method="spectral", n_clusters=None if k is None else max(1, int(k) - extra),
                               threshold=0.0, seed=seed)
    return detail, None if detail.suggested_k is None else detail.suggested_k + extra


def _descriptions(presence: sp.csr_matrix, labels: np.ndarray, concepts: list[Concept], top: int) -> pd.DataFrame:
    """:func:`describe_by_concepts` per group (clusters first, then none, then noise) with name and size."""
    desc = describe_by_concepts(presence, labels, concepts, top=top)
    group = desc["cluster"].to_numpy()
    desc = desc.iloc[np.lexsort((desc["rank"].to_numpy(), np.abs(group), group < 0))].reset_index(drop=True)
    sizes = pd.Series(labels).value_counts()
    desc.insert(1, "name", [cluster_name(int(c)) for c in desc["cluster"]])
    desc.insert(2, "cluster_size", [int(sizes[int(c)]) for c in desc["cluster"]])
    return desc


def _cluster_table(labels: np.ndarray, desc: pd.DataFrame) -> pd.DataFrame:
    present = np.unique(labels)
    order = [int(c) for c in present if c >= 0] + [int(c) for c in (NONE_LABEL, NOISE_LABEL) if c in present]
    n = max(labels.size, 1)
    rows = []
    for c in order:
        over = desc[(desc["cluster"] == c) & (desc["diff"] > 0)]
        size = int((labels == c).sum())
        rows.append((c, cluster_name(c), size, size / n, tuple(int(x) for x in over["concept_id"]),
                     tuple(int(x) for x in over["lead_feature"])))
    return pd.DataFrame(rows, columns=CLUSTER_COLUMNS)
