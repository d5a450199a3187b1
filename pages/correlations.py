"""Correlations: feature pairs that co-occur more than chance (NPMI), and features against metadata.

Layout and widgets only; computation is backend.analysis.correlate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from backend.analysis.correlate import cofiring_documents, feature_vs_metadata, npmi_pairs, quick_engine
from backend.store import Corpus
from backend.workspace import Workspace
from pages import widgets
from pages.analysis_widgets import (
    corpus_labels, export_block, feature_name, latents, metadata, open_feature_button, show_documents, with_labels,
)

NPMI_COLUMN = {"npmi": st.column_config.NumberColumn("NPMI", format="%.3f")}


@st.cache_data(show_spinner="Counting co-occurrences…", max_entries=16)
def run_pairs(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, label_revision: tuple, threshold: float,
              min_count: int, top: int, exclude_same: bool) -> pd.DataFrame:
    X = latents(_ws, _corpus)
    same = corpus_labels(_ws, _corpus) if exclude_same else None
    return npmi_pairs(X, threshold=threshold, min_count=min_count, top=top, exclude_same_label=same, engine=quick_engine(X))


@st.cache_data(show_spinner="Comparing with metadata…", max_entries=16)
def run_meta(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, column: str, threshold: float, min_count: int,
             top: int) -> pd.DataFrame:
    return feature_vs_metadata(latents(_ws, _corpus), metadata(_ws, _corpus, column), top=top, threshold=threshold,
                               min_count=min_count)


def default_min_count(corpus: Corpus) -> int:
    return min(int(max(2, min(50, corpus.n_docs // 100))), corpus.n_docs)


def pairs_tab(ws: Workspace, corpus: Corpus, lab: dict[int, str]) -> float:
    """The pair table and the documents of one pair; returns the activation threshold (shared with the other tab)."""
    c1, c2, c3, c4 = st.columns(4)
    min_count = c1.number_input("Each feature fires in at least (documents)", 1, max(1, corpus.n_docs),
                                default_min_count(corpus), key="cor_min_count")
    top = c2.number_input("Pairs to show", 5, 1000, 50, step=5, key="cor_top")
    threshold = c3.number_input("Activation threshold", 0.0, value=0.0, step=0.1, key="cor_threshold")
    exclude_same = c4.checkbox("Hide pairs with the same label", value=True, key="cor_exclude_same",
                               help="Redundant latents often share a label; their NPMI is high but uninformative.")
    pairs = run_pairs(ws, corpus, widgets.cache_key(ws, corpus), ws.label_revision(), float(threshold), int(min_count),
                      int(top), bool(exclude_same))
    if pairs.empty:
        st.info("No pair of features co-occurs often enough; lower the minimum count.")
        return float(threshold)
    pairs = with_labels(with_labels(pairs, lab, "feature_b", "label_b"), lab, "feature_a", "label_a")
    pairs.insert(0, "pair", np.arange(1, len(pairs) + 1))
    st.dataframe(pairs, hide_index=True, width="stretch", height=380, column_config=NPMI_COLUMN)
    widgets.export_buttons(pairs, key="cor_pairs_export", stem="npmi_pairs")
    pair_documents(ws, corpus, lab, pairs, float(threshold))
    return float(threshold)


def pair_documents(ws: Workspace, corpus: Corpus, lab: dict[int, str], pairs: pd.DataFrame, threshold: float) -> None:
    """Documents where both features of the chosen pair fire, strongest pair first."""
    st.subheader("Documents where both fire")
    pick = st.selectbox(
        "Pair", list(range(len(pairs))), key="cor_pair",
        format_func=lambda i: (f"{feature_name(pairs.loc[i, 'feature_a'], lab)}  +  "
                               f"{feature_name(pairs.loc[i, 'feature_b'], lab)}  (NPMI {pairs.loc[i, 'npmi']:.2f})"),
    )
    fa, fb = int(pairs.loc[pick, "feature_a"]), int(pairs.loc[pick, "feature_b"])
    left, right = st.columns(2)
    with left:
        open_feature_button(fa, "cor_a")
    with right:
        open_feature_button(fb, "cor_b")
    X = latents(ws, corpus)
    order = cofiring_documents(X, fa, fb, threshold)
    st.caption(f"Both fire in {len(order):,} documents; strongest first (shading: each feature scaled to its peak, "
               "the stronger shown).")
    n_show = st.slider("Documents", 1, 10, 3, key="cor_n_docs")
    show_documents(ws, corpus, order[:n_show], [fa, fb], key="cor_docs", labels=lab)
    with st.expander("Export these documents"):
        export_block(ws, corpus, X, order, key="cor_docs_export", stem=f"npmi_{fa}_{fb}", default_features=[fa, fb],
                     labels=lab)


def metadata_tab(ws: Workspace, corpus: Corpus, lab: dict[int, str], threshold: float) -> None:
    """Features most associated with each value of a metadata column."""
    if not corpus.meta_columns:
        st.info("This corpus has no metadata column.")
        return
    m1, m2, m3 = st.columns(3)
    columns = corpus.meta_columns
    column = m1.selectbox("Metadata column", columns, index=columns.index("label") if "label" in columns else 0,
                          key="cor_meta_column")
    min_count = m2.number_input("Feature fires in at least (documents)", 1, max(1, corpus.n_docs),
                                default_min_count(corpus), key="cor_meta_min")
    top = m3.number_input("Features per value", 1, 200, 10, key="cor_meta_top")
    table = run_meta(ws, corpus, widgets.cache_key(ws, corpus), column, threshold, int(min_count), int(top))
    if table.empty:
        st.info("No feature passes the minimum count.")
        return
    table = with_labels(table, lab)
    st.dataframe(table, hide_index=True, width="stretch", height=420,
                 column_config={**NPMI_COLUMN,
                                "share_in_category": st.column_config.NumberColumn("share in value", format="%.2f"),
                                "share_overall": st.column_config.NumberColumn("share overall", format="%.2f")})
    widgets.export_buttons(table, key="cor_meta_export", stem=f"features_by_{column}")
    fid = st.selectbox("Open a feature", sorted(set(table["feature_id"].astype(int))), key="cor_meta_open",
                       format_func=lambda f: feature_name(f, lab))
    open_feature_button(fid, "cor_meta")


st.title("Correlations")
st.caption(
    "Normalized pointwise mutual information (NPMI) between features over documents: 1 = always together, "
    "0 = independent, −1 = never together. High-NPMI pairs of reasonably frequent features are concepts that "
    "travel together in this corpus more than their frequencies predict."
)
workspace, selected = widgets.require_corpus()
corpus_label_map = corpus_labels(workspace, selected)
tab_pairs, tab_meta = st.tabs(["Feature pairs", "Features × metadata"])
with tab_pairs:
    shared_threshold = pairs_tab(workspace, selected, corpus_label_map)
with tab_meta:
    metadata_tab(workspace, selected, corpus_label_map, shared_threshold)
