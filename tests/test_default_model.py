"""Integration: the real default model (SmolLM2-135M-Instruct from its PyPI GGUF) and the shipped SAE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.config import DEFAULT_HOOK, DEFAULT_SAE_DIR
from tests.dtypes import assert_close_in


@pytest.fixture(scope="module")
def reader(real_reader):
    """The session's real reader (tests/conftest.py), loaded once for every test that needs it."""
    return real_reader


@pytest.fixture(scope="module")
def default_sae(real_sae):
    return real_sae


def test_hooked_residuals_equal_the_hf_model(reader):
    from transformers import AutoModelForCausalLM

    from backend.runtime import residuals

    from backend.runtime import runtime_for

    dtype = runtime_for(reader).dtype  # the reader's ("auto"): compared in that dtype's tolerance
    hf = AutoModelForCausalLM.from_pretrained(str(reader.hf_dir), dtype=dtype)
    doc = reader.encode_documents(["The movie was a delight from start to finish."])[0]
    ids = torch.tensor([doc.ids])
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    x = residuals(reader, ids, DEFAULT_HOOK)
    assert_close_in(dtype, x[0, 1:], hs[16][0, 1:], rtol=1e-3, atol=1e-2)
    assert doc.ids[0] == reader.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # the dropped position is not a word


def test_shipped_sae_matches_the_model_and_reports_quality(reader, default_sae):
    from backend.saes import check_pairing, sae_info

    info = sae_info(default_sae, DEFAULT_SAE_DIR)
    check_pairing(info, reader.name, reader.d_model)
    assert info.hook_name == DEFAULT_HOOK and info.d_sae >= 4096
    assert info.report["fve"] >= 0.85 and info.report["dead_frac"] < 0.02


def test_default_pipeline_on_twenty_documents(tmp_path, reader, default_sae):
    from backend.builtin_data import demo_corpus
    from backend.workspace import Workspace, WorkspaceSpec

    docs = demo_corpus(20, seed=1)
    ws = Workspace.create(tmp_path / "w.duckdb", WorkspaceSpec(sae=str(DEFAULT_SAE_DIR)), reader=reader, sae=default_sae)
    ws.add_corpus("demo", docs, "text")
    from backend.jobs import embed_corpus

    state = embed_corpus(ws.store, "demo", ws.reader, ws.sae, ws.hook, ws.embed_config)
    assert state.status == "done" and state.docs_done == 20
    X = ws.latents("demo", "binary")
    active = np.asarray(X.sum(1)).ravel()
    lengths = ws.store.doc_lengths("demo")
    assert (active > 0).all()
    # longer documents fire more features under max pooling
    assert np.corrcoef(lengths, active)[0, 1] > 0.5
    assert (ws.store.query_df("SELECT min(argmax_pos) m FROM doc_features")["m"][0]) >= 1
    # token activations recomputed for highlighting agree with the stored max
    top = ws.top_documents("demo", int(np.argmax(np.asarray(X.sum(0)).ravel())), n=1).iloc[0]
    ta = ws.token_activations("demo", int(top.doc_id), int(np.argmax(np.asarray(X.sum(0)).ravel())))
    assert np.isclose(ta.acts[:, 0].max(), top.max_act, rtol=1e-3, atol=1e-3)
    assert int(np.argmax(ta.acts[:, 0])) == int(top.argmax_pos)
    ws.close()


def test_chat_formatting_counts_only_the_document(reader):
    doc = reader.encode_documents(["Great film."], "chat")[0]
    counted = [t for t, m in zip(reader.token_strings(doc.ids), doc.count_mask) if m]
    assert "".join(counted) == "Great film."
    assert "<|im_start|>" in reader.token_strings(doc.ids)
