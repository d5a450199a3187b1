"""Folding the features that describe one concept into one group, strongest first: a feature joins a
stronger one when their document sets overlap (Jaccard), when their labels share a concept word, when
one's documents lie inside the other's (with co-occurrence far beyond chance) or when their decoder
directions point the same way. The diff's findings and the explain and trend findings all group this way."""
from __future__ import annotations

from typing import Collection, Mapping

import numpy as np
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.analysis.correlate import npmi_from_counts
from backend.analysis.label_reading import base_forms, concept_keys

# Containment folds a feature into another only when the two co-occur far beyond chance (NPMI >= this):
# a rare feature inside one that fires on most documents is not the same concept.
CONTAINMENT_MIN_NPMI = 0.5


def shared_words_matrix(labels: list[str | None]) -> np.ndarray:
    """k x k: whether labels i and j share a concept word (or forms of one: `program`, `programming`) or,
    lacking any, a name (:func:`concept_keys`); the diagonal is True."""
    words = [concept_keys(label) for label in labels]
    base = base_forms(set().union(*words))  # the forms of one word are one concept word (program, programming)
    words = [{base[w] for w in ws} for ws in words]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*words)))}
    incidence = np.zeros((len(labels), max(1, len(vocab))), np.int64)
    for i, ws in enumerate(words):
        incidence[i, [vocab[w] for w in ws]] = 1
    return (incidence @ incidence.T > 0) | np.eye(len(labels), dtype=bool)


def overlap_counts(B: sp.spmatrix) -> np.ndarray:
    """Documents where columns i and j of a binary matrix both fire (dense k x k; diagonal: each column's)."""
    B = as_csr(B).astype(np.int64)
    return np.asarray((B.T @ B).toarray(), dtype=float)


