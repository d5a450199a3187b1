"""Steering measures from what the generation recorded (the hook's activation before the vector, the step
logits, the layers after the hook on the captured activations) equal the measures of re-reading every output
with the unsteered model, on a 4-layer tiny Llama with the hook in the middle (so layers run on both sides)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.dtypes import BF16_REL, assert_close_in, exact
from tests.tiny import make_tiny_model_dir, make_tiny_sae

from backend.models import load_reader
from backend.runtime import HookedForward, HookState, runtime_for
from backend.steering import SteerConfig, format_prompt, resolve_scales, steer, steering_vector
from backend.steering.measures import OutputMeasures
from backend.steering.runs import _Variants
from backend.steering.units import median_resid_norm

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["the movie was great", "hello", "python code with a function that will return a value and more"]
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"]  # layers 2 and 3 after the hook; 0 and 1 before
STEER, FEATS = 2, [2, 5, 9, 40]


@pytest.fixture(scope="module")
def deep_reader(tmp_path_factory):
    """A 4-layer Llama with the tiny tokenizer and large weights, so sampled text varies."""
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("deep_lm"), n_layers=4, initializer_range=0.3)
    return load_reader(str(folder), device="cpu")


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("hook", HOOKS)
def test_layers_after_the_hook_give_the_full_forward_logits(deep_reader, hook):
    runtime = runtime_for(deep_reader)
    prompts = [format_prompt(deep_reader, p) for p in PROMPTS]
    ids, mask, pos = left_padded(prompts)
    real = mask.bool()
    assert not real.all()  # the batch is left-padded
    with torch.inference_mode(), runtime.hooked(hook) as fw:
        full = fw.logits(ids, attention_mask=mask, position_ids=pos)
        resid = fw.residuals(ids, mask, pos)
        upper = fw.logits_from_hook(resid, mask, pos)
        last3 = fw.logits_from_hook(resid, mask, pos, keep=3)
        unmasked = fw.logits_from_hook(resid)  # control: the padding mask matters
        one = fw.logits_from_hook(fw.residuals(torch.tensor([prompts[0]])))  # no padding, no mask
        one_full = fw.logits(torch.tensor([prompts[0]]))
    assert_close_in(runtime.dtype, upper[real], full[real], atol=1e-4, rtol=1e-4)
    assert_close_in(runtime.dtype, last3, upper[:, -3:], atol=1e-5, rtol=1e-5)
    assert_close_in(runtime.dtype, one, one_full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(unmasked[real].float(), full[real].float(), atol=1e-2)


def measure_table(measures: dict[tuple[int, int], list[OutputMeasures]], feats: list[int]) -> torch.Tensor:
    """[generations, 4 * F + 1]: mean, max, frac, sum per feature and the NLL of every non-empty output."""
    rows = [[*(m.mean[f] for f in feats), *(m.max[f] for f in feats), *(m.frac[f] for f in feats),
             *(m.sum[f] for f in feats), m.nll]
            for key in sorted(measures) for m in measures[key] if m.nll == m.nll]
    return torch.tensor(rows)


def recorded_and_reread(reader, hook: str, cfg: SteerConfig, extra_stop: bool = True):
    """(outputs with a record, outputs without, recorded measures, re-read measures, thresholds) of one
    unsteered + steered batch; with `extra_stop`, a token that the first sample picks early also stops rows."""
    sae = make_tiny_sae(reader.name, hook=hook)
    runtime = runtime_for(reader)
    prompt_ids = [format_prompt(reader, p) for p in PROMPTS]
    with torch.inference_mode(), runtime.hooked(hook) as fw:
        stop = runtime.stop_token_ids()
        vec = steering_vector(sae, resolve_scales(fw, sae, {STEER: 1.0}, None, prompt_ids))
        variants = _Variants([None, vec], prompt_ids, cfg)
        if extra_stop:
            stop = stop | {variants.generate(fw, stop)[(0, 0)][0][3]}
        plain = variants.generate(fw, stop)
        # thresholds between the re-read peaks, so `fires` is true for some outputs and false for others
        probe = variants.measured(fw, sae, plain, FEATS, {})
        peaks = {f: sorted(m.max[f] for ms in probe.values() for m in ms if m.nll == m.nll) for f in FEATS}
        thresholds = {f: (p[len(p) // 2 - 1] + p[len(p) // 2]) / 2 for f, p in peaks.items()}
        outs, got = variants.run(fw, sae, stop, FEATS, thresholds)
        want = variants.measured(fw, sae, outs, FEATS, thresholds)
    return outs, plain, got, want, thresholds


def assert_measures_agree(dtype, got, want, thresholds) -> None:
    assert_close_in(dtype, measure_table(got, FEATS), measure_table(want, FEATS), atol=1e-4, rtol=1e-4)
    for key in want:
        for g, w in zip(got[key], want[key]):
            for f in FEATS:  # presence agrees wherever the peak is not within rounding of the threshold
                if exact(dtype) or abs(w.max[f] - thresholds[f]) > BF16_REL * max(abs(w.max[f]), 1e-3):
                    assert g.fires[f] == w.fires[f], (key, f)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("positions, use_cache", [("all", True), ("generated", True), ("all", False)])
def test_recorded_measures_equal_the_reread(deep_reader, hook, positions, use_cache):
    cfg = SteerConfig(n_samples=2, temperature=1.0, seed=4, max_new_tokens=10, min_new_tokens=0, positions=positions,
                      use_cache=use_cache)
    outs, plain, got, want, thresholds = recorded_and_reread(deep_reader, hook, cfg)
    assert outs == plain  # recording changes no token
    lengths = [len(o) for os in outs.values() for o in os]
    assert min(lengths) < cfg.max_new_tokens == max(lengths)  # some rows stopped early, some ran to the end
    assert outs[(0, 0)] != outs[(1, 0)]  # the steered rows really are steered
    assert_measures_agree(runtime_for(deep_reader).dtype, got, want, thresholds)
    fires = [m.fires[f] for ms in want.values() for m in ms for f in FEATS]
    assert any(fires) and not all(fires)


def test_without_the_upper_layers_path_a_full_forward_gives_the_same(deep_reader, monkeypatch):
    monkeypatch.setattr(HookedForward, "runs_from_hook", property(lambda self: False))
    called = []
    monkeypatch.setattr(HookedForward, "logits_from_hook", lambda *a, **k: called.append(1))
    cfg = SteerConfig(n_samples=2, temperature=1.0, seed=4, max_new_tokens=8)
    outs, plain, got, want, thresholds = recorded_and_reread(deep_reader, HOOKS[0], cfg)
    assert outs == plain and not called
    assert_measures_agree(runtime_for(deep_reader).dtype, got, want, thresholds)


def test_capturing_after_the_vector_is_caught(deep_reader, monkeypatch):
    """Control: a hook that captured the steered activation (after the vector) would give the steered rows other
    activations than the re-read, so the agreement above is not trivial; the unsteered rows would still agree."""
    real_apply = HookState.apply

    def capture_after(self: HookState, h: torch.Tensor) -> torch.Tensor | None:
        capture, self.capture = self.capture, False
        new = real_apply(self, h)
        if capture:
            self.captured = h if new is None else new
        return new

    monkeypatch.setattr(HookState, "apply", capture_after)
    cfg = SteerConfig(n_samples=2, temperature=1.0, seed=4, max_new_tokens=8)
    _, _, got, want, _ = recorded_and_reread(deep_reader, HOOKS[0], cfg, extra_stop=False)
    unsteered = {k: v for k, v in got.items() if k[0] == 0}
    assert_close_in(runtime_for(deep_reader).dtype, measure_table(unsteered, FEATS),
                    measure_table({k: want[k] for k in unsteered}, FEATS), atol=1e-4, rtol=1e-4)
    steered = {k: v for k, v in got.items() if k[0] == 1}
    diff = (measure_table(steered, FEATS) - measure_table({k: want[k] for k in steered}, FEATS)).abs().max()
    assert float(diff) > 0.05


def test_public_runs_measure_alike_on_hf_and_transformer_lens(deep_reader):
    """steer() on the HF model (recorded measures) and on the TransformerLens fallback (re-read): same tokens
    (greedy), same measures. In bf16 the two models round differently and may break a greedy near-tie, so there
    only the generations with the same tokens are compared."""
    tl_reader = dataclasses.replace(deep_reader, hf_dir=None)
    sae = make_tiny_sae(deep_reader.name, hook=HOOKS[0])
    cfg = SteerConfig(n_samples=1, temperature=0.0, max_new_tokens=6, min_new_tokens=6)
    hf = steer(deep_reader, sae, {STEER: 0.5}, PROMPTS, cfg)
    tl = steer(tl_reader, sae, {STEER: 0.5}, PROMPTS, cfg)
    assert hf.backend == "hf" and tl.backend == "transformer_lens"
    dtype = runtime_for(deep_reader).dtype
    same = [k for k, (a, b) in enumerate(zip(hf.generations, tl.generations)) if a.token_ids == b.token_ids]
    assert len(same) == len(hf.generations) if exact(dtype) else len(same) >= 2

    def table(res) -> torch.Tensor:
        return torch.tensor([[g.feature_mean[STEER], g.feature_max[STEER], g.nll] for g in (res.generations[k] for k in same)])

    assert_close_in(dtype, table(hf), table(tl), atol=1e-4, rtol=1e-4)


def test_batched_residual_norm_equals_one_forward_per_prompt(deep_reader):
    """The median over every prompt position but each prompt's first, from one left-padded forward, equals the
    median of one forward per prompt (HF and TransformerLens), for every pair of prompts and all three."""
    runtime = runtime_for(deep_reader)
    prompts = [format_prompt(deep_reader, p) for p in PROMPTS]
    rel = 1e-5 if exact(runtime.dtype) else BF16_REL
    norms = [runtime.residuals(torch.tensor([p]), HOOKS[0])[0, 1:].float().norm(dim=-1) for p in prompts]
    for subset in ([0, 1], [1, 2], [0, 2], [0, 1, 2]):
        want = float(torch.cat([norms[i] for i in subset]).median())
        with torch.inference_mode(), runtime.hooked(HOOKS[0]) as fw:
            batched = median_resid_norm(fw, [prompts[i] for i in subset])
        with torch.inference_mode(), runtime.hooked(HOOKS[0], prefer_hf=False) as fw:
            assert fw.backend == "transformer_lens"
            looped = median_resid_norm(fw, [prompts[i] for i in subset])
        assert batched == pytest.approx(want, rel=rel) and looped == pytest.approx(want, rel=rel), subset


def test_recorded_measures_equal_the_reread_on_the_real_model(real_reader, real_sae):
    from backend.config import DEFAULT_HOOK

    runtime = runtime_for(real_reader)
    prompt_ids = [format_prompt(real_reader, p) for p in ["Tell me about the ocean.", "Hi"]]
    cfg = SteerConfig(n_samples=1, temperature=1.0, seed=1, max_new_tokens=8, min_new_tokens=8)
    feats = [100, 2000]
    with torch.inference_mode(), runtime.hooked(DEFAULT_HOOK) as fw:
        assert fw.runs_from_hook
        stop = runtime.stop_token_ids()
        vec = steering_vector(real_sae, resolve_scales(fw, real_sae, {100: 0.5}, None, prompt_ids))
        variants = _Variants([None, vec], prompt_ids, cfg)
        outs, got = variants.run(fw, real_sae, stop, feats, {f: 0.0 for f in feats})
        want = variants.measured(fw, real_sae, outs, feats, {f: 0.0 for f in feats})
    assert outs[(0, 0)] != outs[(1, 0)]
    assert_close_in(runtime.dtype, measure_table(got, feats), measure_table(want, feats), atol=1e-3, rtol=1e-3)
