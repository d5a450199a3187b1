"""How concepts rose and fell along an ordered column (a date, a year, a number).

The documents are cut into bins of the column (years or months for dates, each value for a handful of
whole numbers, quantiles otherwise). Every feature's share of documents per bin is tested for a
monotone trend with the Cochran-Armitage test (the score test of a logistic regression of presence on the
bin's position), with Benjamini-Hochberg q-values over the tested features; its ``change`` is the
least-squares slope of presence over the whole range (share at the end minus share at the start). The
strongest rising and falling features are folded into findings by co-firing, as the diff does
(``findings.group_features``), with per-bin shares and Wilson intervals, and examples from the bin where
each finding peaks. Pinned features (``features=[…]``) get their shares too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from backend.analysis import FeatureGroup, as_csr, binarize, pick_finding
from backend.analysis.columns import ColumnError, ColumnValues, read_column
from backend.analysis.diff import bh_adjust, example_documents, stratum_counts
from backend.analysis.findings import group_features, is_formatting_label, keep_contrast_within, local_labels
from backend.analysis.label_reading import group_labels
from backend.errors import UserError

ALPHA = 0.05
BIN_MODES = ("year", "month", "quantile")
Progress = Callable[[float, str], None]
Direction = Literal["rising", "falling"]


class TrendError(UserError):
    """A trend request that cannot be answered (bad bins, a column that is not ordered, too few bins)."""


@dataclass(frozen=True)
class TrendConfig:
    """Options of :func:`trend_result`: ``min_docs`` (a feature is tested when it fires in at least this
    many documents), ``n_candidates`` (features per direction folded into findings), ``quantiles``
    (bins of "quantile"), ``max_values`` (whole numbers with at most this many distinct values get one bin
    each when bins are chosen automatically), ``confidence`` of the Wilson intervals."""

    threshold: float = 0.0
    min_docs: int = 5
    n_candidates: int = 30
    jaccard_threshold: float = 0.5
    n_examples: int = 2
    quantiles: int = 10
    max_values: int = 30
    max_bins: int = 400
    confidence: float = 0.95
    max_dilution: float = 0.1

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.min_docs < 1 or self.n_candidates < 1 or self.n_examples < 0:
            raise TrendError("threshold >= 0, min_docs >= 1, n_candidates >= 1 and n_examples >= 0, please.")
        if not 2 <= self.quantiles <= self.max_bins or self.max_values < 2:
            raise TrendError(f"quantiles must be between 2 and {self.max_bins}; max_values at least 2.")
        if not 0.5 <= self.confidence < 1:
            raise TrendError("confidence is between 0.5 and 1 (0.95 by default).")
        if not 0.0 <= self.max_dilution <= 1.0:
            raise TrendError("max_dilution lies in [0, 1] (1 keeps every folded feature).")


# -- bins ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bins:
    """``code``: bin index per used document; ``table``: bin_index, bin (label), position (the trend
    test's score, in column units: years, months or the bin's median), n_docs; ``mode`` as chosen."""

    code: np.ndarray
    table: pd.DataFrame
    mode: str


def auto_bins(col: ColumnValues, cfg: TrendConfig) -> str | int:
    """Years for dates spanning three years or more, else months (quantiles if that gives fewer than 3);
    each value for a few whole numbers; else quantiles."""
    if col.kind == "date":
        years = col.values.astype("datetime64[Y]")
        months = col.values.astype("datetime64[M]")
        if np.unique(years).size >= 3:
            return "year"
        return "month" if np.unique(months).size >= 3 else "quantile"
    v = np.asarray(col.values, float)
    if np.all(v == np.round(v)) and np.unique(v).size <= cfg.max_values:
        return "value"
    return "quantile"


def _labelled(keys: np.ndarray, labels: Sequence[str], positions: np.ndarray, code: np.ndarray, mode: str) -> Bins:
    n_docs = np.bincount(code, minlength=len(keys))
    table = pd.DataFrame({"bin_index": np.arange(len(keys)), "bin": list(labels), "position": positions.astype(float),
                          "n_docs": n_docs.astype(np.int64)})
    return Bins(code=code.astype(np.int64), table=table, mode=mode)


def _calendar_bins(col: ColumnValues, unit: str) -> Bins:
    if col.kind != "date":
        v = np.asarray(col.values, float)
        if unit != "year" or not np.all(v == np.round(v)):
            raise TrendError(f"Bins by {unit} need dates{'' if unit == 'month' else ' or whole-number years'}.")
        keys, code = np.unique(v.astype(np.int64), return_inverse=True)
        return _labelled(keys, [str(k) for k in keys], keys.astype(float), code, "year")
    stamp = col.values.astype(f"datetime64[{unit[0].upper()}]")
    keys, code = np.unique(stamp, return_inverse=True)
    labels = [str(k) for k in keys]
    positions = keys.astype(np.int64).astype(float) + (1970.0 if unit == "year" else 0.0)
    return _labelled(keys, labels, positions, code, unit)


def _quantile_bins(col: ColumnValues, k: int) -> Bins:
    is_date = col.kind == "date"
    v = col.values.astype("datetime64[s]").astype(np.int64).astype(float) if is_date else np.asarray(col.values, float)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, k + 1)[1:-1]))
    code = np.searchsorted(edges, v, side="right")
    keys = np.unique(code)
    code = np.searchsorted(keys, code)
    lo = np.array([v[code == i].min() for i in range(keys.size)])
    hi = np.array([v[code == i].max() for i in range(keys.size)])

    def show(x: float) -> str:
        return str(np.datetime64(int(x), "s").astype("datetime64[D]")) if is_date else f"{x:,.4g}"

    labels = [f"{show(a)} – {show(b)}" if a != b else show(a) for a, b in zip(lo, hi)]
    med = np.array([np.median(v[code == i]) for i in range(keys.size)])
    return _labelled(keys, labels, med, code, "quantile")


def make_bins(col: ColumnValues, bins: str | int | None, cfg: TrendConfig) -> Bins:
    """Bin the used documents: None (automatic), "year", "month", "quantile" or a number of quantile bins."""
    chosen = auto_bins(col, cfg) if bins is None else bins
    if isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool):
        if not 2 <= int(chosen) <= cfg.max_bins:
            raise TrendError(f"Ask for between 2 and {cfg.max_bins} bins.")
        out = _quantile_bins(col, int(chosen))
    elif chosen == "quantile":
        out = _quantile_bins(col, cfg.quantiles)
    elif chosen == "value":
        v = np.asarray(col.values, float)
        keys, code = np.unique(v, return_inverse=True)
        out = _labelled(keys, [f"{k:g}" for k in keys], keys, code, "value")
    elif chosen in ("year", "month"):
        out = _calendar_bins(col, str(chosen))
    else:
        raise TrendError(f"Unknown bins {bins!r}: use None, a number, or one of {', '.join(BIN_MODES)}.")
    if len(out.table) < 2:
        raise TrendError("All the used documents fall into one bin: a trend needs at least two.")
    if len(out.table) > cfg.max_bins:
        raise TrendError(f"That makes {len(out.table):,} bins (at most {cfg.max_bins}); choose coarser bins.")
    return out


# -- the trend test -------------------------------------------------------------------------------------
def wilson_interval(k: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k successes in n (0..1; (0, 1) where n = 0)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    z = stats.norm.ppf(0.5 + confidence / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.where(n > 0, np.clip(center - half, 0, 1), 0.0), np.where(n > 0, np.clip(center + half, 0, 1), 1.0)


def cochran_armitage(counts: np.ndarray, n_docs: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Cochran-Armitage trend test, vectorized over features.

    ``counts``: [S, F] documents per bin where each feature fires; ``n_docs``: [S]; ``positions``: [S]
    scores, rescaled to 0..1 so ``change`` (the least-squares slope of presence on position) is the
    fitted share at the last bin minus at the first. Returns z, p (two-sided), change."""
    t = np.asarray(positions, float)
    t = (t - t.min()) / (np.ptp(t) or 1.0)
    N = np.asarray(n_docs, float)
    total = N.sum()
    pbar = counts.sum(axis=0) / total
    s_tt = float((N * t * t).sum() - (N * t).sum() ** 2 / total)
    T = t @ counts - pbar * float((N * t).sum())
    var = pbar * (1 - pbar) * s_tt
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, T / np.sqrt(var), 0.0)
    change = T / s_tt if s_tt > 0 else np.zeros_like(T)
    return {"z": z, "p": 2 * stats.norm.sf(np.abs(z)), "change": change}


