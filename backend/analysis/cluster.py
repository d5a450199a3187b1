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
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from backend.analysis import as_csr, binarize
from backend.analysis.concepts import Concept, ConceptConfig, concept_presence, describe_by_concepts, fold_concepts
from backend.errors import UserError

NONE_LABEL = -1  # no chosen feature fires in the document
NOISE_LABEL = -2  # HDBSCAN noise
DENSE_PATTERN_MAX = 3000  # unique patterns up to which the Jaccard affinity is dense (exact)
KNN_NEIGHBORS = 30
MAX_CHOSEN_FEATURES = 2000
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


@dataclass
class Patterns:
    """Unique non-empty binary patterns and the map from documents to them."""

    U: np.ndarray  # (u, k) bool, unique non-empty patterns
    counts: np.ndarray  # (u,) documents per pattern
    doc_pattern: np.ndarray  # (n,) pattern index per document, -1 for empty documents


# --------------------------------------------------------------------------- patterns & affinity


def _unique_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    U, inverse, counts = _unique_rows(dense)
    nonempty = U.any(axis=1)
    remap = np.full(U.shape[0], -1, np.int64)
    remap[nonempty] = np.arange(int(nonempty.sum()))
    return Patterns(U=U[nonempty], counts=counts[nonempty], doc_pattern=remap[inverse])


def _jaccard_block(Ub: np.ndarray, U: np.ndarray, sizes_b: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    inter = Ub.astype(np.float32) @ U.astype(np.float32).T
    return inter / (sizes_b[:, None] + sizes[None, :] - inter)


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
    with _few_threads(pats.U.shape[0]):
        W, _ = pattern_affinity(pats.U)
        vals, _ = _top_eigen(_normalized(W, pats.counts), k_max + 1, seed)
    return min(eigengap_k(vals, k_max), pats.U.shape[0])


# --------------------------------------------------------------------------- clustering


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed)
    with _few_threads(points.shape[0]):
        return km.fit_predict(points, sample_weight=weights)


