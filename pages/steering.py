"""Steering: push the model along one or more SAE features while it generates, and measure whether it
worked (the feature's activation on the output) and what it cost (perplexity under the plain model).

Layout and widgets only; generation and measures are backend.steering calls."""
from __future__ import annotations

import math
import re
import time

import pandas as pd
import streamlit as st

from backend import features as features_mod
from backend import labels as labels_mod
from backend.config import pick_device
from backend.steering import SteerConfig, SteerResult, feature_scale, steer, strength_sweep, sweep_figure
from pages import widgets

FEATURES_KEY, SEEN_KEY = "steer_features", "_steer_seen_feature"
RESULT_KEY, SWEEP_KEY = "steer_result", "steer_sweep"
UNITS = {"p99_act": "99th-percentile activation", "max_act": "maximum activation"}
DEFAULT_PROMPT = "Write a short paragraph about your weekend."

st.title("Steering")
st.caption(
    "Add SAE decoder directions to the residual stream while the model generates. Unsteered and steered "
    "runs use the same seeds, so they differ only through the steering. Strength 1.0 adds the feature's "
    "typical activation in the current corpus times its decoder direction."
)
ws, corpus = widgets.require_corpus()

# -- features ------------------------------------------------------------------
chosen: list[int] = st.session_state.setdefault(FEATURES_KEY, [])
sel = widgets.selected_feature()
if sel is not None and sel != st.session_state.get(SEEN_KEY):
    st.session_state[SEEN_KEY] = sel
    if 0 <= int(sel) < ws.d_sae and int(sel) not in chosen:
        chosen.append(int(sel))


def add_feature(widget_key: str) -> None:
    """Add the feature id held by a widget (read at click time, so an edit made just before counts)."""
    fid = st.session_state.get(widget_key)
    if fid is not None and 0 <= int(fid) < ws.d_sae and int(fid) not in st.session_state[FEATURES_KEY]:
        st.session_state[FEATURES_KEY].append(int(fid))


def remove_feature(fid: int) -> None:
    st.session_state[FEATURES_KEY] = [f for f in st.session_state[FEATURES_KEY] if f != fid]
    st.session_state.pop(RESULT_KEY, None)


st.subheader("Features")
with st.expander("Add features", expanded=not chosen):
    c1, c2 = st.columns([1, 2])
    with c1:
        st.number_input("Feature id", min_value=0, max_value=ws.d_sae - 1, value=0, step=1, key="steer_add_id")
        st.button("Add this id", key="steer_add_id_btn", on_click=add_feature, args=("steer_add_id",))
    with c2:
        query = st.text_input("Search features by meaning", key="steer_search", placeholder="e.g. weather, anger, code")
        if query.strip():
            from backend.search import SearchModelMissing, search_features

            try:
                with st.spinner("Searching…"):
                    hits = search_features(ws, corpus, query, top=10)
            except SearchModelMissing as exc:
                st.warning(str(exc))
                hits = pd.DataFrame(columns=["feature_id", "label", "score"])
            if len(hits):
                hit_labels = {int(f): lab for f, lab in zip(hits["feature_id"], hits["label"]) if pd.notna(lab)}
                st.selectbox(
                    "Matches", [int(f) for f in hits["feature_id"]], key="steer_search_pick",
                    format_func=lambda f: f"#{f} · {hit_labels.get(f) or '(no label)'}",
                )
                st.button("Add this match", key="steer_search_add", on_click=add_feature, args=("steer_search_pick",))
            else:
                st.caption("No match.")

chosen = st.session_state[FEATURES_KEY]
if not chosen:
    st.info("Choose a feature to steer: open one from the Features page (**Steer with it**), or add one above.")
    st.stop()

labels = labels_mod.labels(ws, corpus, chosen)
unit_kind = st.radio("Strength 1.0 is the feature's", list(UNITS), format_func=UNITS.get, horizontal=True,
                     key="steer_unit", help="Measured on the documents of the current corpus.")
