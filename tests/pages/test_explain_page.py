"""AppTest checks of the Explain-a-column page (tabs "Explain a column" and "Trends") on a tiny-model workspace
with numeric, categorical and date columns, each compared with the façade's own answer (`ws.explain`,
`ws.trend`) on the same input."""
from __future__ import annotations

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
N_DOCS = 80


@pytest.fixture(scope="module")
def ws_path(tmp_path_factory, tiny_reader, tiny_sae, tiny_sae_dir) -> Path:
    """Corpus 'c': `votes` (numbers, some missing or unparseable), `label` (one value holds markup) and `date`
    (years, a word rising over them); corpus 'plain' has no metadata column."""
    from backend.workspace import Workspace, WorkspaceSpec

    rng = np.random.default_rng(0)
    words = "the movie film plot story actor great good bad terrible boring funny love hate music ending".split()
    years = 2018 + np.arange(N_DOCS) % 5
    texts = [" ".join(rng.choice(words, 8)) + (" python code" if rng.random() < (y - 2017) / 6 else "") for y in years]
    votes = [str(t.count("great") * 10 + t.count("bad")) for t in texts]
    votes[:6] = [None, "", "lots", None, "n/a", None]
    labels = [("fresh", "rotten", "<i>plot</i>")[i % 3] for i in range(N_DOCS)]
    path = tmp_path_factory.mktemp("explain_page") / "cols.duckdb"
    ws = Workspace.create(path, WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0),
                          device="cpu", reader=tiny_reader, sae=tiny_sae)
    ws.add_corpus("c", pd.DataFrame({"text": texts, "votes": votes, "label": labels,
                                     "date": [f"{y}-03-0{1 + i % 9}" for i, y in enumerate(years)]}), "text")
    ws.embed("c")
    ws.add_corpus("plain", pd.DataFrame({"text": texts[:10]}), "text")
    ws.embed("plain")
    ws.close()
    return path


@pytest.fixture(scope="module")
def ws(ws_path):
    """The very Workspace object the page uses (widgets.open_workspace is a process-wide cache_resource)."""
    return widgets.open_workspace(str(ws_path))


def app(ws_path: Path, corpus: str = "c", **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "explain.py"), default_timeout=180)
    at.session_state["workspace_path"] = str(ws_path)
    at.session_state["corpus"] = corpus
    for k, v in state.items():
        at.session_state[k] = v
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def finding_lines(at: AppTest, tab: str = "explain") -> list[str]:
    """The finding lines of one tab (both tabs render in a run): "Goes with …" or "Rising/Falling: …"."""
    heads = ("Goes with",) if tab == "explain" else ("Rising", "Falling")
    return [m.value for m in at.markdown if m.value.startswith("**#") and m.value.split("** ", 1)[1].startswith(heads)]


def test_explain_tab_shows_what_ws_explain_returns(ws_path, ws):
    at = app(ws_path, explain_column="votes").run()
    no_errors(at)
    res = ws.explain("c", "votes", baseline="stored", min_docs=5, test_size=0.5, seed=0)
    assert (res.n_missing, res.n_unparseable) == (4, 2)
    assert any("4 have no value" in i.value and "2 have a value that is not a number" in i.value for i in at.info)
    lines = finding_lines(at)
    summary = res.summary(n_per_direction=4)
    assert len(lines) == len(summary) > 0
    for line, f in zip(lines, summary):
        assert widgets.md_escape(f.sentence, max_len=240) in line and f"q = {f.q_value:.2g}" in line
    assert [m.value for m in at.metric][0] == f"{res.score:.3f}"
    assert at.get("plotly_chart")  # scores and findings charts
    assert len([h for h in at.html if "saedash-doc" in h.value]) >= len(summary)  # marked examples
    keys = [str(b.key) for b in at.get("download_button")]
    assert any(k.startswith("explain_findings_export") for k in keys)


def test_explain_a_categorical_column_escapes_its_values(ws_path, ws):
    at = app(ws_path, explain_column="label").run()
    no_errors(at)
    res = ws.explain("c", "label", baseline="stored")
    assert res.kind == "categorical" and "<i>plot</i>" in res.directions
    lines = finding_lines(at)
    assert len(lines) == len(res.summary(n_per_direction=4))
    markup = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert not any("<i>plot</i>" in text for text in markup)
    assert any("\\<i\\>plot\\</i\\>" in text or "&lt;i&gt;" in text for text in markup)


def test_explain_exports_the_documents_behind_a_finding(ws_path, ws):
    at = app(ws_path, explain_column="votes").run()
    no_errors(at)
    res = ws.explain("c", "votes", baseline="stored")
    at.selectbox(key="explain_export_pick").set_value(0).run()
    no_errors(at)
    n = len(res.documents(0))
    assert any(f"({n:,} rows)" in b.label for b in at.get("download_button")), [b.label for b in at.get("download_button")]


def test_trends_tab_shows_what_ws_trend_returns_with_pinned_features(ws_path, ws):
    at = app(ws_path, trend_pin_chosen=[3]).run()
    no_errors(at)
    assert at.selectbox(key="trend_column").value == "date"  # a date-like column is offered first
    res = ws.trend("c", "date", None, features=[3], min_docs=5)
    assert res.bin_mode == "year"
    lines = finding_lines(at, "trend")
    summary = res.summary(n_per_direction=4)
    assert len(lines) == len(summary) > 0
    for line, f in zip(lines, summary):
        assert widgets.md_escape(f.sentence, max_len=240) in line
    assert "feature 3" in at.multiselect(key="trend_series").value  # the pinned feature is drawn
    assert any(f"{len(res.bins)} bins by year" in c.value for c in at.caption)
    at.selectbox(key="trend_bins").set_value("number").run()
    at.number_input(key="trend_n_bins").set_value(3).run()
    no_errors(at)
    assert any("3 bins by quantile" in c.value for c in at.caption)


def test_a_column_that_is_not_ordered_is_refused_in_the_trends_tab_only(ws_path):
    at = app(ws_path, explain_column="votes", trend_column="label").run()
    assert not at.exception
    assert [e.value for e in at.error] and all("neither numbers nor dates" in e.value for e in at.error)
    assert finding_lines(at)  # the explain tab still shows its findings


def test_a_corpus_without_metadata_says_so(ws_path):
    at = app(ws_path, corpus="plain").run()
    no_errors(at)
    assert any("no metadata column" in i.value for i in at.info)
