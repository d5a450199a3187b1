"""AppTest checks of the analysis pages (diff, clustering, correlations, retrieval) on the tiny workspace,
each compared with the backend's own answer on the same input."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `from pages import widgets` inside the page scripts
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from pages import widgets  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws_path(tiny_workspace_file, tmp_path_factory) -> Path:
    """A private copy of the tiny workspace (corpus 't', 12 docs labelled fresh/rotten/plot/code, 64 features)."""
    dst = tmp_path_factory.mktemp("analysis_pages") / "tiny.duckdb"
    shutil.copy(tiny_workspace_file, dst)
    return dst


@pytest.fixture(scope="module")
def ws(ws_path):
    """The very Workspace object the pages use (widgets.open_workspace is a process-wide cache_resource)."""
    return widgets.open_workspace(str(ws_path))


def app(name: str, ws_path: Path, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=180)
    at.session_state["workspace_path"] = str(ws_path)
    at.session_state["corpus"] = "t"
    for k, v in state.items():
        at.session_state[k] = v
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def frame_with(at: AppTest, *columns: str) -> pd.DataFrame:
    frames = [d.value for d in at.dataframe if all(c in d.value.columns for c in columns)]
    assert frames, f"no table with columns {columns}"
    return frames[0]


def doc_html(at: AppTest) -> list[str]:
    return [h.value for h in at.html if "saedash-doc" in h.value]


# -- dataset diff ------------------------------------------------------------------------
def test_diff_by_metadata_matches_backend(ws_path, ws):
    from backend.analysis.diff import diff_features, split_by_column

    at = app("diff", ws_path).run()
    no_errors(at)
    assert at.radio(key="diff_mode").value == "groups"  # one corpus only: groups of it
    at.selectbox(key="diff_column").set_value("label")
    at.selectbox(key="diff_value_a").set_value("fresh")
    at.run()
    no_errors(at)
    assert at.selectbox(key="diff_value_b").value == "(all others)"

    X = ws.latents("t", "max")
    meta = pd.DataFrame({"label": ws.store.metadata("t", "label").to_numpy()})
    XA, XB, ia, ib = split_by_column(X, meta, "label", "fresh")
    lengths = ws.store.doc_lengths("t")
    want = diff_features(XA, XB, lengths_a=lengths[ia], lengths_b=lengths[ib], length_bins=5)
    assert len(ia) == 4 and len(ib) == 8

    got = frame_with(at, "rank", "share_a")
    assert list(got["feature_id"]) == list(want["feature_id"])
    for col in ("share_a", "share_b", "abs_diff", "q_value", "adj_diff", "cmh_q"):
        assert np.allclose(got[col].to_numpy(float), want[col].to_numpy(float), equal_nan=True), col
    assert list(got["length_confounded"]) == list(want["length_confounded"])
    assert {"label", "rel_diff"} <= set(got.columns)
    # length comparison, summary, volcano, examples with highlights, export
    assert any("Mann-Whitney" in c.value for c in at.caption)
    assert any("tested features differ" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) >= 2
    top = int(want["feature_id"].iloc[0])
    assert at.selectbox(key="diff_feature").value == top
    assert doc_html(at), "example documents are highlighted"
    assert len(at.get("download_button")) >= 3

    # Without length control the CMH columns disappear; a share filter narrows the tested features.
    at.toggle(key="diff_length").set_value(False)
    at.slider(key="diff_share").set_value((0.3, 1.0))
    at.run()
    no_errors(at)
    got = frame_with(at, "rank", "share_a")
    want = diff_features(XA, XB, min_share=0.3, max_share=1.0)
    assert "cmh_q" not in got.columns and list(got["feature_id"]) == list(want["feature_id"])


# -- clustering --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def concepts(ws) -> list[int]:
    """The six features firing in the most documents of corpus 't' (but not in all of them)."""
    X = ws.latents("t", "binary")
    counts = np.bincount(X.indices, minlength=X.shape[1])
    counts[counts >= X.shape[0]] = 0
    return [int(f) for f in np.argsort(-counts, kind="stable")[:6]]


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}"
    return found[0]


def test_clustering_descriptions_and_agreement(ws_path, ws, concepts):
    from backend import doc_embeddings
    from backend.analysis.cluster import agreement, cluster_documents, dense_cluster, describe_clusters

    at = app("clustering", ws_path).run()
    no_errors(at)
    assert any("Choose at least one feature" in i.value for i in at.info)
    at.multiselect(key="clu_chosen").set_value(concepts)
    at.run()
    no_errors(at)
    assert at.selectbox(key="clu_method").value == "concepts"
    by_concepts = ws.cluster("t", concepts)
    assert int(metric(at, "Clusters found")) == by_concepts.n_clusters
    assert int(metric(at, "Documents with none of them")) == by_concepts.n_none

    # the paper's pattern clustering: spectral on Jaccard, described with all features
    at.selectbox(key="clu_method").set_value("spectral")
    at.radio(key="clu_describe_scope").set_value("all")
    at.run()
    no_errors(at)
    X = ws.latents("t", "max")
    res = ws.cluster("t", concepts, method="spectral")
    assert np.array_equal(res.labels, cluster_documents(X, concepts, method="spectral").labels)
    assert int(metric(at, "Clusters found")) == res.n_clusters >= 2
    assert int(metric(at, "Suggested k")) == res.suggested_k
    # descriptions: one table per cluster, equal to describe_clusters over all features
    desc = describe_clusters(X, res.labels, top=8)
    shown = [d.value for d in at.dataframe if {"in_share", "out_share", "label"} <= set(d.value.columns)]
    assert len(shown) == len(np.unique(res.labels))
    for c, got in zip(sorted(np.unique(res.labels[res.labels >= 0])), shown):
        want = desc[desc["cluster"] == c]
        assert list(got["feature_id"]) == list(want["feature_id"])
        assert np.allclose(got["in_share"], want["in_share"]) and np.allclose(got["out_share"], want["out_share"])
        assert "evidence" in got.columns and got["evidence"].str.contains("«").any()
    # agreement with the `label` column, SAE and MiniLM side by side
    truth = ws.metadata("t", "label").to_numpy().astype(str)
    sae = agreement(res.labels, truth)
    assert float(metric(at, "SAE clusters · ARI")) == pytest.approx(sae["ari"], abs=1e-3)
    assert float(metric(at, "SAE clusters · NMI")) == pytest.approx(sae["nmi"], abs=1e-3)
    assert doc_embeddings.is_complete(ws, ws.corpus("t"))  # 12 documents: the dense baseline is computed without asking
    dense = agreement(dense_cluster(doc_embeddings.doc_vectors(ws, ws.corpus("t")), max(2, res.n_clusters)), truth)
    assert float(metric(at, "MiniLM clusters · ARI")) == pytest.approx(dense["ari"], abs=1e-3)
    assert float(metric(at, "MiniLM clusters · NMI")) == pytest.approx(dense["nmi"], abs=1e-3)
    assert not [p for p in at.get("plotly_chart")]  # the UMAP map waits for its button

    # a chosen k and another method
    at.radio(key="clu_k_mode").set_value("choose").run()
    at.number_input(key="clu_k").set_value(3)
    at.selectbox(key="clu_method").set_value("kmeans")
    at.run()
    no_errors(at)
    res3 = ws.cluster("t", concepts, method="kmeans", k=3)
    assert np.array_equal(res3.labels, cluster_documents(X, concepts, method="kmeans", n_clusters=3).labels)
    assert int(metric(at, "Clusters found")) == res3.n_clusters
    # export of the largest cluster: its documents with the chosen features' activation columns
    rows = np.flatnonzero(res3.labels == 0)
    assert any(f"{len(rows)} rows" in b.label for b in at.get("download_button")), ([b.label for b in at.get("download_button")], len(rows), at.selectbox(key="clu_export_cluster").value, [c.value for c in at.caption])


def test_clustering_concepts_keep_none_group(ws_path, ws, concepts):
    """The concepts method: folded concepts with their member features and evidence, and with k=2 the
    documents that carry a chosen concept apart from an explicit group of those that carry none."""
    X = ws.latents("t", "max")
    counts = np.bincount(X.indices, minlength=X.shape[1])
    rare = [int(f) for f in np.flatnonzero((counts >= 2) & (counts <= 4))][:3]  # each fires in a few documents
    at = app("clustering", ws_path, clu_chosen=rare).run()
    no_errors(at)
    assert any("k counts the group of documents that carry *none*" in c.value for c in at.caption)
    at.radio(key="clu_k_mode").set_value("choose").run()
    at.number_input(key="clu_k").set_value(2).run()
    no_errors(at)
    want = ws.cluster("t", rare, k=2)
    carries = (X[:, rare] > 0).toarray().any(axis=1)
    assert 0 < carries.sum() < X.shape[0]
    assert np.array_equal(want.labels >= 0, carries) and set(want.labels) == {0, -1}  # carries vs none, nothing else
    assert int(metric(at, "Clusters found")) == 1
    assert int(metric(at, "Documents with none of them")) == int((~carries).sum())
    heads = [m.value for m in at.markdown if m.value.startswith("**None of the chosen concepts**")]
    assert heads and heads[0].startswith(f"**None of the chosen concepts** · {int((~carries).sum())} documents")
    # the folded concepts: one row each, named by the lead feature's label with one marked example
    overview = frame_with(at, "concept", "features", "role")
    assert list(overview["concept"]) == [c.concept_id for c in want.concepts]
    assert list(overview["feature_id"]) == [c.lead for c in want.concepts]
    assert overview["evidence"].str.contains("«").all()
    members = frame_with(at, "concept", "lead", "evidence")
    assert sorted(members["feature_id"]) == sorted(rare)
    # descriptions by concept, in/out shares as the backend computed them, the none group included
    shown = [d.value for d in at.dataframe if {"in_share", "out_share", "lead_feature"} <= set(d.value.columns)]
    assert len(shown) == len(want.clusters)
    for label, got in zip(want.clusters["cluster"], shown):
        expect = want.descriptions[want.descriptions["cluster"] == label]
        assert list(got["lead_feature"]) == list(expect["lead_feature"])
        assert np.allclose(got["in_share"], expect["in_share"]) and np.allclose(got["out_share"], expect["out_share"])


# -- correlations -------------------------------------------------------------------------
def test_correlations_pairs_and_metadata(ws_path, ws):
    from backend.analysis.correlate import feature_vs_metadata, npmi_pairs
    from backend.labels import labels

    at = app("correlations", ws_path).run()
    no_errors(at)
    assert at.number_input(key="cor_min_count").value == 2
    X = ws.latents("t", "max")
    want = npmi_pairs(X, min_count=2, top=50, exclude_same_label=labels(ws, "t"), engine="scipy")
    assert len(want) > 0
    got = frame_with(at, "feature_a", "feature_b", "npmi")
    assert list(zip(got["feature_a"], got["feature_b"])) == list(zip(want["feature_a"], want["feature_b"]))
    assert np.allclose(got["npmi"], want["npmi"]) and {"label_a", "label_b"} <= set(got.columns)
    # documents of the first pair: exactly those where both features fire
    fa, fb = int(want["feature_a"].iloc[0]), int(want["feature_b"].iloc[0])
    both = int(((X[:, fa].toarray() > 0) & (X[:, fb].toarray() > 0)).sum())
    assert both == int(want["count_ab"].iloc[0])
    assert any(f"Both fire in {both:,} documents" in c.value for c in at.caption)
    assert len(doc_html(at)) == min(3, both)
    # a stricter minimum count keeps only pairs of frequent features
    at.number_input(key="cor_min_count").set_value(4).run()
    no_errors(at)
    got = frame_with(at, "feature_a", "feature_b", "npmi")
    assert (got["count_a"] >= 4).all() and (got["count_b"] >= 4).all() and (got["count_ab"] >= 4).all()
    # features against the `label` column
    meta = frame_with(at, "category", "share_in_category")
    want_m = feature_vs_metadata(X, ws.store.metadata("t", "label"), top=10, min_count=2)
    assert list(zip(meta["category"], meta["feature_id"])) == list(zip(want_m["category"], want_m["feature_id"]))
    assert set(meta["category"]) <= {"fresh", "rotten", "plot", "code"}


# -- retrieval ------------------------------------------------------------------------------
def test_retrieval_by_features_and(ws_path, ws, concepts):
    from backend.analysis.retrieve import Condition, retrieve

    X = ws.latents("t", "max")
    B = (X[:, concepts] > 0).toarray()
    # two chosen features that fire together in some but not all documents
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if 0 < (B[:, a] & B[:, b]).sum() < X.shape[0]]
    fa, fb = concepts[pairs[0][0]], concepts[pairs[0][1]]
    at = app("retrieval", ws_path, ret_chosen=[fa, fb]).run()
    no_errors(at)
    assert at.radio(key="ret_mode").value == "and"
    want = retrieve(X, [Condition(fa), Condition(fb)], mode="and", top=20)
    got = frame_with(at, "n_matched", "score", "text")
    assert list(got["doc_id"]) == list(want["row"]) and np.allclose(got["score"], want["score"])
    assert (got["n_matched"] == 2).all()
    assert len(doc_html(at)) == min(5, len(want))
    # a threshold on one feature and OR mode
    t = float(np.median(X[:, fa].data))
    at.number_input(key=f"ret_min_{fa}").set_value(t)
    at.radio(key="ret_mode").set_value("or")
    at.run()
    no_errors(at)
    want = retrieve(X, [Condition(fa, t), Condition(fb)], mode="or", top=20)
    got = frame_with(at, "n_matched", "score", "text")
    assert list(got["doc_id"]) == list(want["row"]) and list(got["n_matched"]) == list(want["n_matched"])
    # count pooling compares thresholds against token counts
    at.selectbox(key="ret_pooling").set_value("count").run()
    no_errors(at)
    want = retrieve(ws.latents("t", "count"), [Condition(fa, t), Condition(fb)], mode="or", top=20)
    assert list(frame_with(at, "n_matched", "score", "text")["doc_id"]) == list(want["row"])
    # the export carries the chosen features' activation columns
    assert any(f"{len(want)} rows" in b.label for b in at.get("download_button"))


def test_retrieval_by_text_query(ws_path, ws):
    from backend import doc_embeddings
    from backend.analysis.retrieve import dense_retrieve, retrieve_by_vector

    query = "i love this movie"
    at = app("retrieval", ws_path, ret_text=query).run()
    no_errors(at)
    assert at.radio(key="ret_text_weighting").value == "idf"
    X = ws.latents("t", "max")
    want = ws.retrieve("t", query, top=10)
    assert want.equals(retrieve_by_vector(X, ws.embed_text(query), top=10).rename(columns={"row": "doc_id"}))
    got = frame_with(at, "n_overlap", "score")
    assert list(got["doc_id"]) == list(want["doc_id"]) and np.allclose(got["score"], want["score"])
    dense = ws.retrieve_dense("t", query, top=10)
    want_d = dense_retrieve(doc_embeddings.embed_query(query), doc_embeddings.doc_vectors(ws, ws.corpus("t")), top=10)
    assert list(dense["doc_id"]) == list(want_d["row"])
    got_d = frame_with(at, "cosine")
    assert list(got_d["doc_id"]) == list(dense["doc_id"]) and np.allclose(got_d["cosine"], dense["score"], atol=1e-5)
    assert int(got_d["doc_id"].iloc[0]) == 6  # the identical document is the nearest dense neighbour
    assert got_d["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert any("found by both methods" in c.value for c in at.caption)


def test_retrieval_shows_query_weights(ws_path, ws):
    """The query's features with their IDF weights, labels and a marked example; switching the weighting
    off gives the plain-cosine ranking, which differs here."""
    query = "i love this movie"
    at = app("retrieval", ws_path, ret_text=query).run()
    no_errors(at)
    weights = ws.query_features("t", query)
    got = frame_with(at, "idf", "weight")
    assert list(got["feature_id"]) == list(weights["feature_id"])
    assert np.allclose(got["weight"], weights["weight"]) and np.allclose(got["idf"], weights["idf"])
    assert (got["idf"] > 1).any() and list(got["doc_freq"]) == list(weights["doc_freq"])
    assert {"label", "evidence"} <= set(got.columns) and got["evidence"].str.contains("«").all()
    assert any("idf = ln((N + 1) / (df + 1)) + 1" in c.value for c in at.caption)

    at.radio(key="ret_text_weighting").set_value("none").run()
    no_errors(at)
    plain = ws.retrieve("t", query, top=10, weighting="none")
    assert list(plain["doc_id"]) != list(ws.retrieve("t", query, top=10)["doc_id"])
    ranked = frame_with(at, "n_overlap", "score")
    assert list(ranked["doc_id"]) == list(plain["doc_id"]) and np.allclose(ranked["score"], plain["score"])
    assert np.allclose(frame_with(at, "idf", "weight")["idf"], 1.0)


# -- the shared feature picker ---------------------------------------------------------------
def test_picker_by_label_phrase_and_example_text(ws_path, ws):
    from backend.labels import labels

    lab = labels(ws, "t")
    word = next(w for t in lab.values() for w in str(t).lower().split() if w.isalpha() and len(w) > 2)
    matching = sorted(f for f, t in lab.items() if word in str(t).lower())
    at = app("retrieval", ws_path).run()
    no_errors(at)
    at.radio(key="ret_pk_mode").set_value("phrase").run()
    at.text_input(key="ret_pk_phrase").set_value(word).run()
    no_errors(at)
    assert list(frame_with(at, "feature_id", "label", "docs")["feature_id"]) == matching
    at.button(key="ret_pk_add").click().run()
    no_errors(at)
    assert at.multiselect(key="ret_chosen").value == matching
    # features of an example text, strongest first; "Use only these" replaces the choice
    text = "python code with a function"
    acts = ws.embed_text(text)
    at.radio(key="ret_pk_mode").set_value("example").run()
    at.text_area(key="ret_pk_example").set_value(text).run()
    no_errors(at)
    shown = frame_with(at, "feature_id", "max_act")
    strongest = sorted(acts, key=lambda f: (-acts[f], f))
    assert list(shown["feature_id"]) == strongest[:30]
    at.number_input(key="ret_pk_n").set_value(2)
    at.button(key="ret_pk_replace").click().run()
    no_errors(at)
    assert at.multiselect(key="ret_chosen").value == strongest[:2]


XSS = "a film <img src=x onerror=alert(1)> <script>alert(1)</script> here"


def test_diff_two_corpora(tiny_workspace_file, tmp_path):
    """The main path: a second corpus uploaded next to the first, diffed against it."""
    from backend.analysis.diff import diff_features

    path = tmp_path / "two.duckdb"
    shutil.copy(tiny_workspace_file, path)
    ws2 = widgets.open_workspace(str(path))
    ws2.add_corpus("u", pd.DataFrame({"text": ["python code with a function", "error in the file data list",
                                               "return a value from the function", "the string and the number", XSS]}), "text")
    ws2.embed("u")
    at = app("diff", path).run()
    no_errors(at)
    assert at.radio(key="diff_mode").value == "corpora"
    assert at.selectbox(key="diff_a").value == "t" and at.selectbox(key="diff_b").value == "u"
    want = diff_features(ws2.latents("t"), ws2.latents("u"), lengths_a=ws2.store.doc_lengths("t"),
                         lengths_b=ws2.store.doc_lengths("u"))
    got = frame_with(at, "rank", "share_a")
    assert list(got["feature_id"]) == list(want["feature_id"])
    assert np.allclose(got["share_b"], want["share_b"]) and np.allclose(got["adj_diff"], want["adj_diff"])
    assert any("**A**: t (12 documents)" in c.value and "**B**: u (5 documents)" in c.value for c in at.caption)

    # Document text is untrusted: it reaches the page only escaped (highlights) or as plain text.
    at = app("retrieval", path, corpus="u", ret_text=XSS).run()
    no_errors(at)
    assert int(frame_with(at, "cosine")["doc_id"].iloc[0]) == 4
    docs = doc_html(at)
    assert any("&lt;" in h for h in docs)  # the markup characters arrive as entities
    markup = [h.value for h in at.html] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("<img" in m or "<script" in m for m in markup)


@pytest.mark.slow
def test_clustering_umap_maps(ws_path, ws, concepts):
    """UMAP (slow to import) runs only on its button; both maps hover with escaped snippets."""
    at = app("clustering", ws_path, clu_chosen=concepts).run()
    no_errors(at)
    assert not at.get("plotly_chart")
    at.button(key="clu_umap_btn").click().run()
    no_errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    at.selectbox(key="clu_color").set_value("label").run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 2


def diff_code_vs_rest(ws_path):
    """The diff page on one corpus split by its label column: "code" documents against the rest."""
    at = app("diff", ws_path).run()
    at.selectbox(key="diff_column").set_value("label")
    at.selectbox(key="diff_value_a").set_value("code")
    at.run()
    no_errors(at)
    return at


def test_diff_summary_shows_findings_of_both_sides_with_examples(ws_path, ws):
    """Issue 9: the summary lists distinct findings of each side, each with marked example documents."""
    at = diff_code_vs_rest(ws_path)
    res = ws.diff("t", column="label", value_a="code")
    summary = res.summary(n_per_side=4)
    assert {f.side for f in summary} == {"a", "b"}  # the planted corpus differs both ways
    lines = [m.value for m in at.markdown if m.value.startswith("More common in")]
    assert len(lines) == len(summary)
    assert any("**label = code**" in line for line in lines) and any("**label ≠ code**" in line for line in lines)
    for line, finding in zip(lines, summary):
        assert f"{100 * finding.share_a:.0f}% vs {100 * finding.share_b:.0f}%" in line
    assert len(doc_html(at)) >= len(summary)  # example documents with the firing tokens marked
    folded = [f for f in summary if f.n_features > 1]  # a finding's folded features, with their labels
    assert folded
    assert [e.label for e in at.expander if e.label.endswith("features of this finding")] == [
        f"The {f.n_features} features of this finding" for f in folded]
    keys = [b.key for b in at.get("download_button")]
    assert any(str(k).startswith("diff_findings_export") for k in keys)  # the findings can be exported
    assert any("Hypotheses need an LLM" in c.value and "not worth reading" in c.value for c in at.caption)


def label_tables(at: AppTest) -> list[pd.DataFrame]:
    """The label-on-demand tables (feature, LLM label, score) a page shows."""
    return [d.value for d in at.dataframe if list(d.value.columns) == ["feature_id", "label", "score"]]


class FakeLabeller:
    """A chat function standing in for the session's labeller: names each feature after the first token marked
    <<like this>> in the samples it is shown, and predicts 'yes' for every held-out sample."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, messages):
        import re

        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        if "Give a short label" in prompt:
            marked = re.search(r"<<(.+?)>>", prompt)
            word = re.sub(r"\W", "", marked.group(1)) if marked else ""
            return f"Label: concept of {word or 'something'} {len(self.prompts)}"
        n = len(re.findall(r"^Sample \d+:", prompt, flags=re.M))
        return "\n".join(f"{i + 1}: yes" for i in range(n))


