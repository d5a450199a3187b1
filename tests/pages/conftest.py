"""AppTest fixtures: per-test copies of the session workspaces and a page runner."""
from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `from pages import widgets` inside the page scripts
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)  # the CPUs are shared; one thread avoids thrashing
TAG = re.compile(r"<[^>]+>")


@pytest.fixture(scope="session")
def tiny_pristine(tiny_workspace_file, tmp_path_factory) -> Path:
    """A copy of the tiny workspace taken before any page opens (and writes to) the original."""
    dst = tmp_path_factory.mktemp("tiny_pristine") / "tiny.duckdb"
    shutil.copy(tiny_workspace_file, dst)
    return dst


@pytest.fixture()
def tiny_ws_path(tiny_pristine, tmp_path) -> Path:
    """A private, writable copy of the tiny workspace (corpus 't', 12 labelled documents, 64 features)."""
    dst = tmp_path / "tiny.duckdb"
    shutil.copy(tiny_pristine, dst)
    return dst


@pytest.fixture(scope="module")
def real_ws_path(real_workspace_file, tmp_path_factory) -> Path:
    """A copy of the real default workspace (corpus 'demo', 40 movie reviews); skips without the SAE."""
    dst = tmp_path_factory.mktemp("real_copy") / "real.duckdb"
    shutil.copy(real_workspace_file, dst)
    return dst


@pytest.fixture()
def page() -> Callable:
    """page("features", ws_path, corpus, **state) -> an AppTest of pages/<name>.py with the session set up."""
    from streamlit.testing.v1 import AppTest

    def make(name: str, ws_path: Path | None = None, corpus: str | None = None, **state) -> AppTest:
        at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=180)
        if ws_path is not None:
            at.session_state["workspace_path"] = str(ws_path)
        if corpus is not None:
            at.session_state["corpus"] = corpus
        for k, v in state.items():
            at.session_state[k] = v
        return at

    return make


def rendered_markup(at) -> list[str]:
    """Everything the page sent as HTML or markdown (where unescaped markup could execute)."""
    out = [h.value for h in at.html] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    out += [e.value for e in at.error] + [e.value for e in at.success] + [e.value for e in at.info]
    return out


def doc_html(at) -> list[str]:
    """Bodies of the highlighted documents (widgets.highlight_html)."""
    return [h.value for h in at.html if "saedash-doc" in h.value]


def visible_text(markup: str) -> str:
    """The text a browser shows for highlight markup (tags dropped, entities decoded)."""
    return html.unescape(TAG.sub("", markup.replace("↵<br>", "↵")))


def assert_no_errors(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
