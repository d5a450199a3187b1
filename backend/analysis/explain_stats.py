"""The statistics of explain: Welch t of every feature against the column through sparse products, the
stratified selection/test split, and the one-sided held-out tests with Benjamini-Hochberg q-values."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from backend.analysis import binarize
from backend.analysis.diff import bh_adjust


def feature_effects(B: sp.csr_matrix, Y: np.ndarray) -> dict[str, np.ndarray]:
    """Welch t-test of each column of ``Y`` between the documents where each feature fires and the rest.

    ``B``: binary (n, F) CSR; ``Y``: (n, m). Returns n_on [F] and mean_on, mean_off, t, df [F, m]
    through three sparse products (no dense n x F matrix). Features firing in fewer than two
    documents (or in all but one) get t = 0."""
    Y = np.asarray(Y, float).reshape(B.shape[0], -1)
    n = B.shape[0]
    n_on = np.bincount(B.indices, minlength=B.shape[1]).astype(float)
    s_on, q_on = np.asarray(B.T @ Y, float), np.asarray(B.T @ (Y * Y), float)
    n1, n0 = n_on[:, None], (n - n_on)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = s_on / n1
        m0 = (Y.sum(axis=0) - s_on) / n0
        v1 = np.maximum(q_on - n1 * m1 ** 2, 0.0) / (n1 - 1)
        v0 = np.maximum((Y * Y).sum(axis=0) - q_on - n0 * m0 ** 2, 0.0) / (n0 - 1)
        floor = 1e-9 * np.maximum(Y.var(axis=0), 1e-12)  # per column: a raw column in seconds must not swamp ranks
        se2 = np.maximum(v1 / n1 + v0 / n0, floor)
        t = (m1 - m0) / np.sqrt(se2)
        df = se2 ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v0 / n0) ** 2 / (n0 - 1) + 1e-300)
    valid = (n1 >= 2) & (n0 >= 2)
    return {"n_on": n_on, "mean_on": np.where(valid, m1, np.nan), "mean_off": np.where(valid, m0, np.nan),
            "t": np.where(valid, t, 0.0), "df": np.where(valid, np.clip(df, 1.0, None), 1.0)}


def split_halves(n: int, test_size: float, seed: int, strata: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the selection and the test half (stratified by ``strata`` when given), each sorted."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    select, test = [], []
    for g in groups:
        g = rng.permutation(g)
        k = int(round(test_size * g.size))
        test.append(g[:k])
        select.append(g[k:])
    return np.sort(np.concatenate(select)), np.sort(np.concatenate(test))


@dataclass(frozen=True)
class Halves:
    """The used documents' activations ``X`` and binary presence split by positions ``sel``/``test``."""

    X: sp.csr_matrix
    sel: np.ndarray
    test: np.ndarray
    B_sel: sp.csr_matrix
    B_test: sp.csr_matrix

    @classmethod
    def split(cls, X: sp.csr_matrix, sel: np.ndarray, test: np.ndarray, threshold: float) -> "Halves":
        return cls(X, sel, test, binarize(X[sel], threshold), binarize(X[test], threshold))


def _one_sided(eff: dict[str, np.ndarray], columns: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t in the chosen direction, one-sided p) for row i of ``eff`` read at column ``columns[i]``."""
    rows = np.arange(columns.size)
    t = eff["t"][rows, columns] * signs
    return t, stats.t.sf(t, eff["df"][rows, columns])


def _standardized(eff: dict[str, np.ndarray], Y: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    sd = np.asarray(Y, float).std(axis=0)[columns]
    diff = eff["mean_on"][rows, columns] - eff["mean_off"][rows, columns]
    return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), 0.0)


def heldout_effects(B: sp.csr_matrix, Y: np.ndarray, raw: np.ndarray | None, columns: np.ndarray,
                    signs: np.ndarray, min_docs: int = 2) -> pd.DataFrame:
    """Column i of binary ``B`` tested against ``Y[:, columns[i]]`` in direction ``signs[i]`` (one-sided
    Welch t, BH over the columns). Means are of ``raw`` when given (numbers), else of Y (category shares).
    A column firing in fewer than ``min_docs`` documents (or in all but that few) is not tested (p = 1):
    Welch's test on two or three documents of equal value would call anything significant."""
    columns, signs = np.asarray(columns, np.int64), np.asarray(signs, float)
    eff = feature_effects(B, Y if raw is None else np.column_stack([Y, raw]))
    rows = np.arange(B.shape[1])
    t, p = _one_sided(eff, columns, signs)
    testable = (eff["n_on"] >= min_docs) & (eff["n_on"] <= B.shape[0] - min_docs)
    t, p = np.where(testable, t, 0.0), np.where(testable, p, 1.0)
    value_col = columns if raw is None else np.full(columns.size, Y.shape[1])
    mean_on, mean_off = eff["mean_on"][rows, value_col], eff["mean_off"][rows, value_col]
    return pd.DataFrame({"n_test": eff["n_on"].astype(np.int64), "share_test": eff["n_on"] / max(1, B.shape[0]),
                         "mean_on": mean_on, "mean_off": mean_off, "effect": mean_on - mean_off,
                         "effect_size": _standardized(eff, Y, rows, columns), "t": t, "p_value": p,
                         "q_value": bh_adjust(p)})
