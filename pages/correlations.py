"""Correlations: feature pairs that co-occur more than chance (NPMI), and features against metadata.

Layout and widgets only; computation is backend.analysis.correlate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from backend.analysis.correlate import feature_vs_metadata, npmi_pairs
from backend.workspace import Workspace
from pages import analysis_widgets as aw
from pages import widgets

SCIPY_MAX_NNZ = 2_000_000  # below this the sparse-product engine is fast and needs no JIT compilation

st.title("Correlations")
st.caption(
    "Normalized pointwise mutual information (NPMI) between features over documents: 1 = always together, "
    "0 = independent, −1 = never together. High-NPMI pairs of reasonably frequent features are concepts that "
    "travel together in this corpus more than their frequencies predict."
)
ws, corpus = widgets.require_corpus()
version = widgets.data_version(ws, corpus)
info = ws.store.corpus(corpus)
lab = aw.corpus_labels(ws, corpus)
n_docs = info.n_docs


@st.cache_data(show_spinner="Counting co-occurrences…", max_entries=16)
def run_pairs(_ws: Workspace, version: tuple, corpus: str, threshold: float, min_count: int, top: int,
              exclude_same: bool, label_key) -> pd.DataFrame:
    X = _ws.latents(corpus, "max")
    labels = aw.labels(_ws, version, corpus, label_key) if exclude_same else None
    engine = "scipy" if X.nnz <= SCIPY_MAX_NNZ else "auto"
    return npmi_pairs(X, threshold=threshold, min_count=min_count, top=top, exclude_same_label=labels, engine=engine)


@st.cache_data(show_spinner="Comparing with metadata…", max_entries=16)
def run_meta(_ws: Workspace, version: tuple, corpus: str, column: str, threshold: float, min_count: int,
             top: int) -> pd.DataFrame:
    X = _ws.latents(corpus, "max")
    return feature_vs_metadata(X, _ws.store.metadata(corpus, column), top=top, threshold=threshold, min_count=min_count)


tab_pairs, tab_meta = st.tabs(["Feature pairs", "Features × metadata"])

with tab_pairs:
    c1, c2, c3, c4 = st.columns(4)
    default_min = int(max(2, min(50, n_docs // 100)))
    min_count = c1.number_input("Each feature fires in at least (documents)", 1, max(1, n_docs), min(default_min, n_docs),
                                key="cor_min_count")
    top = c2.number_input("Pairs to show", 5, 1000, 50, step=5, key="cor_top")
    threshold = c3.number_input("Activation threshold", 0.0, value=0.0, step=0.1, key="cor_threshold")
    exclude_same = c4.checkbox("Hide pairs with the same label", value=True, key="cor_exclude_same",
                               help="Redundant latents often share a label; their NPMI is high but uninformative.")
    pairs = run_pairs(ws, version, corpus, float(threshold), int(min_count), int(top), bool(exclude_same),
                      aw.label_version(ws))
    if pairs.empty:
        st.info("No pair of features co-occurs often enough; lower the minimum count.")
    else:
        pairs = aw.with_labels(aw.with_labels(pairs, lab, "feature_b", "label_b"), lab, "feature_a", "label_a")
        pairs.insert(0, "pair", np.arange(1, len(pairs) + 1))
        st.dataframe(pairs, hide_index=True, width="stretch", height=380,
                     column_config={"npmi": st.column_config.NumberColumn("NPMI", format="%.3f")})
        widgets.export_buttons(pairs, key="cor_pairs_export", stem="npmi_pairs")

        st.subheader("Documents where both fire")
        pick = st.selectbox(
            "Pair", list(range(len(pairs))), key="cor_pair",
            format_func=lambda i: (f"{aw.feature_name(pairs.loc[i, 'feature_a'], lab)}  +  "
                                   f"{aw.feature_name(pairs.loc[i, 'feature_b'], lab)}  (NPMI {pairs.loc[i, 'npmi']:.2f})"),
        )
        fa, fb = int(pairs.loc[pick, "feature_a"]), int(pairs.loc[pick, "feature_b"])
        b1, b2 = st.columns(2)
        with b1:
            aw.open_feature_button(fa, "cor_a")
        with b2:
            aw.open_feature_button(fb, "cor_b")
        X = aw.latents(ws, version, corpus)
        sub = X[:, [fa, fb]].toarray()
        both = np.flatnonzero((sub[:, 0] > threshold) & (sub[:, 1] > threshold))
        colmax = np.maximum(sub.max(axis=0), 1e-9)
        strength = (sub[both] / colmax).min(axis=1)
        order = both[np.lexsort((both, -strength))]
        st.caption(f"Both fire in {len(both):,} documents; strongest first (shading: each feature scaled to its peak, "
                   "the stronger shown).")
        n_show = st.slider("Documents", 1, 10, 3, key="cor_n_docs")
        aw.show_documents(ws, corpus, order[:n_show], [fa, fb], key="cor_docs", labels=lab)
        with st.expander("Export these documents"):
            aw.export_block(ws, corpus, X, order, key="cor_docs_export", stem=f"npmi_{fa}_{fb}",
                            default_features=[fa, fb], labels=lab)

with tab_meta:
    if not info.meta_columns:
        st.info("This corpus has no metadata column.")
    else:
        m1, m2, m3 = st.columns(3)
        default_col = info.meta_columns.index("label") if "label" in info.meta_columns else 0
        column = m1.selectbox("Metadata column", info.meta_columns, index=default_col, key="cor_meta_column")
        m_min = m2.number_input("Feature fires in at least (documents)", 1, max(1, n_docs), min(default_min, n_docs),
                                key="cor_meta_min")
        m_top = m3.number_input("Features per value", 1, 200, 10, key="cor_meta_top")
        table = run_meta(ws, version, corpus, column, float(threshold), int(m_min), int(m_top))
        if table.empty:
            st.info("No feature passes the minimum count.")
        else:
            table = aw.with_labels(table, lab)
            st.dataframe(table, hide_index=True, width="stretch", height=420,
                         column_config={"npmi": st.column_config.NumberColumn("NPMI", format="%.3f"),
                                        "share_in_category": st.column_config.NumberColumn("share in value", format="%.2f"),
                                        "share_overall": st.column_config.NumberColumn("share overall", format="%.2f")})
            widgets.export_buttons(table, key="cor_meta_export", stem=f"features_by_{column}")
            fid = st.selectbox("Open a feature", sorted(set(table["feature_id"].astype(int))), key="cor_meta_open",
                               format_func=lambda f: aw.feature_name(f, lab))
            aw.open_feature_button(fid, "cor_meta")