@pytest.fixture()
def private_ws(tiny_workspace_file, tmp_path):
    """(path, Workspace) of a private copy of the tiny workspace, for tests that write labels."""
    path = tmp_path / "private.duckdb"
    shutil.copy(tiny_workspace_file, path)
    return path, widgets.open_workspace(str(path))


def test_diff_labels_its_findings_automatically_when_an_llm_is_configured(private_ws, monkeypatch):
    """Issue 9 / Findings round 2: with a labeller configured, the diff's findings are LLM-labelled as soon as the
    diff shows (their lead features, through `ws.label_findings`), the findings read the new labels, a table shows
    each offline label beside the LLM's, and a rerun asks the LLM nothing (the labels are cached)."""
    from backend import labels as L

    ws_path, ws = private_ws
    chat = FakeLabeller()
    monkeypatch.setattr(widgets, "labelling_llm", lambda _ws: (chat, "a fake labeller"))
    leads = list(dict.fromkeys(f.lead for f in ws.diff("t", column="label", value_a="code").summary(n_per_side=4)))
    assert len(leads) >= 2
    offline = {f: L.feature_labels(ws, f).query("source == 'auto'")["label"].iloc[0] for f in leads}
    at = diff_code_vs_rest(ws_path)
    assert not [b for b in at.button if b.key == "diff_findings_llm_label"]  # no button to press
    asked = len(chat.prompts)
    assert asked >= len(leads)  # a label (and a scoring call where held-out samples exist) per feature
    stored = L.stored_llm_labels(ws, ws.corpus("t"), leads)
    assert set(stored) == set(leads) and all(label.startswith("concept of") for label, _ in stored.values())

    summary = ws.diff("t", column="label", value_a="code").summary(n_per_side=4)
    lines = [m.value for m in at.markdown if m.value.startswith("More common in")]
    assert len(lines) == len(summary)
    for line, finding in zip(lines, summary):  # the findings read the LLM labels
        assert finding.label == stored[finding.lead][0] and widgets.md_escape(finding.label, max_len=160) in line
    (table,) = [d.value for d in at.dataframe if "offline_label" in d.value.columns]
    assert table["feature_id"].tolist() == [f.lead for f in summary]
    for row in table.itertuples(index=False):
        assert row.llm_label == stored[row.feature_id][0] and row.offline_label == offline[row.feature_id]
    assert any("beside the offline label" in c.value for c in at.caption)

    at.run()  # a rerun: every label is cached, nothing asked
    no_errors(at)
    assert len(chat.prompts) == asked


