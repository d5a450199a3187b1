"""The notebook API is the page's API: one Workspace call per analysis, equal to the pure functions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend.analysis.diff import split_by_column
from backend.analysis.findings import DiffResult, diff_result
from backend.errors import UserError
from backend.workspace import Workspace


@pytest.fixture()
def ws(tiny_workspace, tiny_docs):
    tiny_workspace.add_corpus("t", tiny_docs, "text")
    tiny_workspace.embed("t")
    tiny_workspace.add_corpus("u", tiny_docs.iloc[::-1].reset_index(drop=True), "text")
    tiny_workspace.embed("u")
    return tiny_workspace


def test_diff_of_groups_equals_the_pure_function(ws: Workspace):
    res = ws.diff("t", column="label", value_a="plot")
    assert isinstance(res, DiffResult)
    X = ws.latents("t")
    meta = pd.DataFrame({"label": ws.metadata("t", "label").to_numpy()})
    XA, XB, ia, ib = split_by_column(X, meta, "label", "plot")
    lengths = ws.doc_lengths("t")
    want = diff_result(XA, XB, lengths[ia], lengths[ib], ws.labels("t"), ids_a=ia, ids_b=ib)
    pd.testing.assert_frame_equal(res.table, want.table)
    assert [f.feature_ids for f in res.findings] == [f.feature_ids for f in want.findings]
    for f in res.findings:  # example documents are real doc ids of the right group
        assert set(f.examples_a) <= set(ia.tolist()) and set(f.examples_b) <= set(ib.tolist())
        assert f.side in ("a", "b") and 0 <= f.share_a <= 1 and 0 <= f.share_b <= 1


def test_diff_of_two_corpora_and_refusals(ws: Workspace):
    res = ws.diff("t", "u", length_control=False)
    assert res.n_a == res.n_b == 12
    assert np.allclose(res.table["abs_diff"].to_numpy(), 0.0)  # the same documents in another order
    with pytest.raises(UserError):
        ws.diff("t")
    with pytest.raises(UserError):
        ws.diff("t", "u", column="label", value_a="plot")
    with pytest.raises(UserError, match=r"Group A .* 'no such value'\. Its most common values: '.+'"):
        ws.diff("t", column="label", value_a="no such value")  # says which values there are
    with pytest.raises(UserError, match="Both sides of the diff are corpus 't'"):
        ws.diff("t", "t")  # a corpus against itself finds nothing and would read as "no difference"
    with pytest.raises(UserError, match="'label' = 'plot' that is not in group A"):
        ws.diff("t", column="label", value_a="plot", value_b="plot")  # B's documents went to A first


def test_a_diff_by_a_numeric_column_takes_the_numbers_the_user_gave(ws: Workspace, tiny_docs):
    ws.add_corpus("n", tiny_docs.assign(is_plot=(tiny_docs["label"] == "plot").astype(int)), "text")
    ws.embed("n")
    by_number = ws.diff("n", column="is_plot", value_a=1, value_b=0)
    by_label = ws.diff("n", column="label", value_a="plot")
    assert by_number.n_a == by_label.n_a > 0 and by_number.n_b == by_label.n_b > 0
    pd.testing.assert_frame_equal(by_number.table, by_label.table)


def test_an_empty_query_is_refused_with_a_message(ws: Workspace):
    for call in (lambda q: ws.retrieve("t", q), lambda q: ws.retrieve("t", q, mode="dense"),
                 lambda q: ws.retrieve("t", q, mode="hybrid"), lambda q: ws.query_features("t", q),
                 lambda q: ws.retrieve_dense("t", q)):
        for query in ("", "   \n"):
            with pytest.raises(UserError, match="The query is empty"):
                call(query)


def test_retrieve_ranks_with_idf_and_shows_the_weights(ws: Workspace):
    from backend.analysis.retrieve import rank_by_query

    query = "python code with a function"
    got = ws.retrieve("t", query, top=5)
    assert list(got.columns[:2]) == ["doc_id", "score"] and len(got) == 5
    want = rank_by_query(ws.latents("t"), ws.embed_text(query), top=5, weighting="idf").table
    assert got["doc_id"].tolist() == want["row"].tolist()
    weights = ws.query_features("t", query)
    assert {"feature_id", "idf", "weight"} <= set(weights.columns) and len(weights) == len(ws.embed_text(query))
    plain = ws.retrieve("t", query, top=5, weighting="none")
    assert np.all(plain["score"].to_numpy() <= 1.0 + 1e-9)


def test_cluster_labels_follow_document_order(ws: Workspace):
    X = ws.latents("t")
    counts = np.asarray((X > 0).sum(axis=0)).ravel()
    chosen = [int(f) for f in np.argsort(-counts)[5:9]]
    res = ws.cluster("t", chosen, k=2)
    assert len(res.labels) == ws.corpus("t").n_docs
    carries = np.asarray((X[:, chosen] > 0).sum(axis=1)).ravel() > 0
    assert np.array_equal(res.labels == -1, ~carries)  # "none of the chosen concepts" is explicit


def test_hypotheses_read_the_right_documents_for_each_side(ws: Workspace):
    """ws.hypotheses samples A from group A and B from group B and hands the texts to the LLM."""
    import re

    res = ws.diff("t", column="label", value_a="code")
    seen: dict[str, list[str]] = {"docs": []}

    def fake_llm(messages):
        prompt = messages[-1]["content"]
        if not prompt.startswith("Hypothesis:"):
            return "1. Documents in A more often mention python code.\n"
        docs = re.findall(r"^Document (\d+): (.*)$", prompt, flags=re.M)
        seen["docs"] += [text for _, text in docs]
        return "\n".join(f"{i}: {'yes' if ('python' in t or 'code' in t or 'function' in t) else 'no'}" for i, t in docs)

    from backend.analysis.hypotheses import HypothesisConfig

    report = ws.hypotheses(res, fake_llm, "t", config=HypothesisConfig(n_hypotheses=1, sample_size=20))
    (hyp,) = report.hypotheses
    assert (hyp.n_a, hyp.n_b) == (3, 9)  # every document of each group (fewer than the sample size)
    assert hyp.share_a > hyp.share_b
    texts = set(ws.documents("t")["text"])
    assert seen["docs"] and set(seen["docs"]) <= {" ".join(t.split()) for t in texts} | texts


def test_steer_returns_generations_with_the_max_pooled_fires_measure(ws: Workspace):
    from backend.steering import SteerConfig

    cfg = SteerConfig(n_samples=1, max_new_tokens=6, temperature=0.0)
    zero = ws.steer(["the movie"], {3: 0.0}, cfg, corpus="t")
    frame = zero.frame()
    assert set(frame["kind"]) == {"unsteered", "steered"} and "fires_3" in frame
    steered, unsteered = frame[frame.kind == "steered"].iloc[0], frame[frame.kind == "unsteered"].iloc[0]
    assert steered["text"] == unsteered["text"]  # strength 0 changes nothing
    for g in zero.generations:  # fires == the feature's max over the output is above the threshold
        assert g.fires[3] == (g.n_tokens > 0 and g.feature_max[3] > cfg.fire_threshold)
