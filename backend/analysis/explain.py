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
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score

from backend.analysis import as_csr, binarize
from backend.analysis.columns import ColumnError, ColumnValues, read_column
from backend.analysis.diff import bh_adjust, example_documents
from backend.analysis.findings import group_features, is_formatting_label, local_labels
from backend.errors import UserError

ALPHA = 0.05
Progress = Callable[[float, str], None]  # (fraction done, what is running)


class ExplainError(UserError):
    """An explain request that cannot be answered (bad options, too few documents or values)."""


@dataclass(frozen=True)
class ExplainConfig:
    """Options of :func:`explain_column`.

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


# -- per-feature statistics -------------------------------------------------------------------------
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


# -- the column as targets ------------------------------------------------------------------------
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


# -- findings ---------------------------------------------------------------------------------------
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


def _fmt(value: float, numeric: bool, date: bool = False) -> str:
    if date and np.isfinite(value):
        return str(np.datetime64(int(value), "s").astype("datetime64[D]"))
    if not numeric:
        return f"{100 * value:.0f}%"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


@dataclass(frozen=True)
class ExplainFinding:
    """Features that fire on the same documents and go with one direction of the column.

    Measured on the held-out half: ``share``/``n_docs`` (documents where any member fires),
    ``mean_on``/``mean_off`` (the column's mean where it fires and elsewhere; for a category, the share
    of documents with that value), ``effect`` = mean_on - mean_off, ``effect_size`` (standardized on the
    tested scale: ranks for numbers), ``t``, ``p_value`` (one-sided), ``q_value`` (BH over findings).
    ``score``: the lead feature's selection-half t (what chose it). ``examples``: doc ids of documents
    of this direction where the lead fires most strongly."""

    direction: str
    label: str
    feature_ids: tuple[int, ...]
    share: float
    n_docs: int
    mean_on: float
    mean_off: float
    effect: float
    effect_size: float
    t: float
    p_value: float
    q_value: float
    is_formatting: bool
    examples: tuple[int, ...]
    score: float
    numeric: bool = True
    column: str = "value"

    @property
    def lead(self) -> int:
        return self.feature_ids[0]

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)

    @property
    def significant(self) -> bool:
        return self.q_value < ALPHA

    @property
    def measured(self) -> bool:
        """Whether the held-out half had documents on both sides of this finding (else its means are NaN)."""
        return bool(np.isfinite(self.mean_on) and np.isfinite(self.mean_off))

    @property
    def sentence(self) -> str:
        """E.g. "Goes with higher stars: praise for the acting — mean 4.2 where it fires vs 3.1 elsewhere"."""
        if self.numeric:
            head = f"Goes with {self.direction} {self.column}"
            date = self.direction in ("later", "earlier")  # a date column, explained as seconds
            body = (f"mean {_fmt(self.mean_on, True, date)} where it fires vs {_fmt(self.mean_off, True, date)} "
                    "elsewhere")
        else:
            head = f"Goes with {self.column} = {self.direction}"
            body = f"{_fmt(self.mean_on, False)} {self.direction} where it fires vs {_fmt(self.mean_off, False)} elsewhere"
        if not self.measured:
            body = "too rare in the held-out half to measure"
        text = f"{head}: {self.label} — {body} ({_fmt(self.share, False)} of documents"
        text += f", {self.n_features} features)" if self.n_features > 1 else ")"
        return text if self.significant else text + " [not significant]"


def _candidates(eff: dict[str, np.ndarray], side: Side, cfg: ExplainConfig, n: int) -> np.ndarray:
    """The side's strongest features on the selection half, strongest first."""
    t = eff["t"][:, side.column] * side.sign
    ok = (eff["n_on"] >= cfg.min_docs) & (eff["n_on"] <= n - cfg.min_docs) & (t > 0)
    ids = np.flatnonzero(ok)
    ids = ids[np.lexsort((ids, -t[ids]))]
    return ids[: cfg.n_candidates]