typical: dict[int, float] = {}
strengths: dict[int, float] = {}
for f in list(chosen):
    stats = features_mod.feature_stats(ws, corpus, f)
    unit = stats.get(unit_kind) or stats.get("max_act") or 0.0
    if unit and unit > 0:
        typical[f] = float(unit)
    c_name, c_slider, c_coef, c_rm = st.columns([2, 4, 2, 1], vertical_alignment="center")
    with c_name:
        st.markdown(f"**Feature {f}**")
        st.text(labels.get(f) or "(no label)")
    strengths[f] = c_slider.slider("Strength (× typical activation)", -2.0, 2.0, 1.0, 0.05, key=f"steer_strength_{f}")
    if f in typical:
        sc = feature_scale(ws.sae, f, typical, strengths[f])
        c_coef.metric("Raw coefficient", f"{sc.raw_coef:+.4g}", help=sc.note)
    else:
        c_coef.metric("Raw coefficient", "n/a", help="This feature never fired in the corpus, so it has no typical "
                      "activation: the unit is estimated from the residual norm at generation time.")
    c_rm.button("Remove", key=f"steer_rm_{f}", on_click=remove_feature, args=(f,))

# -- prompt and sampling -------------------------------------------------------
st.subheader("Prompt")
prompt = st.text_area("Prompt", DEFAULT_PROMPT, key="steer_prompt", label_visibility="collapsed")
c1, c2, c3 = st.columns(3)
chat = c1.toggle("Apply the chat template", value=True, key="steer_chat",
                 help="Wrap the prompt as a user turn (instruct models with a chat template only).")
positions = c2.radio("Steer at", ["all", "generated"], horizontal=True, key="steer_positions",
                     format_func={"all": "all positions", "generated": "generated tokens only"}.get)
