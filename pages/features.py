"""Features: browse all SAE features, search them by meaning or by example, and inspect one in detail.

Thin page: every computation is a backend call, cached per corpus data version. Document text is
shown only through widgets.highlight_html (escaped) or st.dataframe/st.text."""
from __future__ import annotations

import html
import os
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from backend import features as F
from backend import labels as L
from backend import search as S
from backend.store import StoreError
from pages import widgets

st.title("Features")
ws, corpus = widgets.require_corpus()
VERSION = widgets.data_version(ws, corpus)
CID = VERSION[1]
LABELS_REV = "_labels_rev"  # bumped on every label edit in this session: cached tables show new labels
REV = st.session_state.get(LABELS_REV, 0)


# -- cached backend calls (ws is not hashed; the data version and label revision are) --------------
@st.cache_data(show_spinner=False, max_entries=64)
def feature_table(_ws, version: tuple, rev: int, min_d: float, max_d: float, hide_dead: bool, sort_by: str,
                  desc: bool) -> pd.DataFrame:
    return F.feature_table(_ws, version[1], min_d, max_d, hide_dead, sort_by, desc)


@st.cache_data(show_spinner="Loading the feature…", max_entries=256)
def feature_detail(_ws, version: tuple, rev: int, fid: int) -> F.FeatureDetail:
    return F.feature_detail(_ws, version[1], fid)


@st.cache_data(show_spinner=False, max_entries=2048)
def doc_activations(_ws, version: tuple, doc_id: int, fid: int) -> tuple[list[str], np.ndarray, list[bool]]:
    ta = _ws.token_activations(version[1], int(doc_id), int(fid))
    return list(ta.tokens), np.asarray(ta.acts, dtype=np.float32)[:, 0], list(ta.count_mask)


@st.cache_data(show_spinner=False, max_entries=64)
def search_meaning(_ws, version: tuple, rev: int, query: str, top: int) -> pd.DataFrame:
    return S.search_features(_ws, version[1], query, top)


@st.cache_data(show_spinner=False, max_entries=32)
def search_example(_ws, version: tuple, rev: int, text: str, top: int) -> F.TextFeatures:
    return F.features_of_text(_ws, text, top, corpus=version[1])


@st.cache_data(show_spinner=False, max_entries=256)
def breakdown(_ws, version: tuple, fid: int, column: str) -> pd.DataFrame:
    return F.metadata_breakdown(_ws, version[1], fid, column)


# -- opening features -----------------------------------------------------------------------------
def open_here(fid: int) -> None:
    """Show this feature's detail on this page (also kept in the URL)."""
    st.session_state[widgets.FEATURE_KEY] = int(fid)
    st.query_params["feature"] = str(int(fid))


def label_changed(message: str) -> None:
    st.session_state[LABELS_REV] = REV + 1
    st.session_state["_features_flash"] = message
    st.rerun()


def pick_table(df: pd.DataFrame, key: str, **kwargs: Any) -> None:
    """A single-row-selectable table of features; selecting a row opens its feature.

    Only a changed selection opens a feature: a selection left in place never overrides one opened elsewhere,
    and new table contents under an old selection open nothing."""
    config = {"feature_id": st.column_config.NumberColumn("feature", format="%d"), **kwargs.pop("column_config", {})}
    event = st.dataframe(df, key=key, on_select="rerun", selection_mode="single-row", hide_index=True,
                         column_config=config, **kwargs)
    rows, last = tuple(event.selection.rows), f"_{key}_rows"
    if rows != st.session_state.get(last):
        st.session_state[last] = rows
        if rows and rows[0] < len(df):
            open_here(int(df.iloc[rows[0]]["feature_id"]))


def open_buttons(ids: list[int], key: str) -> None:
    cols = st.columns(max(1, min(len(ids), 6)))
    for i, fid in enumerate(ids):
        cols[i % len(cols)].button(f"Open #{fid}", key=f"{key}-{fid}", on_click=open_here, args=(fid,))


def label_of(label: Any) -> str:
    return str(label) if label is not None and not (isinstance(label, float) and np.isnan(label)) else "(no label)"


def title_html(text: str, size: str = "1.35rem") -> str:
    return f'<div style="font-size:{size};font-weight:600;margin:0.2rem 0">{html.escape(text)}</div>'


def masked_argmax(acts: np.ndarray, mask: list[bool]) -> int | None:
    a = np.where(np.asarray(mask, bool), acts, -np.inf)
    return int(a.argmax()) if len(a) and np.isfinite(a.max()) and a.max() > 0 else None