def _member_matrix(groups: list[list[int]], cand: np.ndarray) -> sp.csr_matrix:
    """(len(cand), len(groups)) indicator: which group each candidate column belongs to."""
    pos = {int(f): i for i, f in enumerate(cand)}
    rows = [pos[f] for g in groups for f in g]
    cols = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    return sp.csr_matrix((np.ones(len(rows), np.int64), (rows, cols)), shape=(len(cand), len(groups)))


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


def side_mask(targets: Targets, side: Side) -> np.ndarray:
    """Documents of one direction (at or above the median for "higher"/"later", at or below otherwise)."""
    if not targets.numeric:
        return targets.raw == side.column
    median = float(np.median(targets.raw))
    return targets.raw >= median if side.sign > 0 else targets.raw <= median


def _examples(X: sp.csr_matrix, targets: Targets, plan: list[tuple[Side, list[int]]], cfg: ExplainConfig) -> list[tuple[int, ...]]:
    """Row positions (in X) of each group's examples: its direction's documents where the lead fires most."""
    if cfg.n_examples == 0 or not plan:
        return [() for _ in plan]
    leads = np.array([g[0] for _, g in plan], np.int64)
    L = as_csr(X[:, leads])
    out, masked = [], {}
    for j, (side, _) in enumerate(plan):
        if side.name not in masked:
            keep = side_mask(targets, side).astype(L.dtype)
            masked[side.name] = (sp.diags(keep) @ L).tocsc()
            masked[side.name].sort_indices()
        rows = example_documents(masked[side.name], j, n=cfg.n_examples, threshold=cfg.threshold)
        out.append(tuple(int(r) for r in rows))
    return out


def _plan(B_sel: sp.csr_matrix, eff_sel: dict[str, np.ndarray], sides: list[Side], cfg: ExplainConfig,
          labels: Mapping[int, str] | None = None) -> tuple[list[tuple[Side, list[int]]], pd.DataFrame]:
    """Candidates per direction from the selection half, folded into concepts there as the diff folds them
    (co-firing, a shared label word, containment)."""
    by_side = [(side, _candidates(eff_sel, side, cfg, B_sel.shape[0])) for side in sides]
    every = np.unique(np.concatenate([c for _, c in by_side]))
    Bc = as_csr(B_sel[:, every])  # sliced once for all directions
    plan, rows = [], []
    for side, cand in by_side:
        local = np.searchsorted(every, cand)
        groups = group_features(Bc, local, jaccard_threshold=cfg.jaccard_threshold, containment_threshold=0.8,
                                labels=local_labels(labels, every))
        plan += [(side, [int(every[i]) for i in g]) for g in groups]
        t = eff_sel["t"][cand, side.column] * side.sign
        rows.append(pd.DataFrame({"feature_id": cand.astype(np.int64), "direction": side.name,
                                  "column": side.column, "sign": side.sign,
                                  "n_select": eff_sel["n_on"][cand].astype(np.int64), "t_select": t}))
    return plan, pd.concat(rows, ignore_index=True)


def _ordered(findings: list[ExplainFinding]) -> list[ExplainFinding]:
    """Significant first; formatting after content while some content finding is significant; then by
    standardized effect."""
    content = any(f.significant and not f.is_formatting for f in findings)
    return sorted(findings, key=lambda f: (not f.significant, content and f.is_formatting, -abs(f.effect_size), f.lead))


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


