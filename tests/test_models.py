"""Reader models: loading from a local HF folder, hook names, formatting, clear errors offline."""
from __future__ import annotations

import shutil

import pytest
import torch

from backend.models import ModelNotAvailable, hook_layer, load_reader, stop_layer
from backend.runtime import residuals


def test_hook_names():
    assert hook_layer("blocks.15.hook_resid_post") == 15 and stop_layer("blocks.15.hook_resid_post") == 16
    assert stop_layer("blocks.3.hook_resid_pre") == 4
    with pytest.raises(ValueError, match="Unsupported hook"):
        hook_layer("blocks.2.attn.hook_z")


def test_resid_pre_is_previous_resid_post(tiny_reader):
    ids = torch.tensor([tiny_reader.encode_documents(["the movie was great"])[0].ids])
    post0 = residuals(tiny_reader, ids, "blocks.0.hook_resid_post")
    pre1 = residuals(tiny_reader, ids, "blocks.1.hook_resid_pre")
    assert torch.allclose(post0, pre1)


def test_hooked_model_equals_hf_model(tiny_reader, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.tensor([tiny_reader.encode_documents(["the dog and the cat in the house"])[0].ids])
    with torch.no_grad():
        assert torch.allclose(tiny_reader.model(ids), hf(ids).logits, atol=1e-4)
        hs = hf(ids, output_hidden_states=True).hidden_states
    # hidden_states[L + 1] is layer L's output (the last entry has the final norm applied, so use layer 0)
    assert torch.allclose(residuals(tiny_reader, ids, "blocks.0.hook_resid_post"), hs[1], atol=1e-5)


def test_folder_named_like_an_architecture_still_loads(tiny_model_dir, tmp_path):
    # TransformerLens guesses architectures from path text; a folder called "my-llama" must still load
    target = tmp_path / "my-llama-gemma"
    shutil.copytree(tiny_model_dir, target)
    reader = load_reader(str(target), device="cpu")
    assert reader.d_model == 32 and reader.n_layers == 2


def test_missing_models_are_reported_clearly():
    with pytest.raises(ModelNotAvailable, match="not a built-in model"):
        load_reader("no-such-model-anywhere", device="cpu")


def test_chat_formatting_requires_a_template(tiny_reader):
    doc = tiny_reader.encode_documents(["the movie"], "chat")[0]
    assert doc.count_mask.count(True) == 2 and not doc.count_mask[0]
    tpl = tiny_reader.tokenizer.chat_template
    try:
        tiny_reader.tokenizer.chat_template = None
        with pytest.raises(ValueError, match="no chat template"):
            tiny_reader.encode_documents(["x"], "chat")
    finally:
        tiny_reader.tokenizer.chat_template = tpl