def feature_trends(counts: np.ndarray, bins: Bins, min_docs: int, keep: Sequence[int] = ()) -> pd.DataFrame:
    """Every feature firing in at least ``min_docs`` documents (and every ``keep`` feature): its trend
    z, p, BH q (over the tested features; NaN for a kept feature below min_docs), change, direction,
    overall share and shares in the first and last bin."""
    n_docs = bins.table["n_docs"].to_numpy(float)
    total = counts.sum(axis=0)
    tested = total >= min_docs
    ids = np.union1d(np.flatnonzero(tested), np.asarray(list(keep), np.int64))
    res = cochran_armitage(counts[:, ids], n_docs, bins.table["position"].to_numpy())
    q = np.full(ids.size, np.nan)
    q[tested[ids]] = bh_adjust(res["p"][tested[ids]])
    return pd.DataFrame({
        "feature_id": ids.astype(np.int64), "n_docs": total[ids].astype(np.int64), "share": total[ids] / n_docs.sum(),
        "share_first": counts[0, ids] / max(1.0, n_docs[0]), "share_last": counts[-1, ids] / max(1.0, n_docs[-1]),
        "change": res["change"], "z": res["z"], "p_value": res["p"], "q_value": q,
        "direction": np.where(res["z"] >= 0, "rising", "falling"), "tested": tested[ids],
    })


