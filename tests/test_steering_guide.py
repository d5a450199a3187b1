"""Guided sampling (backend.steering.guide): the candidates' activations at the hook are the unsteered model's,
a steered generation takes a candidate the feature fires on (once), and nothing else changes."""
from __future__ import annotations

import pytest
import torch

from tests.dtypes import assert_close_in
from tests.tiny import make_tiny_model_dir, make_tiny_sae

from backend.models import load_reader
from backend.runtime import runtime_for
from backend.steering import SteerConfig, format_prompt, marked_text, steer
from backend.steering.config import GUIDE_TOP_K, SteeringError
from backend.steering.guide import Guide

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["the movie was great", "hello", "python code with a function that will return a value and more"]
HOOK, FEATURE = "blocks.1.hook_resid_post", 7


@pytest.fixture(scope="module")
def deep_reader(tmp_path_factory):
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("guide_lm"), n_layers=4, initializer_range=0.3)
    return load_reader(str(folder), device="cpu")


def test_candidate_residuals_equal_a_full_forward_of_prefix_and_candidate(deep_reader):
    """Left-padded prompts in the cache; rows 2 and 0 read 3 candidates each: the hook's activation equals that of
    one unpadded forward of the prompt plus the candidate, and the cache is left as it was."""
    runtime = runtime_for(deep_reader)
    prompts = [format_prompt(deep_reader, p) for p in PROMPTS]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cands = torch.tensor([[5, 9, 11], [3, 4, 20]])
    with torch.inference_mode(), runtime.hooked(HOOK) as fw:
        cache = fw.new_cache(len(prompts))
        fw.logits(ids, cache, keep=1, attention_mask=mask, position_ids=pos)
        before = cache.get_seq_length()
        got = fw.candidate_residuals(cache, [2, 0], cands, mask, pos)
        assert cache.get_seq_length() == before
        for j, row in enumerate([2, 0]):
            for k in range(3):
                want = fw.residuals(torch.tensor([prompts[row] + [int(cands[j, k])]]))[0, -1]
                assert_close_in(runtime.dtype, got[j, k], want, atol=1e-4, rtol=1e-4)
        kept = cache.layers[:2]  # the layers up to the hook (blocks.1)
        one_by_one = fw._candidate_residuals_one_by_one(kept, [2, 0], cands, mask, pos)  # the sliding-window path
        assert_close_in(runtime.dtype, one_by_one, got, atol=1e-4, rtol=1e-4)
        alone = fw.new_cache(1)  # no padding, no mask
        fw.logits(torch.tensor([prompts[1]]), alone, keep=1)
        got = fw.candidate_residuals(alone, [0], cands[:1])
        for k in range(3):
            want = fw.residuals(torch.tensor([prompts[1] + [int(cands[0, k])]]))[0, -1]
            assert_close_in(runtime.dtype, got[0, k], want, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError):
            fw.candidate_residuals(None, [0], cands[:1])


def test_a_guide_keeps_a_firing_pick_else_takes_the_likeliest_firing_candidate_once():
    guide = Guide(lambda h: h, torch.tensor([0.5, 0.5]), top_k=3, rows=[True, True, False], seeds=[0, 1, 2])
    guide.draw = lambda row: draws.pop(0)  # type: ignore[method-assign]
    draws = [0.0, 0.0]
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    cands = torch.tensor([[10, 11, 12], [20, 21, 22]])
    acts = torch.zeros(2, 3, 2)
    acts[0, 1, 0] = acts[0, 2, 1] = 1.0  # row 0: token 11 fires feature 0, token 12 feature 1
    acts[1, 0, 1] = 1.0  # row 1: its own pick (20) fires feature 1
    picks = [10, 20, 30]
    assert guide.waiting([False, False, False]) == [0, 1]  # row 2 is unsteered: never guided
    guide.choose([0, 1], probs, cands, acts, picks, position=4)
    assert picks == [11, 20, 30] and guide.guided == [[4], [], []]
    assert guide.pending[0].tolist() == [False, True] and guide.pending[1].tolist() == [True, False]
    picks = [10, 21, 30]
    guide.choose([0, 1], probs, cands, torch.zeros(2, 3, 2), picks, position=5)
    assert picks == [10, 21, 30]  # nothing fires: the rows keep their picks
    acts = torch.zeros(2, 3, 2)
    acts[0, 1:, 1] = 1.0
    draws[:] = [0.99]
    guide.choose([0], probs[:1], cands[:1], acts[:1], picks, position=6)
    assert picks[0] == 12 and guide.guided[0] == [4, 6]  # a draw in proportion: 0.99 falls on the last one
    assert guide.waiting([False] * 3) == [1]


def test_before_its_start_a_guide_only_watches():
    """Until step `start` a row keeps its own pick: one that fires settles the feature (no pick later), one that
    does not stays pending; from `start` on a firing candidate replaces the row's own pick."""
    guide = Guide(lambda h: h, torch.tensor([0.5]), top_k=2, rows=[True, True], start=3)
    probs, cands = torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([[10, 11], [20, 21]])
    acts = torch.zeros(2, 2, 1)
    acts[0, 0, 0] = 1.0  # row 0: its own pick (10) fires
    acts[1, 1, 0] = 1.0  # row 1: only the other candidate (21) fires
    picks = [10, 20]
    guide.choose([0, 1], probs, cands, acts, picks, position=1)
    assert picks == [10, 20] and guide.guided == [[], []]
    assert guide.waiting([False, False]) == [1]  # row 0 showed the feature by itself
    guide.choose([1], probs[1:], cands[1:], acts[1:], picks, position=3)
    assert picks == [10, 21] and guide.guided == [[], [3]]
    with pytest.raises(ValueError):
        Guide(lambda h: h, torch.tensor([0.5]), top_k=2, rows=[True], start=-1)


