"""Each diff finding quotes a document of its own side.

A feature's offline label ends with its strongest context in the whole corpus (`name — "… «token» …"`).
In a diff that context can come from the other side: the chat side of a chat-vs-docstrings diff quoted a
docstring ("can — More arguments «can» be given"), and a two-corpus diff quoted corpus A for every finding,
B's included. A reader takes the
quote as evidence for the side, so it must come from there: among the stored top contexts of the finding's
lead feature (`feature_contexts`, up to 20 documents) the strongest one from the side's documents, one whose
firing token is a word of the label's name first. Labels without a quote (hand, LLM) and findings whose side
has no stored context keep their label.

A finding whose lead's label names nothing (`varied tokens: …`) is named by its first member whose label
names something, and quoted from that member's contexts: "constant / harmonic / tangent" read `varied tokens`
while its member read `number / constant`."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from backend.analysis.findings import DiffResult, Finding, names_nothing
from backend.analysis.label_reading import naming_member
from backend.label_evidence import mark_context
from backend.label_text import EXAMPLE_SEP, LabelTextConfig, split_label
from backend.store import Store

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class SideSource:
    """Where a side's documents are: a corpus, and its doc ids (None: every document of the corpus); with
    `labels`, that corpus's own labels, which name the side's findings (a two-corpus diff folds by A's)."""

    corpus_id: int
    doc_ids: np.ndarray | None = None
    labels: Mapping[int, str] | None = None


def side_contexts(store: Store, source: SideSource, feature_ids: Sequence[int]) -> pd.DataFrame:
    """feature_id, rank, doc_id, before, token, after: the stored top contexts of `feature_ids` that come from
    the side's documents, strongest first per feature."""
    ids = sorted({int(f) for f in feature_ids})
    sql = ("SELECT feature_id, rank, doc_id, before, token, after FROM feature_contexts WHERE corpus_id = ? "
           "AND feature_id IN (SELECT unnest(?::INTEGER[]))")
    params: list = [int(source.corpus_id), ids]
    if source.doc_ids is not None:
        sql += " AND doc_id IN (SELECT unnest(?::INTEGER[]))"
        params.append([int(d) for d in np.asarray(source.doc_ids).ravel()])
    return store.query_df(sql + " ORDER BY feature_id, rank", params)


def requoted(label: str, contexts: pd.DataFrame, config: LabelTextConfig = LabelTextConfig()) -> str:
    """`label` quoting the first of `contexts` (one feature's, strongest first) whose token is a word of the
    label's name, else the strongest; unchanged when it quotes nothing or there is no context."""
    name, example = split_label(label)
    if example is None or contexts.empty:
        return label
    words = {w.lower() for w in _WORD.findall(name)}
    tokens = contexts["token"].fillna("").astype(str).str.strip().str.lower()
    named = contexts[tokens.isin(words).to_numpy()]
    row = (named if len(named) else contexts).iloc[0]
    quote = mark_context(str(row["before"] or ""), str(row["token"] or ""), str(row["after"] or ""),
                         config.example_before_chars, config.example_after_chars)
    return f"{name}{EXAMPLE_SEP}{quote}\""


def naming_feature(f: Finding, own: Mapping[int, str] | None = None) -> tuple[int, str]:
    """(the member whose label names the finding, that label), by `label_reading.naming_member` over the members'
    labels; `own` (the side's own labels) replaces a member's label where it names something."""
    names, i = _named(f, own)
    return f.feature_ids[i], names[i]


def _named(f: Finding, own: Mapping[int, str] | None) -> tuple[list[str], int]:
    """(the members' labels, or the finding's label alone without them, the side's `own` label first where it
    names something; the index of the one that names the finding)."""
    def label_of(fid: int, fallback: str) -> str:
        mine = (own or {}).get(fid)
        return mine if mine and not names_nothing(mine) else fallback  # a side's "varied tokens" names less

    members = f.feature_labels if len(f.feature_labels) == len(f.feature_ids) else (f.label,)
    names = [label_of(fid, member) for fid, member in zip(f.feature_ids, members)]
    return names, naming_member(names)


def quoted_from_sides(result: DiffResult, contexts: Mapping[str, pd.DataFrame],
                      labels: Mapping[str, Mapping[int, str] | None] | None = None) -> DiffResult:
    """`result` with each finding named by :func:`naming_feature` (the side's own labels `labels[side]` first)
    and quoting its own side from that feature's contexts (`contexts[side]`: `side_contexts` rows); its
    `feature_labels` are those the side read, so its `named_by` is that feature."""
    by_feature = {side: dict(tuple(df.groupby("feature_id"))) if len(df) else {} for side, df in contexts.items()}

    def one(f: Finding) -> Finding:
        names, i = _named(f, (labels or {}).get(f.side))
        rows = by_feature.get(f.side, {}).get(f.feature_ids[i])
        label = names[i] if rows is None else requoted(names[i], rows)
        # the members' labels as the side reads them, so `named_by` is the member this label comes from
        members = tuple(names) if len(names) == len(f.feature_ids) else f.feature_labels
        return f if (label, members) == (f.label, f.feature_labels) else dataclasses.replace(
            f, label=label, feature_labels=members)

    return dataclasses.replace(result, findings=[one(f) for f in result.findings])


def quote_sides(store: Store, result: DiffResult, sources: Mapping[str, SideSource]) -> DiffResult:
    """The diff's findings quoting their own side's documents (see the module docstring)."""
    namers = {side: [naming_feature(f, sources[side].labels)[0] for f in result.findings if f.side == side]
              for side in sources}
    contexts = {side: side_contexts(store, sources[side], namers[side]) for side in sources if namers[side]}
    return quoted_from_sides(result, contexts, {side: source.labels for side, source in sources.items()})
