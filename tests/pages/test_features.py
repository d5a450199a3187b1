"""The feature browser page (pages/features.py) under AppTest, against the backend's own answers."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from backend import features as F
from backend import label_reference
from backend import labels as L
from pages import widgets
from tests.fake_llm import FakeChatServer, last_prompt
from tests.tiny import WORDS
from tests.pages.conftest import assert_no_errors, doc_html, rendered_markup, visible_text

OUTLINE = "outline: 2px solid"
XSS = ["great <script>alert(1)</script> movie", "a film <img src=x onerror=alert(1)> here", "the plot of the story"]


def ws_of(path):
    """The very Workspace object the page uses (widgets.open_workspace is a process-wide cache_resource)."""
    return widgets.open_workspace(str(path))


def table(at) -> pd.DataFrame:
    return at.dataframe(key="feature_table").value


def opened(at) -> int | None:
    heads = [s.value for s in at.subheader if s.value.startswith("Feature #")]
    return int(heads[0].removeprefix("Feature #")) if heads else None


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def tiny_view(text: str) -> str:
    """How the tiny word-level tokenizer shows a plain-words text (unknown words become [UNK])."""
    return " ".join(w if w in WORDS else "[UNK]" for w in text.split())


def test_table_lists_live_features_and_filters(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    X = ws.latents("t").tocsc()
    n_active = np.diff(X.indptr)
    density = n_active / X.shape[0]
    live = set(np.flatnonzero(n_active > 0).tolist())
    assert 0 < len(live) < ws.d_sae  # the tiny SAE has dead features on this corpus

    near_constant = {f for f in live if density[f] >= F.NEAR_CONSTANT_DENSITY}
    assert near_constant and live - near_constant  # the tiny corpus has both kinds

    # the table opens on informative features: by specificity, near-constant features hidden behind a toggle
    at = page("features", tiny_ws_path, "t").run()
    assert_no_errors(at)
    df = table(at)
    assert at.selectbox(key="sort_by").value == "specificity" and at.toggle(key="show_near_constant").value is False
    assert "≥ 50% of documents" in at.toggle(key="show_near_constant").label
    assert set(df["feature_id"]) == live - near_constant
    want = F.feature_table(ws, "t", sort_by="specificity", hide_near_constant=True)
    assert list(df["feature_id"]) == list(want["feature_id"])
    assert list(df["specificity"]) == sorted(df["specificity"], reverse=True)
    assert df["specificity"].nunique() > 1  # the order says something
    assert "label_score" in df.columns and df["label_score"].notna().any()
    assert opened(at) is None and any("Select a feature" in i.value for i in at.info)

    at.toggle(key="show_near_constant").set_value(True).run()
    df = table(at)
    assert len(df) == len(live) and set(df["feature_id"]) == live
    assert list(df["specificity"]) == sorted(df["specificity"], reverse=True)
    assert list(df["feature_id"]) == list(F.feature_table(ws, "t", sort_by="specificity")["feature_id"])

    at.selectbox(key="sort_by").set_value("density").run()
    assert list(table(at)["density"]) == sorted(table(at)["density"], reverse=True)

    at.toggle(key="hide_dead").set_value(False).run()
    assert len(table(at)) == ws.d_sae

    at.slider(key="density_range").set_value((0.5, 1.0)).run()
    df = table(at)
    assert set(df["feature_id"]) == set(np.flatnonzero(density >= 0.5).tolist())

    at.selectbox(key="sort_by").set_value("max_act")
    at.toggle(key="sort_desc").set_value(False).run()
    df = table(at)
    assert list(df["max_act"]) == sorted(df["max_act"])

    tokens = df["top_tokens"].dropna()
    word = tokens.iloc[0].split(" · ")[0]
    at.text_input(key="table_filter").input(word).run()
    df = table(at)
    assert len(df) > 0 and all(word in f"{a} {b}" for a, b in zip(df["label"].fillna(""), df["top_tokens"].fillna("")))


def test_selecting_a_row_opens_it_and_a_stale_selection_does_not_reopen(page, tiny_ws_path):
    at = page("features", tiny_ws_path, "t").run()
    row = 2
    fid = int(table(at)["feature_id"].iloc[row])
    at.session_state["feature_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    assert_no_errors(at)
    assert opened(at) == fid and at.query_params["feature"] == str(fid)

    other = next(b for b in at.button if b.label.startswith("Open #"))  # a correlated feature
    target = int(other.label.removeprefix("Open #"))
    other.click().run()
    assert opened(at) == target != fid  # the table still has row 2 selected, but that is not a new selection
    at.run()
    assert opened(at) == target
    at.toggle(key="hide_dead").set_value(False).run()  # new rows under the old selection open nothing
    assert opened(at) == target
    at.session_state["feature_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert opened(at) == int(table(at)["feature_id"].iloc[0])


def test_detail_matches_backend_and_highlights_top_documents(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    fid = int(F.feature_table(ws, "t", sort_by="n_docs_active").iloc[0]["feature_id"])
    d = F.feature_detail(ws, "t", fid)
    at = page("features", tiny_ws_path, "t", feature_id=fid).run()
    assert_no_errors(at)
    assert opened(at) == fid
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Density"] == f"{100 * d.stats['density']:.2f}%"
    assert metrics["Documents where it fires"] == f"{d.stats['n_docs_active']} / {d.stats['n_docs']}"
    assert metrics["Max activation"] == f"{d.stats['max_act']:.3f}"

    docs = doc_html(at)
    n_show = min(5, len(d.top_documents))
    assert len(docs) == n_show
    for body, row in zip(docs, d.top_documents.head(n_show).itertuples()):
        # the document's text, token by token, with its strongest token outlined
        assert squash(visible_text(body)) == squash(tiny_view(row.text))
        assert body.count(OUTLINE) == 1
        titles = [float(t) for t in re.findall(r'title="([0-9.]+)"', body)]
        marked = re.search(rf'<span class="tok" style="[^"]*{OUTLINE}[^"]*" title="([0-9.]+)"', body)
        assert float(marked.group(1)) == max(titles) == pytest.approx(row.max_act, abs=2e-3)
    assert "rgba(255,140,0,0.00)" not in re.search(rf'style="([^"]*{OUTLINE}[^"]*)"', docs[0]).group(1)

    # histogram + metadata chart, top tokens, logit lens, correlated features
    assert len(at.get("plotly_chart")) == 2
    frames = [f.value for f in at.dataframe]
    assert any(list(f.columns) == ["token", "count", "mean_act"] and list(f["token"]) == list(d.top_tokens["token"])
               for f in frames)
    assert any(list(f.columns) == ["token", "logit"] and list(f["token"]) == [t for t, _ in d.promoted] for f in frames)
    assert any(list(f.columns) == ["token", "logit"] and list(f["token"]) == [t for t, _ in d.suppressed] for f in frames)
    corr = next(f for f in frames if "npmi" in f.columns)
    assert list(corr["feature_id"]) == list(d.correlated["feature_id"])
    assert [b.label for b in at.button if b.label.startswith("Open #")] == [f"Open #{f}" for f in d.correlated["feature_id"].head(6)]

    # metadata breakdown over the corpus's `label` column, as the backend computes it
    assert at.selectbox(key="meta_column").options == ["label"]
    bd = next(f for f in frames if "lift" in f.columns)
    want = F.metadata_breakdown(ws, "t", fid, "label")
    assert list(bd["value"]) == list(want["value"]) and list(bd["n_active"]) == list(want["n_active"])
    assert set(want["value"]) == {"code", "fresh", "plot", "rotten"}

    # more documents on request
    at.slider(key="n_highlight").set_value(len(d.top_documents)).run()
    assert len(doc_html(at)) == len(d.top_documents)


def test_hand_label_wins_and_refreshes_the_table(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    fid = int(F.feature_table(ws, "t", sort_by="specificity", hide_near_constant=True).iloc[0]["feature_id"])  # shown
    at = page("features", tiny_ws_path, "t", feature_id=fid).run()
    assert table(at).set_index("feature_id").loc[fid, "label"] != "negation <b>words</b>"  # cached before the edit
    at.text_input(key=f"hand_label_text_{fid}").input("negation <b>words</b>")
    next(b for b in at.button if b.label == "Save hand label").click().run()
    assert_no_errors(at)
    assert L.labels(ws, "t", [fid]) == {fid: "negation <b>words</b>"}
    assert any("Saved the hand label" in s.value for s in at.success)
    assert "negation &lt;b&gt;words&lt;/b&gt;" in at.html[0].value  # the title, escaped
    assert table(at).set_index("feature_id").loc[fid, "label"] == "negation <b>words</b>"
    # removing it brings the automatic label back
    at.text_input(key=f"hand_label_text_{fid}").input("")
    next(b for b in at.button if b.label == "Save hand label").click().run()
    assert L.labels(ws, "t", [fid])[fid] != "negation <b>words</b>"
    assert table(at).set_index("feature_id").loc[fid, "label"] == L.labels(ws, "t", [fid])[fid]


def test_a_label_that_names_nothing_says_how_weakly_the_feature_fires(page, tiny_ws_path):
    """Under a `varied tokens` label the page says so and where the feature's strongest activation stands among the
    corpus's live features (what feature_detail computes); a label that names something gets no such note."""
    ws = ws_of(tiny_ws_path)
    fids = F.feature_table(ws, "t", sort_by="n_docs_active")["feature_id"].astype(int).tolist()
    fid, other = fids[0], fids[1]
    stats = ws.store.query_df("SELECT max_act FROM feature_stats WHERE corpus_id = ? AND n_docs_active > 0",
                              [ws.corpus("t").corpus_id])["max_act"]
    d = F.feature_detail(ws, "t", fid)
    assert d.weaker_share == pytest.approx(float((stats < d.stats["max_act"]).mean()))
    try:
        L.set_hand_label(ws, fid, "varied tokens: a / b / c")
        L.set_hand_label(ws, other, "negation words")
        notes = {}
        for f in (fid, other):
            at = page("features", tiny_ws_path, "t", feature_id=f).run()
            assert_no_errors(at)
            notes[f] = [c.value for c in at.caption if "share nothing the offline labeller" in c.value]
        assert len(notes[fid]) == 1 and not notes[other], notes
        assert f"above {100 * d.weaker_share:.0f}% of this corpus's features'" in notes[fid][0]
    finally:
        L.set_hand_label(ws, fid, None)
        L.set_hand_label(ws, other, None)