def _few_threads(n_points: int):
    """One OpenMP/BLAS thread for small problems: sklearn's thread start-up and spinning cost
    seconds on a busy machine, far more than the work itself."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1) if n_points < 50_000 else contextlib.nullcontext()


def _order_by_size(labels: np.ndarray) -> np.ndarray:
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
    with _few_threads(u):
        W, exact = pattern_affinity(pats.U)
        k_req = None if n_clusters is None else max(1, min(int(n_clusters), u))
        vals, vecs = _top_eigen(_normalized(W, pats.counts), min(max(K_MAX + 1, k_req or 0), u), seed)
    suggested = min(eigengap_k(vals, K_MAX), u)
    labels = _order_by_size(_assign(method, pats, vecs, k_req or suggested, seed, min_cluster_size, labels))
    return ClusterResult(labels=labels, n_clusters=int(np.unique(labels[labels >= 0]).size), suggested_k=suggested,
                         silhouette=_silhouette(pats, labels, seed), eigenvalues=vals, exact=exact, **base)


def _unit_rows(A: np.ndarray) -> np.ndarray:
    return A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-12)


def _assign(method: str, pats: Patterns, vecs: np.ndarray, k: int, seed: int, min_cluster_size: int | None,
            labels: np.ndarray) -> np.ndarray:
    """Document labels (``labels`` filled in place for documents with a pattern) by one method."""
    has = pats.doc_pattern >= 0
    if method == "hdbscan":  # on the documents' spectral embedding
        from sklearn.cluster import HDBSCAN

        docs = np.flatnonzero(has)
        emb = _unit_rows(vecs[:, :max(2, k)])
        min_size = min_cluster_size or max(2, min(docs.size, max(15, docs.size // 20)))
        with _few_threads(docs.size):
            hl = HDBSCAN(min_cluster_size=min_size, copy=True).fit_predict(emb[pats.doc_pattern[docs]])
        labels[docs] = np.where(hl < 0, NOISE_LABEL, hl)
        return labels
    points = pats.U.astype(float) if method == "kmeans" else _unit_rows(vecs[:, :k])
    plab = _weighted_kmeans(points, pats.counts, k, seed) if k > 1 else np.zeros(pats.U.shape[0], int)
    labels[has] = plab[pats.doc_pattern[has]]
    return labels


# --------------------------------------------------------------------------- along concepts (front door)

METHODS = ("concepts", "spectral", "kmeans", "hdbscan")
CLUSTER_COLUMNS = ["cluster", "name", "size", "share", "top_concepts", "top_features"]


def cluster_name(label: int) -> str:
    """How a cluster label reads: "cluster 0", "none of the chosen concepts", "noise"."""
    if label == NONE_LABEL:
        return "none of the chosen concepts"
    if label == NOISE_LABEL:
        return "noise"
    return f"cluster {int(label)}"


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


def cluster_along(
    X,
    feature_ids,
    k: int | None = None,
    method: str = "concepts",
    groups: list[list[int]] | None = None,
    config: ConceptConfig = ConceptConfig(),
    seed: int = 0,
    min_cluster_size: int | None = None,
    describe_top: int = 5,
) -> DocumentClusters:
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
        split = [c.concept_id for c in concepts if not c.background]
        carries = presence[:, split].getnnz(axis=1) > 0
        extra = int(not carries.all())  # the none group is one of the k
        detail = cluster_documents(presence, split, method="spectral", n_clusters=None if k is None else max(1, int(k) - extra),
                                   threshold=0.0, seed=seed)
        suggested = None if detail.suggested_k is None else detail.suggested_k + extra
    else:
        chosen = list(dict.fromkeys([int(f) for f in feature_ids] + [int(f) for g in groups or [] for f in g]))
        detail = cluster_documents(X, chosen, method=method, n_clusters=k, threshold=config.threshold, seed=seed,
                                   min_cluster_size=min_cluster_size)
        suggested = detail.suggested_k
    labels = detail.labels
    desc = describe_by_concepts(presence, labels, concepts, top=describe_top)
    group = desc["cluster"].to_numpy()
    desc = desc.iloc[np.lexsort((desc["rank"].to_numpy(), np.abs(group), group < 0))].reset_index(drop=True)
    sizes = pd.Series(labels).value_counts()
    desc.insert(1, "name", [cluster_name(int(c)) for c in desc["cluster"]])
    desc.insert(2, "cluster_size", [int(sizes[int(c)]) for c in desc["cluster"]])
    return DocumentClusters(labels=labels, method=method, concepts=concepts, clusters=_cluster_table(labels, desc),
                            descriptions=desc, suggested_k=suggested, detail=detail)


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


# --------------------------------------------------------------------------- projection & description


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
    if metric not in {"jaccard", "cosine"}:
        raise ValueError("metric must be 'jaccard' or 'cosine'")
    if sp.issparse(X_or_dense):
        Xs = as_csr(X_or_dense)
        if feature_ids is not None:
            Xs = Xs[:, [int(f) for f in feature_ids]]
        if Xs.shape[1] > MAX_CHOSEN_FEATURES:
            raise ValueError("restrict to a few chosen features before a UMAP layout")
        data = binarize(Xs, threshold).toarray().astype(bool) if metric == "jaccard" else Xs.toarray()
    else:
        data = np.asarray(X_or_dense)
        if feature_ids is not None:
            data = data[:, [int(f) for f in feature_ids]]
        data = data > threshold if metric == "jaccard" else data.astype(np.float32)
    uniq, inverse, counts = _unique_rows(data)
    rng = np.random.default_rng(seed)
    # rows with nothing active (jaccard) or zero norm (cosine) have no neighbours: laid out apart
    empty = ~(uniq != 0).any(axis=1)
    base = np.full((uniq.shape[0], 2), np.nan)
    base[~empty] = _layout_unique(uniq[~empty], metric, seed, n_neighbors, min_dist, n_epochs)
    lost = ~np.isfinite(base).all(axis=1)  # empty rows and vertices UMAP left disconnected (NaN)
    if lost.any():
        ok = base[~lost]
        lo = ok.min(axis=0) if ok.size else np.zeros(2)
        span = (ok.max(axis=0) - lo) if ok.size else np.ones(2)
        base[lost] = lo - 0.1 * np.maximum(span, 1e-3)  # one spot below-left of the layout
    out = base[inverse].astype(np.float64)
    dup = (counts[inverse] > 1) | lost[inverse]
    if dup.any():
        scale = 0.02 * max(float(np.nanstd(base)), 1e-3)
        out[dup] += rng.normal(scale=scale, size=(int(dup.sum()), 2))
    return out


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
    with _few_threads(u):
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
    frames = []
    for ci, c in enumerate(clusters):
        size, rest = sizes[ci], n - sizes[ci]
        n_in = counts[ci]
        in_share = n_in / size
        out_share = (total - n_in) / rest if rest > 0 else np.zeros_like(n_in)
        diff = in_share - out_share
        ratio = ((n_in + smoothing) / (size + smoothing)) / ((total - n_in + smoothing) / (rest + smoothing))
        k = min(top, diff.size)
        sel = np.argpartition(-diff, k - 1)[:k] if k < diff.size else np.arange(diff.size)
        sel = sel[np.lexsort((fids[sel], -diff[sel]))]
        frames.append(
            pd.DataFrame(
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
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------- dense baselines


def dense_cluster(embeddings: np.ndarray, n_clusters: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster dense (e.g. MiniLM) embeddings, L2-normalized first so Euclidean ~ cosine.

    Methods: kmeans, spectral (kNN affinity), agglomerative (Ward), hdbscan (n_clusters ignored,
    noise = NOISE_LABEL).
    """
    from sklearn import cluster as skc

    E = np.asarray(embeddings, dtype=np.float64)
    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    with _few_threads(E.shape[0]):
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