if flash := st.session_state.pop("_features_flash", None):
    st.success(flash)

# -- browse and search ----------------------------------------------------------------------------
tab_all, tab_meaning, tab_example = st.tabs(["All features", "Search by meaning", "Search by example"])

with tab_all:
    c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
    dens = c1.slider("Density (share of documents where the feature fires)", 0.0, 1.0, (0.0, 1.0), step=0.001,
                     format="%.3f", key="density_range")
    sort_by = c2.selectbox("Sort by", list(F.SORTABLE), index=list(F.SORTABLE).index("density"), key="sort_by")
    desc = c3.toggle("Descending", value=True, key="sort_desc")
    hide_dead = c4.toggle("Hide dead", value=True, key="hide_dead",
                          help="Dead features never fire on this corpus.")
    text_filter = st.text_input("Filter by label or top token", key="table_filter", placeholder="e.g. movie")
    table = feature_table(ws, VERSION, REV, dens[0], dens[1], hide_dead, sort_by, desc)
    if text_filter.strip():
        needle = text_filter.strip().lower()
        hay = table["label"].fillna("").str.lower() + " " + table["top_tokens"].fillna("").str.lower()
        table = table[hay.str.contains(needle, regex=False)].reset_index(drop=True)
    st.caption(f"{len(table):,} of {ws.d_sae:,} features. Select a row to open the feature.")
    pick_table(
        table[["feature_id", "label", "density", "n_docs_active", "max_act", "mean_act", "top_tokens"]], "feature_table",
        height=420,
        column_config={
            "density": st.column_config.NumberColumn("density", format="%.4f"),
            "n_docs_active": st.column_config.NumberColumn("documents"),
            "max_act": st.column_config.NumberColumn("max act", format="%.3f"),
            "mean_act": st.column_config.NumberColumn("mean act", format="%.3f"),
            "top_tokens": st.column_config.TextColumn("top tokens"),
        },
    )
    g1, g2 = st.columns([1, 3])
    g1.number_input("Feature number", min_value=0, max_value=ws.d_sae - 1, value=None, step=1, key="goto_feature",
                    placeholder=f"0-{ws.d_sae - 1}")
    g2.button("Open", key="goto_open", disabled=st.session_state.get("goto_feature") is None,
              on_click=lambda: open_here(int(st.session_state["goto_feature"])))

with tab_meaning:
    with st.form("meaning_form", border=False):
        query = st.text_input("Describe a concept", key="meaning_query", placeholder="e.g. python code, negative reviews")
        st.form_submit_button("Search")
    if query.strip():
        try:
            if st.session_state.get("_search_built") != (VERSION, REV):
                with st.spinner("Building the feature embeddings for search (first search on this corpus; "
                                "this embeds every feature's label and top contexts once)…"):
                    S.build_feature_embeddings(ws, CID)
                st.session_state["_search_built"] = (VERSION, REV)
            with st.spinner("Searching…"):
                hits = search_meaning(ws, VERSION, REV, query.strip(), 20)
        except S.SearchModelMissing as exc:
            st.error(str(exc))
        else:
            st.caption("Closest features by label and top contexts (cosine similarity). Select a row to open one.")
            pick_table(hits[["feature_id", "label", "score", "score_label", "score_contexts"]], "meaning_hits",
                       column_config={c: st.column_config.NumberColumn(format="%.3f")
                                      for c in ("score", "score_label", "score_contexts")})

with tab_example:
    with st.form("example_form", border=False):
        example = st.text_area("Paste a text", key="example_text", height=120,
                               placeholder="The features that fire on it are listed, strongest first.")
        st.form_submit_button("Find features")
    if example.strip():
        with st.spinner("Running the model on the text…"):
            res = search_example(ws, VERSION, REV, example, 20)
        if res.features.empty:
            st.info("No feature fires on this text.")
        else:
            st.caption("Features that fire on the text, strongest first. Select a row to open one.")
            pick_table(res.features[["feature_id", "label", "max_act", "argmax_token", "n_tokens_active"]], "example_hits",
                       column_config={"max_act": st.column_config.NumberColumn("max act", format="%.3f"),
                                      "argmax_token": st.column_config.TextColumn("strongest token"),
                                      "n_tokens_active": st.column_config.NumberColumn("active tokens")})
            ids = res.features["feature_id"].astype(int).tolist()
            labs = dict(zip(ids, res.features["label"]))
            h1, h2 = st.columns([3, 1])
            shown = h1.selectbox("Highlight the tokens of", ids, key="example_highlight",
                                 format_func=lambda f: f"#{f} · {label_of(labs[f])}")
            h2.button("Open this feature", key="example_open", on_click=open_here, args=(shown,))
            col = ids.index(shown)
            acts = res.acts[:, col]
            mask = res.count_mask or None  # hides position 0 and template tokens
            widgets.show_html(widgets.highlight_html(res.tokens, acts, count_mask=mask, mark_pos=int(acts.argmax())))