def build_findings(h: Halves, targets: Targets, eff_sel: dict[str, np.ndarray], cfg: ExplainConfig,
                   labels: Mapping[int, str], column: str, doc_ids: np.ndarray) -> tuple[list[ExplainFinding], pd.DataFrame]:
    """Findings per direction, chosen on the selection half and measured on the test half; and the
    per-feature table of the candidates (held-out statistics, BH over candidates, finding index)."""
    plan, table = _plan(h.B_sel, eff_sel, sides_of(targets), cfg, labels)
    if not plan:
        return [], table.assign(finding=pd.Series(dtype=np.int64))
    cand = np.unique(table["feature_id"].to_numpy())
    Bt = as_csr(h.B_test[:, cand])
    raw = targets.raw[h.test] if targets.numeric else None
    Y = targets.Y[h.test]
    U = binarize(Bt @ _member_matrix([g for _, g in plan], cand), 0.0)
    g = heldout_effects(U, Y, raw, np.array([s.column for s, _ in plan]), np.array([s.sign for s, _ in plan]),
                        cfg.min_docs)
    per_feature = heldout_effects(as_csr(Bt[:, np.searchsorted(cand, table["feature_id"].to_numpy())]), Y, raw,
                                  table["column"].to_numpy(), table["sign"].to_numpy(), cfg.min_docs)
    table = pd.concat([table.drop(columns=["column", "sign"]), per_feature], axis=1)
    examples = _examples(h.X, targets, plan, cfg)
    lead_t = {(r.direction, r.feature_id): r.t_select for r in table.itertuples()}
    findings = [ExplainFinding(
        direction=side.name, label=labels.get(members[0]) or f"feature {members[0]}",
        feature_ids=tuple(int(f) for f in members), share=float(r.share_test), n_docs=int(r.n_test),
        mean_on=float(r.mean_on), mean_off=float(r.mean_off), effect=float(r.effect),
        effect_size=float(r.effect_size), t=float(r.t), p_value=float(r.p_value), q_value=float(r.q_value),
        is_formatting=is_formatting_label(labels.get(members[0])), examples=tuple(int(d) for d in doc_ids[list(ex)]),
        score=float(lead_t[(side.name, members[0])]), numeric=targets.numeric, column=column,
    ) for (side, members), r, ex in zip(plan, g.itertuples(), examples)]
    findings = _ordered(findings)
    index = {(f.direction, f.lead): i for i, f in enumerate(findings)}
    member = {(f.direction, m): index[(f.direction, f.lead)] for f in findings for m in f.feature_ids}
    table["finding"] = [member.get((d, int(f)), -1) for d, f in zip(table["direction"], table["feature_id"])]
    return findings, table


# -- the held-out score of a sparse linear model ---------------------------------------------------------
@dataclass(frozen=True)
class ModelScore:
    """A model's held-out score: ``score`` under ``metric`` (also every metric in ``scores``), the
    strength chosen (``strength``: the L1 weight per document), inputs and inputs with nonzero weight,
    and ``weights`` (one row per class for several values)."""

    metric: str
    score: float
    scores: dict[str, float]
    strength: float
    n_inputs: int
    n_nonzero: int
    weights: np.ndarray = field(repr=False)


def model_target(targets: Targets) -> np.ndarray:
    """What the model predicts: the tested scale (ranks) for numbers, 0/1 for two values, codes for several."""
    if targets.task == "regression":
        return targets.Y[:, 0]
    if targets.task == "binary":
        return (targets.raw == targets.raw.max()).astype(np.int64)
    return targets.raw.astype(np.int64)


def _strengths(X, y: np.ndarray, task: str, n: int) -> np.ndarray:
    """Descending L1 strengths from the smallest that zeroes every weight (lambda_max) down 1000-fold."""
    Y = np.eye(int(y.max()) + 1)[y] if task == "multiclass" else np.asarray(y, float)[:, None]
    Yc = Y - Y.mean(axis=0)
    lam_max = float(np.abs(np.asarray(X.T @ Yc)).max()) / max(1, X.shape[0]) or 1.0
    return lam_max * np.logspace(-0.5, -3.0, n)


