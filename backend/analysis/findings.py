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
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Collection, Literal, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis import FeatureGroup, as_csr, binarize
from backend.analysis.correlate import npmi_from_counts
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
# Containment folds a feature into another only when the two co-occur far beyond chance (NPMI >= this):
# a rare feature inside one that fires on most documents is not the same concept.
CONTAINMENT_MIN_NPMI = 0.5

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


UNNAMED_PREFIX = "varied tokens:"  # backend.label_text's label for a feature whose contexts share nothing it could name


def names_nothing(label: str | None) -> bool:
    """Whether a label names no property its feature's contexts share (`varied tokens: a / b / c`): a
    finding a reader cannot read, shown after the readable ones."""
    return (label or "").strip().startswith(UNNAMED_PREFIX)


def _ordered(findings: list[Finding], include_confounded: bool) -> list[Finding]:
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


# -- grouping ------------------------------------------------------------------------------------------
# Words that say nothing about which concept a label names: function words, and the vocabulary labels
# use around a concept ("varied tokens: …", "after 'the' (…)", "mentions of …", "names of …").
_NOT_CONCEPT = frozenset(
    "a an the of and or in on at to for with by from as is are be been this that these those it its into "
    "than then via vs etc "
    "text texts token tokens word words phrase phrases term terms name names feature features content "
    "about related relating mention mentions mentioning reference references referring containing contains "
    "varied various mixed other misc miscellaneous special kind kinds type types class classes category "
    "categories concept concepts like such use usage used after before first last start beginning end "
    "capitalised capitalized all-caps wording topic topics language expression expressions style".split()
)
_LABEL_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_OLD_STYLE = re.compile(r"top tokens:\s*(.*?)(?:\s*\|\s*ngrams:.*)?$", re.S | re.I)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def label_words(label: str | None) -> frozenset[str]:
    """The concept words of a label: the words of its name (before `` — "example"``, or the top tokens of
    an old ``top tokens: …`` label), lower-cased and singular, without function words, generic label
    words ("tokens", "after", "mentions", …) and words without a letter.

    Two features whose labels share one of these words name the same concept (``coronavirus`` and
    ``pandemic / coronavirus``), so a diff folds them into one finding."""
    text = (label or "").strip()
    old = _OLD_STYLE.match(text)
    name = old.group(1) if old else re.split(r"\s+[—–]\s+", text, maxsplit=1)[0]
    words = (_singular(w) for w in _LABEL_WORD.findall(name.lower()))
    return frozenset(w for w in words if w not in _NOT_CONCEPT and _LETTER.search(w) and len(w) > 1)


def concept_keys(label: str | None) -> frozenset[str]:
    """What two labels must share to name one concept: their :func:`label_words`, or, for a label without
    any (``the``, ``a / an``), its whole name, so two findings both named "the" fold too."""
    words = label_words(label)
    if words or not (label or "").strip():
        return words
    name = re.split(r"\s+[—–]\s+", label.strip(), maxsplit=1)[0]
    return frozenset({"=" + " ".join(name.lower().split())})


def shared_words_matrix(labels: list[str | None]) -> np.ndarray:
    """k x k: whether labels i and j share a concept word or, lacking any, a name (:func:`concept_keys`);
    the diagonal is True."""
    words = [concept_keys(label) for label in labels]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*words)))}
    incidence = np.zeros((len(labels), max(1, len(vocab))), np.int64)
    for i, ws in enumerate(words):
        incidence[i, [vocab[w] for w in ws]] = 1
    return (incidence @ incidence.T > 0) | np.eye(len(labels), dtype=bool)


def overlap_counts(B: sp.spmatrix) -> np.ndarray:
    """Documents where columns i and j of a binary matrix both fire (dense k x k; diagonal: each column's)."""
    B = as_csr(B).astype(np.int64)
    return np.asarray((B.T @ B).toarray(), dtype=float)


