"""The model runtime: one way to read residuals (HF, stopping at the hook's layer) that equals TransformerLens's
hook values, one lock, and the dtype setting."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from backend.runtime import (
    ModelRuntime, cpu_has_native_bf16, decoder_layers, resolve_dtype, resolve_dtype_name, runtime_for,
)
from tests.dtypes import assert_close_in
from tests.tiny import HOOK

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["the movie was great and funny", "the dog and the cat in the house at night"]
RESIDUAL_HOOKS = ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")


def token_ids(reader, text: str = TEXTS[1]) -> torch.Tensor:
    return torch.tensor([reader.encode_documents([text])[0].ids])


def transformer_lens_values(reader, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every hook's activation from a full TransformerLens run (the reference)."""
    with torch.inference_mode():
        _, cache = reader.model.run_with_cache(ids)
    return {name: cache[name] for name in cache.keys()}


def test_runtime_residuals_equal_transformer_lens_hook_values(tiny_reader):
    runtime = runtime_for(tiny_reader)
    ids = token_ids(tiny_reader)
    reference = transformer_lens_values(tiny_reader, ids)
    for hook in RESIDUAL_HOOKS:
        assert runtime.backend_for(hook) == "hf"
        got = runtime.residuals(ids, hook)
        assert got.shape == (1, ids.shape[1], 32)
        assert_close_in(runtime.dtype, got, reference[hook], atol=1e-5, rtol=1e-4)  # the reader's dtype ("auto")
    # The hooks really differ, so a wrong layer or site could not pass.
    assert not torch.allclose(reference["blocks.1.hook_resid_pre"], reference[HOOK], atol=1e-3)
    assert not torch.allclose(reference["blocks.0.hook_resid_pre"], reference["blocks.0.hook_resid_post"], atol=1e-3)


def test_non_residual_hooks_and_readers_without_hf_use_transformer_lens(tiny_reader):
    ids = token_ids(tiny_reader)
    reference = transformer_lens_values(tiny_reader, ids)
    runtime = runtime_for(tiny_reader)
    for hook in ("blocks.1.hook_mlp_out", "blocks.0.hook_attn_out", "blocks.1.hook_resid_mid"):
        assert runtime.backend_for(hook) == "transformer_lens"
        torch.testing.assert_close(runtime.residuals(ids, hook), reference[hook], atol=1e-6, rtol=1e-5)
    tl_only = dataclasses.replace(tiny_reader, hf_dir=None)
    assert runtime_for(tl_only) is not runtime and runtime_for(tl_only).backend_for(HOOK) == "transformer_lens"
    torch.testing.assert_close(runtime_for(tl_only).residuals(ids, HOOK), reference[HOOK], atol=1e-6, rtol=1e-5)


def test_stop_at_layer_does_not_run_later_layers(tiny_reader):
    runtime = runtime_for(tiny_reader)
    layers = decoder_layers(runtime.hf)
    calls = [0] * len(layers)
    handles = [layer.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1)) for i, layer in enumerate(layers)]
    head_calls = [0]
    handles.append(runtime.hf.lm_head.register_forward_hook(lambda *a: head_calls.__setitem__(0, head_calls[0] + 1)))
    try:
        ids = token_ids(tiny_reader)
        runtime.residuals(ids, "blocks.0.hook_resid_post")
        assert calls == [1, 0] and head_calls == [0]
        runtime.residuals(ids, "blocks.1.hook_resid_pre")  # the input of block 1: block 1 never runs
        assert calls == [2, 0]
        runtime.residuals(ids, HOOK)
        assert calls == [3, 1] and head_calls == [0]
        with torch.inference_mode(), runtime.hooked(HOOK) as forward:  # a full forward does reach them
            forward.logits(ids)
        assert calls == [4, 2] and head_calls == [1]
    finally:
        for handle in handles:
            handle.remove()


