"""Steering on a tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer and an SAE with
fixed weights at blocks.1.hook_resid_post whose feature FEAT points along one token's embedding."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

from backend.models import DEFAULT_MODEL, cached_hf_dir, load_reader, prepare_builtin, residuals
from backend.steering import (
    SteerConfig,
    feature_scale,
    format_prompt,
    generate_steered,
    hf_residuals,
    logit_lens,
    steer,
    steered_logits,
    strength_sweep,
    sweep_figure,
)

HOOK = "blocks.1.hook_resid_post"
D_IN, D_SAE, FEAT = 64, 32, 5
TYPICAL = {FEAT: 1.0}  # strength s adds s * W_dec[FEAT] (unit-norm row)
PROMPT = "Tell me about the weather today."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM with the SmolLM2 tokenizer (vocab 49152) to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = cached_hf_dir(DEFAULT_MODEL)
    if not all((src / n).exists() for n in TOKENIZER_FILES):
        prepare_builtin()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=D_IN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory):
    return load_reader(str(make_tiny_llama(tmp_path_factory.mktemp("tiny_lm"))), device="cpu")


@pytest.fixture(scope="module")
def target_token(reader) -> int:
    return reader.tokenizer(" ocean", add_special_tokens=False)["input_ids"][0]


def make_sae(reader, target_token: int, b_dec_scale: float = 0.0):
    """TopK SAE whose feature FEAT reads and writes the (normalised) embedding of `target_token`."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, dtype="float32", device="cpu",
                                metadata=SAEMetadata(model_name=reader.name, hook_name=HOOK)))
    g = torch.Generator().manual_seed(1)
    w = torch.randn(D_SAE, D_IN, generator=g)
    w[FEAT] = reader.model.W_E[target_token].detach().float()
    w = w / w.norm(dim=1, keepdim=True)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec_scale * torch.randn(D_IN, generator=g))
    return sae


@pytest.fixture(scope="module")
def sae(reader, target_token):
    return make_sae(reader, target_token)


def greedy(**kw) -> SteerConfig:
    return SteerConfig(**{"n_samples": 1, "temperature": 0.0, "max_new_tokens": 10, "min_new_tokens": 10, **kw})


def test_hf_hook_residual_matches_transformer_lens(reader):
    ids = torch.tensor([format_prompt(reader, PROMPT)])
    torch.testing.assert_close(hf_residuals(reader, ids, HOOK), residuals(reader, ids, HOOK), atol=1e-5, rtol=1e-4)
    # resid_pre hooks read the layer's input (backend.models.residuals cannot stop after a resid_pre hook, so
    # compare with a full TransformerLens run).
    _, cache = reader.model.run_with_cache(ids, names_filter=lambda n: n.endswith("resid_pre") or n.endswith("resid_post"))
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"):
        torch.testing.assert_close(hf_residuals(reader, ids, hook), cache[hook], atol=1e-5, rtol=1e-4)
    # The two layers really differ, so a wrong layer index could not pass.
    assert not torch.allclose(hf_residuals(reader, ids, HOOK), hf_residuals(reader, ids, "blocks.1.hook_resid_pre"), atol=1e-3)


def test_zero_strength_is_exactly_unsteered_per_seed(reader, sae):
    cfg = SteerConfig(n_samples=3, temperature=1.0, max_new_tokens=12, seed=7)
    streamed: dict[tuple[str, int, int], str] = {}
    res = steer(reader, sae, {FEAT: 0.0}, [PROMPT, "Hi"], cfg, typical_acts=TYPICAL,
                on_token=lambda kind, p, s, text: streamed.__setitem__((kind, p, s), text))
    for p in range(2):
        for s in range(3):
            u, st = res.get("unsteered", p, s), res.get("steered", p, s)
            assert u.seed == st.seed == 7 + s
            assert st.token_ids == u.token_ids and u.n_tokens > 0
            assert streamed[("steered", p, s)] == st.text and streamed[("unsteered", p, s)] == u.text
    # Different samples use different seeds.
    assert len({tuple(res.get("unsteered", 0, s).token_ids) for s in range(3)}) > 1
    assert res.device == "cpu" and res.backend == "hf"


def test_cached_and_uncached_steered_generation_agree(reader, sae):
    for positions in ("all", "generated"):
        outs = {
            use_cache: generate_steered(reader, sae, {FEAT: 0.3}, [PROMPT], greedy(positions=positions, use_cache=use_cache), TYPICAL)[0][0]
            for use_cache in (True, False)
        }
        assert outs[True] == outs[False]
        plain = generate_steered(reader, sae, {}, [PROMPT], greedy(positions=positions))[0][0]
        assert outs[True] != plain  # the steer is strong enough that agreement is not trivial


def test_transformer_lens_fallback_generates_the_same_tokens(reader, sae):
    tl_reader = dataclasses.replace(reader, hf_dir=None)
    cfg = greedy(max_new_tokens=6, min_new_tokens=6)
    hf_out = generate_steered(reader, sae, {FEAT: 0.3}, [PROMPT], cfg, TYPICAL)
    tl_out = generate_steered(tl_reader, sae, {FEAT: 0.3}, [PROMPT], cfg, TYPICAL)
    assert tl_out == hf_out


