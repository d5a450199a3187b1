"""The pure batch function: pooled sparse rows equal a dense token-level computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.activations import EmbedConfig, pool_sparse, sae_embed_texts, sparse_encode, token_activations
from backend.runtime import residuals, runtime_for
from tests.tiny import HOOK


def dense_reference(reader, sae, text, cfg):
    doc = reader.encode_documents([text], cfg.formatting, cfg.max_tokens)[0]
    with torch.inference_mode():
        x = residuals(reader, torch.tensor([doc.ids]), HOOK)[0]
        acts = sae.encode(x).numpy()  # sae_lens's own dense TopK encode
    acts[~np.array(doc.count_mask)] = 0.0
    return acts, doc


@pytest.fixture(scope="module")
def fp32_reader(tiny_reader, tiny_model_dir):
    """The tiny reader in float32 whatever "auto" picks: exact pooling is checked on float32 residuals (bf16
    batches of other shapes round differently, so a dense single-document reference would not be exact)."""
    from backend.models import load_reader

    if runtime_for(tiny_reader).dtype == torch.float32:
        return tiny_reader
    return load_reader(str(tiny_model_dir), device="cpu", dtype="float32")


def test_pooling_matches_dense_sae_lens_encode(fp32_reader, tiny_sae, tiny_docs):
    cfg = EmbedConfig(batch_tokens=24, encode_chunk=5)  # force several batches and split chunks
    texts = tiny_docs["text"].tolist()
    rows = sae_embed_texts(fp32_reader, tiny_sae, HOOK, texts, cfg)
    for i, text in enumerate(texts):
        acts, doc = dense_reference(fp32_reader, tiny_sae, text, cfg)
        sel = rows.doc == i
        got = dict(zip(rows.feature[sel], zip(rows.max_act[sel], rows.argmax_pos[sel], rows.n_active[sel], rows.sum_act[sel])))
        active = np.flatnonzero(acts.max(0) > 0)
        assert sorted(got) == sorted(active.tolist())
        for f in active:
            mx, pos, cnt, sm = got[f]
            assert np.isclose(mx, acts[:, f].max(), atol=1e-5)
            assert pos == int(np.argmax(acts[:, f]))
            assert cnt == int((acts[:, f] > 0).sum())
            assert np.isclose(sm, acts[:, f].sum(), atol=1e-4)
        assert rows.n_tokens[i] == doc.n_counted


def test_position_zero_and_template_tokens_never_count(tiny_reader, tiny_sae):
    text = "the movie was great"
    for formatting in ("raw", "chat"):
        cfg = EmbedConfig(formatting=formatting)
        doc = tiny_reader.encode_documents([text], formatting)[0]
        rows = sae_embed_texts(tiny_reader, tiny_sae, HOOK, [text], cfg)
        counted = [p for p, m in enumerate(doc.count_mask) if m]
        assert not doc.count_mask[0]
        assert set(rows.argmax_pos.tolist()) <= set(counted)
        assert rows.n_tokens[0] == 4
    chat = tiny_reader.encode_documents([text], "chat")[0]
    assert len(chat.ids) > 5 and sum(chat.count_mask) == 4


def test_truncation_is_recorded(tiny_reader, tiny_sae):
    rows = sae_embed_texts(tiny_reader, tiny_sae, HOOK, ["the " * 50, "a film"], EmbedConfig(max_tokens=10))
    assert rows.truncated.tolist() == [True, False]
    assert rows.n_tokens[0] == 9


def test_pool_sparse_ties_take_first_position():
    doc = torch.tensor([0, 0, 0, 1])
    pos = torch.tensor([3, 1, 2, 5])
    feat = torch.tensor([7, 7, 7, 7])
    val = torch.tensor([2.0, 2.0, 1.0, 0.5])
    d, f, mx, p, c, s = pool_sparse(doc, pos, feat, val, d_sae=10)
    assert d.tolist() == [0, 1] and f.tolist() == [7, 7]
    assert mx.tolist() == [2.0, 0.5] and p.tolist() == [1, 5] and c.tolist() == [3, 1]
    assert torch.allclose(s, torch.tensor([5.0, 0.5]))


def test_sparse_encode_equals_dense_encode(tiny_sae):
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(1))
    r, f, v = sparse_encode(tiny_sae, x)
    dense = torch.zeros(9, 64)
    dense[r, f] = v
    assert torch.allclose(dense, tiny_sae.encode(x), atol=1e-6)


def test_token_activations_for_highlighting(tiny_reader, tiny_sae):
    tokens, acts, mask = token_activations(tiny_reader, tiny_sae, HOOK, "the dog and the cat", EmbedConfig(), [3, 5])
    assert tokens[1:] == ["the", "dog", "and", "the", "cat"]
    assert acts.shape == (6, 2) and (acts[0] == 0).all()


def test_embed_texts_is_a_deprecated_alias_of_sae_embed_texts(tiny_reader, tiny_sae):
    import pytest

    from backend.activations import embed_texts

    texts = ["the movie was great", "a terrible film"]
    with pytest.warns(DeprecationWarning, match="sae_embed_texts"):
        old = embed_texts(tiny_reader, tiny_sae, HOOK, texts, EmbedConfig())
    new = sae_embed_texts(tiny_reader, tiny_sae, HOOK, texts, EmbedConfig())
    assert len(new) > 0 and (old.feature == new.feature).all() and np.allclose(old.max_act, new.max_act)


# -- issue 10: on CUDA the token budget follows free GPU memory (no GPU needed: torch.cuda is faked) -----------
def fake_cuda(monkeypatch, free_bytes: int, asked: list) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def mem_get_info(device=None):
        asked.append(torch.device(device))
        return free_bytes, 4 * free_bytes

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)


def test_cuda_batch_tokens_follow_free_gpu_memory(monkeypatch, tiny_reader, tiny_sae):
    from backend import activations as act
    from backend.runtime import runtime_for

    cfg = EmbedConfig(max_tokens=64)
    dims = act.forward_dims(tiny_reader)
    per_token = act.token_bytes(dims, runtime_for(tiny_reader).dtype.itemsize, cfg.max_tokens)
    fixed = act.sae_encode_bytes(int(tiny_sae.cfg.d_sae), cfg.encode_chunk)
    budgets = {}
    for free in (2**24, 2**25, 2**26):
        asked: list = []
        fake_cuda(monkeypatch, free, asked)
        tokens = act.batch_tokens_for(tiny_reader, tiny_sae, cfg, device="cuda")
        assert asked == [torch.device("cuda")]  # asked the GPU it runs on, once
        # the documented formula: the batch and the SAE encode fit in half the free memory, one more token would not
        assert tokens * per_token + fixed <= act.GPU_MEMORY_FRACTION * free < (tokens + 1) * per_token + fixed
        budgets[free] = tokens
    assert budgets[2**24] < budgets[2**25] < budgets[2**26] != cfg.batch_tokens
    fake_cuda(monkeypatch, 1024, [])  # almost nothing free: still one whole document per forward
    assert act.batch_tokens_for(tiny_reader, tiny_sae, cfg, device="cuda") == cfg.max_tokens
    fake_cuda(monkeypatch, 2**50, [])  # a huge GPU: capped
    assert act.batch_tokens_for(tiny_reader, tiny_sae, cfg, device="cuda") == act.MAX_GPU_BATCH_TOKENS
    bf16 = act.gpu_batch_tokens(2**26, dims, 2, cfg.max_tokens, int(tiny_sae.cfg.d_sae), cfg.encode_chunk)
    fp32 = act.gpu_batch_tokens(2**26, dims, 4, cfg.max_tokens, int(tiny_sae.cfg.d_sae), cfg.encode_chunk)
    assert bf16 > 1.5 * fp32  # half the bytes per token: about twice the tokens


def test_cpu_keeps_the_configured_batch_tokens_even_where_cuda_exists(monkeypatch, tiny_reader, tiny_sae):
    from backend import activations as act

    asked: list = []
    fake_cuda(monkeypatch, 2**30, asked)
    cfg = EmbedConfig(batch_tokens=24)
    assert act.batch_tokens_for(tiny_reader, tiny_sae, cfg) == 24 and asked == []  # the tiny reader is on CPU
    planned = []
    real_plan = act.plan_batches
    monkeypatch.setattr(act, "plan_batches", lambda docs, budget: planned.append(budget) or real_plan(docs, budget))
    sae_embed_texts(tiny_reader, tiny_sae, HOOK, ["a short text", "another one"], cfg)
    assert planned == [24] and asked == []


@pytest.mark.parametrize("flag, want", [("1", "bfloat16"), ("0", "float32")])
def test_a_new_workspace_embeds_in_the_runtimes_dtype(monkeypatch, tmp_path, tiny_reader, tiny_sae_dir, flag, want):
    """One policy: a new workspace records the dtype "auto" resolves to (bf16 on CUDA and on native-bf16 CPUs,
    else float32), and the model it loads runs in exactly that dtype."""
    from backend.runtime import DTYPES, resolve_dtype_name
    from backend.workspace import Workspace, WorkspaceSpec, default_dtype_name

    monkeypatch.setenv("SAEDASH_CPU_BF16", flag)
    assert WorkspaceSpec().dtype is None
    assert resolve_dtype_name(default_dtype_name("cuda"), "cuda") == "bfloat16"
    assert resolve_dtype_name(default_dtype_name("cpu"), "cpu") == want == resolve_dtype_name("auto", "cpu")
    spec = WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir))
    ws = Workspace.create(tmp_path / "ws.duckdb", spec, device="cpu")
    try:
        assert ws.settings.dtype == want
        assert runtime_for(ws.reader).dtype == DTYPES[want]  # the runtime and the workspace never disagree
        assert ws.embed_text("the movie was great")  # it embeds in that dtype
    finally:
        ws.close()
    pinned = Workspace.create(tmp_path / "pinned.duckdb", WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir),
                                                                         dtype="float32"), device="cpu")
    assert pinned.settings.dtype == "float32"  # a spec's dtype wins
    pinned.close()


def test_bf16_residuals_are_encoded_in_bf16_like_the_fp32_encode(tiny_reader, tiny_sae, tiny_sae_dir):
    """The encode runs in the forward's dtype (no fp32 copy of bf16 residuals), agrees with the fp32 encode of
    the same residuals to bf16 precision, and the Ray workers' encoder gives the very same rows."""
    from backend.engines.lite import load_topk_encoder

    ids = torch.tensor([tiny_reader.encode_documents(["the dog and the cat in the house at night"])[0].ids])
    x = runtime_for(tiny_reader).residuals(ids, HOOK)[0].float()
    low = sparse_encode(tiny_sae, x.bfloat16())
    high = sparse_encode(tiny_sae, x)
    casts = vars(tiny_sae)["_encode_casts"][torch.bfloat16]
    assert casts[1][0].dtype == torch.bfloat16 and low[2].dtype == torch.float32
    assert casts[1][0].shape == (tiny_sae.cfg.d_sae, tiny_sae.cfg.d_in) and casts[1][0].is_contiguous()  # nn.Linear layout
    pairs = lambda r: set(zip(r[0].tolist(), r[1].tolist()))  # noqa: E731
    assert len(pairs(low) & pairs(high)) >= 0.9 * len(pairs(low) | pairs(high))
    sparse_encode(tiny_sae, x.bfloat16())
    assert vars(tiny_sae)["_encode_casts"][torch.bfloat16] is casts  # cast once, not per call
    lite = load_topk_encoder(tiny_sae_dir)
    assert all(torch.equal(a, b) for a, b in zip(lite.sparse_encode(x.bfloat16()), low))
    with torch.no_grad():
        saved = tiny_sae.W_enc.data.clone()
        tiny_sae.W_enc.mul_(-1.0)  # planted: weights changed in place (training) must be recast
        try:
            flipped = sparse_encode(tiny_sae, x.bfloat16())
        finally:
            tiny_sae.W_enc.copy_(saved)
    assert pairs(flipped) != pairs(low)