def test_right_padding_leaves_real_positions_unchanged(tiny_reader):
    """The embedding batches are right-padded with no attention mask: causal attention keeps padding out."""
    docs = tiny_reader.encode_documents(TEXTS)
    width = max(len(d.ids) for d in docs)
    pad = tiny_reader.tokenizer.pad_token_id
    batch = torch.tensor([d.ids + [pad] * (width - len(d.ids)) for d in docs])
    together = runtime_for(tiny_reader).residuals(batch, HOOK)
    for row, doc in enumerate(docs):
        alone = runtime_for(tiny_reader).residuals(torch.tensor([doc.ids]), HOOK)[0]
        torch.testing.assert_close(together[row, : len(doc.ids)], alone, atol=1e-5, rtol=1e-4)


def test_one_lock_held_by_every_forward(tiny_reader):
    runtime = runtime_for(tiny_reader)
    assert runtime is runtime_for(tiny_reader) and runtime.lock is tiny_reader.lock
    acquired = []

    def try_lock() -> None:
        ok = tiny_reader.lock.acquire(timeout=0.2)
        acquired.append(ok)
        if ok:
            tiny_reader.lock.release()

    with runtime.hooked(HOOK):
        other = threading.Thread(target=try_lock)
        other.start()
        other.join()
    try_lock_after = threading.Thread(target=try_lock)
    try_lock_after.start()
    try_lock_after.join()
    assert acquired == [False, True]


def test_dtype_setting(tiny_reader):
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype_name("auto", "cuda") == "bfloat16" and resolve_dtype_name("float16", "cpu") == "float16"
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float8", "cpu")
    ids = token_ids(tiny_reader)
    bf16 = ModelRuntime(tiny_reader, dtype=torch.bfloat16)
    fp32 = ModelRuntime(tiny_reader, dtype=torch.float32)  # pinned: the comparison means bf16 against float32
    low = bf16.residuals(ids, HOOK)
    high = fp32.residuals(ids, HOOK)
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    assert bf16.hf is not fp32.hf
    rel = float((low.float() - high).norm() / high.norm())
    assert 0 < rel < 0.05  # the same model, rounded


def test_the_cpu_flag_can_be_faked_both_ways(monkeypatch):
    """SAEDASH_CPU_BF16 decides "auto" on CPU, so CI runs the bf16 path on any machine (and float32 on a bf16 one)."""
    monkeypatch.setenv("SAEDASH_CPU_BF16", "1")
    assert cpu_has_native_bf16() and resolve_dtype_name("auto", "cpu") == "bfloat16"
    monkeypatch.setenv("SAEDASH_CPU_BF16", "0")
    assert not cpu_has_native_bf16() and resolve_dtype_name("auto", "cpu") == "float32"
    assert resolve_dtype_name("auto", "cuda") == "bfloat16"  # CUDA is bf16 whatever the CPU
    monkeypatch.setenv("SAEDASH_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="SAEDASH_CPU_BF16 must be 1 or 0"):
        cpu_has_native_bf16()
    monkeypatch.delenv("SAEDASH_CPU_BF16")
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})  # the real flags


@pytest.mark.slow
def test_real_model_residuals_equal_transformer_lens():
    """The default SmolLM2 at the shipped SAE's hook: HF stop-at-layer == TransformerLens's hook value."""
    from backend.config import DEFAULT_HOOK
    from backend.models import load_reader

    reader = load_reader(device="cpu")
    ids = token_ids(reader, "The movie was a delight from start to finish.")
    with torch.inference_mode():
        _, cache = reader.model.run_with_cache(ids, names_filter=DEFAULT_HOOK, stop_at_layer=16)
    got = runtime_for(reader).residuals(ids, DEFAULT_HOOK)
    assert runtime_for(reader).backend_for(DEFAULT_HOOK) == "hf"
    assert_close_in(runtime_for(reader).dtype, got[0, 1:], cache[DEFAULT_HOOK][0, 1:], rtol=1e-3, atol=1e-2)
