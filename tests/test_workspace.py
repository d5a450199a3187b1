"""Workspace + store: corpora in DuckDB, sparse latents, pooling, bad input changes nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.activations import embed_texts
from backend.corpora import CorpusError
from backend.errors import UserError
from backend.store import StoreError
from backend.workspace import Workspace, WorkspaceSpec
from tests.tiny import HOOK


def embedded(ws, docs, name="t"):
    ws.add_corpus(name, docs, "text")
    from backend.jobs import embed_corpus

    state = embed_corpus(ws.store, name, ws.reader, ws.sae, ws.hook, ws.embed_config)
    assert state.status == "done"
    return ws


def test_latents_equal_the_pure_function_for_every_pooling(tiny_workspace, tiny_docs):
    ws = embedded(tiny_workspace, tiny_docs)
    rows = embed_texts(ws.reader, ws.sae, HOOK, tiny_docs["text"].tolist(), ws.embed_config)
    dense = np.zeros((len(tiny_docs), ws.d_sae))
    dense[rows.doc, rows.feature] = rows.max_act
    X = ws.latents("t")
    assert X.shape == (12, 64) and X.nnz == len(rows)
    assert np.allclose(X.toarray(), dense, atol=1e-6)
    assert np.array_equal(ws.latents("t", "binary").toarray(), (dense > 0).astype(np.float32))
    counts = np.zeros_like(dense)
    counts[rows.doc, rows.feature] = rows.n_active
    assert np.array_equal(ws.latents("t", "count").toarray(), counts)
    sums = np.zeros_like(dense)
    sums[rows.doc, rows.feature] = rows.sum_act
    assert np.allclose(ws.latents("t", "sum").toarray(), sums, atol=1e-5)
    lengths = ws.store.doc_lengths("t")
    assert np.allclose(ws.latents("t", "mean").toarray(), sums / lengths[:, None], atol=1e-5)
    with pytest.raises(StoreError, match="Unknown pooling"):
        ws.latents("t", "median")


def test_top_documents_and_document_features(tiny_workspace, tiny_docs):
    ws = embedded(tiny_workspace, tiny_docs)
    X = ws.latents("t").toarray()
    f = int(np.argmax((X > 0).sum(0)))
    top = ws.top_documents("t", f, n=3)
    expect = np.argsort(-X[:, f], kind="stable")[:3]
    assert top["doc_id"].tolist() == expect.tolist()
    assert top["text"].tolist() == tiny_docs["text"].iloc[expect].tolist()
    feats = ws.store.doc_features("t", 0)
    assert set(feats["feature_id"]) == set(np.flatnonzero(X[0]).tolist())
    assert feats["max_act"].is_monotonic_decreasing


def test_a_feature_that_does_not_exist_is_refused_with_a_message(tiny_workspace, tiny_docs):
    """top_documents and token activations name the range (the tiny SAE has 64 features); before, a negative id gave
    an empty table and a large one an IndexError from inside the SAE."""
    ws = embedded(tiny_workspace, tiny_docs)
    with pytest.raises(StoreError, match="no feature -3: this SAE has features 0 to 63"):
        ws.top_documents("t", -3)
    for bad in ([64], 64, 5.5, "x"):
        with pytest.raises(UserError, match="no feature 64|whole number"):
            ws.token_activations("t", 0, features=bad)
    assert ws.token_activations("t", 0, features=np.int64(63)).acts.shape[1] == 1


def test_a_negative_row_count_is_refused_with_a_message(tiny_workspace, tiny_docs):
    """DuckDB refused `LIMIT -1` with a binder error; the store now says what n and limit are. 0 rows is an answer."""
    ws = embedded(tiny_workspace, tiny_docs)
    for call in (lambda: ws.top_documents("t", 5, n=-1), lambda: ws.documents("t", limit=-1),
                 lambda: ws.top_documents("t", 5, n=2.5)):
        with pytest.raises(StoreError, match="how many rows to return"):
            call()
    assert len(ws.top_documents("t", 5, n=0)) == 0 and len(ws.documents("t", limit=3)) == 3


def test_metadata_is_kept_and_queryable(tiny_workspace, tiny_docs):
    ws = embedded(tiny_workspace, tiny_docs)
    docs = ws.documents("t")
    assert docs["label"].tolist() == tiny_docs["label"].tolist()
    assert (docs["n_tokens"] > 0).all()
    assert ws.store.metadata("t", "label").tolist() == tiny_docs["label"].tolist()
    picked = ws.documents("t", [5, 2])
    assert picked["doc_id"].tolist() == [5, 2]
    with pytest.raises(StoreError, match="no metadata column"):
        ws.store.metadata("t", "nope")


def test_bad_corpus_requests_change_nothing(tiny_workspace, tiny_docs):
    ws = tiny_workspace
    ws.add_corpus("t", tiny_docs, "text")
    before = ws.store.query_df("SELECT count(*) n FROM documents")["n"][0]
    with pytest.raises(StoreError, match="already exists"):
        ws.add_corpus("t", tiny_docs, "text")
    with pytest.raises(CorpusError, match="No column 'body'"):
        ws.add_corpus("u", tiny_docs, "body")
    with pytest.raises(CorpusError, match="empty"):
        ws.add_corpus("v", b"", file_name="v.csv")
    with pytest.raises(CorpusError, match="row 3"):
        ws.add_corpus("w", b"text,x\na,1\nb,2,3\n", file_name="w.csv")
    assert ws.store.query_df("SELECT count(*) n FROM documents")["n"][0] == before
    assert [c.name for c in ws.store.corpora()] == ["t"]


def test_rename_delete_and_injection_safe_names(tiny_workspace, tiny_docs):
    ws = embedded(tiny_workspace, tiny_docs)
    evil = "x'); DROP TABLE documents; --"
    ws.rename_corpus("t", evil)
    assert ws.store.corpus(evil).n_docs == 12
    with pytest.raises(StoreError, match="already exists"):
        ws.rename_corpus(evil, evil)
    ws.add_corpus("other", tiny_docs.head(3), "text")
    ws.delete_corpus(evil)
    assert [c.name for c in ws.store.corpora()] == ["other"]
    for table in ("documents", "doc_features", "doc_status", "doc_meta"):
        left = ws.store.query_df(f"SELECT DISTINCT corpus_id FROM {table}")["corpus_id"].tolist()
        assert left in ([], [ws.store.corpus_id("other")])


def test_dataframe_from_file_bytes(tiny_workspace):
    ws = tiny_workspace
    ws.add_corpus("up", b'{"body": "the movie", "stars": 5}\n{"body": "a film", "stars": 1}\n', file_name="u.jsonl")
    docs = ws.documents("up")
    assert docs["text"].tolist() == ["the movie", "a film"] and docs["stars"].tolist() == [5, 1]
    assert ws.store.corpus("up").text_column == "body"


def test_pairing_refuses_other_model(tmp_path, tiny_reader, tiny_sae_dir):
    from backend.saes import SAEError
    from backend.workspace import Workspace, WorkspaceSpec

    with pytest.raises(SAEError, match="trained on"):
        Workspace.create(tmp_path / "w.duckdb", WorkspaceSpec(model="smollm2-135m-instruct", sae=str(tiny_sae_dir)))
    assert not (tmp_path / "w.duckdb").exists()


def test_empty_text_in_dataframe_is_refused(tiny_workspace):
    with pytest.raises(CorpusError, match="empty in 1 row"):
        tiny_workspace.add_corpus("e", pd.DataFrame({"text": ["ok", None]}), "text")


def test_workspace_survives_a_moved_sae_and_refuses_changed_weights(tmp_path, tiny_reader, tiny_sae, monkeypatch):
    """Issue 12.3: a workspace reads a content-addressed copy of its SAE and checks the weights' hash."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from backend import workspace as workspace_mod
    from backend.saes import SAEError

    monkeypatch.setattr(workspace_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr("backend.config.CACHE_DIR", tmp_path / "cache")
    original = tmp_path / "my_sae"
    tiny_sae.save_model(original)
    spec = WorkspaceSpec(model=tiny_reader.name, sae=str(original))
    ws = Workspace.create(tmp_path / "w.duckdb", spec, device="cpu", reader=tiny_reader)
    assert Path(ws.settings.sae_source).parent == tmp_path / "cache" / "saes"
    ws.close()
    shutil.rmtree(original)  # moved away: the workspace still finds its SAE
    ws = Workspace.open(tmp_path / "w.duckdb", device="cpu", reader=tiny_reader)
    assert ws.sae.cfg.d_sae == ws.d_sae
    ws.close()
    weights = Path(ws.settings.sae_source) / "sae_weights.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.randn_like(v) for k, v in tensors.items()}, weights)  # same shapes, other weights
    ws = Workspace.open(tmp_path / "w.duckdb", device="cpu", reader=tiny_reader)
    with pytest.raises(SAEError, match="not the ones"):
        ws.sae
    ws.close()


def test_a_shipped_sae_key_names_its_folder():
    from backend.config import SHIPPED_SAES

    for key, shipped in SHIPPED_SAES.items():
        assert WorkspaceSpec(sae=key).sae == str(shipped.folder)
    assert WorkspaceSpec(sae="/some/folder").sae == "/some/folder"  # anything else is kept as given
