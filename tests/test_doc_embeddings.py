"""Dense MiniLM document embeddings stored per corpus (backend.doc_embeddings)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend import doc_embeddings as DE
from backend import search as S


@pytest.fixture(scope="module")
def minilm():
    return S.load_model()


@pytest.fixture()
def ws(tiny_workspace, minilm):
    docs = pd.DataFrame({"text": ["the movie was great", "python code with a function", "the movie was great",
                                  "the dog and the cat", "error in the file"],
                         "label": ["a", "b", "a", "c", "b"]})
    tiny_workspace.add_corpus("d", docs, "text")
    tiny_workspace.add_corpus("other", docs.iloc[:2], "text")
    return tiny_workspace


def test_vectors_stored_once_and_reused(ws, monkeypatch):
    calls: list[int] = []
    real = S.sentence_embed
    monkeypatch.setattr(S, "sentence_embed", lambda texts, batch_size=64: calls.append(len(texts)) or real(texts, batch_size))
    seen: list[tuple[int, int]] = []
    E = DE.doc_vectors(ws, "d", progress=lambda d, t: seen.append((d, t)), batch_size=2)
    assert E.shape == (5, DE.DIM) and E.dtype == np.float32
    assert np.linalg.norm(E, axis=1) == pytest.approx(np.ones(5), abs=1e-5)
    assert calls == [2, 2, 1]  # batched
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert DE.n_stored(ws, "d") == 5 and DE.is_complete(ws, "d")
    # Rows follow doc_id: identical texts (docs 0 and 2) have cosine 1, different ones less.
    assert float(E[0] @ E[2]) == pytest.approx(1.0, abs=1e-5)
    assert float(E[0] @ E[1]) < 0.9
    assert float(E[0] @ DE.embed_query("the movie was great")) == pytest.approx(1.0, abs=1e-5)
    # Second call: nothing is recomputed, the same vectors come back.
    calls.clear()
    E2 = DE.doc_vectors(ws, "d")
    assert calls == [] and np.array_equal(E, E2)
    assert DE.build_doc_embeddings(ws, "d") == 0
    # The other corpus is independent.
    assert DE.n_stored(ws, "other") == 0
    assert np.allclose(DE.doc_vectors(ws, "other"), E[:2], atol=1e-5)


def test_batches_hold_texts_of_similar_length_and_rows_stay_in_doc_order(ws, monkeypatch):
    """MiniLM pads a batch to its longest text: documents are embedded shortest first (batches in doc_id order
    embedded 3,000 fortunes 1.7 times slower), and each row is still its own document's vector."""
    batches: list[list[str]] = []
    real = S.sentence_embed
    monkeypatch.setattr(S, "sentence_embed", lambda texts, batch_size=64: batches.append(list(texts)) or real(texts, batch_size))
    E = DE.doc_vectors(ws, "d", batch_size=2)
    texts = ws.store.texts("d", np.arange(5))
    lengths = [len(t) for b in batches for t in b]
    assert [len(b) for b in batches] == [2, 2, 1] and lengths == sorted(lengths) != [len(t) for t in texts]
    assert list(ws.store.text_chars("d")) == [len(t) for t in texts]
    assert sorted(sum(batches, [])) == sorted(texts)
    assert np.allclose(E, real(texts), atol=1e-5)


def test_resumes_after_a_partial_pass(ws):
    import threading

    stop = threading.Event()

    def progress(done, total):
        if done >= 2:
            stop.set()

    assert DE.build_doc_embeddings(ws, "d", batch_size=2, progress=progress, cancel=stop) == 2  # stopped after one batch
    assert DE.n_stored(ws, "d") == 2
    assert int(DE.doc_vectors(ws, "d", compute=False).any(axis=1).sum()) == 2  # the others are zero rows
    E = DE.doc_vectors(ws, "d", batch_size=2)
    assert DE.n_stored(ws, "d") == 5
    assert ws.store.query_one("SELECT count(DISTINCT doc_id) FROM doc_embeddings")[0] == 5
    assert float(E[0] @ E[2]) == pytest.approx(1.0, abs=1e-5)


def test_deleted_with_the_corpus(ws):
    DE.doc_vectors(ws, "d")
    DE.doc_vectors(ws, "other")
    cid = ws.store.corpus_id("d")
    assert "doc_embeddings" in ws.store.corpus_tables()
    ws.delete_corpus("d")
    assert ws.store.query_one("SELECT count(*) FROM doc_embeddings WHERE corpus_id = ?", [cid])[0] == 0
    assert DE.n_stored(ws, "other") == 2
    DE.delete_doc_embeddings(ws, "other")
    assert DE.n_stored(ws, "other") == 0


def test_background_vectors_start_for_the_demo_corpus_then_hand_over_to_the_index(ws, monkeypatch):
    """The first launch leaves the demo corpus's vectors to a background job, which starts the search index
    when it ends; other corpora get them when asked."""
    from backend import background, demo

    registry = background.JobRegistry()
    ws.embed("d")
    corpus = ws.corpus("d")
    assert background.ensure_doc_vectors(ws, corpus, registry=registry) is None  # not the demo corpus, nobody asked
    monkeypatch.setattr(demo, "is_demo_corpus", lambda w, c: c.name == "d")
    indexed: list[str] = []
    monkeypatch.setattr(background, "ensure_feature_index", lambda w, c, requested=False, registry=None: indexed.append(c.name))
    job = background.ensure_doc_vectors(ws, corpus, registry=registry)
    assert job is not None and job.key == (str(ws.path), corpus.corpus_id, background.VECTORS_JOB)
    seen: list[background.Progress] = []
    background.wait_for_doc_vectors(ws, corpus, seen.append, registry=registry)
    p = job.progress
    assert not job.running and job.error is None
    assert (p.status, p.step, p.docs_done, p.docs_total) == ("done", background.VECTORS_STEP, 5, 5)
    assert DE.is_complete(ws, "d") and indexed == ["d"]  # then the index
    assert background.ensure_doc_vectors(ws, corpus, registry=registry) is None  # complete: nothing to do
    other = ws.corpus("other")
    ws.embed("other")
    asked = background.ensure_doc_vectors(ws, ws.corpus("other"), requested=True, registry=registry)
    asked.thread.join(60)
    assert DE.is_complete(ws, other) and indexed == ["d", "other"]


def test_the_index_waits_for_running_vectors_unless_a_search_asks(ws, monkeypatch):
    import threading

    from backend import background

    registry = background.JobRegistry()
    ws.embed("d")
    corpus = ws.corpus("d")
    gate = threading.Event()
    monkeypatch.setattr(DE, "build_doc_embeddings", lambda *a, **k: gate.wait(30) and 0)
    vectors = background.ensure_doc_vectors(ws, corpus, requested=True, registry=registry)
    try:
        assert vectors.running
        assert background.ensure_feature_index(ws, corpus, registry=registry) is None  # MiniLM is busy: wait
        index = background.ensure_feature_index(ws, corpus, requested=True, registry=registry)  # a search does not wait
        assert index is not None and index.key[2] == background.INDEX_JOB
        index.cancel.set()
        index.thread.join(60)
    finally:
        gate.set()
    vectors.thread.join(30)
    after = background.feature_index_job(ws, corpus, registry)  # the vectors job may have resumed the index: stop it
    after.cancel.set()
    after.thread.join(60)
