"""A diff finding quotes a document of its own side, not the corpus's strongest context from the other side."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.analysis.findings import diff_result
from backend.finding_quotes import SideSource, naming_feature, quoted_from_sides, requoted, side_contexts
from backend.label_text import split_label


def contexts(rows):
    return pd.DataFrame(rows, columns=["feature_id", "rank", "doc_id", "before", "token", "after"])


def test_requoted_takes_the_sides_context_whose_token_the_name_names():
    label = 'might / may — "… the chatbot «may» help"'
    side = contexts([(7, 2, 40, "I think it ", "could", " rain"), (7, 5, 41, "It ", "might", " rain today")])
    assert requoted(label, side) == 'might / may — "It «might» rain today"'  # a named word beats the stronger rank
    assert requoted(label, side.iloc[:1]) == 'might / may — "I think it «could» rain"'  # else the strongest
    assert requoted(label, side.iloc[:0]) == label  # no context from this side: the label as it was
    assert requoted("hedging (an LLM label)", side) == "hedging (an LLM label)"  # nothing quoted: nothing to change


def test_findings_of_each_side_quote_that_side():
    """Planted: feature 0 fires on A's documents, feature 1 on B's; both labels quote A's document (what a
    two-corpus diff did: A's labels for every finding). After, B's finding quotes B."""
    rng = np.random.default_rng(0)
    XA = np.zeros((40, 4)); XA[:30, 0] = 1; XA[rng.random(40) < 0.1, 1] = 1
    XB = np.zeros((40, 4)); XB[:30, 1] = 1; XB[rng.random(40) < 0.1, 0] = 1
    labels = {0: 'cats — "a «cats» doc of A"', 1: 'dogs — "a «dogs» doc of A"'}
    res = diff_result(sp.csr_matrix(XA), sp.csr_matrix(XB), None, None, labels)
    by_side = {f.side: f for f in res.findings}
    assert set(by_side) == {"a", "b"} and by_side["b"].lead == 1
    ctx = {"a": contexts([(0, 1, 3, "my ", "cats", " sleep")]),
           "b": contexts([(1, 4, 9, "the ", "dogs", " bark"), (0, 1, 2, "no ", "cats", " here")])}
    out = {f.side: f for f in quoted_from_sides(res, ctx).findings}
    assert split_label(out["b"].label) == ("dogs", "the «dogs» bark")
    assert split_label(out["a"].label) == ("cats", "my «cats» sleep")
    assert [f.feature_ids for f in res.findings] == [f.feature_ids for f in quoted_from_sides(res, ctx).findings]
    assert res.findings[0].label in labels.values()  # the input result is left as it was
    # a two-corpus diff: B's findings are named by B's own label when it names something
    own_b = {1: 'hounds — "big «hounds»"'}
    named = {f.side: f for f in quoted_from_sides(res, ctx, {"a": None, "b": own_b}).findings}
    assert split_label(named["b"].label) == ("hounds", "the «dogs» bark") and named["a"].label == out["a"].label
    vague = {f.side: f for f in quoted_from_sides(res, ctx, {"b": {1: 'varied tokens: a / b / c — "x «y»"'}}).findings}
    assert vague["b"].label == out["b"].label  # a label that names nothing does not replace a readable one


def test_the_workspace_diff_quotes_each_side(tiny_workspace, tiny_docs):
    ws = tiny_workspace
    ws.add_corpus("t", tiny_docs, "text")
    ws.embed("t")
    res = ws.diff("t", column="label", value_a="plot")
    cid = ws.corpus("t").corpus_id
    sides = {"a": np.asarray(res.ids_a), "b": np.asarray(res.ids_b)}
    checked = 0
    for f in res.findings:
        quote = split_label(f.label)[1]
        own = side_contexts(ws.store, SideSource(cid, sides[f.side]), [f.lead])
        if quote is None or own.empty:
            continue
        assert requoted(f.label, own) == f.label, f  # already quoting its own side's chosen context
        checked += 1
    assert checked > 0


def test_a_two_corpus_diff_quotes_b_from_b(tiny_workspace, tiny_docs):
    """Before, a two-corpus diff named and quoted every finding from A's labels: B's findings quoted A."""
    ws = tiny_workspace
    is_plot = (tiny_docs["label"] == "plot").to_numpy()
    ws.add_corpus("p", tiny_docs[is_plot], "text")
    ws.add_corpus("q", tiny_docs[~is_plot], "text")
    ws.embed("p")
    ws.embed("q")
    res = ws.diff("p", "q")
    sources = {"a": SideSource(ws.corpus("p").corpus_id), "b": SideSource(ws.corpus("q").corpus_id)}
    checked = 0
    for f in res.findings:
        quote = split_label(f.label)[1]
        own = side_contexts(ws.store, sources[f.side], [f.lead])
        if quote is None or own.empty:
            continue
        assert requoted(f.label, own) == f.label, f
        checked += f.side == "b"
    assert checked > 0


def test_a_finding_whose_lead_names_nothing_is_named_by_a_member_that_does():
    """Planted: features 0 and 1 fire on the same documents of A (one finding, led by 0); 0's label names nothing,
    1's names the concept. The finding reads 1's name and quotes 1's context from A; without such a member it
    keeps the lead's label, and a punctuation member does not name it."""
    XA = np.zeros((40, 3)); XA[:30, 0] = 1; XA[:28, 1] = 1
    XB = np.zeros((40, 3)); XB[:2, 0] = 1
    labels = {0: 'varied tokens: constant / harmonic / tangent — "in «harmonic» motion"',
              1: 'number / constant — "the «number» of feet"', 2: "comma"}
    res = diff_result(sp.csr_matrix(XA), sp.csr_matrix(XB), None, None, labels)
    f = next(f for f in res.findings if f.side == "a")
    assert f.feature_ids[:2] == (0, 1) and f.label == labels[1]  # named by its member already in diff_result
    ctx = {"a": contexts([(0, 0, 5, "simple ", "harmonic", " motion"), (1, 2, 7, "a large ", "number", " of legs")])}
    named = next(g for g in quoted_from_sides(res, ctx).findings if g.side == "a")
    assert split_label(named.label) == ("number / constant", "a large «number» of legs")
    assert named.feature_ids == f.feature_ids  # the same finding, only named by its member
    vague = {0: labels[0], 1: 'varied tokens: x / y — "«x»"'}
    res = diff_result(sp.csr_matrix(XA), sp.csr_matrix(XB), None, None, vague)
    assert naming_feature(next(f for f in res.findings if f.side == "a")) == (0, labels[0])
    punct = dataclasses.replace(f, feature_labels=(labels[0], "comma"))
    assert naming_feature(punct) == (0, labels[0])


def test_a_finding_of_b_is_read_by_the_member_its_label_comes_from():
    """Planted: features 1 and 2 fire on the same documents of B (one finding, led by 1). The merged labels (A's
    win) name 1 `varied tokens` and 2 `dogs`; B's own label of 1 is `hounds`. The finding reads `hounds` and its
    `named_by` (what the LLM labels and the pages quote) is 1, not 2 as the merged labels would say."""
    XA = np.zeros((40, 3)); XA[:2, 1] = 1
    XB = np.zeros((40, 3)); XB[:30, 1] = 1; XB[:28, 2] = 1
    merged = {1: 'varied tokens: a / b / c — "x «y»"', 2: 'dogs — "the «dogs» bark"'}
    res = diff_result(sp.csr_matrix(XA), sp.csr_matrix(XB), None, None, merged)
    f = next(f for f in res.findings if f.side == "b")
    assert f.feature_ids[:2] == (1, 2) and f.named_by == 2
    named = next(g for g in quoted_from_sides(res, {}, {"b": {1: 'hounds — "big «hounds»"'}}).findings
                 if g.side == "b")
    assert split_label(named.label)[0] == "hounds" and named.named_by == 1
    assert named.feature_ids == f.feature_ids