def test_label_on_demand_says_why_without_a_labeller(ws_path, ws):
    """The tiny reader is too small to label: no button, the reason instead."""
    at = diff_code_vs_rest(ws_path)
    assert not [b for b in at.button if b.key == "diff_findings_llm_label"]
    assert any(c.value.startswith("LLM labels:") and "not worth reading" in c.value for c in at.caption)


def test_retrieval_and_clustering_offer_labels_for_what_they_show(private_ws, monkeypatch):
    """The retrieval query's heaviest features and the clusters' describing features get the same button."""
    from backend import labels as L

    ws_path, ws = private_ws
    chat = FakeLabeller()
    monkeypatch.setattr(widgets, "labelling_llm", lambda _ws: (chat, "a fake labeller"))
    query = "i love this movie"
    at = app("retrieval", ws_path, ret_text=query).run()
    no_errors(at)
    heaviest = [int(f) for f in ws.query_features("t", query)["feature_id"].head(10)]
    at.button(key="ret_query_llm_label").click().run()
    no_errors(at)
    (table,) = label_tables(at)
    assert list(table["feature_id"]) == heaviest
    assert set(L.stored_llm_labels(ws, ws.corpus("t"), heaviest)) == set(heaviest)

    X = ws.latents("t", "max")
    counts = np.bincount(X.indices, minlength=X.shape[1])
    rare = [int(f) for f in np.flatnonzero((counts >= 2) & (counts <= 4))][:3]
    at = app("clustering", ws_path, clu_chosen=rare).run()
    no_errors(at)
    button = at.button(key="clu_describing_llm_label")
    result = ws.cluster("t", rare)
    describing = result.descriptions.query("diff > 0")["lead_feature"].astype(int).unique()
    assert button.label.startswith(f"Label these {len(describing)} feature")


