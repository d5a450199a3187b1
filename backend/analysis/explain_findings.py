"""Explain's findings: the strongest features of each direction on the selection half, folded into
concepts by co-firing (as the diff folds them), then measured once on the held-out half."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import FeatureGroup, as_csr, binarize
from backend.analysis.diff import example_documents
from backend.analysis.explain_config import ALPHA, ExplainConfig
from backend.analysis.explain_stats import Halves, heldout_effects
from backend.analysis.explain_targets import Side, Targets, side_mask, sides_of
from backend.analysis.findings import group_features, is_formatting_label, keep_contrast_within, local_labels
from backend.analysis.label_reading import group_labels


def _fmt(value: float, numeric: bool, date: bool = False) -> str:
    if date and np.isfinite(value):
        return str(np.datetime64(int(value), "s").astype("datetime64[D]"))
    if not numeric:
        return f"{100 * value:.0f}%"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


@dataclass(frozen=True)
class ExplainFinding(FeatureGroup):
    """Features that fire on the same documents and go with one direction of the column.

    Measured on the held-out half: ``share``/``n_docs`` (documents where any member fires),
    ``mean_on``/``mean_off`` (the column's mean where it fires and elsewhere; for a category, the share
    of documents with that value), ``effect`` = mean_on - mean_off, ``effect_size`` (standardized on the
    tested scale: ranks for numbers), ``t``, ``p_value`` (one-sided), ``q_value`` (BH over findings).
    ``score``: the lead feature's selection-half t (what chose it). ``examples``: doc ids of documents
    of this direction where the lead fires most strongly. ``feature_labels``: each member's label, in
    ``feature_ids`` order; ``label`` is the one that names the finding (``named_by``)."""

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
    feature_labels: tuple[str, ...] = ()

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


def _examples(X: sp.csr_matrix, masks: Mapping[str, np.ndarray], plan: list[tuple[Side, list[int]]],
              cfg: ExplainConfig) -> list[tuple[int, ...]]:
    """Row positions (in X) of each group's examples: its direction's documents (``masks[side.name]``) where
    the lead fires most."""
    if cfg.n_examples == 0 or not plan:
        return [() for _ in plan]
    leads = np.array([g[0] for _, g in plan], np.int64)
    L = as_csr(X[:, leads])
    out, masked = [], {}
    for j, (side, _) in enumerate(plan):
        if side.name not in masked:
            keep = masks[side.name].astype(L.dtype)
            masked[side.name] = (sp.diags(keep) @ L).tocsc()
            masked[side.name].sort_indices()
        rows = example_documents(masked[side.name], j, n=cfg.n_examples, threshold=cfg.threshold)
        out.append(tuple(int(r) for r in rows))
    return out


def _plan(B_sel: sp.csr_matrix, eff_sel: dict[str, np.ndarray], sides: list[Side], cfg: ExplainConfig,
          labels: Mapping[int, str] | None = None, masks: Mapping[str, np.ndarray] | None = None
          ) -> tuple[list[tuple[Side, list[int]]], pd.DataFrame]:
    """Candidates per direction from the selection half, folded into concepts there as the diff folds them
    (co-firing, a shared label word, containment; without members that dilute the group's contrast between
    its direction's documents, ``masks[side.name]`` over the selection half, and the others)."""
    by_side = [(side, _candidates(eff_sel, side, cfg, B_sel.shape[0])) for side in sides]
    every = np.unique(np.concatenate([c for _, c in by_side]))
    Bc = as_csr(B_sel[:, every])  # sliced once for all directions
    plan, rows = [], []
    for side, cand in by_side:
        local = np.searchsorted(every, cand)
        groups = group_features(Bc, local, jaccard_threshold=cfg.jaccard_threshold, containment_threshold=0.8,
                                labels=local_labels(labels, every))
        if masks is not None:
            groups = keep_contrast_within(groups, Bc, masks[side.name], max_dilution=cfg.max_dilution)
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


def build_findings(h: Halves, targets: Targets, eff_sel: dict[str, np.ndarray], cfg: ExplainConfig,
                   labels: Mapping[int, str], column: str, doc_ids: np.ndarray) -> tuple[list[ExplainFinding], pd.DataFrame]:
    """Findings per direction, chosen on the selection half and measured on the test half; and the
    per-feature table of the candidates (held-out statistics, BH over candidates, finding index)."""
    sides = sides_of(targets)
    masks = {s.name: side_mask(targets, s) for s in sides}
    plan, table = _plan(h.B_sel, eff_sel, sides, cfg, labels, {name: m[h.sel] for name, m in masks.items()})
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
    examples = _examples(h.X, masks, plan, cfg)
    lead_t = {(r.direction, r.feature_id): r.t_select for r in table.itertuples()}
    named = [group_labels(labels, members) for _, members in plan]
    findings = [ExplainFinding(
        direction=side.name, label=label,
        feature_ids=tuple(int(f) for f in members), share=float(r.share_test), n_docs=int(r.n_test),
        mean_on=float(r.mean_on), mean_off=float(r.mean_off), effect=float(r.effect),
        effect_size=float(r.effect_size), t=float(r.t), p_value=float(r.p_value), q_value=float(r.q_value),
        is_formatting=is_formatting_label(labels.get(members[0])), examples=tuple(int(d) for d in doc_ids[list(ex)]),
        score=float(lead_t[(side.name, members[0])]), numeric=targets.numeric, column=column,
        feature_labels=names,
    ) for (side, members), r, ex, (label, names) in zip(plan, g.itertuples(), examples, named)]
    findings = _ordered(findings)
    index = {(f.direction, f.lead): i for i, f in enumerate(findings)}
    member = {(f.direction, m): index[(f.direction, f.lead)] for f in findings for m in f.feature_ids}
    table["finding"] = [member.get((d, int(f)), -1) for d, f in zip(table["direction"], table["feature_id"])]
    return findings, table
