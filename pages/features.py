"""Features: browse all SAE features, search them by meaning or by example, and inspect one in detail.

Layout and widgets only: every computation is a backend call (backend.feature_queries, backend.search,
backend.labels), cached per corpus cache key and label revision. Document text is shown only through
widgets.highlight_html (escaped) or st.dataframe/st.text; labels and metadata values are escaped."""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from backend import feature_queries
from backend.analysis.label_reading import names_nothing
from backend.background import wait_until_searchable
from backend.errors import UserError
from backend.labels import set_hand_label
from backend.llm import LLMConfig, LLMError, operator_llm_config, session_llm_config
from backend.search import SearchModelMissing, search_features
from backend.store import Corpus, StoreError
from backend.workspace import Workspace
from pages import search_widgets, widgets
from pages.widgets import CacheKey, md_escape

FLASH_KEY = "_features_flash"
LLM_SESSION_KEY = widgets.LLM_SESSION_KEY  # this session's LLM settings: {base_url, model, api_key}; never in os.environ
NEAR_CONSTANT_PERCENT = f"{100 * feature_queries.NEAR_CONSTANT_DENSITY:g}%"
ORANGE, GREY = "#e67e22", "#95a5a6"


# -- cached backend calls (the workspace and handle are not hashed; the cache key and label revision are) ----
@st.cache_data(show_spinner=False, max_entries=64)
def load_table(_ws: Workspace, _corpus: Corpus, key: CacheKey, label_revision: tuple, min_d: float, max_d: float,
               hide_dead: bool, sort_by: str, desc: bool, hide_near_constant: bool) -> pd.DataFrame:
    return feature_queries.feature_table(_ws, _corpus, min_d, max_d, hide_dead, sort_by, desc,
                                         hide_near_constant=hide_near_constant)


@st.cache_data(show_spinner="Loading the feature…", max_entries=256)
def load_detail(_ws: Workspace, _corpus: Corpus, key: CacheKey, label_revision: tuple, fid: int) -> feature_queries.FeatureDetail:
    return feature_queries.feature_detail(_ws, _corpus, fid)


@st.cache_data(show_spinner=False, max_entries=2048)
def doc_activations(_ws: Workspace, _corpus: Corpus, key: CacheKey, doc_id: int, fid: int) -> tuple[list[str], np.ndarray, list[bool]]:
    ta = _ws.token_activations(_corpus, int(doc_id), int(fid))
    return list(ta.tokens), np.asarray(ta.acts, dtype=np.float32)[:, 0], list(ta.count_mask)


@st.cache_data(show_spinner=False, max_entries=32)
def search_example(_ws: Workspace, _corpus: Corpus, key: CacheKey, label_revision: tuple, text: str,
                   top: int) -> feature_queries.TextFeatures:
    return feature_queries.features_of_text(_ws, text, top, corpus=_corpus)


@st.cache_data(show_spinner=False, max_entries=256)
def breakdown(_ws: Workspace, _corpus: Corpus, key: CacheKey, fid: int, column: str) -> pd.DataFrame:
    return feature_queries.metadata_breakdown(_ws, _corpus, fid, column)


# -- small pieces -------------------------------------------------------------------------------
def open_here(fid: int) -> None:
    """Show this feature's detail on this page (also kept in the URL)."""
    st.session_state[widgets.FEATURE_KEY] = int(fid)
    st.query_params["feature"] = str(int(fid))


def label_changed(message: str) -> None:
    st.session_state[FLASH_KEY] = message
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


def highlighted_document(ws: Workspace, corpus: Corpus, doc_id: int, fid: int, max_act: float | None) -> None:
    tokens, acts, mask = doc_activations(ws, corpus, widgets.cache_key(ws, corpus), int(doc_id), fid)
    widgets.show_html(widgets.highlight_html(tokens, acts, max_act, count_mask=mask, mark_pos=masked_argmax(acts, mask)))


