"""Dataset-diff findings: features that fire on the same documents, read as one line each.

An SAE often spreads one concept over many latents (17 features all firing on ``://t.co`` links), so a
diff ranked feature by feature fills its summary with copies of one difference and hides the other
side's. Here the strongest features of each side are folded greedily into findings by the Jaccard
overlap of the documents they fire on (over both sides' documents; optionally also by decoder cosine).
A finding is led by its strongest feature and reports the share of documents in which *any* member
fires, with example documents. The summary takes the strongest findings of *each* side;
length-confounded findings, and formatting findings (punctuation, newlines) while a content finding
also differs, rank after the others.

:func:`diff_result` is the whole dataset diff (statistics, length control, findings, examples), so the
Diff page and a notebook get the same answer from one call.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Collection, Literal, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import as_csr, binarize
from backend.analysis.diff import (
    ALPHA,
    DiffConfig,
    cmh_test,
    diff_features,
    example_documents,
    length_bins_of,
    length_summary,
    lengths_differ,
    stratum_counts,
)
from backend.errors import UserError

Side = Literal["a", "b"]

# -- formatting labels -------------------------------------------------------------------------------
# A label *starting* with one of these names a formatting feature ("sentence-final period", "commas in lists").
_FORMAT_PREFIX = re.compile(
    r"^(?:sentence[- ]final|end[- ]of[- ](?:a[- ])?sentence|full[- ]stops?|commas?|newlines?|new[- ]lines?|"
    r"line[- ]breaks?|whitespace|punctuation|quotation[- ]marks?|apostrophes?|semi-?colons?|colons?|"
    r"parenthes[ie]s|brackets?|question[- ]marks?|exclamation[- ](?:marks?|points?)|ellips[ie]s|digits?|"
    r"indentation|formatting|end[- ]of[- ](?:text|line|document)|"
    r"(?:start|beginning)[- ]of[- ](?:text|line|document))\b",
    re.I,
)
# Words that name formatting only when they are the whole item ("period" yes, "period of time" no).
_FORMAT_WORDS = frozenset(
    "period periods dot dots space spaces tab tabs dash dashes hyphen hyphens quote quotes number numbers "
    "numeral numerals bullet bullets".split()
)
_LETTER = re.compile(r"[^\W\d_]")
_QUOTES = "\"'`«»“”‘’ "


def _no_letters(text: str) -> bool:
    return not _LETTER.search(text.replace("\\n", " ").replace("\\t", " "))


def is_formatting_label(label: str | None) -> bool:
    """Whether a feature label names punctuation, whitespace, newlines or digits rather than content.

    Reads both label styles: ``top tokens: '.', ',' | ngrams: …`` (formatting when every top token has
    no letter) and ``name / name — "context"`` (formatting when every name before the dash has no
    letter, is a formatting word such as "period", or starts like "sentence-final period", "comma",
    "newline", "punctuation"). Unknown or empty labels are content.
    """
    text = (label or "").strip()
    if not text:
        return False
    old = re.match(r"top tokens:\s*(.*?)(?:\s*\|\s*ngrams:.*)?$", text, flags=re.S | re.I)
    if old:
        tokens = re.findall(r"'(.*?)'(?=\s*,\s*'|\s*$)", old.group(1), flags=re.S)
        return bool(tokens) and all(_no_letters(t) for t in tokens)
    head = re.split(r"\s+[—–]\s+", text, maxsplit=1)[0]
    items = [item.strip() for item in re.split(r"\s+/\s+", head) if item.strip()]

    def formatting(item: str) -> bool:
        core = item.strip(_QUOTES) or item
        return _no_letters(core) or core.lower() in _FORMAT_WORDS or bool(_FORMAT_PREFIX.match(core))

    return bool(items) and all(formatting(item) for item in items)


# -- findings ------------------------------------------------------------------------------------------
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
class Finding:
    """One difference between the sides: features that fire on the same documents, led by the strongest.

    ``share_a``/``share_b``: share of documents of each side in which any member fires; ``diff`` =
    share_a - share_b; ``adj_diff``: the same difference adjusted for token length (Mantel-Haenszel over
    length strata), None without length control; ``q_value``, ``length_confounded``: the lead feature's;
    ``score``: the lead's difference the ranking used (``DiffResult.ranked_by``); ``examples_a``/
    ``examples_b``: doc ids where the lead fires most strongly, per side.
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

    @property
    def lead(self) -> int:
        return self.feature_ids[0]

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)

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