# -- hybrid retrieval and topic clusters read through SAE features (added with the hybrid modes) ----------------
def test_retrieval_opens_with_the_hybrid_ranking_and_its_reasons(ws_path, ws):
    """A text query is answered first by ws.retrieve(mode="hybrid"): its order, ranks and why column, shown
    before the SAE and MiniLM rankings (which stay beside each other below)."""
    query = "i love this movie"
    at = app("retrieval", ws_path, ret_text=query).run()
    no_errors(at)
    want = ws.retrieve("t", query, top=10, mode="hybrid")
    got = frame_with(at, "fused", "why")
    assert list(got["doc_id"]) == list(want["doc_id"]) and np.allclose(got["fused"], want["score"])
    assert list(got["sae_rank"]) == list(want["sae_rank"]) and list(got["dense_rank"]) == list(want["dense_rank"])
    assert list(got["why"]) == list(want["why"]) and got["why"].str.len().gt(0).any()
    titles = [m.value for m in at.markdown]
    hybrid_at = titles.index("**Hybrid: SAE features and MiniLM fused**")
    assert hybrid_at < titles.index("**Each ranking on its own**")
    frames = [d.value for d in at.dataframe]
    first = next(i for i, f in enumerate(frames) if "fused" in f.columns)
    assert first < next(i for i, f in enumerate(frames) if "n_overlap" in f.columns)
    assert first < next(i for i, f in enumerate(frames) if "cosine" in f.columns)


