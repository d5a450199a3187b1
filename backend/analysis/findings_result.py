"""What a dataset diff returns: :class:`Finding` (one difference between the sides, its features folded
into one concept, read as one sentence) and :class:`DiffResult` (the per-feature table and the findings
in summary order, with the per-side summary, examples, members and export)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import FeatureGroup, pick_finding
from backend.analysis.diff import ALPHA, DiffConfig, example_documents
from backend.analysis.label_reading import names_nothing

Side = Literal["a", "b"]


def _pct(share: float) -> str:
    if share <= 0:
        return "0%"
    if share < 0.01:
        return "<1%"
    if share >= 1:
        return "100%"
    if share > 0.99:
        return ">99%"
    return f"{100 * share:.0f}%"


@dataclass(frozen=True)
class Finding(FeatureGroup):
    """One difference between the sides: features that fire on the same documents, led by the strongest.

    ``share_a``/``share_b``: share of documents of each side in which any member fires; ``diff`` =
    share_a - share_b; ``adj_diff``: the same difference adjusted for token length (Mantel-Haenszel over
    length strata), None without length control; ``q_value``, ``length_confounded``: the lead feature's;
    ``score``: the lead's difference the ranking used (``DiffResult.ranked_by``); ``examples_a``/
    ``examples_b``: doc ids where the lead fires most strongly, per side; ``feature_labels``: the label of
    each member, in ``feature_ids`` order (what was folded in, and why).
    """

    side: Side
    label: str
    feature_ids: tuple[int, ...]
    share_a: float
    share_b: float
    diff: float
    adj_diff: float | None
    q_value: float
    length_confounded: bool
    is_formatting: bool
    examples_a: tuple[int, ...]
    examples_b: tuple[int, ...]
    score: float
    feature_labels: tuple[str, ...] = ()

    def describe(self, name_a: str = "A", name_b: str = "B") -> str:
        """The finding as one sentence, naming the sides."""
        mine, other = (self.share_a, self.share_b) if self.side == "a" else (self.share_b, self.share_a)
        text = (f"More common in {name_a if self.side == 'a' else name_b}: {self.label} — "
                f"{_pct(mine)} vs {_pct(other)} of documents")
        if self.n_features > 1:
            text += f" ({self.n_features} features)"
        if self.length_confounded:
            text += " [length-confounded]"
        return text

    @property
    def sentence(self) -> str:
        """E.g. "More common in A: links (t.co URLs) — 71% vs 3% of documents (17 features)"."""
        return self.describe()


def ordered_findings(findings: list[Finding], include_confounded: bool) -> list[Finding]:
    """Strongest first; length-confounded after the others (unless included), and formatting findings and
    findings whose label names nothing ("varied tokens: …") after readable content findings while some
    readable content finding differs significantly."""
    def plain(f: Finding) -> bool:
        return f.is_formatting or names_nothing(f.label)

    content_differs = any(
        not plain(f) and (include_confounded or not f.length_confounded) and f.q_value < ALPHA for f in findings
    )
    return sorted(findings, key=lambda f: (not include_confounded and f.length_confounded,
                                           content_differs and plain(f), -abs(f.score), f.lead))


@dataclass(eq=False)
class DiffResult:
    """A dataset diff: the per-feature ``table`` and the ``findings`` read from it.

    ``table`` is :func:`diff_features`'s table (ranked by |abs_diff|) plus ``finding`` (index into
    ``findings``, -1 for features not among the candidates) and, with length control,
    ``rank_adjusted`` (rank by |adj_diff|). ``ranked_by`` names the column the findings were ranked by:
    ``"adj_diff"`` when length control is on and the sides differ in length, else ``"abs_diff"``.
    ``findings`` are in summary order. ``ids_a``/``ids_b`` map rows of ``XA``/``XB`` to doc ids.
    """

    table: pd.DataFrame
    findings: list[Finding]
    config: DiffConfig
    ranked_by: str
    length_summary: dict | None
    ids_a: np.ndarray = field(repr=False)
    ids_b: np.ndarray = field(repr=False)
    XA: sp.csr_matrix = field(repr=False)
    XB: sp.csr_matrix = field(repr=False)
    lengths_a: np.ndarray | None = field(default=None, repr=False)
    lengths_b: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_a(self) -> int:
        return int(self.XA.shape[0])

    @property
    def n_b(self) -> int:
        return int(self.XB.shape[0])

    def summary(self, n_per_side: int = 4, include_confounded: bool | None = None) -> list[Finding]:
        """The strongest findings, at most ``n_per_side`` of each side, in summary order.

        ``include_confounded`` (default: the config's) ranks length-confounded findings by strength
        with the others instead of after them."""
        findings = self.findings
        if include_confounded is not None and include_confounded != self.config.include_confounded:
            findings = ordered_findings(findings, include_confounded)
        taken = {"a": 0, "b": 0}
        out = []
        for f in findings:
            if taken[f.side] < n_per_side:
                taken[f.side] += 1
                out.append(f)
        return out

    def ranked(self) -> pd.DataFrame:
        """The table in the order the findings use (by |adj_diff| when ``ranked_by`` is "adj_diff")."""
        if self.ranked_by == "abs_diff" or self.table.empty:
            return self.table
        return self.table.sort_values("rank_adjusted", kind="mergesort").reset_index(drop=True)

    def examples(self, feature_id: int, side: Side, n: int = 3) -> pd.DataFrame:
        """doc_id and max activation of the side's documents where the feature fires, strongest first."""
        X, ids = (self.XA, self.ids_a) if side == "a" else (self.XB, self.ids_b)
        rows = example_documents(X, int(feature_id), n=n, threshold=self.config.threshold)
        acts = np.asarray(X[rows][:, [int(feature_id)]].toarray()).ravel() if rows.size else np.zeros(0)
        return pd.DataFrame({"doc_id": ids[rows].astype(np.int64), "activation": acts.astype(float)})

    def members(self, finding: Finding | int) -> pd.DataFrame:
        """The features folded into a finding (or the finding at that index of `findings`, `to_frame`'s `finding`),
        lead first: feature_id, label, and each one's own share_a, share_b (the finding reports the share where
        *any* of them fires)."""
        finding = pick_finding(self.findings, finding)
        rows = self.table.set_index("feature_id").loc[list(finding.feature_ids)]
        labels = finding.feature_labels or tuple(f"feature {f}" for f in finding.feature_ids)
        return pd.DataFrame({"feature_id": np.asarray(finding.feature_ids, np.int64), "label": list(labels),
                             "share_a": rows["share_a"].to_numpy(float), "share_b": rows["share_b"].to_numpy(float)})

    def to_frame(self, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
        """One row per finding, for export (feature and doc ids as comma-separated text)."""
        def join(values: tuple[int, ...]) -> str:
            return ", ".join(str(v) for v in values)

        return pd.DataFrame(
            {
                "finding": np.arange(len(self.findings), dtype=np.int64),
                "side": [f.side for f in self.findings],
                "sentence": [f.describe(name_a, name_b) for f in self.findings],
                "label": [f.label for f in self.findings],
                "n_features": [f.n_features for f in self.findings],
                "feature_ids": [join(f.feature_ids) for f in self.findings],
                "share_a": [f.share_a for f in self.findings],
                "share_b": [f.share_b for f in self.findings],
                "diff": [f.diff for f in self.findings],
                "adj_diff": [np.nan if f.adj_diff is None else f.adj_diff for f in self.findings],
                "q_value": [f.q_value for f in self.findings],
                "length_confounded": [f.length_confounded for f in self.findings],
                "is_formatting": [f.is_formatting for f in self.findings],
                "examples_a": [join(f.examples_a) for f in self.findings],
                "examples_b": [join(f.examples_b) for f in self.findings],
                "feature_labels": [" | ".join(f.feature_labels) for f in self.findings],
            }
        )