def _ordered(findings: list[Finding], include_confounded: bool) -> list[Finding]:
    """Strongest first; length-confounded after the others (unless included), and formatting findings
    after content findings while some content finding differs significantly."""
    content_differs = any(
        not f.is_formatting and (include_confounded or not f.length_confounded) and f.q_value < ALPHA for f in findings
    )
    return sorted(findings, key=lambda f: (not include_confounded and f.length_confounded,
                                           content_differs and f.is_formatting, -abs(f.score), f.lead))


# -- grouping ------------------------------------------------------------------------------------------
def jaccard_matrix(B: sp.spmatrix) -> np.ndarray:
    """Jaccard overlap between the document sets of the columns of a binary matrix (dense k x k).

    Meant for a few dozen columns: the result is dense."""
    B = as_csr(B).astype(np.int64)
    inter = np.asarray((B.T @ B).toarray(), dtype=float)
    n = np.diag(inter)
    union = n[:, None] + n[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def decoder_cosine(decoder: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
    """Cosine similarity between the decoder directions (rows of ``decoder``) of the given features."""
    W = np.asarray(decoder[np.asarray(feature_ids, np.int64)], dtype=np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    W = W / np.where(norms > 0, norms, 1.0)
    return W @ W.T


def _greedy_groups(similar: np.ndarray) -> list[list[int]]:
    """Greedy folding in priority order: each unassigned column leads a group and takes every later
    unassigned column similar to it (similarity to the lead, so groups cannot chain)."""
    k = similar.shape[0]
    assigned = np.zeros(k, bool)
    groups = []
    for i in range(k):
        if assigned[i]:
            continue
        members = [i] + [j for j in range(i + 1, k) if not assigned[j] and similar[i, j]]
        assigned[members] = True
        groups.append(members)
    return groups


def group_features(
    X: sp.spmatrix,
    feature_ids: Collection[int],
    threshold: float = 0.0,
    jaccard_threshold: float = 0.5,
    decoder: np.ndarray | None = None,
    cosine_threshold: float = 0.9,
) -> list[list[int]]:
    """Fold features that fire on the same documents into groups, in the priority order given.

    Each feature not yet grouped leads a group and takes every later feature whose document set (rows
    of ``X`` where it fires above ``threshold``) overlaps its own with Jaccard >= ``jaccard_threshold``,
    or whose decoder row has cosine >= ``cosine_threshold`` with its own when ``decoder`` is given.
    Returns lists of feature ids, lead first. Only the chosen columns are touched.
    """
    ids = np.asarray(list(feature_ids), dtype=np.int64)
    if ids.size == 0:
        return []
    similar = jaccard_matrix(binarize(as_csr(X)[:, ids], threshold)) >= jaccard_threshold
    if decoder is not None:
        similar |= decoder_cosine(decoder, ids) >= cosine_threshold
    return [[int(ids[j]) for j in g] for g in _greedy_groups(similar)]


# -- the diff as a result object ---------------------------------------------------------------------
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
            findings = _ordered(findings, include_confounded)
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
            }
        )


def _doc_ids(ids: np.ndarray | None, n: int, side: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise UserError(f"ids_{side} must have one doc id per row of X{side.upper()}.")
    return ids


def diff_result(
    XA: sp.spmatrix,
    XB: sp.spmatrix,
    lengths_a: np.ndarray | None = None,
    lengths_b: np.ndarray | None = None,
    labels: Mapping[int, str] | None = None,
    *,
    threshold: float = 0.0,
    min_share: float = 0.0,
    max_share: float = 1.0,
    length_bins: int = 5,
    length_control: bool = True,
    include_confounded: bool = False,
    n_candidates: int = 60,
    jaccard_threshold: float = 0.5,
    cosine_threshold: float = 0.9,
    n_examples: int = 2,
    ids_a: np.ndarray | None = None,
    ids_b: np.ndarray | None = None,
    decoder: np.ndarray | None = None,
    formatting_ids: Collection[int] | None = None,
    is_formatting: Callable[[str], bool] = is_formatting_label,
) -> DiffResult:
    """Dataset diff of A against B, read as findings (what the Diff page shows).

    ``XA``/``XB``: max-pooled doc x feature activations (CSR); a feature fires above ``threshold``.
    ``lengths_a``/``lengths_b``: token lengths, for the length comparison and (with ``length_control``)
    the length-stratified statistics. ``labels``: {feature_id: label} for the findings' names and for
    ``is_formatting``, unless ``formatting_ids`` names the formatting features itself. ``decoder``:
    optional (n_features, d) decoder directions, a second way features fold together. ``ids_a``/``ids_b``:
    doc id per row (default: row numbers). The remaining options are :class:`DiffConfig`'s.
    """
    config = DiffConfig(threshold=threshold, min_share=min_share, max_share=max_share, length_bins=length_bins,
                        length_control=length_control, include_confounded=include_confounded,
                        n_candidates=n_candidates, jaccard_threshold=jaccard_threshold,
                        cosine_threshold=cosine_threshold, n_examples=n_examples)
    XA, XB = as_csr(XA), as_csr(XB)
    if XA.shape[0] == 0 or XB.shape[0] == 0:
        raise UserError("One side has no documents.")
    ids_a, ids_b = _doc_ids(ids_a, XA.shape[0], "a"), _doc_ids(ids_b, XB.shape[0], "b")
    labels = {int(k): str(v) for k, v in (labels or {}).items()}
    have_lengths = lengths_a is not None and lengths_b is not None
    la = np.asarray(lengths_a, float) if have_lengths else None
    lb = np.asarray(lengths_b, float) if have_lengths else None
    summary = length_summary(la, lb) if have_lengths else None
    use_lengths = bool(config.length_control and have_lengths)
    table = diff_features(XA, XB, threshold, min_share, max_share, la if use_lengths else None,
                          lb if use_lengths else None, length_bins)
    ranked_by = "adj_diff" if use_lengths and lengths_differ(summary) else "abs_diff"
    if "adj_diff" in table:
        order = np.lexsort((table["feature_id"].to_numpy(), -np.abs(table["adj_diff"].to_numpy())))
        rank_adjusted = np.empty(len(table), np.int64)
        rank_adjusted[order] = np.arange(1, len(table) + 1)
        table["rank_adjusted"] = rank_adjusted
    formatting = (set(int(f) for f in formatting_ids) if formatting_ids is not None
                  else {f for f, label in labels.items() if is_formatting(label)})
    strata = length_bins_of(np.concatenate([la, lb]), length_bins) if use_lengths else None

    findings = _ordered(
        [f for side in ("a", "b") for f in
         _side_findings(side, table, ranked_by, XA, XB, ids_a, ids_b, labels, formatting, strata, decoder, config)],
        config.include_confounded)
    finding_col = np.full(len(table), -1, np.int64)
    row_of = {int(f): i for i, f in enumerate(table["feature_id"].to_numpy())}
    for i, f in enumerate(findings):
        finding_col[[row_of[m] for m in f.feature_ids]] = i
    table["finding"] = finding_col
    return DiffResult(table=table, findings=findings, config=config, ranked_by=ranked_by, length_summary=summary,
                      ids_a=ids_a, ids_b=ids_b, XA=XA, XB=XB, lengths_a=la, lengths_b=lb)


def _side_findings(
    side: Side,
    table: pd.DataFrame,
    ranked_by: str,
    XA: sp.csr_matrix,
    XB: sp.csr_matrix,
    ids_a: np.ndarray,
    ids_b: np.ndarray,
    labels: dict[int, str],
    formatting: set[int],
    strata: np.ndarray | None,
    decoder: np.ndarray | None,
    config: DiffConfig,
) -> list[Finding]:
    """Findings of one side: its top candidates folded by co-firing, with union shares and examples."""
    if table.empty:
        return []
    fid = table["feature_id"].to_numpy(np.int64)
    score = table[ranked_by].to_numpy(float)
    confounded = (table["length_confounded"].to_numpy(bool) if "length_confounded" in table
                  else np.zeros(len(table), bool))
    is_fmt = np.isin(fid, np.fromiter(formatting, np.int64, len(formatting)))
    rows = np.flatnonzero(score > 0 if side == "a" else score < 0)
    if rows.size == 0:
        return []
    demote = np.zeros(rows.size, bool) if config.include_confounded else confounded[rows]
    rows = rows[np.lexsort((fid[rows], -np.abs(score[rows]), is_fmt[rows], demote))][: config.n_candidates]
    cand = fid[rows]
    sub_a, sub_b = XA[:, cand], XB[:, cand]
    bin_a, bin_b = binarize(sub_a, config.threshold), binarize(sub_b, config.threshold)
    stacked = sp.vstack([bin_a, bin_b], format="csr")
    similar = jaccard_matrix(stacked) >= config.jaccard_threshold
    if decoder is not None:
        similar |= decoder_cosine(decoder, cand) >= config.cosine_threshold
    groups = _greedy_groups(similar)

    member_of = sp.csr_matrix((np.ones(len(cand), np.int64),
                               (np.concatenate(groups), np.repeat(np.arange(len(groups)), [len(g) for g in groups]))),
                              shape=(len(cand), len(groups)))
    any_a = binarize(bin_a.astype(np.int64) @ member_of, 0.0)
    any_b = binarize(bin_b.astype(np.int64) @ member_of, 0.0)
    n_a, n_b = XA.shape[0], XB.shape[0]
    share_a = np.bincount(any_a.indices, minlength=len(groups)) / n_a
    share_b = np.bincount(any_b.indices, minlength=len(groups)) / n_b
    adj = None
    if strata is not None:
        n_strata = int(strata.max()) + 1
        a, strata_a = stratum_counts(any_a, strata[:n_a], n_strata)
        c, strata_b = stratum_counts(any_b, strata[n_a:], n_strata)
        adj = cmh_test(a, strata_a, c, strata_b)["adj_diff"]

    q = table["q_value"].to_numpy(float)
    cols_a, cols_b = as_csr(sub_a).tocsc(), as_csr(sub_b).tocsc()  # canonical CSC: examples read columns directly
    out = []
    for g, members in enumerate(groups):
        lead_local, lead_row = members[0], rows[members[0]]
        lead = int(cand[lead_local])
        ex_a = example_documents(cols_a, lead_local, n=config.n_examples, threshold=config.threshold)
        ex_b = example_documents(cols_b, lead_local, n=config.n_examples, threshold=config.threshold)
        out.append(Finding(
            side=side,
            label=labels.get(lead) or f"feature {lead}",
            feature_ids=tuple(int(cand[m]) for m in members),
            share_a=float(share_a[g]),
            share_b=float(share_b[g]),
            diff=float(share_a[g] - share_b[g]),
            adj_diff=None if adj is None else float(adj[g]),
            q_value=float(q[lead_row]),
            length_confounded=bool(confounded[lead_row]),
            is_formatting=lead in formatting,
            examples_a=tuple(int(d) for d in ids_a[ex_a]),
            examples_b=tuple(int(d) for d in ids_b[ex_b]),
            score=float(score[lead_row]),
        ))
    return out
