"""Steering on a tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer and an SAE with
fixed weights at blocks.1.hook_resid_post whose feature FEAT points along one token's embedding."""
from __future__ import annotations

import dataclasses
import statistics
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.dtypes import BF16_REL, assert_close_in, exact

from backend.models import DEFAULT_MODEL, cached_hf_dir, load_reader, prepare_builtin
from backend.runtime import residuals, runtime_for
from backend.steering import (
    GUIDE_TOP_K,
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
    assert_close_in(runtime_for(reader).dtype, residuals(reader, ids, HOOK), cache[HOOK], atol=1e-5, rtol=1e-4)
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_pre"):
        assert_close_in(runtime_for(reader).dtype, residuals(reader, ids, hook), cache[hook], atol=1e-5, rtol=1e-4)
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
    rel = 1e-4 if exact(runtime_for(reader).dtype) else BF16_REL
    assert res.scales[FEAT].unit == pytest.approx(float(resid.float().norm(dim=-1).median()), rel=rel)


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


# -- calibrated units, auto strength, batching, bad input ---------------------------------------------
from backend.runtime import runtime_for  # noqa: E402
from backend.steering import (  # noqa: E402
    MAX_ABS_STRENGTH, AutoConfig, SteeringError, generate_batch, resolve_scales, search_strength, steering_vector,
)
from backend.steering.auto import monotone_fit  # noqa: E402
from tests.tiny import make_tiny_model_dir, make_tiny_sae  # noqa: E402

PROMPTS3 = ["the movie was great", "hello", "python code with a function that will return a value and more"]


def residual_change(reader, sae, strengths: dict[int, float], typical: dict[int, float] | None, prompt: list[int]) -> float:
    """Median over positions of how far steering at the SAE's hook (blocks.0 resid_post) moves the residual that
    the next layer reads (blocks.1 resid_pre), read by a second hook."""
    runtime = runtime_for(reader)
    ids = torch.tensor([prompt])
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as steer_fw:
        plain = runtime.residuals(ids, "blocks.1.hook_resid_pre")[0, 1:]
        steer_fw.steer_with(steering_vector(sae, resolve_scales(steer_fw, sae, strengths, typical, [prompt])))
        with runtime.hooked("blocks.1.hook_resid_pre") as read_fw:
            steered = read_fw.residuals(ids)[0, 1:]
    return float((steered - plain).norm(dim=-1).median())


def test_residual_unit_gives_the_same_push_to_features_of_very_different_scales(tiny_reader):
    """Two features whose decoder norms differ 400x and p99 activations 15x: at strength 1.0 the old p99 unit
    moves the residual thousands of times more for one than the other; the residual unit moves both alike, by
    the median residual norm."""
    sae = make_tiny_sae(tiny_reader.name, hook="blocks.0.hook_resid_post")
    big, small = 3, 7
    with torch.no_grad():
        sae.W_dec[big] *= 20.0
        sae.W_dec[small] *= 0.05
    p99 = {big: 3.0, small: 0.2}
    prompt = format_prompt(tiny_reader, PROMPTS3[2])
    old = {f: residual_change(tiny_reader, sae, {f: 1.0}, p99, prompt) for f in (big, small)}
    new = {f: residual_change(tiny_reader, sae, {f: 1.0}, typical_units({}, "residual"), prompt) for f in (big, small)}
    assert old[big] / old[small] > 1000
    assert new[big] / new[small] == pytest.approx(1.0, rel=1e-3)
    resid = residuals(tiny_reader, torch.tensor([prompt]), "blocks.0.hook_resid_post")[0, 1:]
    assert new[big] == pytest.approx(float(resid.float().norm(dim=-1).median()), rel=1e-3 if exact(runtime_for(tiny_reader).dtype) else BF16_REL)


def test_workspace_steer_defaults_to_the_residual_unit_and_keeps_the_old_one(tiny_workspace_file):
    from backend.features import feature_table
    from backend.workspace import Workspace

    ws = Workspace.open(tiny_workspace_file)
    try:
        row = feature_table(ws, "t", sort_by="density", limit=1).iloc[0]
        f = int(row["feature_id"])
        cfg = greedy(max_new_tokens=2, min_new_tokens=2)
        new = ws.steer(["the movie"], {f: 0.5}, cfg, corpus="t")
        old = ws.steer(["the movie"], {f: 0.5}, cfg, corpus="t", unit="p99_act")
        with pytest.raises(SteeringError, match="unit must be one of"):
            ws.steer(["the movie"], {f: 0.5}, cfg, corpus="t", unit="lots")
    finally:
        ws.close()
    assert new.scales[f].source == "residual_norm" and old.scales[f].source == "typical_acts"
    assert old.scales[f].raw_coef == pytest.approx(0.5 * row["p99_act"], rel=1e-4)


def test_auto_search_brackets_then_bisects_with_a_fake_perplexity():
    calls: list[list[float]] = []

    def probe(strengths: list[float]) -> list[float]:  # perplexity ratio 1 + s^2: the bound 1.5 is crossed at 0.707
        calls.append(strengths)
        return [1 + s * s for s in strengths]

    found = search_strength(probe, AutoConfig(bound=1.5, rounds=2))
    assert 0.6 < found.strength <= 0.5 ** 0.5 and found.ratio <= 1.5
    assert len(calls) == 3 and len(calls[0]) == len(AutoConfig().grid)  # one grid batch, then two narrowing batches
    assert min(s for s, r in found.probes.items() if r > 1.5) - found.strength < 0.5 / 16 + 1e-9
    # Everything within the bound: the largest probe; everything past it: 0 (no steering).
    assert search_strength(lambda ss: [1.0] * len(ss)).strength == max(AutoConfig().grid)
    none = search_strength(lambda ss: [9.0] * len(ss))
    assert none.strength == 0.0 and "chose 0" in none.note
    assert search_strength(lambda ss: [float("nan")] * len(ss)).strength == 0.0  # NaN never counts as within


def test_auto_search_reads_noisy_probes_through_a_monotone_fit():
    """One unlucky probe at a small strength (1.66 at 0.0625, as a real run measured) must not stop the search
    when larger strengths pass: the first-failure rule stopped at 0.03125 here."""
    noisy = {0.03125: 1.1, 0.0625: 1.66, 0.125: 1.2, 0.25: 1.43, 0.5: 3.0, 1.0: 6.0, 2.0: 9.0, 4.0: 20.0, 8.0: float("inf")}
    found = search_strength(lambda ss: [noisy[s] for s in ss], AutoConfig(bound=1.5, rounds=0))
    assert found.strength == 0.25 and found.ratio <= 1.5
    # A real failure stays a failure: past the bound from some strength on, whatever the noise below it.
    rising = {0.03125: 1.05, 0.0625: 1.1, 0.125: 1.6, 0.25: 1.55, 0.5: 2.0, 1.0: 3.0, 2.0: 5.0, 4.0: 9.0, 8.0: 12.0}
    assert search_strength(lambda ss: [rising[s] for s in ss], AutoConfig(bound=1.5, rounds=0)).strength == 0.0625
    assert monotone_fit([3.0, 1.0, 2.0, 5.0]) == [2.0, 2.0, 2.0, 5.0]


def test_auto_strength_on_the_tiny_model_stays_within_the_bound(varied_reader):
    sae = make_tiny_sae(varied_reader.name)
    auto_cfg = AutoConfig(bound=1.5, probe_tokens=8, rounds=2)
    cfg = SteerConfig(n_samples=2, temperature=1.0, seed=5, max_new_tokens=8, min_new_tokens=8)
    res = steer(varied_reader, sae, {FEAT: "auto"}, PROMPTS3[:2], cfg, auto=auto_cfg)
    chosen = res.auto.strength
    assert res.features == {FEAT: chosen} and res.scales[FEAT].strength == chosen
    assert 0 < chosen < max(auto_cfg.grid)  # a real bracket: some strength passed the bound, some did not
    assert res.auto.probes[chosen] <= 1.5 and any(r > 1.5 for r in res.auto.probes.values())
    assert res.notes and res.notes[0].startswith("auto: chose")
    # The chosen strength measured again through the public run (same prompts, seeds, length; another batch, so
    # float rounding may flip a sampled token): within the bound.
    assert res.guide_top_k == GUIDE_TOP_K  # auto guides its probes and its run by default
    again = steer(varied_reader, sae, {FEAT: chosen}, PROMPTS3[:2], dataclasses.replace(cfg, guide=res.guide_top_k))

    def median_ppl(kind: str) -> float:  # the median auto bounds (`runs._median_ratio`): of 4, the middle two's mean
        return statistics.median(g.perplexity for g in again.generations if g.kind == kind)

    # bf16 rounds the probe's batch (several strengths) and this one differently; a flipped token among 8 also
    # changes what guided sampling reads next, so there the bound gets a tenth of slack
    assert median_ppl("steered") / median_ppl("unsteered") <= 1.5 * (1.0 if exact(runtime_for(varied_reader).dtype) else 1.1)


def test_auto_reports_how_often_the_feature_fired_in_its_probes(varied_reader):
    """result.auto.fires[s] is the share of probe generations where the feature fired at strength s (0: unsteered):
    the same figure a run with the probe's settings at that strength measures."""
    sae = make_tiny_sae(varied_reader.name)
    auto_cfg = AutoConfig(bound=1.5, probe_tokens=8, rounds=1, max_samples=2)
    cfg = SteerConfig(n_samples=2, temperature=1.0, seed=5, max_new_tokens=8, min_new_tokens=8)
    res = steer(varied_reader, sae, {FEAT: "auto"}, PROMPTS3[:2], cfg, auto=auto_cfg)
    assert set(res.auto.fires) == set(res.auto.probes) | {0.0}
    assert "fired in" in res.auto.note and res.auto.fire_share == res.auto.fires[res.auto.strength]
    most = max(res.auto.probes, key=lambda s: res.auto.fires[s])
    assert res.auto.fires[most] > res.auto.fires[0.0]  # some strength made it fire more than unsteered
    for s in (most, res.auto.strength):
        again = steer(varied_reader, sae, {FEAT: s}, PROMPTS3[:2], dataclasses.replace(cfg, guide=res.guide_top_k))
        shares = again.summary()[f"share_fires_{FEAT}"]
        assert res.auto.fires[s] == pytest.approx(float(shares["steered"]))
        assert res.auto.fires[0.0] == pytest.approx(float(shares["unsteered"]))


@pytest.fixture(scope="module")
def varied_reader(tmp_path_factory):
    """The tests/tiny.py Llama with larger weights, so greedy text varies from token to token (the default
    tiny model repeats one token, which would hide a padding bug)."""
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("varied_lm"), n_layers=2, initializer_range=0.3)
    return load_reader(str(folder), device="cpu")