def jaccard_matrix(B: sp.spmatrix) -> np.ndarray:
    """Jaccard overlap between the document sets of the columns of a binary matrix (dense k x k).

    Meant for a few dozen columns: the result is dense."""
    inter = overlap_counts(B)
    n = np.diag(inter)
    union = n[:, None] + n[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def inside_matrix(B: sp.spmatrix, threshold: float, min_npmi: float = CONTAINMENT_MIN_NPMI) -> np.ndarray:
    """``inside[i, j]``: column i's documents lie mostly inside column j's (overlap >= ``threshold`` of i's
    documents, i no larger than j), and the two co-occur far beyond chance (NPMI >= ``min_npmi``), so a
    rare feature is not folded into one that fires nearly everywhere. k x k, directional."""
    inter = overlap_counts(B)
    n = np.diag(inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_inside = np.where(n[:, None] > 0, inter / np.where(n[:, None] > 0, n[:, None], 1.0), 0.0)
    npmi = npmi_from_counts(inter, n[:, None], n[None, :], max(1, B.shape[0]))
    return (share_inside >= threshold) & (n[:, None] <= n[None, :]) & (npmi >= min_npmi)


def decoder_cosine(decoder: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
    """Cosine similarity between the decoder directions (rows of ``decoder``) of the given features."""
    W = np.asarray(decoder[np.asarray(feature_ids, np.int64)], dtype=np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    W = W / np.where(norms > 0, norms, 1.0)
    return W @ W.T


def fold_features(
    B: sp.spmatrix,
    feature_ids: np.ndarray,
    jaccard_threshold: float = 0.5,
    labels: Mapping[int, str] | None = None,
    containment_threshold: float | None = None,
    decoder: np.ndarray | None = None,
    cosine_threshold: float = 0.9,
) -> list[list[int]]:
    """Fold features (columns of the binary ``B``, ids ``feature_ids``, strongest first) into concepts;
    returns groups of column indices, lead first.

    Each column not yet folded leads a group and takes every later one that describes its concept: that
    fires on the same documents (Jaccard), shares a label concept word (with ``labels``), whose documents
    lie inside its own or hold its own (with ``containment_threshold``), or whose decoder direction points
    the same way (with ``decoder``). Only containment chains on (a variant inside any member's documents
    joins): a lead's label word or Jaccard partner does not pull in its own partners."""
    similar = jaccard_matrix(B) >= jaccard_threshold
    inside = None
    if labels is not None:
        similar |= shared_words_matrix([labels.get(int(f)) for f in feature_ids])
    if containment_threshold is not None:
        inside = inside_matrix(B, containment_threshold)
        similar |= inside | inside.T
    if decoder is not None:
        similar |= decoder_cosine(decoder, feature_ids) >= cosine_threshold
    return _greedy_groups(similar, inside)


def _greedy_groups(similar: np.ndarray, inside: np.ndarray | None = None) -> list[list[int]]:
    """Greedy folding in priority order: each unassigned column leads a group and takes every later
    unassigned column similar to it (similarity to the lead, so groups do not chain), then, with
    ``inside``, every later unassigned column whose documents lie inside a member's."""
    k = similar.shape[0]
    assigned = np.zeros(k, bool)
    groups = []
    for i in range(k):
        if assigned[i]:
            continue
        members = [i] + [j for j in range(i + 1, k) if not assigned[j] and similar[i, j]]
        assigned[members] = True
        while inside is not None:
            more = [j for j in range(i + 1, k) if not assigned[j] and inside[j, members].any()]
            if not more:
                break
            assigned[more] = True
            members += more
        groups.append(members)
    return groups


def local_labels(labels: Mapping[int, str] | None, columns: np.ndarray) -> dict[int, str] | None:
    """Labels keyed by column position in ``columns`` (for `group_features` on a column slice)."""
    if not labels:
        return None
    return {i: labels[int(f)] for i, f in enumerate(columns) if int(f) in labels}


def group_features(
    X: sp.spmatrix,
    feature_ids: Collection[int],
    threshold: float = 0.0,
    jaccard_threshold: float = 0.5,
    decoder: np.ndarray | None = None,
    cosine_threshold: float = 0.9,
    labels: Mapping[int, str] | None = None,
    containment_threshold: float | None = None,
) -> list[list[int]]:
    """Fold features that describe one concept into groups, in the priority order given.

    Each feature not yet grouped leads a group and takes every later feature whose document set (rows
    of ``X`` where it fires above ``threshold``) overlaps its own with Jaccard >= ``jaccard_threshold``,
    or that :func:`fold_features` finds similar by the other evidence given (decoder cosine >=
    ``cosine_threshold``, a shared label word, containment). Returns lists of feature ids, lead first.
    Only the chosen columns are touched.
    """
    ids = np.asarray(list(feature_ids), dtype=np.int64)
    if ids.size == 0:
        return []
    groups = fold_features(binarize(as_csr(X)[:, ids], threshold), ids, jaccard_threshold, labels,
                           containment_threshold, decoder, cosine_threshold)
    return [[int(ids[j]) for j in g] for g in groups]


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

    def members(self, finding: Finding) -> pd.DataFrame:
        """The features folded into a finding, lead first: feature_id, label, and each one's own share_a,
        share_b (the finding reports the share where *any* of them fires)."""
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
    ids_a: np.ndarray | None = None,
    ids_b: np.ndarray | None = None,
    decoder: np.ndarray | None = None,
    formatting_ids: Collection[int] | None = None,
    is_formatting: Callable[[str], bool] = is_formatting_label,
    **options,
) -> DiffResult:
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
    findings = _ordered([f for side in ("a", "b") for f in _side_findings(side, context)], config.include_confounded)
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
        out.append(Finding(
            side=side, label=ctx.labels.get(lead) or f"feature {lead}", feature_ids=tuple(int(cand[m]) for m in members),
            share_a=float(share_a[g]), share_b=float(share_b[g]), diff=float(share_a[g] - share_b[g]),
            adj_diff=None if adj is None else float(adj[g]), q_value=float(q[lead_row]),
            length_confounded=bool(confounded[lead_row]), is_formatting=lead in ctx.formatting,
            examples_a=examples(cols_a, ctx.ids_a, members[0]), examples_b=examples(cols_b, ctx.ids_b, members[0]),
            score=float(score[lead_row]),
            feature_labels=tuple(ctx.labels.get(int(cand[m])) or f"feature {int(cand[m])}" for m in members),
        ))
    return out
