"""AppTest checks of pages/steering.py on the tiny workspace (2-layer Llama, 64-feature TopK SAE)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

PAGE = str(ROOT / "pages" / "steering.py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def feature(tiny_workspace_file) -> dict:
    """The densest feature of corpus 't' with its 99th-percentile activation."""
    from backend.features import feature_table
    from backend.workspace import Workspace

    ws = Workspace.open(tiny_workspace_file)
    try:
        tab = feature_table(ws, "t", sort_by="density", limit=1)
    finally:
        ws.close()
    row = tab.iloc[0]
    assert row["p99_act"] > 0
    return {"id": int(row["feature_id"]), "p99": float(row["p99_act"])}


def page(tiny_workspace_file, feature) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["workspace_path"] = str(tiny_workspace_file)
    at.session_state["corpus"] = "t"
    at.session_state["feature_id"] = feature["id"]
    return at.run()


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def generation_texts(at: AppTest) -> dict[str, list[str]]:
    """Texts of the 'Unsteered' and 'Steered' columns, sample by sample."""
    out = {}
    for col in at.columns:
        heads = [m.value for m in col.markdown]
        for title in ("Unsteered", "Steered"):
            if f"#### {title}" in heads:
                out[title] = [t.value for t in col.text]
    return out


def set_generation(at: AppTest, n: int = 2, max_new: int = 4, temperature: float = 0.8, seed: int = 3) -> None:
    at.number_input(key="steer_n").set_value(n)
    at.number_input(key="steer_max_new").set_value(max_new)
    at.number_input(key="steer_temp").set_value(temperature)
    at.number_input(key="steer_seed").set_value(seed)


def by_hand(at: AppTest, f: int, strength: float, unit: str = "p99_act") -> AppTest:
    """Turn auto off for feature f, pick the unit, set the strength slider."""
    at.toggle(key=f"steer_auto_{f}").set_value(False)
    at.radio(key="steer_unit").set_value(unit)
    at.run()
    at.slider(key=f"steer_strength_{f}").set_value(strength)
    return at


def test_renders_preselected_feature_with_raw_coefficient(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    no_errors(at)
    f = feature["id"]
    assert at.session_state["steer_features"] == [f]
    assert any(m.value == f"**Feature {f}**" for m in at.markdown)
    # Auto by default (the slider is off), in the residual unit.
    assert at.toggle(key=f"steer_auto_{f}").value is True and at.slider(key=f"steer_strength_{f}").disabled
    assert at.radio(key="steer_unit").value == "residual"
    assert [m.value for m in at.metric if m.label == "Raw coefficient"] == ["auto"]
    assert any("Device: **CPU**" in c.value for c in at.caption)
    # By hand in the old unit: the coefficient is strength x the p99 activation.
    by_hand(at, f, 1.0).run()
    coef = [m for m in at.metric if m.label == "Raw coefficient"]
    assert len(coef) == 1 and float(coef[0].value) == pytest.approx(feature["p99"], rel=1e-3)
    at.slider(key=f"steer_strength_{f}").set_value(-0.5).run()
    coef = [m for m in at.metric if m.label == "Raw coefficient"]
    assert float(coef[0].value) == pytest.approx(-0.5 * feature["p99"], rel=1e-3)
    # The maximum activation can be the unit instead.
    at.radio(key="steer_unit").set_value("max_act").run()
    assert float([m for m in at.metric if m.label == "Raw coefficient"][0].value) <= -0.5 * feature["p99"] + 1e-6
    # The residual unit says what it adds (known once the prompt is read).
    at.radio(key="steer_unit").set_value("residual").run()
    assert [m.value for m in at.metric if m.label == "Added norm"] == ["-0.5 x resid"]


def generated_at_strength_two(path, feature):
    """The page after generating 2 samples of 4 tokens at strength 2.0 (p99 unit): (AppTest, the steer result)."""
    at = page(path, feature)
    set_generation(at, n=2, max_new=4)
    by_hand(at, feature["id"], 2.0)
    at.button(key="steer_generate").click().run()
    no_errors(at)
    return at, at.session_state["steer_result"]


def test_auto_is_the_default_and_the_chosen_strength_is_shown(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    f = feature["id"]
    set_generation(at, n=1, max_new=4)
    at.button(key="steer_generate").click().run()
    no_errors(at)
    res = at.session_state["steer_result"]
    assert res.auto is not None and res.features == {f: res.auto.strength}
    assert res.scales[f].source == "residual_norm" and res.scales[f].strength == res.auto.strength
    shown = next(m for m in at.metric if m.label == "Auto strength")
    assert shown.value == f"{res.auto.strength:.3g}"
    probes = next(d.value for d in at.dataframe if "perplexity ratio" in d.value.columns)
    assert len(probes) == len(res.auto.probes) and res.auto.strength in list(probes["strength"]) + [0.0]
    assert list(probes.sort_values("strength")["fires in probes"]) == [res.auto.fires[s] for s in sorted(res.auto.probes)]
    rare = [c.value for c in at.caption if "fired in only" in c.value]
    assert bool(rare) == (res.auto.fire_share < 0.5)


def test_auto_guides_sampling_unless_turned_off(tiny_workspace_file, feature):
    from backend.steering import GUIDE_TOP_K

    at = page(tiny_workspace_file, feature)
    set_generation(at, n=1, max_new=4)
    assert at.selectbox(key="steer_guide").value == "with auto strength"
    at.button(key="steer_generate").click().run()
    no_errors(at)
    assert at.session_state["steer_result"].guide_top_k == GUIDE_TOP_K
    assert any("Guided sampling" in c.value for c in at.caption)
    at.selectbox(key="steer_guide").set_value("off")
    at.button(key="steer_generate").click().run()
    no_errors(at)
    assert at.session_state["steer_result"].guide_top_k == 0
    assert not any("Guided sampling" in c.value for c in at.caption)


def test_generate_shows_both_columns_and_measures(tiny_workspace_file, feature):
    at, res = generated_at_strength_two(tiny_workspace_file, feature)
    f = feature["id"]
    texts = generation_texts(at)
    assert len(texts["Unsteered"]) == 2 and len(texts["Steered"]) == 2
    for i in range(2):
        u, s = res.get("unsteered", 0, i), res.get("steered", 0, i)
        assert u.seed == s.seed == 3 + i
        assert 0 < u.n_tokens <= 4 and 0 < s.n_tokens <= 4
        assert texts["Unsteered"][i] == u.text and texts["Steered"][i] == s.text
    assert res.scales[f].raw_coef == pytest.approx(2.0 * feature["p99"], rel=1e-4)
    assert res.device == "cpu"
    table = next(d.value for d in at.dataframe if "perplexity · steered" in d.value.columns)
    assert list(table["sample"]) == [1, 2] and list(table["seed"]) == [3, 4]
    assert all(math.isfinite(x) and x >= 1 for x in table["perplexity · steered"])
    assert all(math.isfinite(x) and x >= 1 for x in table["perplexity · unsteered"])
    assert f"#{f} mean act · steered" in table.columns and f"#{f} mean act · unsteered" in table.columns
    assert list(table[f"#{f} mean act · steered"]) == pytest.approx([res.get("steered", 0, i).feature_mean[f] for i in range(2)])
    assert any("Ran on **cpu**" in c.value for c in at.caption)
    # A rerun without clicking keeps the last result on screen.
    at.run()
    assert generation_texts(at) == texts


def test_generation_shows_the_fires_share(tiny_workspace_file, feature):
    at, res = generated_at_strength_two(tiny_workspace_file, feature)
    f = feature["id"]
    share = sum(res.get("steered", 0, i).fires[f] for i in range(2)) / 2
    metric = next(m for m in at.metric if m.label == f"#{f} fires in (steered)")
    assert metric.value == f"{share:.0%}"
    table = next(d.value for d in at.dataframe if "perplexity · steered" in d.value.columns)
    assert list(table[f"#{f} fires · steered"]) == [res.get("steered", 0, i).fires[f] for i in range(2)]
    assert f"#{f} concept similarity · steered" in table.columns


def test_perplexity_warning_is_shown(tiny_workspace_file, feature):
    """A stored result whose steered perplexity is 3x the unsteered one shows the warning; 1.5x does not."""
    from backend.steering import Generation, SteerConfig, SteerResult

    f = feature["id"]

    def result(ratio: float) -> SteerResult:
        def gen(kind: str, ppl: float) -> Generation:
            return Generation(kind=kind, prompt_idx=0, sample_idx=0, seed=0, text=f"{kind} text", token_ids=[1, 2],
                              stopped=False, feature_mean={f: 0.1}, feature_max={f: 0.2}, feature_frac={f: 0.5},
                              nll=math.log(ppl), feature_sum={f: 0.2}, fires={f: kind == "steered"})
        return SteerResult(["hi"], [[0]], {f: 1.0}, {}, SteerConfig(n_samples=1), "blocks.1.hook_resid_post", "cpu",
                           "hf", [gen("unsteered", 10.0), gen("steered", 10.0 * ratio)], 0.1)

    for ratio, warned in ((3.0, True), (1.5, False)):
        at = AppTest.from_file(PAGE, default_timeout=180)
        at.session_state["workspace_path"] = str(tiny_workspace_file)
        at.session_state["corpus"] = "t"
        at.session_state["feature_id"] = f
        at.session_state["steer_result"] = result(ratio)
        at.run()
        no_errors(at)
        assert any("perplexity is 3.0×" in w.value for w in at.warning) == warned
        assert not any("perplexity is" in w.value for w in at.warning) or warned
        assert next(m for m in at.metric if m.label == f"#{f} fires in (steered)").value == "100%"


def test_strong_greedy_steer_changes_text_and_raises_feature(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    f = feature["id"]
    set_generation(at, n=1, max_new=6, temperature=0.0)
    by_hand(at, f, 2.0)
    at.button(key="steer_generate").click().run()
    no_errors(at)
    texts = generation_texts(at)
    assert texts["Steered"] != texts["Unsteered"]
    table = next(d.value for d in at.dataframe if "perplexity · steered" in d.value.columns)
    assert table[f"#{f} mean act · steered"].iloc[0] > table[f"#{f} mean act · unsteered"].iloc[0]


def test_zero_strength_gives_identical_text(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    f = feature["id"]
    set_generation(at, n=2, max_new=5, temperature=1.0, seed=11)
    by_hand(at, f, 0.0)
    at.button(key="steer_generate").click().run()
    no_errors(at)
    texts = generation_texts(at)
    assert len(texts["Steered"]) == 2 and texts["Steered"] == texts["Unsteered"]
    table = next(d.value for d in at.dataframe if "perplexity · steered" in d.value.columns)
    assert list(table["perplexity · steered"]) == pytest.approx(list(table["perplexity · unsteered"]))
    assert list(table[f"#{f} mean act · steered"]) == pytest.approx(list(table[f"#{f} mean act · unsteered"]), nan_ok=True)


def test_strength_sweep_renders_chart_and_table(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    set_generation(at, n=1, max_new=3, temperature=0.0)
    at.radio(key="steer_unit").set_value("p99_act")
    at.text_input(key="steer_sweep_strengths").set_value("0, 1, 3")
    at.button(key="steer_sweep_run").click().run()
    no_errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    df = at.session_state["steer_sweep"]
    assert list(df["strength"]) == [0.0, 1.0, 3.0]
    assert list(df["raw_coef"]) == pytest.approx([0.0, feature["p99"], 3 * feature["p99"]], rel=1e-4)
    shown = next(d.value for d in at.dataframe if "raw_coef" in d.value.columns)
    assert list(shown["strength"]) == [0.0, 1.0, 3.0] and (shown["n_tokens"] > 0).all()


def test_bad_sweep_strengths_show_an_error(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    at.text_input(key="steer_sweep_strengths").set_value("0, lots").run()
    assert any("Strengths must be numbers" in e.value for e in at.error)
    assert at.button(key="steer_sweep_run").disabled


def test_add_features_by_id_and_search_then_remove(tiny_workspace_file, feature):
    at = page(tiny_workspace_file, feature)
    f = feature["id"]
    other = (f + 1) % 64
    at.number_input(key="steer_add_id").set_value(other)
    at.button(key="steer_add_id_btn").click().run()
    no_errors(at)
    assert at.session_state["steer_features"] == [f, other]
    assert at.slider(key=f"steer_strength_{other}").value == 0.3 and at.toggle(key=f"steer_auto_{other}").value
    # Search by meaning lists matches with labels; adding one puts it in the list with its own slider.
    at.text_input(key="steer_search").set_value("movie film").run()
    no_errors(at)
    pick = at.selectbox(key="steer_search_pick")
    assert len(pick.options) > 0
    choice = next(o for o in pick.options if not o.startswith((f"#{f} ", f"#{other} ")))
    hit = int(choice.split(" ")[0][1:])
    pick.set_value(hit)
    at.button(key="steer_search_add").click().run()
    no_errors(at)
    assert at.session_state["steer_features"] == [f, other, hit]
    assert len([m for m in at.metric if m.label == "Raw coefficient"]) == 3
    # Removing the preselected feature does not bring it back on the next rerun.
    at.button(key=f"steer_rm_{f}").click().run()
    at.run()
    assert at.session_state["steer_features"] == [other, hit]
    sweep_opts = at.selectbox(key="steer_sweep_feature").options
    assert [int(o.split(" ")[0][1:]) for o in sweep_opts] == [other, hit]
    assert not [m for m in at.metric if m.label == "Raw coefficient"][2:]


def test_real_model_generates_side_by_side(real_ws_path):
    """The default SmolLM2 workspace (skipped until its SAE is in data/sae/): a short run end to end."""
    from backend.features import feature_table
    from backend.workspace import Workspace

    ws = Workspace.open(real_ws_path)
    try:
        f = int(feature_table(ws, "demo", sort_by="density", limit=1)["feature_id"].iloc[0])
    finally:
        ws.close()
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.session_state["workspace_path"] = str(real_ws_path)
    at.session_state["corpus"] = "demo"
    at.session_state["feature_id"] = f
    at.run()
    no_errors(at)
    set_generation(at, n=1, max_new=4, temperature=0.0)
    at.button(key="steer_generate").click().run()
    no_errors(at)
    texts = generation_texts(at)
    assert len(texts["Unsteered"]) == len(texts["Steered"]) == 1
    res = at.session_state["steer_result"]
    assert res.get("unsteered").n_tokens > 0 and res.scales[f].source == "residual_norm"
    assert res.auto is not None and res.features[f] == res.auto.strength