def _fit_predict(task: str, X_fit, y_fit: np.ndarray, X_eval, lam: float, warm: Lasso | None = None):
    """Fit the L1 model at strength ``lam`` (per-document scale); return (predictions on X_eval, weights, model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if task == "regression":
            model = warm or Lasso(warm_start=True, max_iter=3000, tol=1e-3)
            model.set_params(alpha=lam)
            model.fit(X_fit, y_fit)
            return model.predict(X_eval), model.coef_[None, :], model
        classes = [1] if task == "binary" else range(int(y_fit.max()) + 1)
        preds, weights = [], []
        for c in classes:
            yc = (y_fit == c).astype(np.int64)
            if yc.min() == yc.max():
                preds.append(np.zeros(X_eval.shape[0]))
                weights.append(np.zeros(X_fit.shape[1]))
                continue
            clf = LogisticRegression(C=1.0 / (lam * X_fit.shape[0]), l1_ratio=1.0, solver="liblinear", tol=1e-3)
            clf.fit(X_fit, yc)
            preds.append(clf.decision_function(X_eval))
            weights.append(clf.coef_.ravel())
        return np.column_stack(preds), np.vstack(weights), None


def metric_values(task: str, y: np.ndarray, raw: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """AUC (two values), macro one-vs-rest AUC (several), Spearman and R² (numbers; R² on the tested scale)."""
    pred = np.asarray(pred, float)
    if task == "regression":
        rho = stats.spearmanr(pred.ravel(), raw).statistic if np.ptp(pred) > 0 else 0.0
        return {"spearman": float(np.nan_to_num(rho)), "r2": float(r2_score(y, pred.ravel()))}
    if task == "binary":
        return {"auc": float(roc_auc_score(y, pred[:, 0]))}
    aucs = [roc_auc_score(y == c, pred[:, c]) for c in range(pred.shape[1]) if 0 < (y == c).sum() < y.size]
    return {"auc": float(np.mean(aucs)) if aucs else 0.5}


def heldout_score(F_sel, F_test, targets: Targets, sel: np.ndarray, test: np.ndarray, cfg: ExplainConfig) -> ModelScore:
    """Pick the L1 strength on a quarter of the selection half, refit on the whole half, score the test half.

    At most ``max_model_docs`` documents of the selection half train the model (a random subset): more
    adds little to a model of ``max_model_features`` inputs and costs time on 100k documents."""
    task = targets.task
    metric = "auc" if task != "regression" else cfg.numeric_metric
    y = model_target(targets)
    if sel.size > cfg.max_model_docs:
        keep = np.sort(np.random.default_rng(cfg.seed + 2).choice(sel.size, cfg.max_model_docs, replace=False))
        F_sel, sel = F_sel[keep], sel[keep]
    inner_fit, inner_val = split_halves(sel.size, 0.25, cfg.seed + 1, None if targets.numeric else y[sel])
    as_fit = (lambda M: M.tocsc()) if task == "regression" and sp.issparse(F_sel) else (lambda M: M)
    F_fit, y_fit = as_fit(F_sel[inner_fit]), y[sel][inner_fit]
    F_val = F_sel[inner_val]
    best, warm = (-np.inf, 0.0), None
    for lam in _strengths(F_fit, y_fit, task, cfg.n_strengths):
        pred, _, warm = _fit_predict(task, F_fit, y_fit, F_val, lam, warm)
        best = max(best, (metric_values(task, y[sel][inner_val], targets.raw[sel][inner_val], pred)[metric], lam))
    pred, weights, _ = _fit_predict(task, as_fit(F_sel), y[sel], F_test, best[1])
    scores = metric_values(task, y[test], targets.raw[test], pred)
    return ModelScore(metric=metric, score=scores[metric], scores=scores, strength=float(best[1]),
                      n_inputs=int(F_sel.shape[1]), n_nonzero=int((np.abs(weights) > 0).any(axis=0).sum()),
                      weights=weights)


def screen_features(eff_sel: dict[str, np.ndarray], n_sel: int, cfg: ExplainConfig) -> np.ndarray:
    """The features fed to the model: the ``max_model_features`` most significant on the selection half
    (largest |t| over the column's directions), firing in at least ``min_docs`` documents there."""
    ok = (eff_sel["n_on"] >= cfg.min_docs) & (eff_sel["n_on"] <= n_sel - cfg.min_docs)
    strength = np.where(ok, np.abs(eff_sel["t"]).max(axis=1), -1.0)
    ids = np.flatnonzero(ok)
    ids = ids[np.lexsort((ids, -strength[ids]))][: cfg.max_model_features]
    return np.sort(ids)


def dense_inputs(V: np.ndarray, sel: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense vectors standardized with the selection half's means and deviations."""
    V = np.asarray(V, np.float64)
    mu, sd = V[sel].mean(axis=0), V[sel].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (V[sel] - mu) / sd, (V[test] - mu) / sd


# -- the result -------------------------------------------------------------------------------------
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
        f = self.findings[finding] if isinstance(finding, (int, np.integer)) else finding
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


def _models(h: Halves, targets: Targets, eff_sel: dict[str, np.ndarray], dense: np.ndarray | None,
            cfg: ExplainConfig, report: Progress) -> tuple[ModelScore | None, ModelScore | None]:
    """The L1 model on the screened SAE features and, given dense vectors, on them (the baseline)."""
    report(0.45, "Fitting the sparse linear model on SAE features")
    screened = screen_features(eff_sel, h.sel.size, cfg)
    model = (heldout_score(h.B_sel[:, screened].astype(np.float64), h.B_test[:, screened].astype(np.float64),
                           targets, h.sel, h.test, cfg) if screened.size else None)
    if dense is None:
        return model, None
    report(0.8, "Fitting the same model on MiniLM document vectors")
    inputs = dense_inputs(np.asarray(dense)[targets.rows], h.sel, h.test)
    return model, heldout_score(*inputs, targets, h.sel, h.test, cfg)


def _values_of(col: ColumnValues, targets: Targets) -> np.ndarray:
    if not targets.numeric:
        return np.asarray(targets.classes, dtype=object)[targets.raw]
    return col.values if col.kind == "date" else targets.raw


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
    try:
        col = read_column(pd.Series(values), column, kind, allowed=("numeric", "date", "categorical"))
    except ColumnError as exc:
        raise ExplainError(str(exc)) from exc
    targets = column_targets(col, config)
    if targets.rows.size < 4 * config.min_docs:
        raise ExplainError(f"Only {targets.rows.size:,} documents have a usable value of {column!r}; "
                           f"explaining it needs at least {4 * config.min_docs}.")
    Xu = X if targets.rows.size == X.shape[0] else X[targets.rows]
    sel, test = split_halves(targets.rows.size, config.test_size, config.seed,
                             None if targets.numeric else targets.raw)
    halves = Halves.split(Xu, sel, test, config.threshold)
    report(0.05, "Testing every feature on the selection half")
    eff_sel = feature_effects(halves.B_sel, targets.Y[sel])
    report(0.25, "Grouping the strongest features and testing them on the held-out half")
    findings, table = build_findings(halves, targets, eff_sel, config, labels or {}, column, ids[targets.rows])
    model, base = _models(halves, targets, eff_sel, dense, config, report)
    note = None if dense is not None else (baseline_note or "No MiniLM document vectors: no baseline score.")
    report(1.0, "Done")
    return ExplainResult(
        column=column, kind=col.kind, task=targets.task, directions=tuple(s.name for s in sides_of(targets)),
        findings=findings, table=table, model=model, baseline_model=base, baseline_note=note,
        n_total=col.n_total, n_missing=col.n_missing, n_unparseable=col.n_unparseable, n_rare=targets.n_rare,
        n_select=int(sel.size), n_test=int(test.size), messages=_messages(col, targets, note), config=config,
        doc_ids=ids[targets.rows], values=_values_of(col, targets), X=Xu)
