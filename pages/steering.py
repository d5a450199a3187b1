"""Steering: push the model along one or more SAE features while it generates, and measure whether it
worked (does the feature fire on the output, judged as a document is; how strongly; does the text follow
the concept) and what it cost (perplexity under the plain model).

Layout and widgets only; units, generation and measures are backend.steering calls."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from backend.config import pick_device
from backend.errors import UserError
from backend.search import SearchModelMissing, search_features
from backend.steering import (
    AUTO, GUIDE_TOP_K, UNIT_KINDS, SteerConfig, SteerResult, activation_levels, feature_scale, marked_text,
    steer_in_workspace, sweep_in_workspace, typical_units,
)
from backend.steering.auto import DEFAULT_BOUND
from backend.store import Corpus
from backend.workspace import Workspace
from pages import widgets
from pages.charts import sweep_figure
from pages.widgets import md_escape

FEATURES_KEY, SEEN_KEY = "steer_features", "_steer_seen_feature"
RESULT_KEY, SWEEP_KEY = "steer_result", "steer_sweep"
DEFAULT_PROMPT = "Write a short paragraph about your weekend."
KINDS = (("unsteered", "Unsteered"), ("steered", "Steered"))
UNIT_SHORT = {"residual": "residual norm", "p99_act": "p99 activation", "max_act": "max activation"}
AUTO_HELP = (f"Let the page choose: the largest strength whose median perplexity (read by the unsteered model) stays "
             f"within {DEFAULT_BOUND:g}x of the unsteered text, found by a few short batched probes on your prompt. "
             "Features set to auto share one strength.")
GUIDE_CHOICES = {"with auto strength": None, "always": GUIDE_TOP_K, "off": 0}
GUIDE_HELP = (f"Guided sampling: a steered generation reads its {GUIDE_TOP_K} likeliest next tokens and, until the "
              "feature has fired in it, takes one the feature fires on (marked «like this» in the text). Without it, "
              "many sparse features never show up in fluent steered text on a small reader.")
NO_UNIT_HELP = ("This feature never fired in the corpus, so it has no typical activation: the unit is estimated "
                "from the residual norm at generation time.")


@dataclass(frozen=True)
class Sampling:
    """The prompt and sampling choices of the page's widgets."""

    prompt: str
    chat: bool
    positions: str
    n_samples: int
    temperature: float
    seed: int
    max_new: int
    guide: int | None = None

    def config(self, strengths: dict[int, float | str], n_samples: int | None = None) -> SteerConfig:
        return SteerConfig(features=dict(strengths), positions=self.positions, n_samples=n_samples or self.n_samples,
                           temperature=self.temperature, seed=self.seed, max_new_tokens=self.max_new,
                           chat_template=self.chat, guide=self.guide)


# -- features ---------------------------------------------------------------------------------------
def add_feature(widget_key: str, d_sae: int) -> None:
    """Add the feature id held by a widget (read at click time, so an edit made just before counts)."""
    fid = st.session_state.get(widget_key)
    if fid is not None and 0 <= int(fid) < d_sae and int(fid) not in st.session_state[FEATURES_KEY]:
        st.session_state[FEATURES_KEY].append(int(fid))


def remove_feature(fid: int) -> None:
    st.session_state[FEATURES_KEY] = [f for f in st.session_state[FEATURES_KEY] if f != fid]
    st.session_state.pop(RESULT_KEY, None)


def chosen_features(ws: Workspace) -> list[int]:
    """The features to steer, with the feature selected elsewhere (once) added."""
    chosen: list[int] = st.session_state.setdefault(FEATURES_KEY, [])
    selected = widgets.selected_feature()
    if selected is not None and selected != st.session_state.get(SEEN_KEY):
        st.session_state[SEEN_KEY] = selected
        if 0 <= int(selected) < ws.d_sae and int(selected) not in chosen:
            chosen.append(int(selected))
    return chosen


