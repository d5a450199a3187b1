"""The home page (pages/home.py) and the app shell (app.py) under AppTest."""
from __future__ import annotations

import shutil
import time

from backend import demo
from backend.demo import DEMO_DOCS
from backend.jobs import REGISTRY
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


def test_real_workspace_summary(page, real_ws_path):
    at = page("home", real_ws_path).run()
    assert_no_errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reader model"] == "smollm2-135m-instruct" and metrics["Hook"] == "blocks.15.hook_resid_post"
    assert metrics["SAE features"] == f"{widgets.open_workspace(str(real_ws_path)).d_sae:,}"
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


def test_first_launch_shows_the_finishing_steps(tmp_path, tiny_pristine, monkeypatch):
    """After the embedding bar, the first launch shows each finishing step (statistics, labels, logit lens,
    document vectors) as it runs, not a bar stuck at 100%."""
    import threading

    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "workspaces"
    folder.mkdir()
    target = folder / "default.duckdb"
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(folder))
    monkeypatch.setattr(demo, "default_workspace_path", lambda: target)
    reached, go_on = threading.Event(), threading.Event()

    def fake_build(progress=None, n_docs=DEMO_DOCS, step_progress=None):
        from backend.jobs import Progress

        progress(Progress("movie-reviews", n_docs, n_docs, 1000, 1.0, status="done"))
        step_progress("labels", 0.6)  # what Workspace.finalize reports part-way
        reached.set()
        go_on.wait(30)
        step_progress("document vectors", 0.5)
        shutil.copy(tiny_pristine, target)

    monkeypatch.setattr(demo, "ensure_default_workspace", fake_build)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.button[0].click().run()
    assert reached.wait(30)
    at.run()
    assert_no_errors(at)
    bar = at.progress[0].proto
    assert "movie-reviews: finishing · labels" in bar.text and bar.value == 60
    go_on.set()
    job = REGISTRY.get(str(target), 0)
    job.thread.join(30)
    assert not job.running and job.error is None and job.progress.status == "done"
