"""Dataset-diff findings: the features that describe one concept, read as one line each.

An SAE often spreads one concept over many latents (17 features all firing on ``://t.co`` links; three
"coronavirus" features, each firing on different documents), so a diff ranked feature by feature fills its
summary with copies of one difference and hides the other side's. Here the strongest features of each side
are folded greedily into findings: a feature joins a stronger one when their document sets overlap
(Jaccard, over both sides' documents), when their labels share a concept word (:func:`label_words`), when
one's documents lie inside the other's (containment, with co-occurrence far beyond chance), or optionally
when their decoder directions point the same way. A finding is led by its strongest feature and reports
the share of documents in which *any* member fires, with example documents. The summary takes the
strongest findings of *each* side; length-confounded findings, and formatting findings (punctuation,
newlines) while a content finding also differs, rank after the others.

:func:`diff_result` is the whole dataset diff (statistics, length control, findings, examples), so the
Diff page and a notebook get the same answer from one call.

Here: :func:`diff_result` and the reading of each side's candidates into findings. Beside it, one job
each and re-exported here: ``label_reading`` (formatting labels, labels that name nothing, concept
words), ``feature_grouping`` (folding features into one concept, shared with explain and trend) and
``findings_result`` (the :class:`Finding` and :class:`DiffResult` types and the summary order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.analysis.diff import (
    DiffConfig,
    cmh_test,
    diff_features,
    example_documents,
    length_bins_of,
    length_summary,
    lengths_differ,
    stratum_counts,
)
from backend.analysis.feature_grouping import fold_features
from backend.analysis.findings_result import DiffResult, Finding, Side, ordered_findings
from backend.analysis.label_reading import is_formatting_label
from backend.errors import UserError
# Re-exported: `from backend.analysis.findings import X` keeps working for every public name it had.
from backend.analysis.feature_grouping import (  # noqa: F401
    CONTAINMENT_MIN_NPMI, decoder_cosine, group_features, inside_matrix, jaccard_matrix, keep_contrast,
    keep_contrast_within, local_labels, overlap_counts, shared_words_matrix)
from backend.analysis.label_reading import UNNAMED_PREFIX, concept_keys, label_words, names_nothing  # noqa: F401
from backend.analysis.label_reading import group_labels


def _doc_ids(ids: np.ndarray | None, n: int, side: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise UserError(f"ids_{side} must have one doc id per row of X{side.upper()}.")
    return ids


def diff_result(XA: sp.spmatrix, XB: sp.spmatrix, lengths_a: np.ndarray | None = None,
                lengths_b: np.ndarray | None = None, labels: Mapping[int, str] | None = None, *,
                ids_a: np.ndarray | None = None, ids_b: np.ndarray | None = None, decoder: np.ndarray | None = None,
                formatting_ids: Collection[int] | None = None,
                is_formatting: Callable[[str], bool] = is_formatting_label, **options) -> DiffResult:
    """Dataset diff of A against B, read as findings (what the Diff page shows).

    ``XA``/``XB``: max-pooled doc x feature activations (CSR); a feature fires above ``threshold``.
    ``lengths_a``/``lengths_b``: token lengths, for the length comparison and (with ``length_control``)
    the length-stratified statistics. ``labels``: {feature_id: label} for the findings' names, for
    folding features whose labels share a concept word, and for ``is_formatting``, unless
    ``formatting_ids`` names the formatting features itself. ``decoder``: optional (n_features, d)
    decoder directions, one more way features fold together. ``ids_a``/``ids_b``: doc id per row
    (default: row numbers). ``options`` are :class:`DiffConfig`'s fields (threshold, min_share, …).
    """
    config = DiffConfig(**options)
    XA, XB = as_csr(XA), as_csr(XB)
    if XA.shape[0] == 0 or XB.shape[0] == 0:
        raise UserError("One side has no documents.")
    ids_a, ids_b = _doc_ids(ids_a, XA.shape[0], "a"), _doc_ids(ids_b, XB.shape[0], "b")
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    la, lb = (None, None) if lengths_a is None or lengths_b is None else (np.asarray(lengths_a, float),
                                                                       np.asarray(lengths_b, float))
    summary = length_summary(la, lb) if la is not None else None
    use_lengths = bool(config.length_control and la is not None)
    table = diff_features(XA, XB, config.threshold, config.min_share, config.max_share, la if use_lengths else None,
                          lb if use_lengths else None, config.length_bins)
    ranked_by = "adj_diff" if use_lengths and lengths_differ(summary) else "abs_diff"
    _add_rank_adjusted(table)
    formatting = (set(int(f) for f in formatting_ids) if formatting_ids is not None
                  else {f for f, label in labels.items() if is_formatting(label)})
    context = _SideContext(table, ranked_by, XA, XB, ids_a, ids_b, labels, formatting,
                           length_bins_of(np.concatenate([la, lb]), config.length_bins) if use_lengths else None,
                           decoder, config)
    findings = ordered_findings([f for side in ("a", "b") for f in _side_findings(side, context)],
                                config.include_confounded)
    table["finding"] = _finding_column(table, findings)
    return DiffResult(table=table, findings=findings, config=config, ranked_by=ranked_by, length_summary=summary,
                      ids_a=ids_a, ids_b=ids_b, XA=XA, XB=XB, lengths_a=la, lengths_b=lb)


def _add_rank_adjusted(table: pd.DataFrame) -> None:
    """Rank by |adj_diff| (ties by feature id), when the table has the length-adjusted difference."""
    if "adj_diff" not in table:
        return
    order = np.lexsort((table["feature_id"].to_numpy(), -np.abs(table["adj_diff"].to_numpy())))
    rank_adjusted = np.empty(len(table), np.int64)
    rank_adjusted[order] = np.arange(1, len(table) + 1)
    table["rank_adjusted"] = rank_adjusted


def _finding_column(table: pd.DataFrame, findings: list[Finding]) -> np.ndarray:
    """Index of the finding each table row belongs to (-1: none)."""
    column = np.full(len(table), -1, np.int64)
    row_of = {int(f): i for i, f in enumerate(table["feature_id"].to_numpy())}
    for i, f in enumerate(findings):
        column[[row_of[m] for m in f.feature_ids]] = i
    return column


@dataclass(frozen=True)
class _SideContext:
    """What reading one side's findings needs (the same for both sides)."""

    table: pd.DataFrame
    ranked_by: str
    XA: sp.csr_matrix
    XB: sp.csr_matrix
    ids_a: np.ndarray
    ids_b: np.ndarray
    labels: dict[int, str]
    formatting: set[int]
    strata: np.ndarray | None
    decoder: np.ndarray | None
    config: DiffConfig


