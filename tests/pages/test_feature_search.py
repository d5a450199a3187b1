"""Search by meaning on the Features page while its index is built in the background (pages/search_widgets.py)."""
from __future__ import annotations

import threading

from backend import background
from backend import labels as L
from backend import search
from pages import widgets
from tests.pages.conftest import assert_no_errors

CHUNK = 8


def partial_index(ws, movie: int, python: int) -> int:
    """Hand-label two features, index the first chunk of features (theirs come first) and stop; returns the
    number of features the finished index will hold."""
    L.set_hand_label(ws, movie, "movie film")
    L.set_hand_label(ws, python, "python code")
    cancel, seen = threading.Event(), []

    def stop_after_first_chunk(done, total):
        seen.append(total)
        if len(seen) == 2:
            cancel.set()

    search.build_feature_embeddings(ws, "t", progress=stop_after_first_chunk, cancel=cancel, chunk_features=CHUNK)
    return seen[0]


def test_search_tab_says_what_part_of_the_index_it_searched(page, tiny_ws_path):
    ws = widgets.open_workspace(str(tiny_ws_path))  # the object the page uses
    live = ws.active_features("t")["feature_id"].astype(int).tolist()
    movie, python = live[0], live[1]
    total = partial_index(ws, movie, python)
    corpus = ws.corpus("t")
    indexed = search.feature_index_status(ws, corpus)
    assert indexed.n_indexed == CHUNK < total and not indexed.complete

    release = threading.Event()

    def still_indexing(progress, cancel):  # stands in for the background build, stopped part-way
        progress(background.Progress("t", CHUNK, total, 0, 1.0, step=background.INDEX_STEP, step_fraction=CHUNK / total))
        release.wait(60)

    job = background.REGISTRY.start(str(ws.path), corpus.corpus_id, "t", 0, still_indexing, kind=background.INDEX_JOB)
    try:
        at = page("features", tiny_ws_path, "t").run()
        assert_no_errors(at)
        bars = [p.proto.text for p in at.progress]
        assert any(f"{CHUNK:,} of {total:,} features" in text for text in bars), bars  # the build's progress
        at.text_input(key="meaning_query").input("cinema")
        next(b for b in at.button if b.label == "Search").click().run()
        assert_no_errors(at)
        hits = at.dataframe(key="meaning_hits").value
        assert int(hits["feature_id"].iloc[0]) == movie and hits["label"].iloc[0] == "movie film"
        searched = set(search.search_features(ws, corpus, "cinema", top=ws.d_sae, complete=False)["feature_id"])
        assert len(searched) == CHUNK and set(hits["feature_id"].astype(int)) <= searched  # only the indexed part
        notices = [i.value for i in at.info]
        assert f"Searching {CHUNK:,} of {total:,} features; the rest are being indexed." in notices
        assert job.running  # the page joined the running build rather than starting a second one
    finally:
        release.set()
        job.thread.join(30)


def test_first_search_starts_the_index_and_waits_only_for_its_first_chunk(page, tiny_ws_path, monkeypatch):
    """No index yet: the first search starts the background build and searches once the first chunk is in."""
    ws = widgets.open_workspace(str(tiny_ws_path))
    monkeypatch.setattr(search, "CHUNK_FEATURES", CHUNK)
    corpus = ws.corpus("t")
    at = page("features", tiny_ws_path, "t").run()
    assert background.feature_index_job(ws, corpus) is None  # not the demo corpus: nothing starts before a search
    at.text_input(key="meaning_query").input("python")
    next(b for b in at.button if b.label == "Search").click().run()
    assert_no_errors(at)
    job = background.feature_index_job(ws, corpus)
    assert job is not None
    assert len(at.dataframe(key="meaning_hits").value) > 0
    assert any("Searching" in i.value for i in at.info) or not job.running  # partial while it builds
    job.thread.join(120)
    assert job.error is None and search.feature_index_status(ws, corpus).complete
    at.run()
    assert_no_errors(at)
    assert not [i.value for i in at.info if "Searching" in i.value]  # the whole index is searched now: no notice