device = pick_device(ws.device)
c3.caption(f"Device: **{'CUDA' if device.startswith('cuda') else device.upper()}** (picked automatically)")
c1, c2, c3, c4 = st.columns(4)
n_samples = int(c1.number_input("Samples", 1, 8, 2, key="steer_n"))
temperature = float(c2.number_input("Temperature", 0.0, 2.0, 0.7, 0.1, key="steer_temp", help="0 = greedy"))
seed = int(c3.number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed"))
max_new = int(c4.number_input("Max new tokens", 1, 512, 48, key="steer_max_new"))


def config(n: int) -> SteerConfig:
    return SteerConfig(features=dict(strengths), positions=positions, n_samples=n, temperature=temperature, seed=seed,
                       max_new_tokens=max_new, chat_template=chat)


# -- generation ----------------------------------------------------------------
KINDS = (("unsteered", "Unsteered"), ("steered", "Steered"))


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
    fr = res.frame()
    by = {k: fr[(fr["kind"] == k) & (fr["prompt_idx"] == 0)].set_index("sample_idx").sort_index() for k, _ in KINDS}
    u, s = by["unsteered"], by["steered"]
    out = pd.DataFrame({"sample": s.index + 1, "seed": s["seed"].to_numpy()})
    for f in res.features:
        out[f"#{f} mean act · unsteered"] = u[f"act_mean_{f}"].to_numpy()
        out[f"#{f} mean act · steered"] = s[f"act_mean_{f}"].to_numpy()
        out[f"#{f} max act · steered"] = s[f"act_max_{f}"].to_numpy()
    out["perplexity · unsteered"] = u["perplexity"].to_numpy()
    out["perplexity · steered"] = s["perplexity"].to_numpy()
    out["tokens · unsteered"] = u["n_tokens"].to_numpy()
    out["tokens · steered"] = s["n_tokens"].to_numpy()
    return out


def show_result(res: SteerResult, slots: dict) -> None:
    for (kind, i), slot in slots.items():
        g = res.get(kind, 0, i)
        slot.text(g.text if g.text else "(nothing generated: the model stopped at once)" if not g.n_tokens
                  else f"(no text: {g.n_tokens} special tokens)")
    st.markdown("##### Measures per generation")
    st.caption("Activation of each steered feature re-read from the output tokens by the plain model; perplexity of "
               "the output under the unsteered model (the fluency cost).")
    st.dataframe(measures_table(res), hide_index=True, width="stretch")
    st.markdown("##### Pooled over samples")
    st.dataframe(res.summary().reset_index(), hide_index=True, width="stretch")
    with st.expander("How strengths became coefficients"):
        st.dataframe(pd.DataFrame([
            dict(feature=f, strength=sc.strength, unit=sc.unit, unit_source=sc.source, raw_coef=sc.raw_coef,
                 vector_norm=sc.vector_norm, note=sc.note) for f, sc in res.scales.items()
        ]), hide_index=True, width="stretch")
    st.caption(f"Ran on **{res.device}** ({res.backend}) in {res.seconds:.1f} s · hook `{res.hook_name}`.")


st.subheader("Generate")
go_btn = st.button("Generate", type="primary", key="steer_generate", disabled=not prompt.strip())
if go_btn:
    cfg = config(n_samples)
    slots = generation_slots(cfg.n_samples, cfg.seeds())
    last: dict[tuple[str, int], float] = {}

    def on_token(kind: str, prompt_idx: int, sample_idx: int, text: str) -> None:
        now = time.monotonic()
        if now - last.get((kind, sample_idx), 0.0) >= 0.05:
            last[(kind, sample_idx)] = now
            slots[(kind, sample_idx)].text(text)

    try:
        with st.spinner("Generating…"):
            res = steer(ws.reader, ws.sae, dict(strengths), [prompt], cfg, typical_acts=typical, on_token=on_token)
    except ValueError as exc:
        st.error(str(exc))
    else:
        st.session_state[RESULT_KEY] = res
        show_result(res, slots)
elif RESULT_KEY in st.session_state:
    res = st.session_state[RESULT_KEY]
    st.caption("Last run (settings may have changed since):")
    st.text(res.prompts[0])
    show_result(res, generation_slots(res.config.n_samples, res.config.seeds()))

# -- strength sweep ------------------------------------------------------------
st.subheader("Strength sweep")
st.caption("Steer one feature at several strengths (same prompt, seeds and sampling) to see where the effect "
           "starts and where the text breaks.")
c1, c2, c3 = st.columns([2, 3, 1])
sweep_f = c1.selectbox("Feature", chosen, key="steer_sweep_feature",
                       format_func=lambda f: f"#{f} · {labels.get(f) or '(no label)'}")
raw = c2.text_input("Strengths (comma-separated)", "0, 0.5, 1, 2, 4, 8", key="steer_sweep_strengths")
sweep_n = int(c3.number_input("Samples each", 1, 8, 1, key="steer_sweep_n"))
try:
    sweep_strengths = sorted({float(x) for x in re.split(r"[,;\s]+", raw.strip()) if x})
    bad = [s for s in sweep_strengths if not math.isfinite(s)]
    if bad:
        raise ValueError
except ValueError:
    st.error("Strengths must be numbers separated by commas, e.g. `0, 0.5, 1, 2`.")
    sweep_strengths = []
if st.button("Run sweep", key="steer_sweep_run", disabled=not (sweep_strengths and prompt.strip())):
    bar = st.progress(0.0, text="Sweeping…")
    try:
        df = strength_sweep(ws.reader, ws.sae, int(sweep_f), sweep_strengths, [prompt], config(sweep_n),
                            typical_acts=typical, on_progress=lambda d, t: bar.progress(d / t, text=f"prompt {d}/{t}"))
    except ValueError as exc:
        st.error(str(exc))
    else:
        st.session_state[SWEEP_KEY] = df
    bar.empty()
if SWEEP_KEY in st.session_state:
    df = st.session_state[SWEEP_KEY]
    st.plotly_chart(sweep_figure(df), width="stretch", key="steer_sweep_chart")
    if df.attrs.get("unit_note"):
        st.caption(f"Feature {df.attrs.get('feature_id')}: {df.attrs['unit_note']}")
    st.dataframe(df, hide_index=True, width="stretch")