def jaccard_matrix(B: sp.spmatrix) -> np.ndarray:
    """Jaccard overlap between the document sets of the columns of a binary matrix (dense k x k).

    Meant for a few dozen columns: the result is dense."""
    inter = overlap_counts(B)
    n = np.diag(inter)
    union = n[:, None] + n[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def inside_matrix(B: sp.spmatrix, threshold: float, min_npmi: float = CONTAINMENT_MIN_NPMI) -> np.ndarray:
    """``inside[i, j]``: column i's documents lie mostly inside column j's (overlap >= ``threshold`` of i's
    documents, i no larger than j), and the two co-occur far beyond chance (NPMI >= ``min_npmi``), so a
    rare feature is not folded into one that fires nearly everywhere. k x k, directional."""
    inter = overlap_counts(B)
    n = np.diag(inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_inside = np.where(n[:, None] > 0, inter / np.where(n[:, None] > 0, n[:, None], 1.0), 0.0)
    npmi = npmi_from_counts(inter, n[:, None], n[None, :], max(1, B.shape[0]))
    return (share_inside >= threshold) & (n[:, None] <= n[None, :]) & (npmi >= min_npmi)


def decoder_cosine(decoder: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
    """Cosine similarity between the decoder directions (rows of ``decoder``) of the given features."""
    W = np.asarray(decoder[np.asarray(feature_ids, np.int64)], dtype=np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    W = W / np.where(norms > 0, norms, 1.0)
    return W @ W.T


def fold_features(
    B: sp.spmatrix,
    feature_ids: np.ndarray,
    jaccard_threshold: float = 0.5,
    labels: Mapping[int, str] | None = None,
    containment_threshold: float | None = None,
    decoder: np.ndarray | None = None,
    cosine_threshold: float = 0.9,
) -> list[list[int]]:
    """Fold features (columns of the binary ``B``, ids ``feature_ids``, strongest first) into concepts;
    returns groups of column indices, lead first.

    Each column not yet folded leads a group and takes every later one that describes its concept: that
    fires on the same documents (Jaccard), shares a label concept word (with ``labels``), whose documents
    lie inside its own or hold its own (with ``containment_threshold``), or whose decoder direction points
    the same way (with ``decoder``). Only containment chains on (a variant inside any member's documents
    joins): a lead's label word or Jaccard partner does not pull in its own partners."""
    similar = jaccard_matrix(B) >= jaccard_threshold
    inside = None
    if labels is not None:
        similar |= shared_words_matrix([labels.get(int(f)) for f in feature_ids])
    if containment_threshold is not None:
        inside = inside_matrix(B, containment_threshold)
        similar |= inside | inside.T
    if decoder is not None:
        similar |= decoder_cosine(decoder, feature_ids) >= cosine_threshold
    return _greedy_groups(similar, inside)


def keep_contrast(groups: list[list[int]], bin_a: sp.spmatrix, bin_b: sp.spmatrix, side: str,
                  max_dilution: float = 0.1) -> list[list[int]]:
    """Each group (columns of the binary ``bin_a``/``bin_b``, lead first) without the members that would dilute
    its difference: a finding reports where *any* member fires, so a member firing on many documents of the
    other side turned "last: 5% vs 27%" into "32% vs 27% (57 features)". Members join in order while the
    union's difference (towards ``side``) stays at least ``1 - max_dilution`` of the best it reached; the
    lead always stays. ``max_dilution=1`` keeps every member."""
    if max_dilution >= 1.0:
        return [list(g) for g in groups]
    A, B = as_csr(bin_a).tocsc(), as_csr(bin_b).tocsc()
    n_a, n_b, sign = max(A.shape[0], 1), max(B.shape[0], 1), 1.0 if side == "a" else -1.0
    out = []
    for group in groups:
        in_a, in_b = np.zeros(A.shape[0], bool), np.zeros(B.shape[0], bool)
        kept: list[int] = []
        best, count_a, count_b = -np.inf, 0, 0
        for m in group:
            rows_a, rows_b = A.indices[A.indptr[m]:A.indptr[m + 1]], B.indices[B.indptr[m]:B.indptr[m + 1]]
            new_a, new_b = count_a + int((~in_a[rows_a]).sum()), count_b + int((~in_b[rows_b]).sum())
            d = sign * (new_a / n_a - new_b / n_b)
            if kept and d < best - max_dilution * abs(best):
                continue
            kept.append(m)
            in_a[rows_a], in_b[rows_b], count_a, count_b = True, True, new_a, new_b
            best = max(best, d)
        out.append(kept)
    return out


def keep_contrast_within(groups: list[list[int]], B: sp.spmatrix, inside: np.ndarray, outside: np.ndarray | None = None,
                         max_dilution: float = 0.1) -> list[list[int]]:
    """:func:`keep_contrast` between two sets of rows of one binary matrix: the documents of a finding's
    direction (``inside``, a boolean mask) against ``outside`` (default: every other row)."""
    B = as_csr(B)
    inside = np.asarray(inside, bool)
    outside = ~inside if outside is None else np.asarray(outside, bool)
    return keep_contrast(groups, B[inside], B[outside], "a", max_dilution)


def _greedy_groups(similar: np.ndarray, inside: np.ndarray | None = None) -> list[list[int]]:
    """Greedy folding in priority order: each unassigned column leads a group and takes every later
    unassigned column similar to it (similarity to the lead, so groups do not chain), then, with
    ``inside``, every later unassigned column whose documents lie inside a member's."""
    k = similar.shape[0]
    assigned = np.zeros(k, bool)
    groups = []
    for i in range(k):
        if assigned[i]:
            continue
        members = [i] + [j for j in range(i + 1, k) if not assigned[j] and similar[i, j]]
        assigned[members] = True
        while inside is not None:
            more = [j for j in range(i + 1, k) if not assigned[j] and inside[j, members].any()]
            if not more:
                break
            assigned[more] = True
            members += more
        groups.append(members)
    return groups


def local_labels(labels: Mapping[int, str] | None, columns: np.ndarray) -> dict[int, str] | None:
    """Labels keyed by column position in ``columns`` (for `group_features` on a column slice)."""
    if not labels:
        return None
    return {i: labels[int(f)] for i, f in enumerate(columns) if int(f) in labels}


def group_features(
    X: sp.spmatrix,
    feature_ids: Collection[int],
    threshold: float = 0.0,
    jaccard_threshold: float = 0.5,
    decoder: np.ndarray | None = None,
    cosine_threshold: float = 0.9,
    labels: Mapping[int, str] | None = None,
    containment_threshold: float | None = None,
) -> list[list[int]]:
    """Fold features that describe one concept into groups, in the priority order given.

    Each feature not yet grouped leads a group and takes every later feature whose document set (rows
    of ``X`` where it fires above ``threshold``) overlaps its own with Jaccard >= ``jaccard_threshold``,
    or that :func:`fold_features` finds similar by the other evidence given (decoder cosine >=
    ``cosine_threshold``, a shared label word, containment). Returns lists of feature ids, lead first.
    Only the chosen columns are touched.
    """
    ids = np.asarray(list(feature_ids), dtype=np.int64)
    if ids.size == 0:
        return []
    groups = fold_features(binarize(as_csr(X)[:, ids], threshold), ids, jaccard_threshold, labels,
                           containment_threshold, decoder, cosine_threshold)
    return [[int(ids[j]) for j in g] for g in groups]