def test_search_by_meaning_finds_python(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    live = F.feature_table(ws, "t")["feature_id"].astype(int).tolist()
    python, movie = live[3], live[4]
    L.set_hand_label(ws, python, "python code")
    L.set_hand_label(ws, movie, "movie film")
    at = page("features", tiny_ws_path, "t").run()
    at.text_input(key="meaning_query").input("python")
    next(b for b in at.button if b.label == "Search").click().run()
    assert_no_errors(at)
    hits = at.dataframe(key="meaning_hits").value
    assert int(hits["feature_id"].iloc[0]) == python and hits["label"].iloc[0] == "python code"
    assert list(hits["score"]) == sorted(hits["score"], reverse=True)
    assert opened(at) is None
    at.session_state["meaning_hits"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert opened(at) == python


def test_search_by_example_lists_features_with_highlighting(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    text = "python code with a function that will return a value"  # `will` is unknown to the tiny tokenizer
    want = F.features_of_text(ws, text, 20, corpus="t").features
    at = page("features", tiny_ws_path, "t").run()
    at.text_area(key="example_text").input(text)
    next(b for b in at.button if b.label == "Find features").click().run()
    assert_no_errors(at)
    hits = at.dataframe(key="example_hits").value
    assert list(hits["feature_id"]) == list(want["feature_id"]) and len(hits) > 0
    assert list(hits["max_act"]) == sorted(hits["max_act"], reverse=True)
    body = doc_html(at)[0]  # nothing is opened yet, so the only highlighted text is the example
    assert squash(visible_text(body)).endswith(squash(tiny_view(text)))
    assert body.count(OUTLINE) == 1
    second = int(want["feature_id"].iloc[1])
    at.selectbox(key="example_highlight").set_value(second).run()
    titles = [float(t) for t in re.findall(r'title="([0-9.]+)"', doc_html(at)[0])]
    assert max(titles) == pytest.approx(float(want["max_act"].iloc[1]), abs=2e-3)
    at.button(key="example_open").click().run()
    assert opened(at) == second


def label_everything(body: dict) -> str:
    """Labels every feature '<i>python</i> stuff' and answers 'yes' to every sample (a fake server's answer)."""
    prompt = last_prompt(body)
    n = len(re.findall(r"^Sample \d+:", prompt, flags=re.M))
    return "Label: <i>python</i> stuff" if "Give a short label" in prompt else "\n".join(f"{i + 1}: yes" for i in range(n))


def test_llm_label_button_only_when_configured(page, tiny_ws_path, monkeypatch):
    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    ws = ws_of(tiny_ws_path)
    fid = int(F.feature_table(ws, "t").iloc[0]["feature_id"])
    at = page("features", tiny_ws_path, "t", feature_id=fid).run()
    assert "Label with an LLM" not in [b.label for b in at.button]

    server = FakeChatServer(label_everything)
    try:
        monkeypatch.setenv("SAEDASH_LLM_BASE_URL", server.url)
        monkeypatch.setenv("SAEDASH_LLM_MODEL", "fake")
        at.run()
        at.button(key=f"llm_label_{fid}").click().run()
    finally:
        server.close()
    assert_no_errors(at)
    rows = L.feature_labels(ws, fid)
    assert rows.loc[rows["source"] == "llm", "label"].tolist() == ["<i>python</i> stuff"]
    assert "&lt;i&gt;python&lt;/i&gt; stuff" in at.html[0].value
    assert any("LLM label of feature" in s.value for s in at.success)


def test_llm_label_offers_the_reader_model(page, tiny_ws_path, monkeypatch):
    """Without a server, the per-feature LLM label uses the reader model when it can serve (here: a stand-in),
    and says why not when it cannot (the tiny reader is too small)."""
    import backend.reader_llm as reader_llm

    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY", "SAEDASH_LLM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    ws = ws_of(tiny_ws_path)
    fid = int(F.feature_table(ws, "t", sort_by="specificity", hide_near_constant=True).iloc[0]["feature_id"])
    at = page("features", tiny_ws_path, "t", feature_id=fid).run()
    assert not [b for b in at.button if b.key == f"llm_label_{fid}"]
    assert any(c.value.startswith("LLM labels:") and "not worth reading" in c.value for c in at.caption)

    prompts = []

    def reader_chat(reader, *args, **kwargs):
        def chat(messages):
            prompts.append(messages[-1]["content"])
            return label_everything({"messages": messages})
        return chat

    monkeypatch.setattr(reader_llm, "reader_llm_status",
                        lambda reader, *a: reader_llm.ReaderLLMStatus(True, "The reader model writes the labels.", 2e9))
    monkeypatch.setattr(reader_llm, "reader_chat", reader_chat)
    at.run()
    button = at.button(key=f"llm_label_{fid}")
    assert "reader model" in button.help
    button.click().run()
    assert_no_errors(at)
    assert prompts and "<<" in prompts[0]
    rows = L.feature_labels(ws, fid)
    assert rows.loc[rows["source"] == "llm", "label"].tolist() == ["<i>python</i> stuff"]
    before = len(prompts)
    at.button(key=f"llm_label_{fid}").click().run()  # asked for again: labels again (the cache is for pages' batches)
    assert len(prompts) > before


def test_llm_settings_panel_configures_the_endpoint(page, tiny_ws_path, monkeypatch, closed_url):
    for var in ("SAEDASH_LLM_BASE_URL", "SAEDASH_LLM_MODEL", "SAEDASH_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    fid = int(F.feature_table(ws_of(tiny_ws_path), "t").iloc[0]["feature_id"])
    at = page("features", tiny_ws_path, "t", feature_id=fid).run()
    url, model, key = at.text_input[-3:]
    url.input(closed_url)
    model.input("m")
    key.input("sk-test")
    next(b for b in at.button if b.label == "Use these settings").click().run()
    # the settings configure this session's endpoint (issue 12: kept in the session, not the server's environment)
    assert session_config(at) == L.LLMConfig(closed_url, "m", "sk-test")
    assert L.LLMConfig.from_env() is None
    assert at.button(key=f"llm_label_{fid}")
    at.button(key=f"llm_label_{fid}").click().run()  # nothing listens there: a clear error, nothing stored
    assert any("LLM labelling failed" in e.value and "Cannot reach" in e.value for e in at.error)
    assert "llm" not in set(L.feature_labels(ws_of(tiny_ws_path), fid)["source"])


def session_config(at):
    """The LLM endpoint an AppTest session uses (the operator's config with the session's own settings)."""
    entered = at.session_state["llm_session"] if "llm_session" in at.session_state else None
    operator = L.operator_llm_config()
    return L.session_llm_config(operator, **entered) if entered else operator


def set_llm(at, url: str, model: str, key: str):
    url_in, model_in, key_in = at.text_input[-3:]
    url_in.input(url)
    model_in.input(model)
    key_in.input(key)
    return next(b for b in at.button if b.label == "Use these settings").click().run()


def test_llm_key_stays_with_its_session_and_its_url(page, tiny_ws_path, monkeypatch):
    """Issue 12, problem 1: session A's key and the operator's key never reach session B's server; the page
    never writes the server's environment and never shows a key."""
    operator, server_a, listener_b = (FakeChatServer(label_everything) for _ in range(3))
    url = lambda s: s.url  # noqa: E731
    monkeypatch.setenv("SAEDASH_LLM_BASE_URL", url(operator))
    monkeypatch.setenv("SAEDASH_LLM_MODEL", "fake")
    monkeypatch.setenv("SAEDASH_LLM_API_KEY", "sk-operator")
    environ_before = dict(os.environ)
    fid = int(F.feature_table(ws_of(tiny_ws_path), "t").iloc[0]["feature_id"])
    try:
        session_a = set_llm(page("features", tiny_ws_path, "t", feature_id=fid).run(), url(server_a), "fake", "sk-A")
        assert dict(os.environ) == environ_before  # nothing leaks through the process environment
        session_a.button(key=f"llm_label_{fid}").click().run()
        assert_no_errors(session_a)
        assert server_a.seen_auth and set(server_a.seen_auth) == {"Bearer sk-A"}

        session_b = set_llm(page("features", tiny_ws_path, "t", feature_id=fid).run(), url(listener_b), "fake", "")
        session_b.button(key=f"llm_label_{fid}").click().run()
        assert_no_errors(session_b)
        assert listener_b.seen_auth and set(listener_b.seen_auth) == {None}  # neither A's key nor the operator's

        session_c = page("features", tiny_ws_path, "t", feature_id=fid).run()  # no settings: the operator's endpoint
        session_c.button(key=f"llm_label_{fid}").click().run()
        assert operator.seen_auth and set(operator.seen_auth) == {"Bearer sk-operator"}
    finally:
        for server in (operator, server_a, listener_b):
            server.close()
    for at in (session_a, session_b, session_c):  # the key field is always empty; no key is ever rendered
        assert at.text_input[-1].value == ""
        assert not any("sk-" in m for m in rendered_markup(at))
        assert not any("sk-" in str(w.value) for w in at.text_input)
    assert any("an API key is set" in c.value for c in session_a.caption)
    assert any("no API key is sent" in c.value for c in session_b.caption)
    assert dict(os.environ) == environ_before


def test_without_an_embedded_corpus_the_page_says_what_to_do(page, tiny_ws_path, tmp_path):
    at = page("features").run()
    assert any("No workspace is open" in i.value for i in at.info) and not at.dataframe
    ws = ws_of(tiny_ws_path)
    ws.add_corpus("pending", pd.DataFrame({"text": ["not embedded yet"]}), "text")
    at = page("features", tiny_ws_path, "pending").run()
    assert any("Pick an embedded corpus" in i.value for i in at.info) and not at.dataframe
    at = page("features", tiny_ws_path, "t", feature_id=ws.d_sae + 5).run()
    assert any(f"Feature {ws.d_sae + 5} does not exist" in w.value for w in at.warning)


def test_document_markup_is_escaped_everywhere(page, tiny_ws_path):
    """Documents holding <script> and <img onerror> show as text in the detail and in search by example."""
    ws = ws_of(tiny_ws_path)
    ws.add_corpus("x", pd.DataFrame({"text": XSS, "label": ["<b>bold</b>", "<img src=x onerror=alert(2)>", "ok"]}), "text")
    ws.embed("x")
    stats = F.feature_table(ws, "x", sort_by="n_docs_active")
    fid = int(stats.iloc[0]["feature_id"])
    assert int(stats.iloc[0]["n_docs_active"]) == 3  # fires on every document, so all three are shown
    at = page("features", tiny_ws_path, "x", feature_id=fid).run()
    assert_no_errors(at)
    at.text_area(key="example_text").input(XSS[0] + " " + XSS[1])
    next(b for b in at.button if b.label == "Find features").click().run()
    assert_no_errors(at)
    at.toggle(key="highlight_quantiles").set_value(True).run()

    docs = doc_html(at)
    assert len(docs) >= 4  # the example + three top documents (+ quantile samples)
    for markup in rendered_markup(at):
        assert "<script" not in markup.lower() and "<img" not in markup.lower(), markup[:200]
    # what the browser shows: the markup as text (the tiny tokenizer reads unknown words like `1` as [UNK])
    escaped = [squash(re.sub(r'<span class="tok"[^>]*>|</span>|<div[^>]*>|</div>', "", b)) for b in docs]
    assert sum("&lt;script&gt;alert(" in e for e in escaped) >= 2  # the example and the top document
    assert sum("&lt;imgsrc=" in e and "onerror=alert(" in e for e in escaped) >= 2
    # the metadata chart gets escaped category names (Plotly renders some tags in labels)
    meta = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = [x for trace in meta["data"] for x in trace["x"]]
    assert "&lt;b&gt;bold&lt;/b&gt;" in names and not any("<" in n for n in names)


def test_real_workspace_table_detail_and_example(page, real_ws_path):
    ws = ws_of(real_ws_path)
    X = ws.latents("demo").tocsc()
    live = int((np.diff(X.indptr) > 0).sum())
    informative = int(((np.diff(X.indptr) > 0) & (np.diff(X.indptr) / X.shape[0] < F.NEAR_CONSTANT_DENSITY)).sum())
    at = page("features", real_ws_path, "demo").run(timeout=600)
    assert_no_errors(at)
    assert len(table(at)) == informative and live < ws.d_sae  # near-constant features hidden by default

    fid = int(table(at)["feature_id"].iloc[len(table(at)) // 10])  # a moderately common feature
    d = F.feature_detail(ws, "demo", fid)
    at.session_state["feature_id"] = fid
    at.run(timeout=600)
    assert_no_errors(at)
    assert opened(at) == fid
    words = label_reference.for_sae(ws.settings.sae_source, ws.settings.sae_sha256).words.get(fid, ())
    assert d.elsewhere == words  # the shipped SAE's reference words, under the label
    notes = [c.value for c in at.caption if "SAE's reference text" in c.value]
    assert len(notes) == (1 if words else 0) and all(w in notes[0] for w in words), notes
    docs = doc_html(at)
    assert len(docs) == min(5, len(d.top_documents))
    alnum = lambda t: re.sub(r"[^a-z0-9]", "", t.lower())  # noqa: E731  (byte-level tokens may split accents)
    assert alnum(d.top_documents["text"].iloc[0])[:60] in alnum(visible_text(docs[0]))
    assert docs[0].count(OUTLINE) == 1
    assert at.selectbox(key="meta_column").options == ["label", "movie"]
    assert set(at.dataframe[-1].value["value"]) <= {"fresh", "rotten", "plot"}

    at.text_area(key="example_text").input("What a wonderful, moving film. I loved every minute.")
    next(b for b in at.button if b.label == "Find features").click().run(timeout=600)
    assert_no_errors(at)
    hits = at.dataframe(key="example_hits").value
    assert len(hits) == 20 and list(hits["max_act"]) == sorted(hits["max_act"], reverse=True)