# -- feature detail -------------------------------------------------------------------------------
st.divider()
fid = widgets.selected_feature()
if fid is None:
    st.info("Select a feature in the table or a search to see where it fires.")
    st.stop()
if not 0 <= int(fid) < ws.d_sae:
    st.warning(f"Feature {fid} does not exist in this workspace (features 0-{ws.d_sae - 1}).")
    st.stop()
fid = int(fid)
try:
    d = feature_detail(ws, VERSION, REV, fid)
except StoreError as exc:
    st.error(str(exc))
    st.stop()

st.subheader(f"Feature #{fid}")
widgets.show_html(title_html(label_of(d.label)))
widgets.feature_links(fid, key="detail", exclude="features")

with st.expander("Labels", expanded=False):
    if d.labels.empty:
        st.caption("No label yet.")
    else:
        st.dataframe(d.labels[["label", "source", "score", "updated_at"]], hide_index=True)
    hand = d.labels.loc[d.labels["source"] == "hand", "label"]
    with st.form(f"hand_label_{fid}", border=False):
        new = st.text_input("Hand label (wins over automatic and LLM labels; leave empty to remove it)",
                            value=str(hand.iloc[0]) if len(hand) else "", key=f"hand_label_text_{fid}")
        if st.form_submit_button("Save hand label"):
            L.set_hand_label(ws, fid, new)
            label_changed(f"Saved the hand label of feature #{fid}." if new.strip() else f"Removed the hand label of feature #{fid}.")
    cfg = L.LLMConfig.from_env()
    if cfg is not None and st.button("Label with an LLM", key=f"llm_label_{fid}",
                                     help=f"Asks {cfg.model} for a label, then scores it on held-out samples."):
        try:
            with st.spinner(f"Asking {cfg.model}…"):
                out = L.llm_label_features(ws, CID, [fid], cfg)
        except L.LLMError as exc:
            st.error(f"LLM labelling failed: {exc}")
        else:
            label_changed(f"LLM label of feature #{fid} saved (held-out accuracy {float(out['score'].iloc[0]):.2f}).")
with st.expander("LLM labelling settings"):
    st.caption("An OpenAI-compatible chat endpoint, used by this server process until it restarts.")
    with st.form("llm_settings", border=False):
        url = st.text_input("Base URL", value=os.environ.get("SAEDASH_LLM_BASE_URL", ""),
                            placeholder="http://localhost:8000/v1")
        model = st.text_input("Model", value=os.environ.get("SAEDASH_LLM_MODEL", ""))
        key = st.text_input("API key (empty keeps the current one)", type="password")
        if st.form_submit_button("Use these settings"):
            for var, val in (("SAEDASH_LLM_BASE_URL", url), ("SAEDASH_LLM_MODEL", model)):
                if val.strip():
                    os.environ[var] = val.strip()
                else:
                    os.environ.pop(var, None)
            if key.strip():
                os.environ["SAEDASH_LLM_API_KEY"] = key.strip()
            st.rerun()

s = d.stats
n_act, n_all = int(s.get("n_docs_active") or 0), int(s.get("n_docs") or 0)
m = st.columns(5)
m[0].metric("Density", f"{100 * float(s.get('density') or 0):.2f}%")
m[1].metric("Documents where it fires", f"{n_act:,} / {n_all:,}")
m[2].metric("Max activation", f"{s['max_act']:.3f}" if s.get("max_act") is not None else "–")
m[3].metric("Mean activation", f"{s['mean_act']:.3f}" if s.get("mean_act") is not None else "–")
m[4].metric("Active tokens per document", f"{s['mean_tokens_active']:.1f}" if s.get("mean_tokens_active") is not None else "–")
if n_act == 0:
    st.info("This feature never fires on this corpus.")
    st.stop()

