"""Analysis backend: pure functions over sparse SAE activation matrices.

Every function takes ``X``, a ``scipy.sparse.csr_matrix`` of shape (n_docs, n_features)
holding max-pooled feature activations; a feature "fires" in a document when its
activation is ``> threshold``. Nothing here builds a dense n_docs x n_features or
n_features x n_features matrix for large feature counts.

Modules (imported lazily so ``import backend.analysis`` stays cheap):

- ``diff``      dataset diff with two-proportion z-tests, BH q-values and a CMH length control
- ``cluster``   spectral / k-means / HDBSCAN clustering on chosen features, UMAP, cluster summaries
- ``correlate`` NPMI co-occurrence between features and with metadata
- ``retrieve``  property-based and vector retrieval
- ``concepts``  chosen features folded into concepts (co-firing families) and concept presence
- ``findings``  the diff read as findings: co-firing features grouped, each side's strongest, with examples
- ``hypotheses`` LLM-written hypotheses from findings, checked on samples of both sides
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Sequence, TypeVar

import numpy as np
import scipy.sparse as sp

from backend.analysis.label_reading import naming_member
from backend.errors import UserError, is_whole_number

G = TypeVar("G")

__all__ = ["binarize", "feature_counts", "as_csr", "diff", "cluster", "correlate", "retrieve", "findings", "hypotheses", "concepts"]

_SUBMODULES = {"diff", "cluster", "correlate", "retrieve", "findings", "hypotheses", "concepts"}


def as_csr(X) -> sp.csr_matrix:
    """Return ``X`` as a canonical CSR matrix (sorted indices, no duplicates), copying only if needed."""
    X = X if sp.isspmatrix_csr(X) else sp.csr_matrix(X)
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def binarize(X, threshold: float = 0.0, dtype=np.int32) -> sp.csr_matrix:
    """Binary CSR matrix of ``X > threshold`` (threshold must be >= 0 so zeros stay zero).

    Shares the index arrays of ``X`` when no stored entry is dropped.
    """
    if threshold < 0:
        raise ValueError("threshold must be >= 0 (implicit zeros would fire otherwise)")
    X = as_csr(X)
    keep = X.data > threshold
    if keep.all():
        return sp.csr_matrix((np.ones(X.nnz, dtype=dtype), X.indices, X.indptr), shape=X.shape, copy=False)
    ck = np.zeros(X.nnz + 1, dtype=np.int64)
    np.cumsum(keep, out=ck[1:])
    indptr = ck[X.indptr]
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=dtype), X.indices[keep], indptr), shape=X.shape, copy=False
    )


def feature_counts(B: sp.csr_matrix) -> np.ndarray:
    """Number of documents in which each feature fires, for a binarized CSR matrix."""
    return np.bincount(B.indices, minlength=B.shape[1]).astype(np.int64)


class FeatureGroup:
    """`lead`, `n_features` and `named_by` of a result made of several features (`feature_ids`, strongest first):
    the findings of diff, explain and trend, and concepts, share them."""

    feature_ids: tuple[int, ...]

    @property
    def named_by(self) -> int:
        """The member the group is read by (`label_reading.naming_member` over its `feature_labels`, where it has
        them): its lead unless the lead's label names nothing (`varied tokens: …`) and another member's names
        something."""
        labels = getattr(self, "feature_labels", ())
        if len(labels) != len(self.feature_ids):
            return self.lead
        return self.feature_ids[naming_member(labels)]

    @property
    def lead(self) -> int:
        return self.feature_ids[0]

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)


def pick_finding(findings: Sequence[G], finding: "int | G") -> G:
    """A result's finding, given itself or its index in `findings` (`to_frame`'s `finding` column); an index out of
    range is a UserError (a negative one picked from the end, a large one raised an IndexError)."""
    if not is_whole_number(finding):
        return finding  # type: ignore[return-value]
    if not 0 <= int(finding) < len(findings):
        raise UserError(f"There is no finding {int(finding)}: this result has {len(findings)} (0 to {len(findings) - 1}).")
    return findings[int(finding)]


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
