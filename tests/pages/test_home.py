"""The home page (pages/home.py) and the app shell (app.py) under AppTest."""
from __future__ import annotations

import shutil
import time

from backend import demo
from backend.demo import DEMO_DOCS, FIRST_LAUNCH_STEPS
from backend.background import REGISTRY
from pages import widgets
from tests.pages.conftest import ROOT, assert_no_errors


def test_workspace_summary(page, tiny_ws_path):
    at = page("home", tiny_ws_path).run()
    assert_no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["SAE features"] == "64" and metrics["Hook"] == "blocks.1.hook_resid_post"
    corpora = at.dataframe[0].value
    row = corpora.set_index("name").loc["t"]
    assert (row["documents"], row["embedded"], row["status"]) == (12, 12, "ready")
    assert "label" in str(row["metadata"]) and row["tokens"] > 12
    ws = widgets.open_workspace(str(tiny_ws_path))
    assert REGISTRY.get(str(ws.path), ws.corpus("t").corpus_id, "feature-index") is None  # not indexed unasked


def test_real_workspace_summary(page, real_ws_path):
    at = page("home", real_ws_path).run()
    assert_no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reader model"] == "smollm2-135m-instruct" and metrics["Hook"] == "blocks.15.hook_resid_post"
    assert metrics["SAE features"] == f"{widgets.open_workspace(str(real_ws_path)).d_sae:,}"
    assert any("SAE: **lexical (smollm2-135m-instruct-l15-resid-post)**" in c.value for c in at.caption)
    row = at.dataframe[0].value.set_index("name").loc["demo"]
    assert (row["documents"], row["embedded"]) == (40, 40) and "movie" in str(row["metadata"])


def test_empty_workspace_points_to_the_corpora_page(page, tiny_ws_path):
    widgets.open_workspace(str(tiny_ws_path)).delete_corpus("t")
    at = page("home", tiny_ws_path).run()
    assert any("No corpus yet" in i.value for i in at.info) and not at.dataframe


def test_first_launch_builds_the_default_workspace(tmp_path, tiny_pristine, monkeypatch):
    """No workspace: the app offers to build the default one; the build runs as a background job with a
    progress bar, and once it is done the app opens the new workspace."""
    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "workspaces"
    folder.mkdir()
    target = folder / "default.duckdb"
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(folder))
    monkeypatch.setattr(demo, "default_workspace_path", lambda: target)

    def fake_build(progress=None, **kwargs):  # stands in for preparing the model and embedding the demo documents
        time.sleep(1.5)
        shutil.copy(tiny_pristine, target)

    monkeypatch.setattr(demo, "ensure_default_workspace", fake_build)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert_no_errors(at)
    assert [s.value for s in at.subheader] == ["First launch"]
    assert any("No workspace yet" in i.value for i in at.sidebar.info)
    at.button[0].click().run()
    job = REGISTRY.get(str(target), 0)
    assert job is not None and job.running
    assert at.progress and f"movie-reviews: 0/{DEMO_DOCS:,} documents" in at.progress[0].proto.text
    t0 = time.time()
    while job.running and time.time() - t0 < 30:
        time.sleep(0.1)
    assert not job.running and job.error is None
    # A fresh session (AppTest re-runs only the page of a st.navigation app, without app.py's sidebar)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert_no_errors(at)
    assert at.sidebar.selectbox[0].value == "default" and at.sidebar.selectbox[1].value == "t"
    assert {m.label: m.value for m in at.metric}["SAE features"] == "64"


def fake_build_until(target, tiny_pristine, reached, go_on):
    """A first-launch build that embeds, finishes two steps and stops part-way through labels until `go_on`.

    The workspace file exists from the start, as with the real build (Workspace.open_or_create)."""
    from backend.jobs import Progress

    def fake_build(progress=None, n_docs=DEMO_DOCS, step_progress=None):
        shutil.copy(tiny_pristine, target)
        progress(Progress("movie-reviews", n_docs, n_docs, 1000, 1.0, status="done"))
        for step in ("statistics", "contexts"):
            step_progress(step, 0.0)
            step_progress(step, 1.0)
        step_progress("labels", 0.6)  # what Workspace.finalize reports part-way through a step
        reached.set()
        go_on.wait(30)
        for step in ("labels", "logit lens"):
            step_progress(step, 1.0)

    return fake_build