def search_panel(ws: Workspace, corpus: Corpus) -> None:
    query = st.text_input("Search features by meaning", key="steer_search", placeholder="e.g. weather, anger, code")
    if not query.strip():
        return
    try:
        with st.spinner("Searching…"):
            hits = search_features(ws, corpus, query, top=10)
    except SearchModelMissing as exc:
        st.warning(str(exc), icon=":material/warning:")
        return
    if not len(hits):
        st.caption("No match.")
        return
    hit_labels = {int(f): lab for f, lab in zip(hits["feature_id"], hits["label"]) if pd.notna(lab)}
    st.selectbox("Matches", [int(f) for f in hits["feature_id"]], key="steer_search_pick",
                 format_func=lambda f: f"#{f} · {hit_labels.get(f) or '(no label)'}")
    st.button("Add this match", key="steer_search_add", icon=":material/add:", on_click=add_feature,
              args=("steer_search_pick", ws.d_sae))


def add_features_panel(ws: Workspace, corpus: Corpus, expanded: bool) -> None:
    with st.expander("Add features", expanded=expanded, icon=":material/add_circle:"):
        by_id, by_meaning = st.columns([1, 2])
        with by_id:
            st.number_input("Feature id", min_value=0, max_value=ws.d_sae - 1, value=0, step=1, key="steer_add_id")
            st.button("Add this id", key="steer_add_id_btn", icon=":material/add:", on_click=add_feature,
                      args=("steer_add_id", ws.d_sae))
        with by_meaning:
            search_panel(ws, corpus)


def coefficient_metric(ws: Workspace, col: st.delta_generator.DeltaGenerator, f: int, strength: float | str,
                       typical: dict[int, float], unit: str) -> None:
    """What the strength adds: the raw coefficient for the activation units; for the residual unit (or auto)
    it is known once the prompts are read, so say what it will be."""
    if strength == AUTO:
        col.metric("Raw coefficient", "auto", help="Chosen when you generate: the largest strength whose median "
                   f"perplexity stays within {DEFAULT_BOUND:g}x of the unsteered text.")
    elif unit == "residual":
        col.metric("Added norm", f"{float(strength):+.3g} x resid", help="Strength x the median residual norm at the "
                   "hook on your prompts, along the feature's decoder direction.")
    elif f in typical:
        scale = feature_scale(ws.sae, f, typical, float(strength))
        col.metric("Raw coefficient", f"{scale.raw_coef:+.4g}", help=scale.note)
    else:
        col.metric("Raw coefficient", "n/a", help=NO_UNIT_HELP)


def strength_rows(ws: Workspace, corpus: Corpus, chosen: list[int], labels: dict[int, str], unit: str) -> dict[int, float | str]:
    """One row per feature: label, auto toggle, strength slider, what it adds, remove button. Returns the
    strengths ("auto" where the toggle is on, the default)."""
    typical = typical_units(activation_levels(ws, corpus, chosen), unit)
    strengths: dict[int, float | str] = {}
    for f in list(chosen):
        name_col, auto_col, slider_col, coef_col, remove_col = st.columns([2, 1, 4, 2, 1], vertical_alignment="center")
        with name_col:
            st.markdown(f"**Feature {f}**")
            st.text(labels.get(f) or "(no label)")
        auto = auto_col.toggle("Auto", value=True, key=f"steer_auto_{f}", help=AUTO_HELP)
        value = slider_col.slider(f"Strength (x {UNIT_SHORT[unit]})", -2.0, 2.0, 1.0 if unit != "residual" else 0.3,
                                  0.05, key=f"steer_strength_{f}", disabled=auto)
        strengths[f] = AUTO if auto else value
        coefficient_metric(ws, coef_col, f, strengths[f], typical, unit)
        remove_col.button("Remove", key=f"steer_rm_{f}", icon=":material/delete:", on_click=remove_feature, args=(f,))
    return strengths


