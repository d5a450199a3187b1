"""Concepts: chosen SAE features folded into the ideas they stand for, and which documents carry them.

An SAE spreads one idea over several latents that fire on the same documents (17 features on
``://t.co`` links), and a user often chooses a whole family of features for one idea (hedging: a
"may/might" feature, a "perhaps" feature, a "some/few" feature, each firing on *different*
documents). Clustering on raw feature patterns then groups documents by *which* member fires
instead of *whether* the idea is there.

A :class:`Concept` is a set of chosen features: a group the user gave explicitly (a family whose
members need not co-fire), or features folded together because they fire on the same documents
(complete linkage on the Jaccard overlap of their document sets). A document carries a concept when
any member fires. A folded concept present in most documents (sentence-final punctuation, a
sentence-start feature picked up with example phrases) cannot tell documents apart; it is marked
``background`` and left out of the presence split, but still described.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import FeatureGroup, as_csr, binarize, feature_counts
from backend.errors import UserError

MAX_CONCEPT_FEATURES = 2000  # chosen features folded at once (the Jaccard matrix is dense)


@dataclass(frozen=True)
class ConceptConfig:
    """How chosen features become concepts.

    ``min_jaccard``: features fold into one concept when every pair of them fires on overlapping
    document sets with Jaccard at least this (complete linkage; 0.5 = mostly the same documents).
    Complete, not average, linkage: a feature firing almost everywhere overlaps any feature by
    about that feature's share, so averages would chain specific features into it.
    ``max_share``: a folded concept firing in more than this share of documents is ``background``
    (never an explicit group, and only while some other concept is not). ``threshold``: a feature
    fires where its activation is above it.
    """

    min_jaccard: float = 0.5
    max_share: float = 0.5
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_jaccard <= 1.0:
            raise UserError("min_jaccard must be in (0, 1]")
        if not 0.0 < self.max_share <= 1.0:
            raise UserError("max_share must be in (0, 1]")
        if self.threshold < 0:
            raise UserError("threshold must be >= 0")


@dataclass(frozen=True)
class Concept(FeatureGroup):
    """Chosen features that stand for one idea; a document carries it when any member fires.

    ``feature_ids``: members, the one firing in most documents (the lead) first. ``n_docs``/``share``:
    documents carrying the concept. ``explicit``: a group the user gave. ``background``: present in
    too many documents to split them (see :class:`ConceptConfig`)."""

    concept_id: int
    feature_ids: tuple[int, ...]
    n_docs: int
    share: float
    explicit: bool = False
    background: bool = False


def feature_jaccard(B: sp.spmatrix) -> np.ndarray:
    """Jaccard overlap between the document sets of the columns of a binary matrix (dense, k x k).

    Columns that never fire overlap nothing (0), themselves included."""
    B = as_csr(B).astype(np.int64)
    inter = np.asarray((B.T @ B).toarray(), dtype=np.float64)
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _complete_linkage_groups(similarity: np.ndarray, min_similarity: float) -> list[list[int]]:
    """Columns grouped by complete-linkage agglomeration: every pair within a group has similarity at
    least ``min_similarity`` (order-free, unlike greedy folding)."""
    k = similarity.shape[0]
    if k == 1:
        return [[0]]
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    dist = np.clip(1.0 - similarity, 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="complete")
    ids = fcluster(tree, t=1.0 - min_similarity + 1e-12, criterion="distance")
    return [np.flatnonzero(ids == g).tolist() for g in np.unique(ids)]


def _check_groups(groups: Sequence[Collection[int]] | None, n_features: int) -> list[list[int]]:
    out: list[list[int]] = []
    seen: set[int] = set()
    for group in groups or []:
        members = list(dict.fromkeys(int(f) for f in group))
        if not members:
            raise UserError("a concept group needs at least one feature")
        bad = [f for f in members if not 0 <= f < n_features]
        if bad:
            raise UserError(f"feature ids {bad[:5]} are outside 0..{n_features - 1}")
        twice = seen.intersection(members)
        if twice:
            raise UserError(f"features {sorted(twice)[:5]} are in more than one concept group")
        seen.update(members)
        out.append(members)
    return out


def fold_concepts(
    X,
    feature_ids: Collection[int],
    groups: Sequence[Collection[int]] | None = None,
    config: ConceptConfig = ConceptConfig(),
) -> list[Concept]:
    """Concepts from chosen features: each of ``groups`` is one concept as given (its members are
    chosen too); the other chosen features fold by co-firing (see :class:`ConceptConfig`).

    Concepts come ordered by how many documents carry them (ties: smallest member id), with ids 0..C-1.
    """
    X = as_csr(X)
    explicit = _check_groups(groups, X.shape[1])
    in_groups = {f for g in explicit for f in g}
    free = [f for f in dict.fromkeys(int(f) for f in feature_ids) if f not in in_groups]
    bad = [f for f in free if not 0 <= f < X.shape[1]]
    if bad:
        raise UserError(f"feature ids {bad[:5]} are outside 0..{X.shape[1] - 1}")
    if not free and not explicit:
        raise UserError("choose at least one feature")
    if len(free) + len(in_groups) > MAX_CONCEPT_FEATURES:
        raise UserError(f"at most {MAX_CONCEPT_FEATURES} features can be folded into concepts")
    folded: list[list[int]] = []
    if free:
        B_free = binarize(X[:, free], config.threshold)
        folded = [[free[j] for j in g] for g in _complete_linkage_groups(feature_jaccard(B_free), config.min_jaccard)]
    members = explicit + folded
    all_ids = [f for g in members for f in g]
    B = binarize(X[:, all_ids], config.threshold)
    per_feature = dict(zip(all_ids, feature_counts(B).tolist()))
    presence = _presence(B, [len(g) for g in members])
    n_docs = feature_counts(presence)
    n = max(X.shape[0], 1)
    common = n_docs / n > config.max_share
    is_explicit = np.arange(len(members)) < len(explicit)
    background = common & ~is_explicit
    if background.all():  # nothing else would be left to split documents by
        background[:] = False
    order = sorted(range(len(members)), key=lambda i: (-int(n_docs[i]), min(members[i])))
    return [
        Concept(
            concept_id=new,
            feature_ids=tuple(sorted(members[i], key=lambda f: (-per_feature[f], f))),
            n_docs=int(n_docs[i]),
            share=float(n_docs[i] / n),
            explicit=bool(is_explicit[i]),
            background=bool(background[i]),
        )
        for new, i in enumerate(order)
    ]


def _presence(B: sp.csr_matrix, sizes: list[int]) -> sp.csr_matrix:
    """Binary documents x concepts from binary documents x member columns laid out concept by concept."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    membership = sp.csr_matrix((np.ones(owner.size, np.int32), (np.arange(owner.size), owner)),
                               shape=(owner.size, len(sizes)))
    return binarize(B @ membership, 0.0)