def step_lines(at) -> dict[str, str]:
    """What the first-launch list shows for each step: done, a bar with its percentage, or waiting."""
    lines = {}
    for step in FIRST_LAUNCH_STEPS:
        if any(m.value == f":material/check_circle: {step}" for m in at.markdown):
            lines[step] = "done"
        elif any(p.proto.text.startswith(f"{step} · ") for p in at.progress):
            lines[step] = next(p.proto.text for p in at.progress if p.proto.text.startswith(f"{step} · "))
        elif any(c.value == f":material/schedule: {step}" for c in at.caption):
            lines[step] = "waiting"
    return lines


def test_first_launch_shows_each_step_with_its_own_progress(tmp_path, tiny_pristine, monkeypatch):
    """After the embedding bar, the first launch lists every step (statistics, contexts, labels, logit lens):
    the finished ones, the running one with its own bar, the ones still to come; a
    browser reload while it runs shows the same list, not the half-built workspace."""
    import threading

    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "workspaces"
    folder.mkdir()
    target = folder / "default.duckdb"
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(folder))
    monkeypatch.setattr(demo, "default_workspace_path", lambda: target)
    reached, go_on = threading.Event(), threading.Event()
    monkeypatch.setattr(demo, "ensure_default_workspace", fake_build_until(target, tiny_pristine, reached, go_on))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.button[0].click().run()
    assert reached.wait(30)
    try:
        at.run()
        assert_no_errors(at)
        expected = {"statistics": "done", "contexts": "done", "labels": "labels · 60%", "logit lens": "waiting"}
        assert step_lines(at) == expected
        bars = [(p.proto.text, p.proto.value) for p in at.progress]
        assert bars == [(f"movie-reviews: {DEMO_DOCS:,}/{DEMO_DOCS:,} documents embedded", 100), ("labels · 60%", 60)]
        reload = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()  # a new browser session
        assert_no_errors(reload)
        assert [s.value for s in reload.subheader] == ["First launch"] and not reload.metric
        assert step_lines(reload) == expected
    finally:
        go_on.set()
    job = REGISTRY.get(str(target), 0)
    job.thread.join(30)
    assert not job.running and job.error is None and job.progress.status == "done"
    at.run()
    assert_no_errors(at)
    assert {m.label: m.value for m in at.metric}["SAE features"] == "64"  # the build is done: the workspace opens


def test_default_workspace_builds_its_search_index_in_the_background(page, tmp_path, tiny_pristine, monkeypatch):
    """Once the default workspace is ready, opening the dashboard starts its MiniLM document vectors and then
    its feature-search index as background jobs (one each per corpus) and says how far they are; a user's own
    workspace is not indexed unasked."""
    from backend.doc_embeddings import is_complete
    from backend.search import feature_index_status

    target = tmp_path / "default.duckdb"
    shutil.copy(tiny_pristine, target)
    monkeypatch.setattr(demo, "default_workspace_path", lambda: target)
    ws = widgets.open_workspace(str(target))
    ws.rename_corpus("t", demo.DEMO_CORPUS)
    corpus = ws.corpus(demo.DEMO_CORPUS)
    at = page("home", target).run()
    assert_no_errors(at)
    vectors = REGISTRY.get(str(ws.path), corpus.corpus_id, "doc-vectors")
    assert vectors is not None
    assert any("MiniLM document vectors of" in c.value for c in at.caption) or not vectors.running
    vectors.thread.join(120)
    assert vectors.error is None and is_complete(ws, corpus)
    job = REGISTRY.get(str(ws.path), corpus.corpus_id, "feature-index")  # the vectors job starts the index
    assert job is not None
    at.run()
    assert any("Search by meaning on" in c.value for c in at.caption) or not job.running
    job.thread.join(120)
    assert job.error is None and feature_index_status(ws, corpus).complete
    at.run()
    assert REGISTRY.get(str(ws.path), corpus.corpus_id, "feature-index") is job  # complete: not started again
    assert not any("Search by meaning on" in c.value for c in at.caption)
