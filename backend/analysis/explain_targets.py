"""A parsed metadata column as what explain tests and models: ``Targets`` (ranks or one-hot categories,
the directions a finding can take, the model's task) and the ``Side`` of each direction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from backend.analysis.columns import ColumnValues
from backend.analysis.explain_config import ExplainConfig, ExplainError


@dataclass(frozen=True)
class Targets:
    """The column as what the tests and the model need: ``Y`` (n, m) tested per direction, ``raw`` values
    (numbers, or category codes), ``directions`` (names of Y's columns; numeric: one column, read as
    ``directions[0]`` for t > 0 and ``directions[1]`` for t < 0: "higher"/"lower", "later"/"earlier" for
    dates), ``classes`` for categories, ``task`` of the model."""

    Y: np.ndarray
    raw: np.ndarray
    directions: tuple[str, ...]
    classes: tuple[str, ...]
    task: Literal["regression", "binary", "multiclass"]
    rows: np.ndarray
    n_rare: int = 0

    @property
    def numeric(self) -> bool:
        return not self.classes


def _numeric_targets(col: ColumnValues, robust: bool, words: tuple[str, str] = ("higher", "lower")) -> Targets:
    y = np.asarray(col.values, float)
    if np.unique(y).size < 2:
        raise ExplainError(f"Every used document has the same value of {col.column!r}: nothing to explain.")
    tested = stats.rankdata(y) / y.size if robust else y
    task = "binary" if np.unique(y).size == 2 else "regression"
    return Targets(Y=tested[:, None], raw=y, directions=words, classes=(), task=task, rows=col.rows)


def _categorical_targets(col: ColumnValues, cfg: ExplainConfig) -> Targets:
    counts = pd.Series(col.values).value_counts()
    kept = [str(v) for v, c in counts.items() if c >= 2 * cfg.min_docs][: cfg.max_values]
    if len(kept) < 2:
        raise ExplainError(f"{col.column!r} needs at least two values with {2 * cfg.min_docs} documents each.")
    code = pd.Categorical(col.values, categories=kept).codes.astype(np.int64)
    keep = code >= 0
    Y = np.eye(len(kept))[code[keep]]
    task = "binary" if len(kept) == 2 else "multiclass"
    return Targets(Y=Y, raw=code[keep], directions=tuple(kept), classes=tuple(kept), task=task,
                   rows=col.rows[keep], n_rare=int((~keep).sum()))


def column_targets(col: ColumnValues, cfg: ExplainConfig) -> Targets:
    """Numbers are explained as higher/lower, dates as later/earlier; other columns value by value."""
    if col.kind == "date":
        seconds = col.values.astype("datetime64[s]").astype(np.int64).astype(float)
        as_numbers = ColumnValues(col.column, "numeric", seconds, col.rows, col.n_total, col.n_missing,
                                  col.n_unparseable, col.bad_examples)
        return _numeric_targets(as_numbers, cfg.robust, ("later", "earlier"))
    return _numeric_targets(col, cfg.robust) if col.kind == "numeric" else _categorical_targets(col, cfg)


@dataclass(frozen=True)
class Side:
    """One direction findings can take: its name, the column of ``Targets.Y`` it reads and the sign."""

    name: str
    column: int
    sign: int


def sides_of(targets: Targets) -> list[Side]:
    if targets.numeric:
        return [Side(targets.directions[0], 0, 1), Side(targets.directions[1], 0, -1)]
    return [Side(v, j, 1) for j, v in enumerate(targets.classes)]


def side_mask(targets: Targets, side: Side) -> np.ndarray:
    """Documents of one direction (at or above the median for "higher"/"later", at or below otherwise)."""
    if not targets.numeric:
        return targets.raw == side.column
    median = float(np.median(targets.raw))
    return targets.raw >= median if side.sign > 0 else targets.raw <= median
