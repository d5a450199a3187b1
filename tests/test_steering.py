"""Steering on a tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer and an SAE with
fixed weights at blocks.1.hook_resid_post whose feature FEAT points along one token's embedding."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

from backend.models import DEFAULT_MODEL, cached_hf_dir, load_reader, prepare_builtin
from backend.runtime import residuals
from backend.steering import (
    ActivationLevels,
    Generation,
    SteerConfig,
    SteerResult,
    concept_similarities,
    direction_top_logits,
    feature_scale,
    format_prompt,
    generate_steered,
    perplexity_warning,
    steer,
    steer_in_workspace,
    steered_logits,
    strength_sweep,
    typical_units,
)
from pages.charts import sweep_figure

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
    # The runtime reads residuals from the HF model; the reference is a full TransformerLens run.
    _, cache = reader.model.run_with_cache(ids, names_filter=lambda n: n.endswith("resid_pre") or n.endswith("resid_post"))
    torch.testing.assert_close(residuals(reader, ids, HOOK), cache[HOOK], atol=1e-5, rtol=1e-4)
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"):
        torch.testing.assert_close(residuals(reader, ids, hook), cache[hook], atol=1e-5, rtol=1e-4)
    # The two layers really differ, so a wrong layer index could not pass.
    assert not torch.allclose(residuals(reader, ids, HOOK), residuals(reader, ids, "blocks.1.hook_resid_pre"), atol=1e-3)


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
    lens = [t for t, _, _ in direction_top_logits(reader, sae, FEAT, k=5)]
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
    fig = sweep_figure(df)  # the page's chart: share firing on top; activation and perplexity (two axes) below
    assert {t.yaxis for t in fig.data} == {"y", "y2", "y3"} and len(fig.data) == 5
    assert list(fig.data[0].y) == list(df["share_fires"])
    assert list(df["share_fires"]) == [0.0, 0.0, 1.0]  # max-pooled: does it fire anywhere in the output
    assert df["unsteered_share_fires"].iloc[0] == 0.0 and not df["perplexity_warning"].iloc[0]
    assert df["unsteered_share_fires"].iloc[0] == df["share_fires"].iloc[0] and not df["perplexity_warning"].iloc[0]


# -- the max-pooled `fires` measure --------------------------------------------------------------------
NEVER = FEAT + 1


def separation(residual: torch.Tensor, position: int) -> tuple[torch.Tensor, float, float]:
    """(unit direction of one position's residual, its projection minus the best other position's, that best)."""
    direction = residual[position] - torch.cat([residual[:position], residual[position + 1:]]).mean(0)
    direction = direction / direction.norm()
    proj = residual @ direction
    others = torch.cat([proj[:position], proj[position + 1:]])
    return direction, float(proj[position] - others.max()), float(others.max())


def planted_sae(reader, residual: torch.Tensor):
    """A TopK SAE whose feature FEAT fires on exactly one output position (its encoder reads that position's
    residual direction, with a bias between that position and every other one) and whose other features
    never fire."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    fire_at = max(range(len(residual)), key=lambda p: separation(residual, p)[1])
    direction, gap, others_max = separation(residual, fire_at)
    assert gap > 0.05 * float(residual[fire_at].norm())  # the planted position is separable from the others
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, dtype="float32", device="cpu",
                                metadata=SAEMetadata(model_name=reader.name, hook_name=HOOK)))
    w_dec = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True))
        sae.W_enc.zero_()
        sae.W_enc[:, FEAT] = direction
        sae.b_enc.fill_(-1.0)
        sae.b_enc[FEAT] = -(others_max + gap / 2)
        sae.b_dec.zero_()
    return sae


def test_fires_is_max_pooled_over_the_output(reader, sae):
    cfg = SteerConfig(n_samples=1, temperature=1.0, seed=3, max_new_tokens=8, min_new_tokens=8)  # varied tokens
    first = steer(reader, sae, {FEAT: 0.0}, [PROMPT], cfg, typical_acts=TYPICAL)
    prompt, output = first.prompt_ids[0], first.get("unsteered").token_ids
    assert len(output) == 8
    resid = residuals(reader, torch.tensor([prompt + output]), HOOK)[0, len(prompt):]
    planted = planted_sae(reader, resid)
    res = steer(reader, planted, {FEAT: 0.0, NEVER: 0.0}, [PROMPT], cfg, typical_acts={FEAT: 1.0, NEVER: 1.0})
    for kind in ("unsteered", "steered"):
        g = res.get(kind)
        assert g.token_ids == output  # strength 0: the same text
        # The feature fires on one output token: per token it is 1 in 8, max-pooled it fires.
        assert g.feature_frac[FEAT] == pytest.approx(1 / 8) and g.feature_max[FEAT] > 0
        assert g.fires[FEAT] is True
        # A feature that never fires, at strength 0: not present.
        assert g.fires[NEVER] is False and g.feature_frac[NEVER] == 0.0 and g.feature_max[NEVER] == 0.0
    summary = res.summary()
    assert summary.loc["steered", f"share_fires_{FEAT}"] == 1.0 and summary.loc["steered", f"frac_active_{FEAT}"] == pytest.approx(1 / 8)
    assert summary.loc["steered", f"share_fires_{NEVER}"] == 0.0
    frame = res.frame()
    assert frame[f"fires_{FEAT}"].all() and not frame[f"fires_{NEVER}"].any()
    # The presence threshold follows the corpus rule (max > threshold): above the planted peak it does not fire.
    peak = res.get("steered").feature_max[FEAT]
    high = steer(reader, planted, {FEAT: 0.0}, [PROMPT], cfg, typical_acts={FEAT: 1.0}, fire_thresholds={FEAT: peak * 1.01})
    assert high.get("steered").fires[FEAT] is False