def test_clustering_opens_on_minilm_topics_read_through_sae_features(ws_path, ws):
    """With no concept chosen the page shows MiniLM topics (what groups by topic best), each with the over- and
    under-represented SAE features ws.cluster_dense finds, and its typical documents; the concept clustering
    is the other tab."""
    at = app("clustering", ws_path).run()
    no_errors(at)
    k, support = at.number_input(key="clu_topics_k").value, at.number_input(key="clu_topics_support").value
    assert at.selectbox(key="clu_topics_method").value == "kmeans" and support == 2  # 12 documents
    want = ws.cluster_dense("t", k=k, min_support=support)
    assert int(metric(at, "Topic clusters")) == k == len(want.clusters)
    shown = [d.value for d in at.dataframe if {"in_topic", "rest", "z"} <= set(d.value.columns)]
    assert len(shown) == len(want.clusters)
    for cluster, got in zip(want.clusters["cluster"], shown):
        expect = want.features[want.features["cluster"] == cluster]
        assert list(got["feature_id"]) == list(expect["feature_id"]) and list(got["side"]) == list(expect["side"])
        assert np.allclose(got["in_topic"], expect["in_share"]) and np.allclose(got["z"], expect["z"])
    assert any(len(g) for g in shown) and {"over", "under"} <= set(pd.concat(shown)["side"])
    heads = [m.value for m in at.markdown if m.value.startswith("**Topic ")]
    assert [h.split(" · ")[0] for h in heads] == [f"**Topic {c}**" for c in want.clusters["cluster"]]
    abouts = [a for a in want.clusters["about"] if a]  # what each topic is about, as the notebook reads it
    assert abouts and all(any(f" · about *{widgets.md_escape(a, 160)}*" in h for h in heads) for a in abouts)
    typical = [c.value for c in at.caption if c.value.startswith("Typical: ")]
    first_docs = want.documents[want.documents["cluster"] == 0]["doc_id"].tolist()
    assert typical and typical[0].startswith(f"Typical: {first_docs[0]}: ")
    truth = ws.metadata("t", "label").to_numpy().astype(str)
    from backend.analysis.cluster import agreement

    assert float(metric(at, "Topics · ARI against label")) == pytest.approx(agreement(want.labels, truth)["ari"], abs=1e-3)
    assert any("Choose at least one feature" in i.value for i in at.info)  # the concepts tab waits for features
