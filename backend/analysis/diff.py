"""Dataset diff: which SAE features fire more often in corpus A than in corpus B.

Statistics (all vectorized over features, sparse column counts only):

- two-proportion z-test (pooled, two-sided); features whose smallest expected cell count is
  below 5 and whose total count is small get an exact two-sided Fisher test instead
  (column ``p_method``);
- Benjamini-Hochberg q-values over every tested feature;
- ranking by effect size ``|abs_diff|`` (on large corpora nearly everything passes FDR);
- optional length control: documents are stratified by pooled token-length quantile bins and a
  Cochran-Mantel-Haenszel test, the Mantel-Haenszel common odds ratio and the Mantel-Haenszel
  risk difference (``adj_diff``) are computed per feature. Under max pooling a longer document
  fires more features, so a difference that disappears within length strata is flagged
  ``length_confounded``.

These are the per-feature statistics; ``backend.analysis.findings.diff_result`` runs them and reads
the table as findings (co-firing features folded together, both sides, length and formatting aware).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from backend.analysis import as_csr, binarize, feature_counts
from backend.errors import UserError

FISHER_MAX_TOTAL = 100  # exact test only for features firing in <= this many documents overall
ALPHA = 0.05


@dataclass(frozen=True)
class DiffConfig:
    """Options of a dataset diff, validated once; the field names are the keyword arguments of
    :func:`backend.analysis.findings.diff_result`, so ``diff_result(XA, XB, **asdict(config))`` runs it.

    The first four are also :func:`diff_features` arguments. ``length_control`` stratifies by token
    length (when lengths are given); ``include_confounded`` stops ranking length-confounded findings
    after the others; features among the ``n_candidates`` strongest of each side fold into one finding
    when their document sets overlap with Jaccard >= ``jaccard_threshold``, when their labels share a
    concept word (``fold_by_label``), when one's documents lie inside the other's (overlap >=
    ``containment_threshold`` of the smaller set, with co-occurrence far beyond chance; None: off), or
    when their decoder directions have cosine >= ``cosine_threshold`` (when a decoder is given), except
    members that would dilute the finding's difference by more than ``max_dilution`` of it (1: keep all);
    ``n_examples`` example documents per side.
    """

    threshold: float = 0.0
    min_share: float = 0.0
    max_share: float = 1.0
    length_bins: int = 5
    length_control: bool = True
    include_confounded: bool = False
    n_candidates: int = 60
    jaccard_threshold: float = 0.5
    cosine_threshold: float = 0.9
    n_examples: int = 2
    fold_by_label: bool = True
    containment_threshold: float | None = 0.8
    max_dilution: float = 0.1

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise UserError("The activation threshold must be >= 0.")
        if not 0.0 <= self.min_share <= self.max_share <= 1.0:
            raise UserError("Share coverage needs 0 <= min_share <= max_share <= 1.")
        if self.length_bins < 1:
            raise UserError("length_bins must be at least 1.")
        if self.n_candidates < 1:
            raise UserError("n_candidates must be at least 1.")
        if not 0.0 < self.jaccard_threshold <= 1.0:
            raise UserError("jaccard_threshold must lie in (0, 1].")
        if not -1.0 <= self.cosine_threshold <= 1.0:
            raise UserError("cosine_threshold must lie in [-1, 1].")
        if self.n_examples < 0:
            raise UserError("n_examples must be >= 0.")
        if self.containment_threshold is not None and not 0.0 < self.containment_threshold <= 1.0:
            raise UserError("containment_threshold must lie in (0, 1], or be None to turn containment off.")
        if not 0.0 <= self.max_dilution <= 1.0:
            raise UserError("max_dilution must lie in [0, 1] (1 keeps every folded feature).")


# --------------------------------------------------------------------------- statistics helpers


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as ``p``."""
    p = np.asarray(p, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.clip(q_sorted, 0.0, 1.0)
    return q


def two_proportion_z(n_a: np.ndarray, N_a: int, n_b: np.ndarray, N_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled two-proportion z statistic and two-sided p-value (p=1 where the variance is 0)."""
    n_a = np.asarray(n_a, float)
    n_b = np.asarray(n_b, float)
    pooled = (n_a + n_b) / (N_a + N_b)
    se = np.sqrt(pooled * (1 - pooled) * (1.0 / N_a + 1.0 / N_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (n_a / N_a - n_b / N_b) / se, 0.0)
    return z, 2 * stats.norm.sf(np.abs(z))


def fisher_two_sided(n_a: np.ndarray, N_a: int, n_b: np.ndarray, N_b: int) -> np.ndarray:
    """Exact two-sided Fisher p-values, vectorized over features with small totals.

    Sums the hypergeometric probabilities of all tables no more likely than the observed one
    (same rule as ``scipy.stats.fisher_exact``). Cost is O(len(n_a) * max total).
    """
    n_a = np.asarray(n_a, np.int64)
    n_b = np.asarray(n_b, np.int64)
    if n_a.size == 0:
        return np.zeros(0)
    K = n_a + n_b
    support = np.arange(int(K.max()) + 1)[None, :]
    pmf = stats.hypergeom.pmf(support, N_a + N_b, K[:, None], N_a)
    pmf[support > K[:, None]] = 0.0
    obs = stats.hypergeom.pmf(n_a, N_a + N_b, K, N_a)
    p = np.where(pmf <= obs[:, None] * (1 + 1e-7), pmf, 0.0).sum(axis=1)
    return np.clip(p, 0.0, 1.0)


def length_bins_of(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Stratum id per document from pooled length quantiles (ties can merge bins)."""
    lengths = np.asarray(lengths, float)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, lengths, side="right")


def stratum_counts(B: sp.csr_matrix, strata: np.ndarray, n_strata: int) -> tuple[np.ndarray, np.ndarray]:
    """(per-stratum feature counts [S, F], per-stratum doc counts [S]) via one sparse product."""
    n = B.shape[0]
    ind = sp.csr_matrix((np.ones(n, np.int32), (strata, np.arange(n))), shape=(n_strata, n))
    return np.asarray((ind @ B).toarray(), dtype=float), np.bincount(strata, minlength=n_strata).astype(float)


def cmh_test(a: np.ndarray, Na: np.ndarray, c: np.ndarray, Nb: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorized Cochran-Mantel-Haenszel test over features.

    ``a``/``c``: [S, F] counts of documents with the feature in A/B per stratum;
    ``Na``/``Nb``: [S] documents per stratum and side. Returns chi2 (with continuity
    correction), p, the Mantel-Haenszel odds ratio and the MH risk difference.
    """
    Na = Na[:, None]
    Nb = Nb[:, None]
    t = Na + Nb
    b = Na - a
    d = Nb - c
    m1 = a + c
    valid = (Na > 0) & (Nb > 0) & (t > 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expect = np.where(valid, Na * m1 / t, 0.0)
        var = np.where(valid, Na * Nb * m1 * (t - m1) / (t * t * (t - 1)), 0.0)
        dev = np.where(valid, a - expect, 0.0).sum(axis=0)
        vsum = var.sum(axis=0)
        chi2 = np.where(vsum > 0, np.maximum(np.abs(dev) - 0.5, 0.0) ** 2 / vsum, 0.0)
        num = np.where(valid, a * d / t, 0.0).sum(axis=0)
        den = np.where(valid, b * c / t, 0.0).sum(axis=0)
        odds = np.where(den > 0, num / den, np.where(num > 0, np.inf, np.nan))
        w = np.where(valid, Na * Nb / t, 0.0)
        rd = np.where(valid, a / np.where(Na > 0, Na, 1) - c / np.where(Nb > 0, Nb, 1), 0.0)
        wsum = w.sum(axis=0)
        adj = np.where(wsum > 0, (w * rd).sum(axis=0) / np.where(wsum > 0, wsum, 1), 0.0)
    p = np.where(vsum > 0, stats.chi2.sf(chi2, 1), 1.0)
    return {"cmh_chi2": chi2, "cmh_p": p, "cmh_odds_ratio": odds, "adj_diff": adj}


# --------------------------------------------------------------------------- main entry points


def diff_features(
    XA,
    XB,
    threshold: float = 0.0,
    min_share: float = 0.0,
    max_share: float = 1.0,
    lengths_a: np.ndarray | None = None,
    lengths_b: np.ndarray | None = None,
    length_bins: int = 5,
) -> pd.DataFrame:
    """Per-feature comparison of firing shares between corpora A and B.

    A feature is tested when it fires at least once and its share on either side lies in
    ``[min_share, max_share]``. Columns: feature_id, n_a, n_b, share_a, share_b,
    abs_diff (= share_a - share_b), rel_diff (= abs_diff / max share), log2_ratio
    (log2 of the share ratio with +0.5 pseudo-counts), z, p_value, p_method, q_value (BH),
    rank (1 = largest |abs_diff|); with lengths also cmh_chi2, cmh_p, cmh_q,
    cmh_odds_ratio, adj_diff (MH risk difference over length strata), length_confounded.
    Rows are sorted by rank.
    """
    XA, XB = as_csr(XA), as_csr(XB)
    if XA.shape[1] != XB.shape[1]:
        raise ValueError("XA and XB must have the same number of features")
    N_a, N_b = XA.shape[0], XB.shape[0]
    if N_a == 0 or N_b == 0:
        raise ValueError("both corpora need at least one document")
    BA, BB = binarize(XA, threshold), binarize(XB, threshold)
    n_a_all, n_b_all = feature_counts(BA), feature_counts(BB)
    sa_all, sb_all = n_a_all / N_a, n_b_all / N_b

    def in_range(s: np.ndarray) -> np.ndarray:
        return (s >= min_share) & (s <= max_share)

    fid = np.flatnonzero(((n_a_all + n_b_all) > 0) & (in_range(sa_all) | in_range(sb_all)))
    table = _share_table(fid, n_a_all[fid], N_a, n_b_all[fid], N_b)
    if lengths_a is not None and lengths_b is not None:
        table = _add_length_control(table, BA, BB, fid, lengths_a, lengths_b, length_bins)
    order = np.lexsort((table["feature_id"].to_numpy(), -np.abs(table["abs_diff"].to_numpy())))
    table = table.iloc[order].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def _p_values(n_a: np.ndarray, N_a: int, n_b: np.ndarray, N_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, p, method): the z-test, replaced by Fisher's exact test where expected counts are small."""
    z, p = two_proportion_z(n_a, N_a, n_b, N_b)
    method = np.full(np.asarray(n_a).size, "z", dtype=object)
    K = n_a + n_b
    exp_min = np.minimum(K * min(N_a, N_b) / (N_a + N_b), (N_a + N_b - K) * min(N_a, N_b) / (N_a + N_b))
    small = (exp_min < 5) & (K <= FISHER_MAX_TOTAL)
    if small.any():
        p[small] = fisher_two_sided(n_a[small], N_a, n_b[small], N_b)
        method[small] = "fisher"
    return z, p, method


def _share_table(fid: np.ndarray, n_a: np.ndarray, N_a: int, n_b: np.ndarray, N_b: int) -> pd.DataFrame:
    """The unranked per-feature table: counts, shares, effect sizes and tests of the tested features."""
    share_a, share_b = n_a / N_a, n_b / N_b
    z, p, method = _p_values(n_a, N_a, n_b, N_b)
    abs_diff = share_a - share_b
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(np.maximum(share_a, share_b) > 0, abs_diff / np.maximum(share_a, share_b), 0.0)
    log2_ratio = np.log2(((n_a + 0.5) / (N_a + 1.0)) / ((n_b + 0.5) / (N_b + 1.0)))
    return pd.DataFrame(
        {
            "feature_id": fid.astype(np.int64),
            "n_a": n_a,
            "n_b": n_b,
            "share_a": share_a,
            "share_b": share_b,
            "abs_diff": abs_diff,
            "rel_diff": rel,
            "log2_ratio": log2_ratio,
            "z": z,
            "p_value": p,
            "p_method": method,
            "q_value": bh_adjust(p),
        }
    )


def _add_length_control(
    table: pd.DataFrame,
    BA: sp.csr_matrix,
    BB: sp.csr_matrix,
    fid: np.ndarray,
    lengths_a: np.ndarray,
    lengths_b: np.ndarray,
    n_bins: int,
) -> pd.DataFrame:
    lengths_a = np.asarray(lengths_a, float)
    lengths_b = np.asarray(lengths_b, float)
    if lengths_a.size != BA.shape[0] or lengths_b.size != BB.shape[0]:
        raise ValueError("lengths must have one entry per document")
    strata = length_bins_of(np.concatenate([lengths_a, lengths_b]), max(1, n_bins))
    S = int(strata.max()) + 1
    a, Na = stratum_counts(BA, strata[: BA.shape[0]], S)
    c, Nb = stratum_counts(BB, strata[BA.shape[0]:], S)
    res = cmh_test(a[:, fid], Na, c[:, fid], Nb)
    table = table.copy()
    table["cmh_chi2"] = res["cmh_chi2"]
    table["cmh_p"] = res["cmh_p"]
    table["cmh_q"] = bh_adjust(res["cmh_p"])
    table["cmh_odds_ratio"] = res["cmh_odds_ratio"]
    table["adj_diff"] = res["adj_diff"]
    raw = table["abs_diff"].to_numpy()
    adj = res["adj_diff"]
    shrank = (np.abs(adj) < 0.5 * np.abs(raw)) | (np.sign(adj) != np.sign(raw))
    table["length_confounded"] = (table["q_value"].to_numpy() < ALPHA) & (
        (table["cmh_q"].to_numpy() >= ALPHA) | shrank
    )
    return table


def length_summary(lengths_a: np.ndarray, lengths_b: np.ndarray) -> dict:
    """Token-length comparison: per-side n, mean, quantiles; Mann-Whitney U two-sided p."""

    def side(x: np.ndarray) -> dict:
        x = np.asarray(x, float)
        q = np.quantile(x, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) if x.size else [np.nan] * 7
        return {"n": int(x.size), "mean": float(x.mean()) if x.size else np.nan,
                **dict(zip(["min", "q10", "q25", "median", "q75", "q90", "max"], map(float, q)))}

    a, b = side(lengths_a), side(lengths_b)
    if a["n"] and b["n"]:
        mw = stats.mannwhitneyu(np.asarray(lengths_a, float), np.asarray(lengths_b, float), alternative="two-sided")
        p = float(mw.pvalue)
    else:
        p = np.nan
    ratio = a["mean"] / b["mean"] if b["n"] and b["mean"] else np.nan
    return {"a": a, "b": b, "mean_ratio": ratio, "mannwhitney_p": p}


def lengths_differ(summary: dict, alpha: float = ALPHA) -> bool:
    """Whether a :func:`length_summary` shows the sides' token lengths differing (Mann-Whitney p < alpha).

    Deliberately sensitive: where lengths barely differ the length-adjusted difference is close to the
    raw one, so using it costs little, while missing a real length difference ranks length as content.
    """
    p = summary.get("mannwhitney_p", np.nan)
    return bool(np.isfinite(p) and p < alpha)


def matching_rows(col: pd.Series, values: list) -> np.ndarray:
    """Rows of `col` equal to one of `values`: as they are, as text (a column read back as strings), or
    as numbers when a value is a number (1 matches "1" and "1.0"); missing entries never match."""
    present = col.notna().to_numpy()
    mask = col.isin(values).to_numpy() | (present & col.astype(str).isin([str(v) for v in values]).to_numpy())
    numbers = [float(v) for v in values if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)]
    if numbers:
        mask |= pd.to_numeric(col, errors="coerce").isin(numbers).to_numpy()
    return mask


def split_by_column(X, meta: pd.DataFrame, column: str, value_a, value_b=None):
    """Split the rows of one corpus into groups A and B by a metadata column.

    ``value_a`` / ``value_b`` may be scalars or lists of values; ``value_b=None`` means every
    row not in A (including missing values). Returns (XA, XB, idx_a, idx_b). A workspace keeps metadata
    as text, so a value matches its text too, and a number any equal number ("1" and "1.0" for 1).
    """
    X = as_csr(X)
    if len(meta) != X.shape[0]:
        raise ValueError("meta must have one row per document")
    col = meta[column].reset_index(drop=True)

    def mask_of(v) -> np.ndarray:
        return matching_rows(col, list(v) if isinstance(v, (list, tuple, set, np.ndarray, pd.Series)) else [v])

    mask_a = mask_of(value_a)
    mask_b = ~mask_a if value_b is None else mask_of(value_b) & ~mask_a
    idx_a, idx_b = np.flatnonzero(mask_a), np.flatnonzero(mask_b)
    return X[idx_a], X[idx_b], idx_a, idx_b


# --------------------------------------------------------------------------- summaries

_STOP = frozenset(
    "a an the of and or in on at to for with by from as is are be this that these those it its "
    "text texts token tokens word words about related mentions mention references reference "
    "phrases phrase containing contains content feature".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")


def _label_tokens(label: str) -> list[str]:
    toks = [t for t in _TOKEN.findall(label.lower()) if t not in _STOP and len(t) > 1]
    return [t[:-1] if len(t) > 3 and t.endswith("s") and not t.endswith("ss") else t for t in toks]


def summarize_diff(
    table: pd.DataFrame,
    labels: dict[int, str],
    top: int = 30,
    n_groups: int = 8,
    distance_threshold: float = 0.7,
) -> list[dict]:
    """Short "what differs" summary: top features grouped by label similarity.

    Superseded by ``DiffResult.summary`` (``backend.analysis.findings``), which groups features by the
    documents they fire on and keeps both sides; kept for existing callers.

    Takes the ``top`` rows by rank, splits them by direction, embeds labels with TF-IDF
    over (lightly stemmed, stop-word-free) label tokens and merges them with average-linkage
    agglomerative clustering on cosine distance (cut at ``distance_threshold``), so dozens
    of near-identical latent labels fold into one group. Returns at most ``n_groups`` dicts
    sorted by summed |abs_diff|: name (label of the strongest member), keywords,
    feature_ids, labels, direction ("more in A" / "more in B"), mean_abs_diff, n_features.
    """
    if len(table) == 0:
        return []
    rows = table.sort_values("rank").head(top) if "rank" in table else table.head(top)
    groups: list[dict] = []
    for direction, sub in (("more in A", rows[rows["abs_diff"] > 0]), ("more in B", rows[rows["abs_diff"] < 0])):
        if sub.empty:
            continue
        fids = sub["feature_id"].astype(int).to_numpy()
        diffs = sub["abs_diff"].to_numpy()
        texts = [labels.get(int(f), "") or f"feature {int(f)}" for f in fids]
        assign = _label_clusters(texts, fids, distance_threshold)
        groups += [_label_group(fids, diffs, texts, assign == g, direction) for g in np.unique(assign)]
    groups.sort(key=lambda g: -g["_weight"])
    for g in groups:
        g.pop("_weight")
    return groups[:n_groups]


def _label_clusters(texts: list[str], fids: np.ndarray, distance_threshold: float) -> np.ndarray:
    """Cluster id per label: average-linkage clustering of TF-IDF label-token vectors, cut at the distance."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(fids) == 1:
        return np.array([1])
    docs = [" ".join(_label_tokens(t)) or f"feature{int(f)}" for t, f in zip(texts, fids)]
    vec = TfidfVectorizer(token_pattern=r"\S+", sublinear_tf=True).fit_transform(docs)
    dist = np.clip(1.0 - (vec @ vec.T).toarray(), 0.0, None)
    condensed = dist[np.triu_indices(len(fids), 1)]
    return fcluster(linkage(condensed, method="average"), t=distance_threshold, criterion="distance")


def _label_group(fids: np.ndarray, diffs: np.ndarray, texts: list[str], m: np.ndarray, direction: str) -> dict:
    """One summary group (the features under mask ``m``), strongest member first, with its keywords."""
    order = np.argsort(-np.abs(diffs[m]))
    g_fids, g_diffs = fids[m][order], diffs[m][order]
    g_texts = [texts[i] for i in np.flatnonzero(m)[order]]
    tok_counts: dict[str, int] = {}
    for t in g_texts:
        for tok in set(_label_tokens(t)):
            tok_counts[tok] = tok_counts.get(tok, 0) + 1
    keywords = [t for t, _ in sorted(tok_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    return {
        "name": g_texts[0],
        "keywords": keywords,
        "feature_ids": [int(f) for f in g_fids],
        "labels": g_texts,
        "direction": direction,
        "mean_abs_diff": float(np.mean(np.abs(g_diffs))),
        "n_features": int(m.sum()),
        "_weight": float(np.sum(np.abs(g_diffs))),
    }


def example_documents(X, feature_id: int, n: int = 5, seed: int = 0, threshold: float = 0.0) -> np.ndarray:
    """Row indices where ``feature_id`` fires (> threshold), strongest activation first.

    Ties are broken by a seeded random permutation so equal activations are not always the
    lowest row ids. A CSC matrix with sorted indices is read without conversion (fast for many
    features of one matrix).
    """
    if sp.issparse(X) and X.format == "csc" and X.has_canonical_format:
        lo, hi = X.indptr[int(feature_id)], X.indptr[int(feature_id) + 1]
        rows, vals = X.indices[lo:hi], X.data[lo:hi]
    else:
        col = as_csr(X)[:, [int(feature_id)]].tocoo()
        rows, vals = col.row, col.data
    keep = vals > threshold
    rows, vals = rows[keep], vals[keep]
    tiebreak = np.random.default_rng(seed).permutation(rows.size)
    order = np.lexsort((tiebreak, -vals))
    return rows[order][:n].astype(np.int64)
