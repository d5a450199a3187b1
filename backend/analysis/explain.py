"""Which concepts predict a metadata column: findings for higher and lower values (or for each category),
tested on held-out documents, and how much of the column a sparse linear model on the concepts explains.

The documents with a usable value are split in two halves (stratified by category). On the *selection*
half every feature is compared between the documents where it fires and the rest (Welch t on the
column, on ranks for numbers so a few huge vote counts do not decide); the strongest features of each
direction are folded into findings by co-firing (``findings.group_features``, as the diff does). On the
*test* half each finding is tested once (one-sided in its chosen direction; Benjamini-Hochberg over all
findings), so its q-value is not inflated by the search over 8,192 features.

The score: an L1-regularized linear model (logistic for categories, linear for numbers; scikit-learn) on
the presence of the features screened on the selection half, its strength picked on a quarter of that
half, scored on the test half (AUC, macro one-vs-rest AUC for several values, Spearman or R² for
numbers). The baseline is the same model on dense MiniLM document vectors: the gap says how much of
the column the concepts capture compared with a general-purpose embedding.

Here: the entry :func:`explain_column` and :class:`ExplainResult`. The steps live beside it, one job each:
``explain_config`` (options), ``explain_targets`` (the column as ranks or categories and its directions),
``explain_stats`` (Welch t, the split, held-out tests and q-values), ``explain_findings`` (candidates
folded into findings) and ``explain_model`` (the L1 model and the MiniLM baseline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize, pick_finding
from backend.analysis.columns import ColumnError, ColumnValues, read_column
from backend.analysis.explain_config import ExplainConfig, ExplainError, Progress
from backend.analysis.explain_findings import ExplainFinding, build_findings
from backend.analysis.explain_model import ModelScore, score_models
from backend.analysis.explain_stats import Halves, feature_effects, split_halves
from backend.analysis.explain_targets import Targets, column_targets, sides_of
# Re-exported: `from backend.analysis.explain import X` keeps working for every public name it had.
from backend.analysis.explain_config import ALPHA  # noqa: F401
from backend.analysis.explain_model import (  # noqa: F401
    dense_inputs, heldout_score, metric_values, model_target, screen_features)
from backend.analysis.explain_stats import heldout_effects  # noqa: F401
from backend.analysis.explain_targets import Side, side_mask  # noqa: F401


@dataclass(eq=False)
class ExplainResult:
    """Which concepts go with a column, and how much of it they explain.

    ``findings`` (summary order) and ``table`` (the candidate features: selection-half ``t_select``,
    held-out statistics with BH q-values over candidates, ``finding`` index or -1). ``model``: the sparse
    linear model on SAE features (``score``, ``metric``); ``baseline_model``: the same model on MiniLM
    document vectors, None (with ``baseline_note``) when they were not available. ``doc_ids``/``values``:
    the documents used and their values; ``messages``: what was left out and why."""

    column: str
    kind: str
    task: str
    directions: tuple[str, ...]
    findings: list[ExplainFinding]
    table: pd.DataFrame
    model: ModelScore | None
    baseline_model: ModelScore | None
    baseline_note: str | None
    n_total: int
    n_missing: int
    n_unparseable: int
    n_rare: int
    n_select: int
    n_test: int
    messages: list[str]
    config: ExplainConfig
    doc_ids: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)
    X: sp.csr_matrix = field(repr=False)

    @property
    def n_used(self) -> int:
        return int(self.doc_ids.size)

    @property
    def metric(self) -> str | None:
        return self.model.metric if self.model else None

    @property
    def score(self) -> float | None:
        return self.model.score if self.model else None

    @property
    def baseline(self) -> float | None:
        return self.baseline_model.score if self.baseline_model else None

    def summary(self, n_per_direction: int = 4, significant_only: bool = False) -> list[ExplainFinding]:
        """The strongest findings, at most ``n_per_direction`` of each direction, in summary order (findings too
        rare in the held-out half to measure are left out; `findings` keeps them)."""
        taken: dict[str, int] = {}
        out = []
        for f in self.findings:
            if not f.measured or (significant_only and not f.significant) or taken.get(f.direction, 0) >= n_per_direction:
                continue
            taken[f.direction] = taken.get(f.direction, 0) + 1
            out.append(f)
        return out

    def documents(self, finding: int | ExplainFinding) -> pd.DataFrame:
        """Every used document where any of the finding's features fires: doc_id, value, activation of the
        lead (strongest first) — the documents behind the finding, for export."""
        f = pick_finding(self.findings, finding)
        sub = as_csr(self.X[:, list(f.feature_ids)])
        fires = np.flatnonzero(np.diff(binarize(sub, self.config.threshold).indptr) > 0)
        lead = np.asarray(sub[fires][:, [0]].toarray()).ravel()
        order = np.lexsort((self.doc_ids[fires], -lead))
        return pd.DataFrame({"doc_id": self.doc_ids[fires][order].astype(np.int64),
                             self.column: self.values[fires][order], "lead_activation": lead[order]})

    def to_frame(self) -> pd.DataFrame:
        """One row per finding, for export (feature and doc ids as comma-separated text)."""
        def join(values) -> str:
            return ", ".join(str(v) for v in values)

        cols = ["direction", "label", "share", "n_docs", "mean_on", "mean_off", "effect", "effect_size", "t",
                "p_value", "q_value", "is_formatting"]
        frame = pd.DataFrame([{c: getattr(f, c) for c in cols} for f in self.findings], columns=cols)
        frame.insert(0, "finding", np.arange(len(self.findings), dtype=np.int64))
        frame.insert(2, "sentence", [f.sentence for f in self.findings])
        frame["feature_ids"] = [join(f.feature_ids) for f in self.findings]
        frame["examples"] = [join(f.examples) for f in self.findings]
        return frame


def _messages(col: ColumnValues, targets: Targets, baseline_note: str | None) -> list[str]:
    out = [col.message] if col.message else []
    if targets.n_rare:
        out.append(f"{targets.n_rare:,} documents have a value of {col.column!r} shared by too few documents "
                   f"(or beyond the {len(targets.classes)} most common values): left out.")
    if baseline_note:
        out.append(baseline_note)
    return out


def _values_of(col: ColumnValues, targets: Targets) -> np.ndarray:
    if not targets.numeric:
        return np.asarray(targets.classes, dtype=object)[targets.raw]
    return col.values if col.kind == "date" else targets.raw


def _read_targets(values: pd.Series, column: str, kind: str, config: ExplainConfig) -> tuple[ColumnValues, Targets]:
    """The parsed column and its targets; an ExplainError when too few documents have a usable value."""
    try:
        col = read_column(pd.Series(values), column, kind, allowed=("numeric", "date", "categorical"))
    except ColumnError as exc:
        raise ExplainError(str(exc)) from exc
    targets = column_targets(col, config)
    if targets.rows.size < 4 * config.min_docs:
        raise ExplainError(f"Only {targets.rows.size:,} documents have a usable value of {column!r}; "
                           f"explaining it needs at least {4 * config.min_docs}.")
    return col, targets


def explain_column(
    X: sp.spmatrix, values: pd.Series, column: str = "value", labels: Mapping[int, str] | None = None,
    dense: np.ndarray | None = None, *, kind: str = "auto", config: ExplainConfig = ExplainConfig(),
    doc_ids: np.ndarray | None = None, baseline_note: str | None = None, progress: Progress | None = None,
) -> ExplainResult:
    """Which concepts predict ``values`` (one string or number per row of ``X``), and how well.

    ``X``: max-pooled doc x feature activations; ``kind``: "auto" | "numeric" | "date" | "categorical"
    (dates are explained as numbers: later/earlier); ``dense``: optional MiniLM vectors (one row per row
    of X) for the baseline; ``doc_ids``: doc id per row (default: row numbers). Rows with a missing or
    unparseable value are counted and left out (``messages``)."""
    report = progress or (lambda fraction, message: None)
    X = as_csr(X)
    if len(values) != X.shape[0]:
        raise ExplainError("values must have one entry per row of X.")
    ids = np.arange(X.shape[0], dtype=np.int64) if doc_ids is None else np.asarray(doc_ids, np.int64)
    col, targets = _read_targets(values, column, kind, config)
    Xu = X if targets.rows.size == X.shape[0] else X[targets.rows]
    sel, test = split_halves(targets.rows.size, config.test_size, config.seed,
                             None if targets.numeric else targets.raw)
    halves = Halves.split(Xu, sel, test, config.threshold)
    report(0.05, "Testing every feature on the selection half")
    eff_sel = feature_effects(halves.B_sel, targets.Y[sel])
    report(0.25, "Grouping the strongest features and testing them on the held-out half")
    findings, table = build_findings(halves, targets, eff_sel, config, labels or {}, column, ids[targets.rows])
    model, base = score_models(halves, targets, eff_sel, dense, config, report)
    note = None if dense is not None else (baseline_note or "No MiniLM document vectors: no baseline score.")
    report(1.0, "Done")
    return ExplainResult(
        column=column, kind=col.kind, task=targets.task, directions=tuple(s.name for s in sides_of(targets)),
        findings=findings, table=table, model=model, baseline_model=base, baseline_note=note,
        n_total=col.n_total, n_missing=col.n_missing, n_unparseable=col.n_unparseable, n_rare=targets.n_rare,
        n_select=int(sel.size), n_test=int(test.size), messages=_messages(col, targets, note), config=config,
        doc_ids=ids[targets.rows], values=_values_of(col, targets), X=Xu)