def test_batched_generation_equals_unbatched_greedy_token_for_token(varied_reader):
    runtime = runtime_for(varied_reader)
    sae = make_tiny_sae(varied_reader.name)
    ids = [format_prompt(varied_reader, p) for p in PROMPTS3]
    assert len({len(i) for i in ids}) == 3  # different lengths: the batch is left-padded
    cfg = greedy(max_new_tokens=12, min_new_tokens=12)
    with torch.inference_mode(), runtime.hooked(sae.cfg.metadata.hook_name) as fw:
        stop = runtime.stop_token_ids()
        vec = steering_vector(sae, resolve_scales(fw, sae, {2: 0.5}, None, ids))
        vectors = [None, vec, None, vec]
        batched = generate_batch(fw, ids + ids[:1], vectors, [0] * 4, cfg, stop)
        single = [generate_batch(fw, [p], [v], [0], cfg, stop)[0] for p, v in zip(ids + ids[:1], vectors)]
    hf_single = []
    for p in ids:
        t = torch.tensor([p])
        with torch.inference_mode():
            out = runtime.hf.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=12, min_new_tokens=12,
                                      do_sample=False, pad_token_id=0)
        hf_single.append(out[0, len(p):].tolist())
    assert batched == single
    assert [batched[0], batched[2]] == [hf_single[0], hf_single[2]]  # unsteered rows: plain HF generate
    assert batched[1] != hf_single[1] and batched[3] != batched[0]  # the steered rows really are steered
    assert len({tuple(o) for o in batched}) == 4 and all(len(set(o)) > 3 for o in batched)  # varied text