# -- prompt and sampling ----------------------------------------------------------------------------
def sampling_controls(ws: Workspace) -> Sampling:
    st.subheader("Prompt")
    prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="steer_prompt", label_visibility="collapsed")
    chat_col, positions_col, device_col = st.columns(3)
    chat = chat_col.toggle("Apply the chat template", value=True, key="steer_chat",
                           help="Wrap the prompt as a user turn (instruct models with a chat template only).")
    positions = positions_col.radio("Steer at", ["all", "generated"], horizontal=True, key="steer_positions",
                                    format_func={"all": "all positions", "generated": "generated tokens only"}.get)
    device = pick_device(ws.device)
    device_col.caption(f"Device: **{'CUDA' if device.startswith('cuda') else device.upper()}** (picked automatically)")
    n_col, temp_col, seed_col, max_col, guide_col = st.columns(5)
    return Sampling(
        prompt=prompt, chat=chat, positions=positions,
        n_samples=int(n_col.number_input("Samples", 1, 8, 2, key="steer_n")),
        temperature=float(temp_col.number_input("Temperature", 0.0, 2.0, 0.7, 0.1, key="steer_temp", help="0 = greedy")),
        seed=int(seed_col.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed")),
        max_new=int(max_col.number_input("Max new tokens", 1, 512, 48, key="steer_max_new")),
        guide=GUIDE_CHOICES[guide_col.selectbox("Guided sampling", list(GUIDE_CHOICES), key="steer_guide", help=GUIDE_HELP)],
    )


# -- generation -------------------------------------------------------------------------------------
def generation_slots(n: int, seeds: list[int]) -> dict[tuple[str, int], st.delta_generator.DeltaGenerator]:
    """Two columns (unsteered | steered) with one placeholder per sample."""
    slots = {}
    for col, (kind, title) in zip(st.columns(2), KINDS):
        with col:
            st.markdown(f"#### {title}")
            for i in range(n):
                st.caption(f"Sample {i + 1} · seed {seeds[i]}")
                slots[(kind, i)] = st.empty()
    return slots


def measures_table(res: SteerResult) -> pd.DataFrame:
    frame = res.frame()
    by = {k: frame[(frame["kind"] == k) & (frame["prompt_idx"] == 0)].set_index("sample_idx").sort_index() for k, _ in KINDS}
    unsteered, steered = by["unsteered"], by["steered"]
    out = pd.DataFrame({"sample": steered.index + 1, "seed": steered["seed"].to_numpy()})
    for f in res.features:
        out[f"#{f} fires · unsteered"] = unsteered[f"fires_{f}"].to_numpy()
        out[f"#{f} fires · steered"] = steered[f"fires_{f}"].to_numpy()
        out[f"#{f} mean act · unsteered"] = unsteered[f"act_mean_{f}"].to_numpy()
        out[f"#{f} mean act · steered"] = steered[f"act_mean_{f}"].to_numpy()
        out[f"#{f} max act · steered"] = steered[f"act_max_{f}"].to_numpy()
        out[f"#{f} concept similarity · unsteered"] = unsteered[f"concept_sim_{f}"].to_numpy()
        out[f"#{f} concept similarity · steered"] = steered[f"concept_sim_{f}"].to_numpy()
    out["perplexity · unsteered"] = unsteered["perplexity"].to_numpy()
    out["perplexity · steered"] = steered["perplexity"].to_numpy()
    out["guided tokens · steered"] = steered["n_guided"].to_numpy()
    out["tokens · unsteered"] = unsteered["n_tokens"].to_numpy()
    out["tokens · steered"] = steered["n_tokens"].to_numpy()
    return out


def effect_summary(res: SteerResult) -> None:
    """Per feature, the share of generations where it fires (max-pooled over the output), and the fluency warning."""
    summary = res.summary()
    for col, f in zip(st.columns(max(1, len(res.features))), res.features):
        steered, unsteered = summary.loc["steered", f"share_fires_{f}"], summary.loc["unsteered", f"share_fires_{f}"]
        col.metric(f"#{f} fires in (steered)", f"{steered:.0%}", delta=f"{steered - unsteered:+.0%} vs unsteered",
                   help="Share of generations where the feature fires on at least one output token, "
                        "the rule a corpus document follows.")
    ratio = summary.loc["steered", "perplexity"] / summary.loc["unsteered", "perplexity"]
    if res.perplexity_warning:
        st.warning(f"The steered text's perplexity is {ratio:.1f}× the unsteered text's (over "
                   f"{res.config.perplexity_warning_factor:g}×): the text is breaking down; try a lower strength.",
                   icon=":material/warning:")


def auto_summary(res: SteerResult) -> None:
    """The strength "auto" chose and its probes."""
    if res.auto is None:
        return
    found = res.auto
    st.metric("Auto strength", f"{found.strength:.3g}", help=found.note,
              delta=f"perplexity x{found.ratio:.2f} in the probe (bound {found.bound:g}x)", delta_color="off")
    if found.fires and found.fire_share < 0.5:
        st.caption(f"Within the fluency bound the feature fired in only {found.fire_share:.0%} of the probe "
                   f"generations ({found.fires.get(0.0, 0):.0%} unsteered). Some features describe what the model "
                   "reads more than what it writes; a larger strength by hand may show it, at a fluency cost.")
    with st.expander("Auto strength probes"):
        st.dataframe(pd.DataFrame({"strength": list(found.probes), "perplexity ratio": list(found.probes.values()),
                                   "fires in probes": [found.fires.get(s) for s in found.probes]})
                     .sort_values("strength"), hide_index=True, width="stretch")


def show_result(res: SteerResult, slots: dict, ws: Workspace) -> None:
    auto_summary(res)
    for (kind, i), slot in slots.items():
        g = res.get(kind, 0, i)
        slot.text(marked_text(ws.reader, g) if g.text else "(nothing generated: the model stopped at once)"
                  if not g.n_tokens else f"(no text: {g.n_tokens} special tokens)")
    if res.guide_top_k:
        st.caption("«…» in the steered text: a token guided sampling picked, among the model's "
                   f"{res.guide_top_k} likeliest, because the feature fires on it.")
    effect_summary(res)
    st.markdown("##### Measures per generation")
    st.caption("Whether each steered feature fires anywhere in the output and its activation, re-read from the output "
               "tokens by the plain model; MiniLM similarity of the output to the feature's top contexts; perplexity "
               "of the output under the unsteered model (the fluency cost).")
    st.dataframe(measures_table(res), hide_index=True, width="stretch")
    st.markdown("##### Pooled over samples")
    st.dataframe(res.summary().reset_index(), hide_index=True, width="stretch")
    with st.expander("How strengths became coefficients"):
        st.dataframe(pd.DataFrame([
            dict(feature=f, strength=sc.strength, unit=sc.unit, unit_source=sc.source, raw_coef=sc.raw_coef,
                 vector_norm=sc.vector_norm, note=sc.note) for f, sc in res.scales.items()
        ]), hide_index=True, width="stretch")
    for note in res.notes:
        st.caption(note)
    st.caption(f"Ran on **{res.device}** ({res.backend}) in {res.seconds:.1f} s · hook `{res.hook_name}`.")


def generate_section(ws: Workspace, corpus: Corpus, sampling: Sampling, strengths: dict[int, float | str], unit: str) -> None:
    st.subheader("Generate")
    clicked = st.button("Generate", type="primary", key="steer_generate", icon=":material/play_arrow:",
                        disabled=not sampling.prompt.strip())
    if not clicked:
        if RESULT_KEY in st.session_state:
            res = st.session_state[RESULT_KEY]
            st.caption("Last run (settings may have changed since):")
            st.text(res.prompts[0])
            show_result(res, generation_slots(res.config.n_samples, res.config.seeds()), ws)
        return
    cfg = sampling.config(strengths)
    slots = generation_slots(cfg.n_samples, cfg.seeds())
    last: dict[tuple[str, int], float] = {}

    def on_token(kind: str, prompt_idx: int, sample_idx: int, text: str) -> None:
        now = time.monotonic()
        if now - last.get((kind, sample_idx), 0.0) >= 0.05:
            last[(kind, sample_idx)] = now
            slots[(kind, sample_idx)].text(text)

    try:
        with st.spinner("Generating…"):
            res = steer_in_workspace(ws, [sampling.prompt], strengths, cfg, corpus=corpus, unit=unit, on_token=on_token)
    except UserError as exc:
        st.error(md_escape(exc, max_len=None), icon=":material/error:")
        return
    st.session_state[RESULT_KEY] = res
    show_result(res, slots, ws)


# -- strength sweep ---------------------------------------------------------------------------------
def parse_strengths(raw: str) -> list[float] | None:
    """Comma-separated finite numbers, sorted and deduplicated; None when the text is not that."""
    try:
        values = sorted({float(x) for x in re.split(r"[,;\s]+", raw.strip()) if x})
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def sweep_section(ws: Workspace, corpus: Corpus, sampling: Sampling, chosen: list[int], labels: dict[int, str],
                  unit: str) -> None:
    st.subheader("Strength sweep")
    st.caption("Steer one feature at several strengths (same prompt, seeds and sampling) to see where the effect "
               "starts and where the text breaks.")
    feature_col, strengths_col, n_col = st.columns([2, 3, 1])
    feature = feature_col.selectbox("Feature", chosen, key="steer_sweep_feature",
                                    format_func=lambda f: f"#{f} · {labels.get(f) or '(no label)'}")
    raw = strengths_col.text_input("Strengths (comma-separated)", "0, 0.1, 0.2, 0.3, 0.5, 1", key="steer_sweep_strengths")
    n_each = int(n_col.number_input("Samples each", 1, 8, 1, key="steer_sweep_n"))
    strengths = parse_strengths(raw)
    if strengths is None:
        st.error("Strengths must be numbers separated by commas, e.g. `0, 0.5, 1, 2`.", icon=":material/error:")
    if st.button("Run sweep", key="steer_sweep_run", icon=":material/tune:",
                 disabled=not (strengths and sampling.prompt.strip())):
        bar = st.progress(0.0, text="Sweeping…")
        try:
            st.session_state[SWEEP_KEY] = sweep_in_workspace(
                ws, int(feature), strengths, [sampling.prompt], sampling.config({}, n_each), corpus=corpus, unit=unit,
                on_progress=lambda done, total: bar.progress(done / total, text=f"token {done}/{total}"))
        except UserError as exc:
            st.error(md_escape(exc, max_len=None), icon=":material/error:")
        bar.empty()
    if SWEEP_KEY in st.session_state:
        show_sweep(st.session_state[SWEEP_KEY])


def show_sweep(sweep: pd.DataFrame) -> None:
    st.plotly_chart(sweep_figure(sweep), width="stretch", key="steer_sweep_chart")
    breaking = sweep.loc[sweep["perplexity_warning"], "strength"]
    if len(breaking):
        factor = sweep.attrs.get("perplexity_warning_factor", 2.0)
        st.warning(f"From strength {breaking.min():g} the perplexity passes {factor:g}× the unsteered level: the text "
                   "breaks down.", icon=":material/warning:")
    for key in ("unit_note", "concept_note"):
        if sweep.attrs.get(key):
            st.caption(f"Feature {sweep.attrs.get('feature_id')}: {sweep.attrs[key]}")
    st.dataframe(sweep, hide_index=True, width="stretch")


# -- the page ---------------------------------------------------------------------------------------
st.title("Steering")
st.caption(
    "Add SAE decoder directions to the residual stream while the model generates. Unsteered and steered "
    "runs use the same seeds, so they differ only through the steering. By default the strength is chosen "
    "automatically; by hand, 1.0 adds a vector as long as the median residual at the hook (the same push for "
    "every feature), or the feature's typical activation in the corpus times its decoder direction."
)
workspace, selected_corpus = widgets.require_corpus()
chosen = chosen_features(workspace)
st.subheader("Features")
add_features_panel(workspace, selected_corpus, expanded=not chosen)
chosen = st.session_state[FEATURES_KEY]
if not chosen:
    st.info("Choose a feature to steer: open one from the Features page (**Steer with it**), or add one above.",
            icon=":material/info:")
    st.stop()
feature_labels = workspace.labels(selected_corpus, chosen)
unit_kind = st.radio("Strength 1.0 is the", list(UNIT_KINDS), format_func=UNIT_KINDS.get, horizontal=True,
                     key="steer_unit", help="The residual norm is measured on the prompts; the activations on the "
                     "documents of the current corpus.")
chosen_strengths = strength_rows(workspace, selected_corpus, chosen, feature_labels, unit_kind)
sampling_choice = sampling_controls(workspace)
generate_section(workspace, selected_corpus, sampling_choice, chosen_strengths, unit_kind)
sweep_section(workspace, selected_corpus, sampling_choice, chosen, feature_labels, unit_kind)