def threshold_for(reader, sae) -> float:
    """A presence threshold that the feature passes on about one output token in 20 of the plain run."""
    runtime = runtime_for(reader)
    with torch.inference_mode():
        plain = steer(reader, sae, {FEATURE: 0.0}, PROMPTS, SteerConfig(n_samples=2, max_new_tokens=12, guide=0))
        ids = [format_prompt(reader, PROMPTS[g.prompt_idx]) + g.token_ids for g in plain.generations]
        acts = torch.cat([sae.encode(runtime.residuals(torch.tensor([i]), HOOK)[0, 1:].float())[:, FEATURE] for i in ids])
    return float(acts.quantile(0.95))


def test_guided_sampling_makes_the_feature_show_and_changes_nothing_else(deep_reader):
    """Planted: a threshold the feature rarely passes. Steered plainly it fires in few generations; guided (16
    candidates) it fires in every generation where a token was picked for it, in more generations than plainly,
    the unsteered rows are the same tokens, and each guided generation differs from no pick at all before its
    first guided position."""
    sae = make_tiny_sae(deep_reader.name, hook=HOOK)
    thr = threshold_for(deep_reader, sae)
    cfg = dict(n_samples=4, temperature=1.0, seed=3, max_new_tokens=12)
    plain = steer(deep_reader, sae, {FEATURE: 0.3}, PROMPTS, SteerConfig(**cfg, guide=0), fire_thresholds={FEATURE: thr})
    guided = steer(deep_reader, sae, {FEATURE: 0.3}, PROMPTS, SteerConfig(**cfg, guide=16), fire_thresholds={FEATURE: thr})
    share = {name: res.summary()[f"share_fires_{FEATURE}"]["steered"] for name, res in (("plain", plain), ("guided", guided))}
    assert share["guided"] > share["plain"] + 0.2, share
    assert guided.guide_top_k == 16 and plain.guide_top_k == 0
    steered = [(p, g) for p, g in zip(plain.generations, guided.generations) if g.kind == "steered"]
    assert any(g.guided for _, g in steered)
    for p, g in steered:
        assert len(g.guided) <= 1 and not p.guided
        if g.guided:
            assert g.fires[FEATURE]
            first = g.guided[0]
            assert g.token_ids[:first] == p.token_ids[:first] and g.token_ids[first] != p.token_ids[first]
    unsteered = [(p.token_ids, g.token_ids) for p, g in zip(plain.generations, guided.generations) if g.kind == "unsteered"]
    assert all(a == b for a, b in unsteered)
    assert any("Guided sampling" in n for n in guided.notes)
    g = next(g for _, g in steered if g.guided)
    token = deep_reader.tokenizer.decode(g.token_ids[g.guided[0]:g.guided[0] + 1])
    marked = marked_text(deep_reader, g)
    assert f"«{token}»" in marked and marked.replace("«", "").replace("»", "") == g.text
    assert guided.frame().query("kind == 'steered'")["n_guided"].sum() == sum(len(g.guided) for _, g in steered)


def test_guided_sampling_is_on_with_auto_strength_by_default_and_checked():
    cfg = SteerConfig()
    assert cfg.guide_top_k({1: "auto"}) == GUIDE_TOP_K and cfg.guide_top_k({1: 0.5}) == 0
    assert SteerConfig(guide=0).guide_top_k({1: "auto"}) == 0 and SteerConfig(guide=4).guide_top_k({1: 0.5}) == 4
    for bad in (-1, 10_000, True):
        with pytest.raises(SteeringError):
            SteerConfig(guide=bad)
    with pytest.raises(SteeringError):
        SteerConfig(guide=8, use_cache=False)
    assert SteerConfig(max_new_tokens=48, guide_wait=0.5).guide_start() == 24 and SteerConfig().guide_start() == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(SteeringError):
            SteerConfig(guide_wait=bad)


def test_a_feature_the_model_writes_by_itself_gets_fewer_picks_when_the_guide_waits(deep_reader):
    """Planted: a threshold the feature passes on about one output token in 20 of the plain run, so some
    generations show it by themselves. Guiding from the first token picks a token in more generations than
    guiding after half of them (`guide_wait`), and the waiting guide picks nothing before that."""
    sae = make_tiny_sae(deep_reader.name, hook=HOOK)
    thr = threshold_for(deep_reader, sae)
    cfg = dict(n_samples=4, temperature=1.0, seed=3, max_new_tokens=12, guide=16)
    runs = {wait: steer(deep_reader, sae, {FEATURE: 0.3}, PROMPTS, SteerConfig(**cfg, guide_wait=wait),
                        fire_thresholds={FEATURE: thr}) for wait in (0.0, 0.5)}
    picked = {w: sum(bool(g.guided) for g in r.generations if g.kind == "steered") for w, r in runs.items()}
    assert picked[0.5] < picked[0.0], picked
    late = [p for g in runs[0.5].generations for p in g.guided]
    assert late and min(late) >= 6  # no pick before half of the 12 new tokens
