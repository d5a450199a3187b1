"""The corpora page (pages/corpora.py) under AppTest: upload, preview, errors that store nothing, embedding, rename, delete."""
from __future__ import annotations

import re
import time

import pandas as pd
import pytest

from backend.background import REGISTRY
from pages import widgets
from tests.pages.conftest import assert_no_errors, rendered_markup

GOOD = b"review,stars\nthe movie was great,5\n\"a terrible, boring film\",1\n<script>alert(1)</script> i love this movie,4\n"


def ws_of(path):
    return widgets.open_workspace(str(path))


def snapshot(ws) -> list[tuple]:
    return [(c.name, c.n_docs, c.n_embedded, c.status) for c in ws.store.corpora()]


def upload(at, name: str, data: bytes, mime: str = "text/csv"):
    at.file_uploader(key="upload").set_value((name, data, mime))
    return at.run()


def wait_for_job(ws, name: str, timeout: float = 120) -> None:
    job = widgets.running_job(ws, name)
    t0 = time.time()
    while job is not None and job.running and time.time() - t0 < timeout:
        time.sleep(0.2)
    assert job is not None and not job.running and job.error is None, job and job.error


def test_upload_preview_add_and_embed(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    at = page("corpora", tiny_ws_path).run()
    assert_no_errors(at)
    assert len(at.file_uploader) == 1 and ".csv" in at.file_uploader[0].allowed_type
    at = upload(at, "reviews.csv", GOOD)
    assert_no_errors(at)
    preview = at.dataframe[0].value
    assert list(preview.columns) == ["review", "stars"] and len(preview) == 3
    assert preview["review"].iloc[2] == "<script>alert(1)</script> i love this movie"  # shown as data, not markup
    assert any("3 rows, columns: review, stars" in c.value for c in at.caption)
    assert at.selectbox[0].value == "review"  # the guessed text column
    assert at.text_input[0].value == "reviews"  # the file name's stem
    at.button[0].click().run()  # "Add and embed"
    assert_no_errors(at)
    assert any("Added **reviews** (3 documents)" in s.value for s in at.success)
    assert at.session_state["corpus"] == "reviews"
    wait_for_job(ws, "reviews")
    info = ws.store.corpus("reviews")
    assert (info.n_docs, info.n_embedded, info.status, info.meta_columns) == (3, 3, "ready", ["stars"])
    assert ws.store.texts("reviews", [2]) == ["<script>alert(1)</script> i love this movie"]
    at.run()
    assert any("**reviews** · 3 documents" in m.value and "status `ready`" in m.value for m in at.markdown)
    for markup in rendered_markup(at):
        assert "<script" not in markup


@pytest.mark.parametrize("name, data, pick, message", [
    ("empty.csv", b"", None, "Cannot read **empty.csv**: The file is empty. Nothing was stored."),
    ("header.csv", b"text,label\n", None, "Cannot read **header.csv**: The file has a header but no rows."),
    ("ragged.csv", b"text,label\nhello,a\nworld\n", None, "expected 2 fields, found 1"),
    ("numbers.jsonl", b'{"text": "hello world", "n": 1}\n{"text": "the dog", "n": 2}\n', "n", "holds non-text values"),
    ("t.csv", b"text\nhello world\n", "text", "A corpus named 't' already exists"),
])
def test_bad_uploads_show_an_error_and_store_nothing(page, tiny_ws_path, name, data, pick, message):
    ws = ws_of(tiny_ws_path)
    before = snapshot(ws)
    at = upload(page("corpora", tiny_ws_path).run(), name, data)
    if pick is not None:
        at.selectbox[0].set_value(pick)
        next(b for b in at.button if b.label == "Add and embed").click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and message in errors[0], errors
    if pick is not None:
        assert errors[0].endswith("Nothing was stored.")
    else:
        assert not [b for b in at.button if b.label == "Add and embed"]  # the page stops before offering to add
    assert not at.exception and not at.success
    assert snapshot(ws) == before and REGISTRY.get(str(ws.store.path), len(before)) is None


def test_rows_with_no_text_are_skipped_by_default_or_refuse_the_file(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    before = snapshot(ws)
    gaps = b"text,n\nhello world,1\n,2\n  ,3\nthe dog,4\n"
    at = upload(page("corpora", tiny_ws_path).run(), "gaps.csv", gaps)
    assert at.toggle(key="skip_empty").label == "Skip the 2 row(s) with no text" and at.toggle(key="skip_empty").value
    at.toggle(key="skip_empty").set_value(False)
    next(b for b in at.button if b.label == "Add and embed").click().run()
    assert len(at.error) == 1 and "empty in 2 row(s)" in at.error[0].value and snapshot(ws) == before
    at.toggle(key="skip_empty").set_value(True)
    next(b for b in at.button if b.label == "Add and embed").click().run()
    assert_no_errors(at)
    wait_for_job(ws, "gaps")
    assert ws.store.texts("gaps", [0, 1]) == ["hello world", "the dog"]
    assert ws.store.metadata("gaps", "source_row").tolist() == ["0", "3"]
    at = upload(page("corpora", tiny_ws_path).run(), "full.csv", b"text\nhello\n")
    assert not [t for t in at.toggle if t.key == "skip_empty"]  # offered only when some row has no text


def test_rename_and_delete(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    at = page("corpora", tiny_ws_path, "t").run()
    assert any("**t** · 12 documents" in m.value for m in at.markdown)
    at.text_input(key="rename_to").input("reviews")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert_no_errors(at)
    assert [c.name for c in ws.store.corpora()] == ["reviews"] and at.session_state["corpus"] == "reviews"
    assert ws.store.corpus("reviews").n_embedded == 12  # embeddings kept

    delete = next(b for b in at.button if b.label == "Delete")
    assert delete.disabled  # needs the confirmation first
    at.checkbox(key="confirm_delete").check().run()
    next(b for b in at.button if b.label == "Delete").click().run()
    assert_no_errors(at)
    assert ws.store.corpora() == []
    assert any("None yet." in c.value for c in at.caption)


def test_without_a_workspace(page):
    at = page("corpora").run()
    assert any("No workspace is open" in i.value for i in at.info) and not at.file_uploader


# -- issue 12: finishing from the UI, truncation counts, names that are markdown ------------------------
def test_a_corpus_without_its_statistics_offers_finish(page, tiny_ws_path):
    """A corpus left `ready` with empty feature tables (issue 12, problem 2) gets a Finish button that
    recomputes them in the background."""
    ws = ws_of(tiny_ws_path)
    info = ws.corpus("t")
    ws.store.execute("DELETE FROM feature_stats WHERE corpus_id = ?", [info.corpus_id])
    at = page("corpora", tiny_ws_path, "t").run()
    assert_no_errors(at)
    assert any("statistics and labels are missing" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Finish").click().run()
    assert_no_errors(at)
    wait_for_job(ws, "t")
    assert ws.store.query_one("SELECT count(*) FROM feature_stats WHERE corpus_id = ?", [info.corpus_id])[0] == ws.d_sae
    assert not ws.needs_finalize("t")
    at.run()
    assert not [b for b in at.button if b.label == "Finish"]
    assert any("**t** · 12 documents" in m.value and "status `ready`" in m.value for m in at.markdown)


def test_truncated_documents_are_counted(page, tiny_ws_path):
    ws = ws_of(tiny_ws_path)
    long_doc = " ".join(["the movie was great and funny"] * 100)  # far over the tiny workspace's token window
    ws.add_corpus("long", pd.DataFrame({"text": [long_doc, "a short one", long_doc]}), "text")
    ws.embed("long")
    assert ws.corpus("long").n_truncated == 2
    at = page("corpora", tiny_ws_path).run()
    line = next(m.value for m in at.markdown if m.value.startswith("**long**"))
    assert f"2 cut at {ws.settings.max_tokens:,} tokens" in line
    assert any(f"0 cut at {ws.settings.max_tokens:,} tokens" in m.value for m in at.markdown if m.value.startswith("**t**"))


EVIL = "[click me](https://evil.example/phish) ![t](https://evil.example/pixel.png)"


def live_markup(markup: str) -> list[str]:
    """Links and images the markdown would produce: CommonMark's, plus the bare URLs Streamlit's GFM
    autolink step links even when escaped (it runs on the parsed text)."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(markup)
    found = re.findall(r"<(?:a|img)\b[^>]*>", rendered)
    text = markup.replace("\\", "")
    return found + re.findall(r"https?://\S+|www\.\S+", text)


def test_names_are_shown_as_text_not_markdown(page, tiny_ws_path):
    """Issue 12, problem 7: a corpus name that is a markdown link and image, and column names with `--`,
    render literally on the Corpora and Home pages (no link, no image fetch, no em dash)."""
    ws = ws_of(tiny_ws_path)
    ws.add_corpus(EVIL, pd.DataFrame({"text": ["one document"]}), "text")
    pages = [page("corpora", tiny_ws_path, EVIL).run(), page("home", tiny_ws_path).run()]
    csv = b"text,a -- b,c_d\nthe movie was great,1,2\n"
    pages.append(upload(page("corpora", tiny_ws_path).run(), f"{EVIL}.csv", csv))
    pages[-1].text_input[0].input(EVIL)  # the corpus name field
    next(b for b in pages[-1].button if b.label == "Add and embed").click().run()  # refused: the name exists
    for at in pages:
        assert not at.exception
        shown = rendered_markup(at) + [m.value for m in at.warning]
        assert any("click me" in m for m in shown)  # the name is on the page…
        for markup in shown:
            assert live_markup(markup) == [], markup  # …as text only
    caption = next(c.value for c in pages[-1].caption if "rows, columns:" in c.value)
    assert re.search(r"(^|\s)--(\s|$)", caption) is None  # Streamlit would draw an em dash
    assert "1 rows, columns: text, a -- b, c_d" in caption.replace("\\", "").replace("\u2060", "")
    assert any("already exists" in e.value and live_markup(e.value) == [] for e in pages[-1].error)


# -- issue 11: a new workspace with the SAE of one's choice ---------------------------------------------------
@pytest.fixture()
def ws_folder(tmp_path, monkeypatch, tiny_pristine, tiny_sae_dir, tiny_model_dir):
    """A workspace folder holding a copy of the tiny workspace, and a shipped-SAE registry of one tiny SAE."""
    import json
    import shutil

    from backend import config
    from tests.tiny import HOOK

    folder = tmp_path / "workspaces"
    folder.mkdir()
    shutil.copy(tiny_pristine, folder / "tiny.duckdb")
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(folder))
    shipped = tmp_path / "shipped_tiny"
    shutil.copytree(tiny_sae_dir, shipped)
    (shipped / "training_report.json").write_text(json.dumps({"report": {"fve": 0.6789, "l0": 4.0, "dead_frac": 0.0}}))
    entry = config.ShippedSAE("tinykey", shipped, str(tiny_model_dir), HOOK, "Planted: tiny questions.")
    monkeypatch.setattr(config, "SHIPPED_SAES", {"tinykey": entry})
    return folder


def fill_new_workspace(at, name: str, model_dir=None, sae: str | None = None, custom: str = ""):
    at.text_input(key="new_ws_name").input(name)
    if model_dir is not None:
        at.selectbox(key="new_ws_model").set_value("__other__").run()
        at.text_input(key="new_ws_model_dir").input(str(model_dir))
    if sae is not None:
        at.selectbox(key="new_ws_sae").set_value(sae).run()
    if custom:
        at.text_input(key="new_ws_sae_custom").input(custom)
    return at.button(key="new_ws_create").click().run()


def test_new_workspace_with_a_shipped_sae_opens_it(page, ws_folder, tiny_model_dir):
    at = page("corpora", ws_folder / "tiny.duckdb", "t").run()
    assert_no_errors(at)
    sae_pick = at.selectbox(key="new_ws_sae")
    assert sae_pick.options[0] == "tinykey: Planted: tiny questions. (held-out FVE 0.679, L0 4, 0.00% dead)"
    at = fill_new_workspace(at, "mine", model_dir=tiny_model_dir, sae="tinykey")
    assert_no_errors(at)
    created = ws_folder / "mine.duckdb"
    assert created.exists() and at.session_state["workspace_path"] == str(created)
    assert "corpus" not in at.session_state
    assert any("Created workspace **mine** with SAE **tinykey (shipped\\_tiny)**" in s.value for s in at.success)
    assert any(c.value.startswith("Workspace **mine**") and "SAE **tinykey (shipped\\_tiny)**" in c.value
               for c in at.caption)  # the summary names the SAE the new workspace uses
    ws = ws_of(created)
    assert ws.store.meta()["sae_origin"] == str(ws_folder.parent / "shipped_tiny") and ws.corpus_list() == []


def test_workspace_summary_names_its_sae(page, ws_folder, tiny_sae_dir):
    at = page("corpora", ws_folder / "tiny.duckdb", "t").run()
    line = next(c.value for c in at.caption if c.value.startswith("Workspace **tiny**"))
    assert f"SAE **{widgets.md_escape(tiny_sae_dir.name)}** at blocks.1.hook\\_resid\\_post · 64 features" in line


@pytest.mark.parametrize("name, sae, custom, other_model, message", [
    ("../escape", "tinykey", "", True, "cannot name a workspace"),
    ("", "tinykey", "", True, "cannot name a workspace"),
    ("tiny", "tinykey", "", True, "A workspace named 'tiny' already exists"),
    ("fresh", "__custom__", "no/such/folder", True, "No SAE 'no/such/folder'"),
    ("fresh", "tinykey", "", False, "This SAE was trained on"),  # the default model with the tiny model's SAE
])
def test_new_workspace_refusals_create_nothing(page, ws_folder, tiny_model_dir, name, sae, custom, other_model, message):
    before = sorted(p.name for p in ws_folder.iterdir())
    at = page("corpora", ws_folder / "tiny.duckdb", "t").run()
    at = fill_new_workspace(at, name, model_dir=tiny_model_dir if other_model else None, sae=sae, custom=custom)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and message in errors[0] and errors[0].endswith("No workspace was created."), errors
    assert sorted(p.name for p in ws_folder.iterdir()) == before
    assert at.session_state["workspace_path"] == str(ws_folder / "tiny.duckdb")


def test_new_workspace_from_a_custom_sae_folder_without_any_workspace(page, ws_folder, tiny_model_dir, tiny_sae_dir):
    (ws_folder / "tiny.duckdb").unlink()
    at = page("corpora").run()
    assert any("create one below" in i.value for i in at.info)
    at = fill_new_workspace(at, "custom.duckdb", model_dir=tiny_model_dir, sae="__custom__", custom=str(tiny_sae_dir))
    assert_no_errors(at)
    assert at.session_state["workspace_path"] == str(ws_folder / "custom.duckdb")
    assert at.file_uploader  # the page now shows the new workspace, ready for a corpus


def test_new_workspace_switches_the_sidebar(ws_folder, tiny_model_dir, monkeypatch):
    """Through app.py: after creating a workspace, the sidebar's workspace picker shows the new one."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    from tests.pages.conftest import ROOT

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/corpora.py").run()
    assert at.selectbox(key="_ws_pick").value == "tiny"
    at = fill_new_workspace(at, "second", model_dir=tiny_model_dir, sae="tinykey")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="_ws_pick").value == "second"
    assert at.session_state["workspace_path"] == str(ws_folder / "second.duckdb")
    assert any(c.value.startswith("Workspace **second**") for c in at.caption)