# --------------------------------------------------------------------------- any clustering read through SAE features

READING_SIDES = ("over", "under")
READING_COLUMNS = ["cluster", "side", "rank", "feature_id", "n_in", "in_share", "out_share", "lift", "log_odds", "z"]


@dataclass(eq=False)
class ClusterReading:
    """Clusters made by any method (MiniLM k-means, concepts, spectral, HDBSCAN …) read through SAE features.

    ``labels``: one per document (negative: the none / noise groups, described like the clusters).
    ``clusters``: one row per group: cluster, name, size, share, over and under (the ids of its most
    over- and under-represented features, strongest first). ``features``: :func:`distinctive_features`
    plus a ``label`` column. ``documents``: :func:`typical_documents` (cluster, rank, row, similarity)."""

    labels: np.ndarray
    method: str
    clusters: pd.DataFrame
    features: pd.DataFrame
    documents: pd.DataFrame


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


def typical_documents(vectors, labels, n: int = 3) -> pd.DataFrame:
    """Per group, the ``n`` documents closest (cosine) to the mean of its L2-normalized members.

    ``vectors``: dense document vectors (e.g. MiniLM) or a sparse SAE matrix (its binary presence is
    used). Columns: cluster, rank, row, similarity."""
    labels = np.asarray(labels)
    if sp.issparse(vectors):
        B = binarize(as_csr(vectors), 0.0, dtype=np.float64)
        V = sp.diags(1.0 / np.maximum(np.sqrt(np.asarray(B.sum(axis=1)).ravel()), 1e-12)) @ B
    else:
        V = _unit_rows(np.asarray(vectors, dtype=np.float64))
    if V.shape[0] != labels.size:
        raise UserError(f"{labels.size} labels for {V.shape[0]} documents")
    rows = []
    for group in np.unique(labels):
        members = np.flatnonzero(labels == group)
        centre = np.asarray(V[members].mean(axis=0)).ravel()
        sims = np.asarray(V[members] @ centre).ravel() / max(float(np.linalg.norm(centre)), 1e-12)
        best = np.lexsort((members, -sims))[:n]
        rows += [(int(group), r + 1, int(members[i]), float(sims[i])) for r, i in enumerate(best)]
    return pd.DataFrame(rows, columns=["cluster", "rank", "row", "similarity"])


def read_clusters(X, labels, vectors=None, feature_labels: dict[int, str] | None = None, method: str = "",
                  top: int = 5, n_docs: int = 3, min_support: int = 5, max_share: float = 0.5,
                  threshold: float = 0.0) -> ClusterReading:
    """Any clustering of the rows of ``X`` described by distinctive SAE features and typical documents.

    Typical documents are closest to the centre in ``vectors`` (e.g. MiniLM, for a dense clustering), or in
    SAE feature presence when ``vectors`` is None. See :class:`ClusterReading`."""
    labels = np.asarray(labels)
    if labels.size != X.shape[0]:
        raise UserError(f"{labels.size} labels for {X.shape[0]} documents")
    feats = distinctive_features(X, labels, top, min_support, max_share, threshold)
    names = feature_labels or {}
    feats["label"] = [names.get(int(f), "") for f in feats["feature_id"]]
    docs = typical_documents(X if vectors is None else vectors, labels, n_docs)
    groups, sizes = np.unique(labels, return_counts=True)
    order = [i for i in np.lexsort((groups, -sizes)) if groups[i] >= 0] + [i for i in range(groups.size) if groups[i] < 0]
    side = {s: feats[feats["side"] == s].groupby("cluster")["feature_id"].agg(tuple) for s in READING_SIDES}
    table = pd.DataFrame([(int(groups[i]), cluster_name(int(groups[i])), int(sizes[i]), sizes[i] / labels.size,
                           *(side[s].get(int(groups[i]), ()) for s in READING_SIDES)) for i in order],
                         columns=["cluster", "name", "size", "share", "over", "under"])
    return ClusterReading(labels=labels, method=method, clusters=table, features=feats, documents=docs)


def cluster_dense_read(X, vectors: np.ndarray, k: int, method: str = "kmeans", seed: int = 0,
                       feature_labels: dict[int, str] | None = None, **options) -> ClusterReading:
    """Cluster dense document vectors (:func:`dense_cluster`; labels 0..k-1 by decreasing size) and read
    the clusters through SAE features (:func:`read_clusters`, typical documents in the dense space)."""
    if int(k) < 2:
        raise UserError("ask for at least 2 clusters")
    vectors = np.asarray(vectors)
    if vectors.shape[0] != X.shape[0] or vectors.shape[0] <= int(k):
        raise UserError(f"{vectors.shape[0]} document vectors for {X.shape[0]} documents and k={int(k)}")
    labels = _order_by_size(np.asarray(dense_cluster(vectors, int(k), method=method, seed=seed), np.int64))
    return read_clusters(X, labels, vectors, feature_labels, method=f"minilm-{method}", **options)