def test_perplexity_warning_flag():
    assert perplexity_warning(2.1, 1.0) and not perplexity_warning(2.0, 1.0) and not perplexity_warning(1.5, 1.0)
    assert not perplexity_warning(float("nan"), 1.0) and perplexity_warning(31.0, 10.0, factor=3.0)

    def gen(kind: str, nll: float) -> Generation:
        return Generation(kind=kind, prompt_idx=0, sample_idx=0, seed=0, text="x", token_ids=[1, 2], stopped=False,
                          feature_mean={FEAT: 0.0}, feature_max={FEAT: 0.0}, feature_frac={FEAT: 0.0}, nll=nll,
                          feature_sum={FEAT: 0.0}, fires={FEAT: False})

    def result(steered_ppl: float) -> SteerResult:
        gens = [gen("unsteered", math.log(10.0)), gen("steered", math.log(steered_ppl))]
        return SteerResult([PROMPT], [[0]], {FEAT: 1.0}, {}, greedy(), HOOK, "cpu", "hf", gens, 0.0)

    assert result(25.0).perplexity_warning and not result(15.0).perplexity_warning
    assert result(25.0).summary().loc["steered", "perplexity"] == pytest.approx(25.0)


def test_typical_units_follow_the_chosen_level():
    levels = {1: ActivationLevels(p99_act=2.0, max_act=5.0), 2: ActivationLevels(p99_act=None, max_act=3.0),
              3: ActivationLevels(p99_act=0.0, max_act=0.0), 4: ActivationLevels()}
    assert typical_units(levels, "p99_act") == {1: 2.0, 2: 3.0}
    assert typical_units(levels, "max_act") == {1: 5.0, 2: 3.0}
    with pytest.raises(ValueError, match="unit must be one of"):
        typical_units(levels, "mean_act")  # type: ignore[arg-type]


def test_concept_similarity_follows_the_concept(reader, sae):
    pytest.importorskip("sentence_transformers")
    contexts = ["the ocean waves crashed on the beach", "we sailed across the sea", "fish swim in the deep ocean"]
    sims = concept_similarities(["the sea was calm and blue", "my tax form is due on monday", ""], contexts)
    assert sims[0] > sims[1] + 0.2 and math.isnan(sims[2])
    cfg = SteerConfig(n_samples=1, temperature=1.0, seed=3, max_new_tokens=4, min_new_tokens=4)
    res = steer(reader, sae, {FEAT: 0.0}, [PROMPT], cfg, typical_acts=TYPICAL, concept_texts={FEAT: contexts})
    u, s = res.get("unsteered"), res.get("steered")
    assert math.isfinite(u.concept_similarity[FEAT]) and s.concept_similarity[FEAT] == pytest.approx(u.concept_similarity[FEAT])


def test_renamed_and_moved_names():
    import backend.steering as steering

    with pytest.warns(DeprecationWarning, match="direction_top_logits"):
        assert steering.logit_lens is direction_top_logits
    with pytest.raises(AttributeError, match="pages.charts"):
        steering.sweep_figure  # noqa: B018


def test_steer_in_workspace_uses_corpus_units_and_contexts(tiny_workspace_file):
    from backend.features import feature_table
    from backend.workspace import Workspace

    ws = Workspace.open(tiny_workspace_file)
    try:
        row = feature_table(ws, "t", sort_by="density", limit=1).iloc[0]
        f = int(row["feature_id"])
        res = steer_in_workspace(ws, ["the movie"], {f: 0.5}, greedy(max_new_tokens=3, min_new_tokens=3), corpus="t",
                                 unit="p99_act")
    finally:
        ws.close()
    assert res.scales[f].source == "typical_acts" and res.scales[f].raw_coef == pytest.approx(0.5 * row["p99_act"], rel=1e-4)
    assert set(res.get("steered").fires) == {f} and not res.notes
    assert f in res.get("steered").concept_similarity  # measured against the feature's top contexts in 't'