def _candidate_rows(side: Side, ctx: _SideContext) -> np.ndarray:
    """Table rows of the side's ``n_candidates`` strongest features: content before formatting, and
    (unless included) length-confounded after the others."""
    table, config = ctx.table, ctx.config
    fid = table["feature_id"].to_numpy(np.int64)
    score = table[ctx.ranked_by].to_numpy(float)
    is_fmt = np.isin(fid, np.fromiter(ctx.formatting, np.int64, len(ctx.formatting)))
    rows = np.flatnonzero(score > 0 if side == "a" else score < 0)
    demote = np.zeros(rows.size, bool) if config.include_confounded else _confounded(table)[rows]
    return rows[np.lexsort((fid[rows], -np.abs(score[rows]), is_fmt[rows], demote))][: config.n_candidates]


def _confounded(table: pd.DataFrame) -> np.ndarray:
    if "length_confounded" in table:
        return table["length_confounded"].to_numpy(bool)
    return np.zeros(len(table), bool)


def _union_shares(bin_a: sp.csr_matrix, bin_b: sp.csr_matrix, groups: list[list[int]],
                  strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per group: share of A and of B documents where any member fires, and the length-adjusted
    difference of those shares (None without strata)."""
    member_of = sp.csr_matrix((np.ones(sum(map(len, groups)), np.int64),
                               (np.concatenate(groups), np.repeat(np.arange(len(groups)), [len(g) for g in groups]))),
                              shape=(bin_a.shape[1], len(groups)))
    any_a = binarize(bin_a.astype(np.int64) @ member_of, 0.0)
    any_b = binarize(bin_b.astype(np.int64) @ member_of, 0.0)
    n_a, n_b = bin_a.shape[0], bin_b.shape[0]
    share_a = np.bincount(any_a.indices, minlength=len(groups)) / n_a
    share_b = np.bincount(any_b.indices, minlength=len(groups)) / n_b
    if strata is None:
        return share_a, share_b, None
    n_strata = int(strata.max()) + 1
    a, strata_a = stratum_counts(any_a, strata[:n_a], n_strata)
    c, strata_b = stratum_counts(any_b, strata[n_a:], n_strata)
    return share_a, share_b, cmh_test(a, strata_a, c, strata_b)["adj_diff"]


def _side_findings(side: Side, ctx: _SideContext) -> list[Finding]:
    """Findings of one side: its top candidates folded into concepts, with union shares and examples."""
    rows = _candidate_rows(side, ctx) if not ctx.table.empty else np.zeros(0, np.int64)
    if rows.size == 0:
        return []
    config = ctx.config
    cand = ctx.table["feature_id"].to_numpy(np.int64)[rows]
    sub_a, sub_b = ctx.XA[:, cand], ctx.XB[:, cand]
    bin_a, bin_b = binarize(sub_a, config.threshold), binarize(sub_b, config.threshold)
    groups = fold_features(sp.vstack([bin_a, bin_b], format="csr"), cand, config.jaccard_threshold,
                           ctx.labels if config.fold_by_label else None, config.containment_threshold,
                           ctx.decoder, config.cosine_threshold)
    groups = keep_contrast(groups, bin_a, bin_b, side, config.max_dilution)
    share_a, share_b, adj = _union_shares(bin_a, bin_b, groups, ctx.strata)
    cols_a, cols_b = as_csr(sub_a).tocsc(), as_csr(sub_b).tocsc()  # canonical CSC: examples read columns directly

    def examples(cols: sp.csc_matrix, ids: np.ndarray, lead_local: int) -> tuple[int, ...]:
        rows_ = example_documents(cols, lead_local, n=config.n_examples, threshold=config.threshold)
        return tuple(int(d) for d in ids[rows_])

    score, q, confounded = (ctx.table[ctx.ranked_by].to_numpy(float), ctx.table["q_value"].to_numpy(float),
                            _confounded(ctx.table))
    out = []
    for g, members in enumerate(groups):
        lead, lead_row = int(cand[members[0]]), rows[members[0]]
        label, names = group_labels(ctx.labels, [int(cand[m]) for m in members])
        out.append(Finding(
            side=side, label=label, feature_ids=tuple(int(cand[m]) for m in members),
            share_a=float(share_a[g]), share_b=float(share_b[g]), diff=float(share_a[g] - share_b[g]),
            adj_diff=None if adj is None else float(adj[g]), q_value=float(q[lead_row]),
            length_confounded=bool(confounded[lead_row]), is_formatting=lead in ctx.formatting,
            examples_a=examples(cols_a, ctx.ids_a, members[0]), examples_b=examples(cols_b, ctx.ids_b, members[0]),
            score=float(score[lead_row]),
            feature_labels=names,
        ))
    return out