def test_a_run_is_one_batched_generate(reader, sae, monkeypatch):
    import backend.steering.runs as runs

    calls = []
    real = runs.generate_batch

    def counting(forward, prompts, vectors, seeds, cfg, stop_ids, on_step=None, **kw):
        calls.append((len(prompts), sum(v is not None for v in vectors)))
        return real(forward, prompts, vectors, seeds, cfg, stop_ids, on_step, **kw)

    def no_reread(*args, **kw):
        raise AssertionError("the HF model's run measures what its generation recorded, without re-reading")

    monkeypatch.setattr(runs, "generate_batch", counting)
    monkeypatch.setattr(runs, "measure_outputs", no_reread)
    cfg = SteerConfig(n_samples=2, temperature=1.0, max_new_tokens=4)
    res = steer(reader, sae, {FEAT: 0.5}, [PROMPT, "Hi", "What is the capital of France?"], cfg, typical_acts=TYPICAL)
    assert calls == [(12, 6)]  # 3 prompts x 2 samples x (unsteered, steered)
    assert len(res.generations) == 12


@pytest.mark.parametrize("strength, match", [
    (float("nan"), "finite number between"), (float("inf"), "finite number between"), (-float("inf"), "finite"),
    (1e9, f"between -{MAX_ABS_STRENGTH:g} and {MAX_ABS_STRENGTH:g}"), ("lots", "a number or 'auto'"), (None, "a number"),
])
def test_bad_strengths_are_refused(reader, sae, strength, match):
    with pytest.raises(SteeringError, match=match):
        steer(reader, sae, {FEAT: strength}, [PROMPT], greedy())
    with pytest.raises(SteeringError, match=match):
        strength_sweep(reader, sae, FEAT, [0.0, strength], [PROMPT], greedy())
    with pytest.raises(SteeringError, match=match):
        SteerConfig(features={FEAT: strength})


