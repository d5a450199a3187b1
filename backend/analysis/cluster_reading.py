"""Any clustering read through SAE features: its groups with their distinctive features and typical
documents (:class:`ClusterReading`), and dense (MiniLM) clusters read that way."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.analysis.cluster_base import cluster_name, order_by_size, unit_rows
from backend.analysis.cluster_dense import dense_cluster
from backend.analysis.cluster_describe import READING_SIDES, distinctive_features
from backend.analysis.label_reading import base_forms, concept_keys, is_plain_label, label_name, label_words
from backend.errors import UserError


@dataclass(eq=False)
class ClusterReading:
    """Clusters made by any method (MiniLM k-means, concepts, spectral, HDBSCAN …) read through SAE features.

    ``labels``: one per document (negative: the none / noise groups, described like the clusters).
    ``clusters``: one row per group: cluster, name, about (the names of its most over-represented features
    that name distinct concepts, :func:`about_names`), size, share, over and under (the ids of its most
    over- and under-represented features, strongest first). ``features``: :func:`distinctive_features`
    plus a ``label`` column. ``documents``: :func:`typical_documents` (cluster, rank, row, similarity)."""

    labels: np.ndarray
    method: str
    clusters: pd.DataFrame
    features: pd.DataFrame
    documents: pd.DataFrame


def typical_documents(vectors, labels, n: int = 3) -> pd.DataFrame:
    """Per group, the ``n`` documents closest (cosine) to the mean of its L2-normalized members.

    ``vectors``: dense document vectors (e.g. MiniLM) or a sparse SAE matrix (its binary presence is
    used). Columns: cluster, rank, row, similarity."""
    labels = np.asarray(labels)
    if sp.issparse(vectors):
        B = binarize(as_csr(vectors), 0.0, dtype=np.float64)
        V = sp.diags(1.0 / np.maximum(np.sqrt(np.asarray(B.sum(axis=1)).ravel()), 1e-12)) @ B
    else:
        V = unit_rows(np.asarray(vectors, dtype=np.float64))
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


def coded_labels(labels) -> tuple[np.ndarray, dict[int, str]]:
    """(integer labels, {code: name}): whole-number labels as they are (no names); any other labels coded
    0.. by decreasing group size (ties by name), missing ones -1, each code named by its value."""
    values = np.asarray(labels)
    if values.dtype.kind in "iub":
        return values.astype(np.int64), {}
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64), {}
    series = pd.Series(values.ravel(), dtype=object)
    text = pd.Series([None if missing else str(v) for v, missing in zip(series, series.isna())], dtype=object)
    by_name, names = pd.factorize(text, sort=True)  # missing: -1
    codes = order_by_size(by_name.astype(np.int64))  # ties keep the name order
    named = {int(c): str(names[n]) for c, n in zip(codes, by_name) if n >= 0}
    return codes, named | ({-1: "none"} if (by_name < 0).any() else {})


def about_names(labels: list[str], n: int = 3) -> str:
    """What a group is about, read from its distinctive features' labels (strongest first): the names of
    the first `n` that name distinct concepts (no concept key in common, the forms of one word counted as one:
    what folds findings, :func:`feature_grouping.shared_words_matrix`), "a · b · c". Plain labels (punctuation,
    formatting, `varied tokens`) and those of function words alone (`to`, `I`) only when there is nothing else."""
    labels = [lab for lab in labels if lab and lab.strip()]
    keys = [concept_keys(lab) for lab in labels]
    base = base_forms(set().union(*keys))
    keys = [{base[k] for k in ks} for ks in keys]

    def pick(rows: list[int]) -> list[str]:
        chosen, seen = [], set()
        for i in rows:
            if not keys[i] & seen:
                seen |= keys[i]
                chosen.append(label_name(labels[i]))
        return chosen[:n]

    concepts = [i for i, lab in enumerate(labels) if label_words(lab) and not is_plain_label(lab)]
    return " · ".join(pick(concepts) or pick(list(range(len(labels)))))


def read_clusters(X, labels, vectors=None, feature_labels: dict[int, str] | None = None, method: str = "",
                  top: int = 5, n_docs: int = 3, min_support: int = 5, max_share: float = 0.5,
                  threshold: float = 0.0) -> ClusterReading:
    """Any clustering of the rows of ``X`` described by distinctive SAE features and typical documents.

    Typical documents are closest to the centre in ``vectors`` (e.g. MiniLM, for a dense clustering), or in
    SAE feature presence when ``vectors`` is None. Labels that are not whole numbers (a category column:
    "fresh" / "rotten") are read as groups named by their values, numbered 0.. by decreasing size, missing
    values (None, NaN) as the "none" group -1. See :class:`ClusterReading`."""
    labels, given_names = coded_labels(labels)
    if labels.size != X.shape[0]:
        raise UserError(f"{labels.size} labels for {X.shape[0]} documents")
    feats = distinctive_features(X, labels, top, min_support, max_share, threshold)
    names = feature_labels or {}
    feats["label"] = [names.get(int(f), "") for f in feats["feature_id"]]
    docs = typical_documents(X if vectors is None else vectors, labels, n_docs)
    groups, sizes = np.unique(labels, return_counts=True)
    order = [i for i in np.lexsort((groups, -sizes)) if groups[i] >= 0] + [i for i in range(groups.size) if groups[i] < 0]
    side = {s: feats[feats["side"] == s].groupby("cluster")["feature_id"].agg(tuple) for s in READING_SIDES}
    def name(group: int) -> str:
        return given_names.get(group, cluster_name(group))

    def about(group: int) -> str:
        return about_names([names.get(int(f), "") for f in side["over"].get(group, ())])

    table = pd.DataFrame([(int(groups[i]), name(int(groups[i])), about(int(groups[i])), int(sizes[i]),
                           sizes[i] / labels.size, *(side[s].get(int(groups[i]), ()) for s in READING_SIDES))
                          for i in order], columns=["cluster", "name", "about", "size", "share", "over", "under"])
    return ClusterReading(labels=labels, method=method, clusters=table, features=feats, documents=docs)


def cluster_dense_read(X, vectors: np.ndarray, k: int, method: str = "kmeans", seed: int = 0,
                       feature_labels: dict[int, str] | None = None, **options) -> ClusterReading:
    """Cluster dense document vectors (:func:`dense_cluster`; labels 0..k-1 by decreasing size) and read
    the clusters through SAE features (:func:`read_clusters`, typical documents in the dense space)."""
    if int(k) < 2:
        raise UserError("ask for at least 2 clusters")
    vectors = np.asarray(vectors)
    if vectors.shape[0] != X.shape[0]:
        raise UserError(f"{vectors.shape[0]} document vectors for {X.shape[0]} documents")
    if vectors.shape[0] <= int(k):
        raise UserError(f"k={int(k)} clusters need more than {int(k)} documents; this corpus has {vectors.shape[0]}.")
    labels = order_by_size(np.asarray(dense_cluster(vectors, int(k), method=method, seed=seed), np.int64))
    return read_clusters(X, labels, vectors, feature_labels, method=f"minilm-{method}", **options)
