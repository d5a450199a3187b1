"""The corpora page (pages/corpora.py) under AppTest: upload, preview, errors that store nothing, embedding, rename, delete."""
from __future__ import annotations

import re
import time

import pandas as pd
import pytest

from backend.jobs import REGISTRY
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
    ("gaps.csv", b"text,n\nhello world,1\n,2\n", "text", "empty in 1 row(s)"),
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