def test_positive_strength_raises_feature_on_output(reader, sae, target_token):
    res = steer(reader, sae, {FEAT: 1.0}, [PROMPT], greedy(), typical_acts=TYPICAL)
    st, un = res.get("steered"), res.get("unsteered")
    assert target_token in st.token_ids and target_token not in un.token_ids
    assert st.feature_mean[FEAT] > un.feature_mean[FEAT] + 0.05
    assert st.feature_max[FEAT] >= st.feature_mean[FEAT] > 0
    assert math.isfinite(st.perplexity) and math.isfinite(un.perplexity)
    summary = res.summary()
    assert summary.loc["steered", f"mean_act_{FEAT}"] > summary.loc["unsteered", f"mean_act_{FEAT}"]


def test_logits_move_along_logit_lens_tokens(reader, sae, target_token):
    lens = [t for t, _, _ in logit_lens(reader, sae, FEAT, k=5)]
    assert lens[0] == target_token
    ids = format_prompt(reader, PROMPT)

    def lens_logprob(strength: float) -> float:
        logits = steered_logits(reader, sae, {FEAT: strength} if strength else {}, ids, typical_acts=TYPICAL)
        return float(torch.log_softmax(logits[-1], -1)[lens].mean())

    base = lens_logprob(0.0)
    assert lens_logprob(0.5) > base + 0.1
    assert lens_logprob(-0.5) < base - 0.1


def test_generated_positions_leave_prompt_logits_unchanged(reader, sae):
    prompt = format_prompt(reader, PROMPT)
    P = len(prompt)
    ids = prompt + reader.tokenizer(" It is sunny and warm", add_special_tokens=False)["input_ids"]
    plain = steered_logits(reader, sae, {}, ids, P)
    gen = steered_logits(reader, sae, {FEAT: 0.5}, ids, P, positions="generated", typical_acts=TYPICAL)
    every = steered_logits(reader, sae, {FEAT: 0.5}, ids, P, positions="all", typical_acts=TYPICAL)
    assert torch.equal(gen[:P], plain[:P])
    assert not torch.allclose(gen[P:], plain[P:], atol=1e-3)
    assert not torch.allclose(every[:P], plain[:P], atol=1e-3)
    # In generation: the first new token comes from the unsteered prompt with "generated" only.
    first = {pos: generate_steered(reader, sae, {FEAT: 1.0}, [PROMPT], greedy(positions=pos), TYPICAL)[0][0]
             for pos in ("all", "generated")}
    unsteered = generate_steered(reader, sae, {}, [PROMPT], greedy())[0][0]
    assert first["generated"][0] == unsteered[0] and first["all"][0] != unsteered[0]
    assert first["generated"][1:] != unsteered[1:]


def test_strength_units_and_fallbacks(reader, sae, target_token):
    sc = feature_scale(sae, FEAT, {FEAT: 4.0}, strength=0.5)
    assert (sc.source, sc.unit, sc.raw_coef) == ("typical_acts", 4.0, 2.0)
    assert feature_scale(sae, FEAT).source == "unit_norm"
    biased = make_sae(reader, target_token, b_dec_scale=0.1)
    sc = feature_scale(biased, FEAT, strength=2.0)
    assert sc.source == "decoder_bias_norm" and sc.unit == pytest.approx(float(biased.b_dec.detach().norm()))
    assert sc.raw_coef == pytest.approx(2 * sc.unit) and "no typical activation" in sc.note
    res = steer(reader, sae, {FEAT: 0.5}, ["Hi"], greedy(max_new_tokens=2, min_new_tokens=0))
    assert res.scales[FEAT].source == "residual_norm"
    resid = residuals(reader, torch.tensor([res.prompt_ids[0]]), HOOK)[0, 1:]
    assert res.scales[FEAT].unit == pytest.approx(float(resid.norm(dim=-1).median()), rel=1e-4)


def test_strength_sweep_and_figure(reader, sae):
    df = strength_sweep(reader, sae, FEAT, [0.0, 0.1, 1.0], [PROMPT], greedy(max_new_tokens=6, min_new_tokens=6),
                        typical_acts=TYPICAL)
    assert list(df["strength"]) == [0.0, 0.1, 1.0]
    assert list(df["raw_coef"]) == pytest.approx([0.0, 0.1, 1.0])
    assert df["mean_feature_act"].iloc[2] > df["mean_feature_act"].iloc[0]
    assert df["mean_feature_act"].iloc[0] == pytest.approx(df["unsteered_mean_feature_act"].iloc[0])
    assert (df["n_tokens"] == 6).all() and (df["perplexity"] > 1).all()
    fig = sweep_figure(df)
    assert {t.yaxis for t in fig.data} == {"y", "y2"} and len(fig.data) == 4