@pytest.mark.parametrize("prompts, match", [
    ([], "at least one prompt"), ([""], "Prompt 1 is empty"), ([PROMPT, "  \n\t"], "Prompt 2 is empty"),
    ([PROMPT] * 65, "130 generations"), ([PROMPT, 5], "Prompt 2 is int 5, not text"),
])
def test_bad_prompts_are_refused(reader, sae, prompts, match):
    with pytest.raises(SteeringError, match=match):
        steer(reader, sae, {FEAT: 1.0}, prompts, greedy(n_samples=2))
    with pytest.raises(SteeringError, match=match):
        generate_steered(reader, sae, {FEAT: 1.0}, prompts, greedy(n_samples=2))


def test_generation_bounds_are_refused():
    with pytest.raises(SteeringError, match="max_new_tokens must be between 1 and 512"):
        SteerConfig(max_new_tokens=100_000)
    with pytest.raises(SteeringError, match="n_samples must be between 1 and 32"):
        SteerConfig(n_samples=1000)
    with pytest.raises(SteeringError, match="temperature"):
        SteerConfig(temperature=float("nan"))


def test_a_generation_that_raises_releases_the_lock_and_the_hook(reader, sae):
    import threading

    plain = generate_steered(reader, sae, {}, [PROMPT], greedy())

    def boom(kind, p, s, text):
        if len(text) > 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        steer(reader, sae, {FEAT: 2.0}, [PROMPT], greedy(), typical_acts=TYPICAL, on_token=boom)
    got = []
    other = threading.Thread(target=lambda: got.append(reader.lock.acquire(timeout=10) and reader.lock.release() is None))
    other.start()
    other.join(15)
    assert got == [True]  # another thread takes the model's lock at once
    assert generate_steered(reader, sae, {}, [PROMPT], greedy()) == plain  # no steering vector left in the hook
