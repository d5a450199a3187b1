"""Options of :func:`backend.analysis.explain.explain_column` and its error, validated once here so every
step of the analysis (tests, findings, model) reads the same checked values."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from backend.errors import UserError

ALPHA = 0.05
Progress = Callable[[float, str], None]  # (fraction done, what is running)


class ExplainError(UserError):
    """An explain request that cannot be answered (bad options, too few documents or values)."""


@dataclass(frozen=True)
class ExplainConfig:
    """Options of :func:`backend.analysis.explain.explain_column`.

    ``min_docs``: a feature (or finding) is tested only where it fires in at least this many documents of
    the half, and a category needs this many documents to be kept. ``n_candidates``: features per
    direction folded into findings. ``max_model_features``: features screened (by selection-half
    significance) into the linear model. ``numeric_metric``: the score of a numeric column."""

    threshold: float = 0.0
    test_size: float = 0.5
    seed: int = 0
    min_docs: int = 5
    n_candidates: int = 40
    jaccard_threshold: float = 0.5
    n_examples: int = 2
    max_values: int = 12
    max_model_features: int = 1000
    max_model_docs: int = 20_000
    numeric_metric: Literal["spearman", "r2"] = "spearman"
    robust: bool = True
    n_strengths: int = 6
    max_dilution: float = 0.1

    def __post_init__(self) -> None:
        if not 0.1 <= self.test_size <= 0.9:
            raise ExplainError("test_size is the held-out share of documents: between 0.1 and 0.9.")
        if self.threshold < 0:
            raise ExplainError("The activation threshold must be 0 or more.")
        if self.min_docs < 2 or self.n_candidates < 1 or self.n_examples < 0 or self.max_values < 2:
            raise ExplainError("min_docs must be at least 2, n_candidates and max_values at least 1 and 2.")
        if self.max_model_features < 1 or self.n_strengths < 1 or self.max_model_docs < 4 * self.min_docs:
            raise ExplainError("max_model_features and n_strengths must be at least 1, max_model_docs 4 x min_docs.")
        if self.numeric_metric not in ("spearman", "r2"):
            raise ExplainError("numeric_metric is 'spearman' or 'r2'.")
        if not 0.0 <= self.max_dilution <= 1.0:
            raise ExplainError("max_dilution lies in [0, 1] (1 keeps every folded feature).")
