"""The page shell (app.py + widgets.user_errors): a workspace held by another process is a message with a
Retry button, never a traceback, and the page recovers once the other process lets go (issue 12, problem 5)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from pages import widgets
from tests.pages.conftest import ROOT, assert_no_errors

HOLD = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.readline()"


@pytest.fixture(autouse=True)
def like_the_launcher(monkeypatch):
    """Every run goes through app.py (its navigation, sidebar and error shell), as `python app.py` arranges for
    the real server; left alone, AppTest would rerun a page of the pages/ folder on its own."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture()
def folder(tiny_pristine, tmp_path, monkeypatch):
    """A workspace folder the app lists, holding a copy of the tiny workspace."""
    path = tmp_path / "workspaces"
    path.mkdir()
    shutil.copy(tiny_pristine, path / "tiny.duckdb")
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(path))
    return path


def hold(path) -> subprocess.Popen:
    """Another process (a CLI command, say) that opens the workspace file for writing and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def let_go(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)


def app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def locked_message(at) -> str:
    assert not at.exception, [e.value for e in at.exception]  # no stException, no traceback
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert any(b.label == "Retry" for b in at.button)
    return errors[0]


def test_a_workspace_held_by_another_process_is_a_message_then_recovers(folder):
    path = folder / "tiny.duckdb"
    holder = hold(path)
    try:
        at = app().run()
        message = locked_message(at)
        assert f"process {holder.pid}" in message and "tiny.duckdb" in message
    finally:
        let_go(holder)
    next(b for b in at.button if b.label == "Retry").click().run()
    assert_no_errors(at)
    assert at.sidebar.selectbox[1].value == "t"
    assert {m.label: m.value for m in at.metric}["SAE features"] == "64"


def test_a_page_whose_idle_connection_was_taken_recovers(folder):
    """The dashboard opened the workspace, released it while idle, and a CLI command took it meanwhile."""
    path = folder / "tiny.duckdb"
    at = app().run()
    at.switch_page("pages/features.py").run()
    assert_no_errors(at)
    assert at.dataframe(key="feature_table").value is not None
    ws = widgets.open_workspace(str(path))
    ws.store.idle_release_s = 0.05
    time.sleep(0.1)
    assert ws.store.release_if_idle()
    holder = hold(path)
    try:
        at.run()
        assert f"process {holder.pid}" in locked_message(at)
    finally:
        let_go(holder)
    next(b for b in at.button if b.label == "Retry").click().run()
    assert_no_errors(at)
    assert len(at.dataframe(key="feature_table").value) > 0


def test_compare_saes_is_in_the_navigation(folder):
    """The Compare SAEs page is registered in app.py and opens through it (one workspace: it says it needs two)."""
    at = app().run()
    at.switch_page("pages/sae_compare.py").run()
    assert_no_errors(at)
    assert any(t.value == "Compare SAEs" for t in at.title)
    assert any("needs two workspaces" in i.value for i in at.info)