def concept_presence(X, concepts: Sequence[Concept], threshold: float = 0.0) -> sp.csr_matrix:
    """Binary CSR documents x concepts: 1 where any member feature fires above ``threshold``."""
    if not concepts:
        return sp.csr_matrix((as_csr(X).shape[0], 0), dtype=np.int32)
    ids = [f for c in concepts for f in c.feature_ids]
    return _presence(binarize(as_csr(X)[:, ids], threshold), [c.n_features for c in concepts])


DESCRIPTION_COLUMNS = [
    "cluster", "concept_id", "lead_feature", "feature_ids", "n_features", "n_in", "in_share", "out_share",
    "diff", "background", "rank",
]


def describe_by_concepts(presence: sp.spmatrix, labels: np.ndarray, concepts: Sequence[Concept], top: int = 5) -> pd.DataFrame:
    """The concepts that describe each group of documents, with their share inside vs outside it.

    ``presence`` is :func:`concept_presence`'s matrix, ``labels`` one group per document (negative
    groups such as "none of the chosen concepts" included). Per group, the ``top`` concepts by
    ``diff`` = in_share - out_share (ties: concept id), ranked 1..top. Columns: DESCRIPTION_COLUMNS.
    """
    P = as_csr(presence).astype(np.float64)
    labels = np.asarray(labels)
    groups, inverse = np.unique(labels, return_inverse=True)
    n = labels.size
    if P.shape[1] == 0 or n == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in DESCRIPTION_COLUMNS})
    indicator = sp.csr_matrix((np.ones(n), (inverse.ravel(), np.arange(n))), shape=(groups.size, n))
    inside = np.asarray((indicator @ P).toarray())  # groups x concepts: documents carrying it
    total = inside.sum(axis=0)
    sizes = np.bincount(inverse.ravel(), minlength=groups.size).astype(np.float64)
    frames = []
    for gi, group in enumerate(groups):
        rest = n - sizes[gi]
        in_share = inside[gi] / sizes[gi]
        out_share = (total - inside[gi]) / rest if rest > 0 else np.zeros_like(in_share)
        diff = in_share - out_share
        order = np.lexsort((np.arange(diff.size), -diff))[: max(0, int(top))]
        frames.append(pd.DataFrame({
            "cluster": np.full(order.size, int(group), np.int64),
            "concept_id": np.array([concepts[i].concept_id for i in order], np.int64),
            "lead_feature": np.array([concepts[i].lead for i in order], np.int64),
            "feature_ids": [concepts[i].feature_ids for i in order],
            "n_features": np.array([concepts[i].n_features for i in order], np.int64),
            "n_in": inside[gi, order].astype(np.int64),
            "in_share": in_share[order],
            "out_share": out_share[order],
            "diff": diff[order],
            "background": np.array([concepts[i].background for i in order], bool),
            "rank": np.arange(1, order.size + 1, dtype=np.int64),
        }))
    return pd.concat(frames, ignore_index=True)[DESCRIPTION_COLUMNS]