def _candidates(stats_table: pd.DataFrame, direction: str, n: int) -> np.ndarray:
    """The direction's tested features: significant first, then by |change|, then by |z|."""
    t = stats_table[stats_table["tested"] & (stats_table["direction"] == direction) & (stats_table["z"] != 0)]
    sig = (t["q_value"] < ALPHA).to_numpy()
    order = np.lexsort((t["feature_id"].to_numpy(), -np.abs(t["z"].to_numpy()),
                        -np.where(sig, np.abs(t["change"].to_numpy()), 0.0), ~sig))
    return t["feature_id"].to_numpy(np.int64)[order][:n]


# -- findings -----------------------------------------------------------------------------------------
def _pct(share: float) -> str:
    return "<1%" if 0 < share < 0.01 else f"{100 * share:.0f}%"


@dataclass(frozen=True)
class TrendFinding(FeatureGroup):
    """Features that fire on the same documents and rise (or fall) together along the column.

    ``shares``/``n_fires``/``ci_low``/``ci_high``: per bin, the share (and number) of documents where any
    member fires (Wilson interval); ``change``/``z``/``p_value``: the group's trend; ``q_value``: the lead feature's (BH over
    every tested feature); ``peak_bin``: the bin (label) where the group's share peaks; ``examples``:
    doc ids there where the lead fires most strongly; ``score``: the lead's own change; ``feature_labels``: each
    member's label, in ``feature_ids`` order (``label`` is the one that names the finding, ``named_by``)."""

    direction: Direction
    label: str
    feature_ids: tuple[int, ...]
    change: float
    z: float
    p_value: float
    q_value: float
    shares: tuple[float, ...]
    n_fires: tuple[int, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    bin_labels: tuple[str, ...]
    peak_bin: str
    is_formatting: bool
    examples: tuple[int, ...]
    score: float
    feature_labels: tuple[str, ...] = ()

    @property
    def significant(self) -> bool:
        return bool(self.q_value < ALPHA)

    @property
    def sentence(self) -> str:
        """E.g. "Rising: remote work — 3% in 2019 → 21% in 2023 (peak 2023; 4 features)"."""
        head = "Rising" if self.direction == "rising" else "Falling"
        text = (f"{head}: {self.label} — {_pct(self.shares[0])} in {self.bin_labels[0]} → "
                f"{_pct(self.shares[-1])} in {self.bin_labels[-1]} (peak {self.peak_bin}")
        text += f"; {self.n_features} features)" if self.n_features > 1 else ")"
        return text if self.significant else text + " [not significant]"


def _series(U: sp.csr_matrix, bins: Bins, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (counts, shares, ci_low, ci_high), each [S, k], of the columns of a binary matrix."""
    counts, n = stratum_counts(U, bins.code, len(bins.table))
    lo, hi = wilson_interval(counts, n[:, None], confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(n[:, None] > 0, counts / n[:, None], 0.0)
    return counts, shares, lo, hi


def _member_matrix(groups: list[list[int]], cand: np.ndarray) -> sp.csr_matrix:
    pos = {int(f): i for i, f in enumerate(cand)}
    rows = [pos[f] for g in groups for f in g]
    cols = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    return sp.csr_matrix((np.ones(len(rows), np.int64), (rows, cols)), shape=(len(cand), len(groups)))


def _examples(X: sp.csr_matrix, code: np.ndarray, leads: np.ndarray, peaks: np.ndarray, cfg: TrendConfig) -> list[np.ndarray]:
    """Row positions of each group's examples: documents of its peak bin where its lead fires most."""
    if cfg.n_examples == 0 or leads.size == 0:
        return [np.zeros(0, np.int64) for _ in leads]
    L = as_csr(X[:, leads])
    out, by_bin = [], {}
    for j, peak in enumerate(peaks):
        if peak not in by_bin:
            by_bin[peak] = (sp.diags((code == peak).astype(L.dtype)) @ L).tocsc()
            by_bin[peak].sort_indices()
        out.append(example_documents(by_bin[peak], j, n=cfg.n_examples, threshold=cfg.threshold))
    return out


def _ordered(findings: list[TrendFinding]) -> list[TrendFinding]:
    content = any(f.significant and not f.is_formatting for f in findings)
    return sorted(findings, key=lambda f: (not f.significant, content and f.is_formatting, -abs(f.change), f.lead))


def _plan(B: sp.csr_matrix, feature_stats: pd.DataFrame, cfg: TrendConfig, labels: Mapping[int, str] | None = None,
          code: np.ndarray | None = None) -> tuple[list[tuple[str, list[int]]], np.ndarray, sp.csr_matrix]:
    """Groups per direction (folded into concepts as the diff folds them: co-firing, a shared label word,
    containment; without members that dilute the group's late-vs-early contrast, with each document's
    bin ``code``), the candidates (sorted) and their columns of ``B`` (sliced once)."""
    by_direction = {d: _candidates(feature_stats, d, cfg.n_candidates) for d in ("rising", "falling")}
    cand = np.unique(np.concatenate(list(by_direction.values())))
    Bc = as_csr(B[:, cand])
    halves = None
    if code is not None and code.size:
        middle = (int(code.max()) + int(code.min())) / 2  # the later half of the bins against the earlier
        halves = {"rising": (code > middle, code < middle), "falling": (code < middle, code > middle)}
    plan = []
    for direction, ids in by_direction.items():
        local = group_features(Bc, np.searchsorted(cand, ids), jaccard_threshold=cfg.jaccard_threshold,
                               containment_threshold=0.8, labels=local_labels(labels, cand))
        if halves is not None:
            local = keep_contrast_within(local, Bc, *halves[direction], cfg.max_dilution)
        plan += [(direction, [int(cand[i]) for i in g]) for g in local]
    return plan, cand, Bc


def build_trend_findings(X: sp.csr_matrix, B: sp.csr_matrix, bins: Bins, feature_stats: pd.DataFrame,
                         labels: Mapping[int, str], cfg: TrendConfig, doc_ids: np.ndarray) -> list[TrendFinding]:
    """The strongest rising and falling features folded by co-firing, each with its group's per-bin shares."""
    plan, cand, Bc = _plan(B, feature_stats, cfg, labels, bins.code)
    if not plan:
        return []
    U = binarize(Bc @ _member_matrix([g for _, g in plan], cand), 0.0)
    counts, shares, lo, hi = _series(U, bins, cfg.confidence)
    ca = cochran_armitage(counts, bins.table["n_docs"].to_numpy(), bins.table["position"].to_numpy())
    peaks = shares.argmax(axis=0)
    leads = np.array([g[0] for _, g in plan], np.int64)
    examples = _examples(X, bins.code, leads, peaks, cfg)
    by_id = feature_stats.set_index("feature_id")
    names = tuple(bins.table["bin"].astype(str))
    named = [group_labels(labels, members) for _, members in plan]
    findings = [TrendFinding(
        direction=direction, label=named[j][0],  # type: ignore[arg-type]
        feature_ids=tuple(int(f) for f in members), change=float(ca["change"][j]), z=float(ca["z"][j]),
        p_value=float(ca["p"][j]), q_value=float(by_id.at[members[0], "q_value"]),
        shares=tuple(map(float, shares[:, j])), n_fires=tuple(int(c) for c in counts[:, j]), ci_low=tuple(map(float, lo[:, j])), ci_high=tuple(map(float, hi[:, j])),
        bin_labels=names, peak_bin=names[int(peaks[j])], is_formatting=is_formatting_label(labels.get(members[0])),
        examples=tuple(int(d) for d in doc_ids[examples[j]]), score=float(by_id.at[members[0], "change"]),
        feature_labels=named[j][1],
    ) for j, (direction, members) in enumerate(plan)]
    return _ordered(findings)


def trend_table(findings: list[TrendFinding], B: sp.csr_matrix, bins: Bins, pinned: np.ndarray,
                labels: Mapping[int, str], confidence: float) -> pd.DataFrame:
    """Long table, one row per (series, bin): series, finding (-1 for a pinned feature), feature_id (the
    finding's lead or the pinned feature), label, bin_index, bin, position, share, ci_low, ci_high,
    n_docs (documents in the bin), n_fires."""
    series = [(f"finding {i}", i, f.lead, f.label, f.shares, f.ci_low, f.ci_high, f.n_fires)
              for i, f in enumerate(findings)]
    if pinned.size:
        counts, shares, lo, hi = _series(as_csr(B[:, pinned]), bins, confidence)
        series += [(f"feature {int(fid)}", -1, int(fid), labels.get(int(fid)) or f"feature {int(fid)}", shares[:, j],
                    lo[:, j], hi[:, j], counts[:, j]) for j, fid in enumerate(pinned)]
    S, k = len(bins.table), len(series)
    cols = {name: np.repeat([s[i] for s in series], S) for i, name in enumerate(["series", "finding", "feature_id", "label"])}
    for name in ("bin_index", "bin", "position"):
        cols[name] = np.tile(bins.table[name].to_numpy(), k)
    for i, name in enumerate(["share", "ci_low", "ci_high"], start=4):
        cols[name] = np.concatenate([np.asarray(s[i], float) for s in series]) if series else np.zeros(0)
    cols["n_docs"] = np.tile(bins.table["n_docs"].to_numpy(np.int64), k)
    cols["n_fires"] = np.concatenate([np.asarray(s[7], np.int64) for s in series]) if series else np.zeros(0, np.int64)
    return pd.DataFrame(cols)


# -- the result -------------------------------------------------------------------------------------
@dataclass(eq=False)
class TrendResult:
    """Concepts' shares along an ordered column.

    ``bins``: bin_index, bin, position, n_docs; ``table``: the long per-(series, bin) table of the
    findings and the pinned features (see :func:`trend_table`); ``findings`` in summary order;
    ``features``: every tested feature's trend (z, p, q, change, shares); ``messages``: what was left out."""

    column: str
    kind: str
    bin_mode: str
    bins: pd.DataFrame
    table: pd.DataFrame
    findings: list[TrendFinding]
    features: pd.DataFrame
    pinned: tuple[int, ...]
    n_total: int
    n_missing: int
    n_unparseable: int
    messages: list[str]
    config: TrendConfig
    doc_ids: np.ndarray = field(repr=False)
    bin_of: np.ndarray = field(repr=False)
    X: sp.csr_matrix = field(repr=False)

    @property
    def n_used(self) -> int:
        return int(self.doc_ids.size)

    def summary(self, n_per_direction: int = 4, significant_only: bool = False) -> list[TrendFinding]:
        """The strongest findings, at most ``n_per_direction`` rising and as many falling."""
        taken = {"rising": 0, "falling": 0}
        out = []
        for f in self.findings:
            if (significant_only and not f.significant) or taken[f.direction] >= n_per_direction:
                continue
            taken[f.direction] += 1
            out.append(f)
        return out

    def documents(self, finding: int | TrendFinding | Sequence[int], bin: int | None = None) -> pd.DataFrame:
        """The documents behind a finding (or any feature ids), optionally in one bin (its index): doc_id,
        bin, the column's bin label, activation of the first feature (strongest first), for export."""
        picked = pick_finding(self.findings, finding)
        ids = picked.feature_ids if isinstance(picked, TrendFinding) else tuple(int(f) for f in picked)
        sub = as_csr(self.X[:, list(ids)])
        fires = np.diff(binarize(sub, self.config.threshold).indptr) > 0
        if bin is not None:
            fires &= self.bin_of == int(bin)
        rows = np.flatnonzero(fires)
        lead = np.asarray(sub[rows][:, [0]].toarray()).ravel()
        order = np.lexsort((self.doc_ids[rows], -lead))
        labels = self.bins["bin"].astype(str).to_numpy()
        return pd.DataFrame({"doc_id": self.doc_ids[rows][order].astype(np.int64),
                             "bin": labels[self.bin_of[rows][order]], "lead_activation": lead[order]})

    def to_frame(self) -> pd.DataFrame:
        """One row per finding, for export."""
        def join(values) -> str:
            return ", ".join(str(v) for v in values)

        return pd.DataFrame({
            "finding": np.arange(len(self.findings), dtype=np.int64),
            "direction": [f.direction for f in self.findings], "sentence": [f.sentence for f in self.findings],
            "label": [f.label for f in self.findings], "change": [f.change for f in self.findings],
            "z": [f.z for f in self.findings], "q_value": [f.q_value for f in self.findings],
            "peak_bin": [f.peak_bin for f in self.findings], "feature_ids": [join(f.feature_ids) for f in self.findings],
            "examples": [join(f.examples) for f in self.findings],
        })


def trend_result(
    X: sp.spmatrix, values: pd.Series, column: str = "value", labels: Mapping[int, str] | None = None, *,
    bins: str | int | None = None, features: Sequence[int] | None = None, kind: str = "auto",
    config: TrendConfig = TrendConfig(), doc_ids: np.ndarray | None = None, progress: Progress | None = None,
) -> TrendResult:
    """Which concepts rose and fell along ``values`` (dates or numbers, one per row of ``X``).

    ``bins``: None (automatic), "year", "month", "quantile" or a number of quantile bins; ``features``:
    feature ids whose shares the table also carries; ``kind``: "auto" | "date" | "numeric". Rows with a
    missing or unparseable value are counted and left out (``messages``)."""
    report = progress or (lambda fraction, message: None)
    X = as_csr(X)
    if len(values) != X.shape[0]:
        raise TrendError("values must have one entry per row of X.")
    ids = np.arange(X.shape[0], dtype=np.int64) if doc_ids is None else np.asarray(doc_ids, np.int64)
    pinned = np.array(sorted({int(f) for f in (features or [])}), np.int64)
    if pinned.size and (pinned.min() < 0 or pinned.max() >= X.shape[1]):
        raise TrendError(f"Pinned features must be between 0 and {X.shape[1] - 1:,}.")
    try:
        col = read_column(pd.Series(values), column, kind, allowed=("numeric", "date"))
    except ColumnError as exc:
        raise TrendError(str(exc)) from exc
    binned = make_bins(col, bins, config)
    Xu = X if col.rows.size == X.shape[0] else X[col.rows]
    B = binarize(Xu, config.threshold)
    report(0.1, "Counting every feature per bin")
    counts, _ = stratum_counts(B, binned.code, len(binned.table))
    feature_stats = feature_trends(counts, binned, config.min_docs, keep=pinned)
    report(0.5, "Grouping the strongest rising and falling features")
    findings = build_trend_findings(Xu, B, binned, feature_stats, labels or {}, config, ids[col.rows])
    table = trend_table(findings, B, binned, pinned, labels or {}, config.confidence)
    report(1.0, "Done")
    return TrendResult(column=column, kind=col.kind, bin_mode=binned.mode, bins=binned.table, table=table,
                       findings=findings, features=feature_stats, pinned=tuple(int(f) for f in pinned),
                       n_total=col.n_total, n_missing=col.n_missing, n_unparseable=col.n_unparseable,
                       messages=[col.message] if col.message else [], config=config, doc_ids=ids[col.rows],
                       bin_of=binned.code, X=Xu)
