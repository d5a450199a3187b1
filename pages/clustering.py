"""Clustering along chosen concepts (the paper's "cluster by concept"), beside a dense MiniLM baseline.

Documents are represented only by which of the chosen SAE features fire; spectral clustering on
Jaccard similarity groups them. Layout and widgets only; computation is backend.analysis.cluster."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from backend.analysis.cluster import (
    NOISE_LABEL, NONE_LABEL, ClusterResult, agreement, cluster_documents, dense_cluster, describe_clusters, umap_2d,
)
from backend.workspace import Workspace
from pages import analysis_widgets as aw
from pages import widgets

METHODS = {"spectral": "Spectral on Jaccard (the paper's method)", "hdbscan": "HDBSCAN", "kmeans": "k-means"}
DENSE_METHODS = {"kmeans": "k-means", "spectral": "Spectral (kNN)", "agglomerative": "Agglomerative (Ward)"}
AUTO_DENSE_MAX = 2000  # corpora up to this size get MiniLM embeddings without asking
SEEN_KEY = "_clu_seen_feature"

st.title("Clustering")
st.caption(
    "Cluster documents along the concepts you care about: each document is reduced to which of the chosen "
    "features fire in it, and documents with similar patterns (Jaccard similarity) are grouped. The same "
    "corpus clustered on dense MiniLM sentence embeddings is shown beside it for comparison."
)
ws, corpus = widgets.require_corpus()
version = widgets.data_version(ws, corpus)
info = ws.store.corpus(corpus)
lab = aw.corpus_labels(ws, corpus)

sel = widgets.selected_feature()
if sel is not None and sel != st.session_state.get(SEEN_KEY):  # arrived through "Cluster on it"
    st.session_state[SEEN_KEY] = sel
    if 0 <= int(sel) < ws.d_sae:
        cur = list(st.session_state.get("clu_chosen", []))
        st.session_state["clu_chosen"] = cur + [int(sel)] if int(sel) not in cur else cur

chosen = aw.feature_picker(ws, corpus, key="clu", title="Concepts to cluster along")
if not chosen:
    st.info("Choose at least one feature above (search by meaning, paste an example, or pick from the list).")
    st.stop()

# -- options --------------------------------------------------------------------------
c1, c2, c3, c4 = st.columns(4)
method = c1.selectbox("Method", list(METHODS), format_func=METHODS.get, key="clu_method")
k_mode = c2.radio("Number of clusters", ["suggested", "choose"], key="clu_k_mode", horizontal=True,
                  format_func={"suggested": "Suggested (eigengap)", "choose": "Choose"}.get,
                  disabled=method == "hdbscan")
k = c3.number_input("Clusters", 2, 50, 4, key="clu_k", disabled=k_mode != "choose" or method == "hdbscan")
threshold = c4.number_input("Activation threshold", 0.0, value=0.0, step=0.1, key="clu_threshold")
min_size = None
if method == "hdbscan":
    min_size = int(st.number_input("HDBSCAN: minimum cluster size (documents)", 2, max(2, info.n_docs),
                                   min(max(5, info.n_docs // 20), max(2, info.n_docs // 2)), key="clu_min_size"))


@st.cache_data(show_spinner="Clustering…", max_entries=16)
def run_cluster(_ws: Workspace, version: tuple, corpus: str, fids: tuple, method: str, k: int | None,
                threshold: float, min_size: int | None = None) -> ClusterResult:
    return cluster_documents(_ws.latents(corpus, "max"), list(fids), method=method, n_clusters=k, threshold=threshold,
                             min_cluster_size=min_size)


@st.cache_data(show_spinner="Describing clusters…", max_entries=16)
def run_describe(_ws: Workspace, version: tuple, corpus: str, labels: tuple, fids: tuple | None, threshold: float) -> pd.DataFrame:
    return describe_clusters(_ws.latents(corpus, "max"), np.asarray(labels), feature_ids=fids, top=8, threshold=threshold)


@st.cache_data(show_spinner="Clustering MiniLM embeddings…", max_entries=16)
def run_dense(_E: np.ndarray, version: tuple, n_stored: int, k: int, method: str) -> np.ndarray:
    return dense_cluster(_E, k, method=method)


@st.cache_data(show_spinner="Laying out the map (UMAP)…", max_entries=8)
def run_umap(_data, version: tuple, what: tuple) -> np.ndarray:
    if what[0] == "sae":
        return umap_2d(_data, metric="jaccard", feature_ids=list(what[1]), threshold=what[2])
    return umap_2d(_data, metric="cosine")


def cluster_name(c: int) -> str:
    if c == NONE_LABEL:
        return "none of the chosen features"
    if c == NOISE_LABEL:
        return "noise"
    return f"cluster {c}"


want_k = None if (k_mode == "suggested" or method == "hdbscan") else int(k)
try:
    res = run_cluster(ws, version, corpus, tuple(chosen), method, want_k, float(threshold), min_size)
except ValueError as exc:  # e.g. fewer documents with the chosen features than the minimum cluster size
    st.warning(f"Cannot cluster with these settings: {exc}")
    st.stop()
m1, m2, m3, m4 = st.columns(4)
m1.metric("Clusters found", res.n_clusters)
m2.metric("Suggested k", res.suggested_k if res.suggested_k is not None else "n/a")
m3.metric("Silhouette (Jaccard)", f"{res.silhouette:.3f}" if np.isfinite(res.silhouette) else "n/a")
m4.metric("Documents with none of them", f"{res.n_empty:,}")
if not res.exact:
    st.caption("Many distinct patterns: the Jaccard affinity uses a nearest-neighbour graph (approximate).")
if res.n_clusters == 0:
    if (res.labels == NONE_LABEL).all():
        st.warning("None of the chosen features fires in this corpus; choose others or lower the threshold.")
    else:
        st.warning(f"HDBSCAN put every document in noise (it needs dense groups of at least {min_size} documents); "
                   "try spectral clustering.")
    st.stop()

sizes = pd.Series(res.labels).value_counts().sort_index()
st.bar_chart(pd.DataFrame({"documents": sizes.to_numpy()}, index=[cluster_name(int(c)) for c in sizes.index]),
             height=200, horizontal=True)

# -- descriptions ----------------------------------------------------------------------
st.subheader("What each cluster is about")
scope = st.radio("Describe with", ["all", "chosen"], horizontal=True, key="clu_describe_scope",
                 format_func={"all": "All features", "chosen": "Only the chosen features"}.get)
desc = run_describe(ws, version, corpus, tuple(int(x) for x in res.labels),
                    None if scope == "all" else tuple(chosen), float(threshold))
desc = aw.with_labels(desc, lab)
for c in [int(x) for x in sizes.index if x >= 0][:20] + [int(x) for x in sizes.index if x < 0]:
    d = desc[desc["cluster"] == c]
    top = d[d["diff"] > 0]
    name = aw.md_escape(lab.get(int(top["feature_id"].iloc[0]), "")) if len(top) else ""
    st.markdown(f"**{cluster_name(c).capitalize()}** · {int(sizes[c]):,} documents" + (f" · mostly *{name}*" if name else ""))
    st.dataframe(d[["feature_id", "label", "in_share", "out_share", "diff", "ratio", "n_in"]], hide_index=True,
                 width="stretch", height=min(320, 38 + 35 * len(d)),
                 column_config={"in_share": st.column_config.NumberColumn("in share", format="%.2f"),
                                "out_share": st.column_config.NumberColumn("out share", format="%.2f"),
                                "diff": st.column_config.NumberColumn("in − out", format="%+.2f"),
                                "ratio": st.column_config.NumberColumn(format="%.2f")})
open_pick = st.selectbox("Open a feature", sorted(set(desc["feature_id"].astype(int))), key="clu_open_pick",
                         format_func=lambda f: aw.feature_name(f, lab))
aw.open_feature_button(open_pick, "clu")

# -- dense baseline and agreement --------------------------------------------------------
st.subheader("Compared with dense MiniLM embeddings")
from backend import doc_embeddings as de  # noqa: E402

E = None
if de.is_complete(ws, corpus) or info.n_docs <= AUTO_DENSE_MAX:
    E = aw.dense_vectors(ws, corpus, allow_compute=True)
else:
    st.caption(f"MiniLM embeddings of the {info.n_docs:,} documents are computed once and stored in the workspace.")
    if st.button("Compute MiniLM embeddings", key="clu_dense_compute"):
        E = aw.dense_vectors(ws, corpus, allow_compute=True)
dense_labels = None
if E is not None and E.shape[0] >= 3:
    d1, d2 = st.columns(2)
    dense_method = d1.selectbox("Dense method", list(DENSE_METHODS), format_func=DENSE_METHODS.get, key="clu_dense_method")
    dense_k = max(2, min(res.n_clusters, E.shape[0] - 1))
    d2.caption(f"Same number of clusters as the SAE clustering: {dense_k}.")
    dense_labels = run_dense(E, version, de.n_stored(ws, corpus), dense_k, dense_method)
    st.bar_chart(pd.Series(dense_labels).value_counts().sort_index().rename("documents"), height=160)

if info.meta_columns:
    default_col = info.meta_columns.index("label") if "label" in info.meta_columns else 0
    truth_col = st.selectbox("Agreement with metadata column", info.meta_columns, index=default_col, key="clu_truth")
    truth = aw.metadata(ws, version, corpus, truth_col).to_numpy()
    known = ~pd.isna(truth)
    if known.sum() >= 2:
        sae_ag = agreement(res.labels[known], truth[known].astype(str))
        a1, a2, a3, a4 = st.columns(4)
        a1.metric("SAE clusters · ARI", f"{sae_ag['ari']:.3f}")
        a2.metric("SAE clusters · NMI", f"{sae_ag['nmi']:.3f}")
        if dense_labels is not None:
            dense_ag = agreement(dense_labels[known], truth[known].astype(str))
            a3.metric("MiniLM clusters · ARI", f"{dense_ag['ari']:.3f}")
            a4.metric("MiniLM clusters · NMI", f"{dense_ag['nmi']:.3f}")
        st.caption(f"Adjusted Rand index and normalized mutual information against `{aw.md_escape(truth_col)}` over "
                   f"{int(known.sum()):,} documents with a value (documents with none of the chosen features count as "
                   "one group). 1 = the same partition, 0 = chance.")
        xt = pd.crosstab(pd.Series([cluster_name(int(c)) for c in res.labels[known]], name="SAE cluster"),
                         pd.Series(truth[known].astype(str), name=str(truth_col)))
        st.dataframe(xt, width="stretch")

# -- UMAP maps ---------------------------------------------------------------------------
st.subheader("Map")
if st.button("Draw UMAP maps", key="clu_umap_btn", help="UMAP takes a while the first time (it compiles)."):
    st.session_state["clu_umap"] = True
if st.session_state.get("clu_umap"):
    color_opts = ["cluster"] + list(info.meta_columns)
    color_by = st.selectbox("Colour by", color_opts, key="clu_color")
    docs = aw.documents(ws, version, corpus, tuple(range(info.n_docs)))
    hover = docs["text"].map(lambda t: html.escape(aw.snippet(t, 120))).to_numpy()
    colour = ([cluster_name(int(c)) for c in res.labels] if color_by == "cluster"
              else aw.metadata(ws, version, corpus, color_by).fillna("(missing)").astype(str).to_numpy())
    maps = [("SAE features (Jaccard on the chosen features)", ws.latents(corpus, "max"), ("sae", tuple(chosen), float(threshold)))]
    if E is not None:
        maps.append(("MiniLM embeddings (cosine)", E, ("dense",)))
    st.caption("Both maps are coloured the same way, so you can see where the SAE clusters fall on the dense map.")
    cols = st.columns(len(maps))
    for col, (title, data, what) in zip(cols, maps):
        xy = run_umap(data, version, what)
        df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "colour": colour, "doc_id": np.arange(len(xy)), "text": hover})
        fig = px.scatter(df, x="x", y="y", color="colour", hover_data={"doc_id": True, "text": True, "x": False, "y": False},
                         title=title)
        fig.update_traces(marker=dict(size=6, opacity=0.8))
        fig.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), legend_title_text=color_by)
        col.plotly_chart(fig, width="stretch", key=f"clu_umap_{what[0]}")

# -- export ------------------------------------------------------------------------------
st.subheader("Export a cluster's documents")
clusters = [int(c) for c in sizes.index if c >= 0] + [int(c) for c in sizes.index if c < 0]
pick = st.selectbox("Cluster", clusters, key="clu_export_cluster", format_func=lambda c: f"{cluster_name(c)} ({int(sizes[c]):,})")
rows = np.flatnonzero(res.labels == pick)
extra = pd.DataFrame({"cluster": res.labels[rows]})
if dense_labels is not None:
    extra["minilm_cluster"] = dense_labels[rows]
aw.export_block(ws, corpus, aw.latents(ws, version, corpus), rows, key="clu_export", stem=f"cluster_{pick}",
                default_features=chosen, labels=lab, extra=extra)
with st.expander("Preview"):
    aw.show_documents(ws, corpus, rows[:5], chosen, key="clu_preview", labels=lab)
