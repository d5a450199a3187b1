"""How much of the column a sparse model explains: an L1-regularized linear model (logistic for categories,
Lasso for numbers) on screened SAE features, its strength picked on part of the selection half and scored
on the test half; the same model on standardized MiniLM vectors is the baseline."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score

from backend.analysis.explain_config import ExplainConfig, Progress
from backend.analysis.explain_stats import Halves, split_halves
from backend.analysis.explain_targets import Targets


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
            clf = LogisticRegression(C=1.0 / (lam * X_fit.shape[0]), l1_ratio=1.0, solver="liblinear", tol=1e-3,
                                     random_state=0)
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


def score_models(h: Halves, targets: Targets, eff_sel: dict[str, np.ndarray], dense: np.ndarray | None,
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