left, right = st.columns([3, 2])
with left:
    st.markdown("**Activation histogram** (max activation per document, documents where it fires)")
    h = d.histogram
    fig = go.Figure(go.Bar(x=(h["lo"] + h["hi"]) / 2, y=h["count"], width=(h["hi"] - h["lo"]).clip(lower=1e-6),
                           customdata=np.stack([h["lo"], h["hi"]], axis=1), marker_color="#e67e22",
                           hovertemplate="%{customdata[0]:.3f}–%{customdata[1]:.3f}: %{y} documents<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="max activation",
                      yaxis_title="documents", bargap=0.05)
    st.plotly_chart(fig, key=f"hist_{fid}")
with right:
    st.markdown("**Tokens at the strongest activation**")
    st.dataframe(d.top_tokens, hide_index=True,
                 column_config={"mean_act": st.column_config.NumberColumn("mean act", format="%.3f")})

st.markdown("**Top-activating documents**")
n_top = len(d.top_documents)
n_show = st.slider("Documents to highlight", 1, n_top, min(5, n_top), key="n_highlight") if n_top > 1 else n_top
max_act = float(s.get("max_act") or 0) or None
with st.spinner("Recomputing token activations of the shown documents…"):
    for row in d.top_documents.head(n_show).itertuples():
        tokens, acts, mask = doc_activations(ws, VERSION, int(row.doc_id), fid)
        st.caption(f"#{row.rank + 1} · document {row.doc_id} · max activation {row.max_act:.3f}")
        widgets.show_html(widgets.highlight_html(tokens, acts, max_act, count_mask=mask, mark_pos=masked_argmax(acts, mask)))

with st.expander("Samples from activation quantiles"):
    qs = d.quantile_samples
    highlight_q = st.toggle("Highlight tokens (runs the model on each sample)", key="highlight_quantiles")
    for bucket, g in qs.groupby("bucket", sort=False):
        st.markdown(f"**{bucket}** of the documents where it fires, by max activation")
        if highlight_q:
            for row in g.itertuples():
                tokens, acts, mask = doc_activations(ws, VERSION, int(row.doc_id), fid)
                st.caption(f"document {row.doc_id} · max activation {row.max_act:.3f}")
                widgets.show_html(widgets.highlight_html(tokens, acts, max_act, count_mask=mask,
                                                         mark_pos=masked_argmax(acts, mask)))
        else:
            st.dataframe(g[["max_act", "doc_id", "text"]], hide_index=True,
                         column_config={"max_act": st.column_config.NumberColumn("max act", format="%.3f")})

lo, hi = st.columns(2)
for col, title, pairs in ((lo, "Promoted output tokens (logit lens)", d.promoted),
                          (hi, "Suppressed output tokens (logit lens)", d.suppressed)):
    col.markdown(f"**{title}**")
    col.dataframe(pd.DataFrame(pairs, columns=["token", "logit"]), hide_index=True,
                  column_config={"logit": st.column_config.NumberColumn(format="%.3f")})

st.markdown("**Most correlated features** (NPMI over documents)")
if d.correlated.empty:
    st.caption("No feature fires often enough in the same documents.")
else:
    st.dataframe(d.correlated, hide_index=True,
                 column_config={"npmi": st.column_config.NumberColumn(format="%.3f"),
                                "n_cooc": st.column_config.NumberColumn("together"),
                                "n_docs_active": st.column_config.NumberColumn("documents")})
    open_buttons(d.correlated["feature_id"].astype(int).head(6).tolist(), "corr")

meta_cols = ws.store.corpus(CID).meta_columns
if meta_cols:
    st.markdown("**Metadata breakdown**: where it fires versus all documents")
    column = st.selectbox("Metadata column", meta_cols, key="meta_column")
    bd = breakdown(ws, VERSION, fid, column)
    t, c = st.columns([2, 3])
    t.dataframe(bd, hide_index=True, column_config={
        "share_active": st.column_config.NumberColumn("share (fires)", format="%.3f"),
        "share_all": st.column_config.NumberColumn("share (all)", format="%.3f"),
        "lift": st.column_config.NumberColumn(format="%.2f")})
    top_vals = bd.head(20)
    names = [html.escape(str(v)[:40]) for v in top_vals["value"]]  # Plotly renders some HTML in labels
    fig = go.Figure([go.Bar(name="documents where it fires", x=names, y=top_vals["share_active"], marker_color="#e67e22"),
                     go.Bar(name="all documents", x=names, y=top_vals["share_all"], marker_color="#95a5a6")])
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="share",
                      legend=dict(orientation="h", y=1.1))
    c.plotly_chart(fig, key=f"meta_{fid}_{column}")