# -- browse and search ----------------------------------------------------------------------------
def browse_tab(ws: Workspace, corpus: Corpus) -> None:
    c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
    dens = c1.slider("Density (share of documents where the feature fires)", 0.0, 1.0, (0.0, 1.0), step=0.001,
                     format="%.3f", key="density_range")
    sortable = list(feature_queries.SORTABLE)
    sort_by = c2.selectbox("Sort by", sortable, index=sortable.index("specificity"), key="sort_by",
                           help="specificity: informative features first (a well-explained label, firing in some "
                                "documents but not almost all of them); near-constant and one-document features sink.")
    desc = c3.toggle("Descending", value=True, key="sort_desc")
    hide_dead = c4.toggle("Hide dead", value=True, key="hide_dead", help="Dead features never fire on this corpus.")
    t1, t2 = st.columns([3, 2])
    text_filter = t1.text_input("Filter by label or top token", key="table_filter", placeholder="e.g. movie")
    show_constant = t2.toggle(f"Show near-constant features (fire in ≥ {NEAR_CONSTANT_PERCENT} of documents)",
                              value=False, key="show_near_constant",
                              help="They fire on punctuation or frequent words in most documents and say little "
                                   "about any one document.")
    table = load_table(ws, corpus, widgets.cache_key(ws, corpus), ws.label_revision(), dens[0], dens[1], hide_dead,
                       sort_by, desc, not show_constant)
    if text_filter.strip():
        needle = text_filter.strip().lower()
        hay = table["label"].fillna("").str.lower() + " " + table["top_tokens"].fillna("").str.lower()
        table = table[hay.str.contains(needle, regex=False)].reset_index(drop=True)
    hidden = "" if show_constant else f" (near-constant features, in ≥ {NEAR_CONSTANT_PERCENT} of documents, hidden)"
    st.caption(f"{len(table):,} of {ws.d_sae:,} features{hidden}. Select a row to open the feature.")
    pick_table(
        table[["feature_id", "label", "label_score", "specificity", "density", "n_docs_active", "max_act", "mean_act",
               "top_tokens"]], "feature_table",
        height=420,
        column_config={
            "label_score": st.column_config.NumberColumn(
                "label score", format="%.2f",
                help="How well the label explains where the feature fires: for automatic labels, the share of its top "
                     "contexts the named words cover; for LLM labels, held-out accuracy (0.5 = chance)."),
            "specificity": st.column_config.NumberColumn("specificity", format="%.3f"),
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


def meaning_tab(ws: Workspace, corpus: Corpus) -> None:
    with st.form("meaning_form", border=False):
        query = st.text_input("Describe a concept", key="meaning_query", placeholder="e.g. python code, negative reviews")
        st.form_submit_button("Search", icon=":material/search:")
    job = search_widgets.index_job(ws, corpus, requested=bool(query.strip()))  # builds in the background
    if not query.strip():
        return
    try:
        with st.spinner("Indexing the first features for search…"):
            status = wait_until_searchable(ws, corpus)  # seconds, and only before the first chunk is stored
        with st.spinner("Searching…"):
            hits = search_features(ws, corpus, query.strip(), 20, complete=False)  # the part indexed so far
    except SearchModelMissing as exc:
        st.error(md_escape(exc, max_len=None))
        return
    search_widgets.coverage_notice(status, job)
    st.caption("Closest features by label and top contexts (cosine similarity). Select a row to open one.")
    pick_table(hits[["feature_id", "label", "score", "score_label", "score_contexts"]], "meaning_hits",
               column_config={c: st.column_config.NumberColumn(format="%.3f")
                              for c in ("score", "score_label", "score_contexts")})


def example_tab(ws: Workspace, corpus: Corpus) -> None:
    with st.form("example_form", border=False):
        example = st.text_area("Paste a text", key="example_text", height=120,
                               placeholder="The features that fire on it are listed, strongest first.")
        st.form_submit_button("Find features", icon=":material/manage_search:")
    if not example.strip():
        return
    with st.spinner("Running the model on the text…"):
        res = search_example(ws, corpus, widgets.cache_key(ws, corpus), ws.label_revision(), example, 20)
    if res.features.empty:
        st.info("No feature fires on this text.")
        return
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
    acts = res.acts[:, ids.index(shown)]
    mask = res.count_mask or None  # hides position 0 and template tokens
    widgets.show_html(widgets.highlight_html(res.tokens, acts, count_mask=mask, mark_pos=int(acts.argmax())))


# -- labels ---------------------------------------------------------------------------------------
session_llm = widgets.session_llm  # the endpoint this session uses (the operator's, with this session's settings)


def labels_panel(ws: Workspace, corpus: Corpus, detail: feature_queries.FeatureDetail) -> None:
    fid = detail.feature_id
    if detail.labels.empty:
        st.caption("No label yet.")
    else:
        st.dataframe(detail.labels[["label", "source", "score", "updated_at"]], hide_index=True)
    hand = detail.labels.loc[detail.labels["source"] == "hand", "label"]
    with st.form(f"hand_label_{fid}", border=False):
        new = st.text_input("Hand label (wins over automatic and LLM labels; leave empty to remove it)",
                            value=str(hand.iloc[0]) if len(hand) else "", key=f"hand_label_text_{fid}")
        if st.form_submit_button("Save hand label", icon=":material/save:"):
            set_hand_label(ws, fid, new)
            label_changed(f"Saved the hand label of feature #{fid}." if new.strip() else f"Removed the hand label of feature #{fid}.")
    llm, source = widgets.labelling_llm(ws)  # this session's server, else the reader model when it can serve
    if llm is None:
        st.caption(f"LLM labels: {md_escape(source, max_len=None)}")
    elif st.button("Label with an LLM", key=f"llm_label_{fid}", icon=":material/smart_toy:",
                   help=f"Asks {md_escape(source, max_len=None)} for a label, then scores it on held-out samples."):
        try:
            with st.spinner(f"Asking {md_escape(source, max_len=None)}…"):
                out = ws.label_features(corpus, [fid], llm=llm, force=True)  # asked for: label again
        except UserError as exc:
            st.error(f"LLM labelling failed: {md_escape(exc, max_len=None)}")
        else:
            label_changed(f"LLM label of feature #{fid} saved (held-out accuracy {float(out['score'].iloc[0]):.2f}).")


def llm_settings_panel() -> None:
    """This session's LLM endpoint. Kept in the session only; a key goes only to the URL it was entered with."""
    current = session_llm()
    if current is None:
        st.caption("No LLM is configured for this session.")
    else:
        key_note = "an API key is set for it (never shown)" if current.has_key else "no API key is sent"
        origin = "this session's settings" if st.session_state.get(LLM_SESSION_KEY) else "the server's settings"
        st.caption(f"Using {md_escape(current.model)} at {md_escape(current.base_url)} from {origin}; {key_note}.")
    for field, value in (("llm_url", current.base_url if current else ""), ("llm_model", current.model if current else "")):
        st.session_state.setdefault(field, value)
    with st.form("llm_settings", border=False):
        st.text_input("Base URL", key="llm_url", placeholder="http://localhost:8000/v1")
        st.text_input("Model", key="llm_model")
        st.text_input("API key for this URL (never shown; empty sends none, or the server's key to the server's URL)",
                      type="password", key="llm_key")
        st.form_submit_button("Use these settings", icon=":material/check:", on_click=save_llm_settings)
    if error := st.session_state.pop("_llm_settings_error", None):
        st.error(md_escape(error, max_len=None))
    if st.session_state.get(LLM_SESSION_KEY) and st.button("Use the server's settings", key="llm_reset",
                                                           icon=":material/restart_alt:"):
        for field in (LLM_SESSION_KEY, "llm_url", "llm_model"):
            st.session_state.pop(field, None)
        st.rerun()


def save_llm_settings() -> None:
    """Keep what the session entered (the key with the URL it was entered with); empty the key field at once."""
    entered = {"base_url": st.session_state.get("llm_url", "").strip(), "model": st.session_state.get("llm_model", "").strip(),
               "api_key": st.session_state.get("llm_key", "").strip()}
    st.session_state["llm_key"] = ""
    try:
        session_llm_config(operator_llm_config_or_none(), **entered)
    except LLMError as exc:
        st.session_state["_llm_settings_error"] = str(exc)
    else:
        st.session_state[LLM_SESSION_KEY] = entered


def operator_llm_config_or_none() -> LLMConfig | None:
    try:
        return operator_llm_config()
    except LLMError:
        return None  # session_llm() already says what is wrong with the operator's config


# -- feature detail -------------------------------------------------------------------------------
def chosen_feature(ws: Workspace) -> int:
    """The feature to detail (from the URL or the session); stops the page when there is none."""
    fid = widgets.selected_feature()
    if fid is None:
        st.info("Select a feature in the table or a search to see where it fires.")
        st.stop()
    if not 0 <= int(fid) < ws.d_sae:
        st.warning(f"Feature {int(fid)} does not exist in this workspace (features 0-{ws.d_sae - 1}).")
        st.stop()
    return int(fid)


def stats_row(stats: dict[str, Any]) -> int:
    """Density, counts and activation figures; returns the number of documents where it fires."""
    n_act, n_all = int(stats.get("n_docs_active") or 0), int(stats.get("n_docs") or 0)
    m = st.columns(5)
    m[0].metric("Density", f"{100 * float(stats.get('density') or 0):.2f}%")
    m[1].metric("Documents where it fires", f"{n_act:,} / {n_all:,}")
    for col, (name, field, fmt) in zip(m[2:], (("Max activation", "max_act", "{:.3f}"), ("Mean activation", "mean_act", "{:.3f}"),
                                              ("Active tokens per document", "mean_tokens_active", "{:.1f}"))):
        col.metric(name, fmt.format(stats[field]) if stats.get(field) is not None else "–")
    return n_act


def histogram_figure(h: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=(h["lo"] + h["hi"]) / 2, y=h["count"], width=(h["hi"] - h["lo"]).clip(lower=1e-6),
                           customdata=np.stack([h["lo"], h["hi"]], axis=1), marker_color=ORANGE,
                           hovertemplate="%{customdata[0]:.3f}–%{customdata[1]:.3f}: %{y} documents<extra></extra>"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="max activation",
                      yaxis_title="documents", bargap=0.05)
    return fig


def breakdown_figure(bd: pd.DataFrame) -> go.Figure:
    top = bd.head(20)
    names = [html.escape(str(v)[:40]) for v in top["value"]]  # Plotly renders some HTML in labels
    fig = go.Figure([go.Bar(name="documents where it fires", x=names, y=top["share_active"], marker_color=ORANGE),
                     go.Bar(name="all documents", x=names, y=top["share_all"], marker_color=GREY)])
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="share",
                      legend=dict(orientation="h", y=1.1))
    return fig


def documents_section(ws: Workspace, corpus: Corpus, detail: feature_queries.FeatureDetail) -> None:
    """Top-activating documents and samples from activation quantiles, highlighted."""
    fid, max_act = detail.feature_id, float(detail.stats.get("max_act") or 0) or None
    st.markdown("**Top-activating documents**")
    n_top = len(detail.top_documents)
    n_show = st.slider("Documents to highlight", 1, n_top, min(5, n_top), key="n_highlight") if n_top > 1 else n_top
    with st.spinner("Recomputing token activations of the shown documents…"):
        for row in detail.top_documents.head(n_show).itertuples():
            st.caption(f"#{row.rank + 1} · document {row.doc_id} · max activation {row.max_act:.3f}")
            highlighted_document(ws, corpus, int(row.doc_id), fid, max_act)
    with st.expander("Samples from activation quantiles"):
        highlight = st.toggle("Highlight tokens (runs the model on each sample)", key="highlight_quantiles")
        for bucket, group in detail.quantile_samples.groupby("bucket", sort=False):
            st.markdown(f"**{md_escape(bucket)}** of the documents where it fires, by max activation")
            if not highlight:
                st.dataframe(group[["max_act", "doc_id", "text"]], hide_index=True,
                             column_config={"max_act": st.column_config.NumberColumn("max act", format="%.3f")})
                continue
            for row in group.itertuples():
                st.caption(f"document {row.doc_id} · max activation {row.max_act:.3f}")
                highlighted_document(ws, corpus, int(row.doc_id), fid, max_act)


def neighbours_section(detail: feature_queries.FeatureDetail) -> None:
    """Logit lens and the most correlated features."""
    lo, hi = st.columns(2)
    for col, title, pairs in ((lo, "Promoted output tokens (logit lens)", detail.promoted),
                              (hi, "Suppressed output tokens (logit lens)", detail.suppressed)):
        col.markdown(f"**{title}**")
        col.dataframe(pd.DataFrame(pairs, columns=["token", "logit"]), hide_index=True,
                      column_config={"logit": st.column_config.NumberColumn(format="%.3f")})
    st.markdown("**Most correlated features** (NPMI over documents)")
    if detail.correlated.empty:
        st.caption("No feature fires often enough in the same documents.")
        return
    st.dataframe(detail.correlated, hide_index=True,
                 column_config={"npmi": st.column_config.NumberColumn(format="%.3f"),
                                "n_cooc": st.column_config.NumberColumn("together"),
                                "n_docs_active": st.column_config.NumberColumn("documents")})
    open_buttons(detail.correlated["feature_id"].astype(int).head(6).tolist(), "corr")


def metadata_section(ws: Workspace, corpus: Corpus, fid: int) -> None:
    if not corpus.meta_columns:
        return
    st.markdown("**Metadata breakdown**: where it fires versus all documents")
    column = st.selectbox("Metadata column", corpus.meta_columns, key="meta_column")
    bd = breakdown(ws, corpus, widgets.cache_key(ws, corpus), fid, column)
    table, chart = st.columns([2, 3])
    table.dataframe(bd, hide_index=True, column_config={
        "share_active": st.column_config.NumberColumn("share (fires)", format="%.3f"),
        "share_all": st.column_config.NumberColumn("share (all)", format="%.3f"),
        "lift": st.column_config.NumberColumn(format="%.2f")})
    chart.plotly_chart(breakdown_figure(bd), key=f"meta_{fid}_{column}")


def unnamed_note(weaker_share: float | None) -> str:
    """Why a label reads `varied tokens`, and where this feature's strength stands in the corpus."""
    text = "Its top contexts share nothing the offline labeller could name."
    if weaker_share is not None:
        text += (f" Its strongest activation here is above {100 * weaker_share:.0f}% of this corpus's features': "
                 "the features that fire only weakly in a corpus are the ones that mostly get such labels "
                 "(docs/labels.md).")
    return text + " An LLM label (Labels, below) may say more."


def elsewhere_note(words: tuple[str, ...]) -> str:
    """The words the feature fires on most in the SAE's reference text: what it is about where it fires strongly."""
    return f"In the SAE's reference text (other documents) it fires most on: {md_escape(' / '.join(words))}."


def detail_section(ws: Workspace, corpus: Corpus) -> None:
    fid = chosen_feature(ws)
    try:
        detail = load_detail(ws, corpus, widgets.cache_key(ws, corpus), ws.label_revision(), fid)
    except StoreError as exc:
        st.error(md_escape(exc, max_len=None))
        st.stop()
    st.subheader(f"Feature #{fid}")
    widgets.show_html(title_html(label_of(detail.label)))
    if names_nothing(detail.label):
        st.caption(unnamed_note(detail.weaker_share))
    if detail.elsewhere:
        st.caption(elsewhere_note(detail.elsewhere))
    widgets.feature_links(fid, key="detail", exclude="features")
    with st.expander("Labels", expanded=False):
        labels_panel(ws, corpus, detail)
    with st.expander("LLM labelling settings"):
        llm_settings_panel()
    if stats_row(detail.stats) == 0:
        st.info("This feature never fires on this corpus.")
        return
    left, right = st.columns([3, 2])
    left.markdown("**Activation histogram** (max activation per document, documents where it fires)")
    left.plotly_chart(histogram_figure(detail.histogram), key=f"hist_{fid}")
    right.markdown("**Tokens at the strongest activation**")
    right.dataframe(detail.top_tokens, hide_index=True,
                    column_config={"mean_act": st.column_config.NumberColumn("mean act", format="%.3f")})
    documents_section(ws, corpus, detail)
    neighbours_section(detail)
    metadata_section(ws, corpus, fid)


st.title("Features")
workspace, selected = widgets.require_corpus()
widgets.unfinished_notice(workspace, selected)
if flash := st.session_state.pop(FLASH_KEY, None):
    st.success(flash)
tab_all, tab_meaning, tab_example = st.tabs(["All features", "Search by meaning", "Search by example"])
with tab_all:
    browse_tab(workspace, selected)
with tab_meaning:
    meaning_tab(workspace, selected)
with tab_example:
    example_tab(workspace, selected)
st.divider()
detail_section(workspace, selected)
