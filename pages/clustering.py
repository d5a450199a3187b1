"""Clustering: topics found by MiniLM and read through SAE features (the first tab: dense vectors group documents
by topic better), and clustering along chosen concepts (the paper's "cluster by concept"), beside a dense baseline.

Topics: `Workspace.cluster_dense` (MiniLM k-means by default), each cluster described by its most over- and
under-represented SAE features (z of the log-odds ratio, near-constant features skipped) and typical documents.

The chosen features are first folded into concepts (features that fire on the same documents). The
"concepts" method groups documents by which concepts they carry, keeping the documents that carry none as
an explicit group; the pattern methods (spectral on Jaccard, k-means, HDBSCAN) group the raw feature
patterns. Layout and widgets only: every clustering is one `Workspace.cluster` call, what a notebook gets."""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from backend import doc_embeddings
from backend.analysis.cluster import (
    NONE_LABEL, ClusterReading, DocumentClusters, agreement, cluster_name, dense_cluster, describe_clusters, umap_2d,
)
from backend.analysis.concepts import Concept, ConceptConfig
from backend.errors import UserError
from backend.store import Corpus
from backend.workspace import Workspace
from pages import widgets
from pages.analysis_widgets import (
    with_evidence,
    corpus_labels, dense_vectors, documents, export_block, feature_name, feature_picker, latents, metadata,
    label_on_demand, open_feature_button, show_documents, snippet,
)
from pages.widgets import md_escape

METHODS = {"concepts": "Concepts: which chosen concepts a document carries", "spectral": "Patterns: spectral on Jaccard",
           "kmeans": "Patterns: k-means", "hdbscan": "Patterns: HDBSCAN"}
DESCRIBE_SCOPES = {"concepts": "The chosen concepts", "all": "All features", "chosen": "Only the chosen features"}
DENSE_METHODS = {"kmeans": "k-means", "spectral": "Spectral (kNN)", "agglomerative": "Agglomerative (Ward)"}
AUTO_DENSE_MAX = 2000  # corpora up to this size get MiniLM embeddings without asking
SEEN_KEY = "_clu_seen_feature"
SHARE = st.column_config.NumberColumn(format="%.2f")


@dataclass(frozen=True)
class Options:
    method: str
    k: int | None  # None: the suggestion
    threshold: float
    min_jaccard: float
    max_share: float
    min_size: int | None  # HDBSCAN only


def show_table(table: pd.DataFrame, height: int = 320, **column_config) -> None:
    st.dataframe(table, hide_index=True, width="stretch", height=min(height, 38 + 35 * len(table)),
                 column_config=column_config)


# -- cached backend calls (the workspace and handle are not hashed; the cache key is) ---------------
@st.cache_data(show_spinner="Clustering…", max_entries=16)
def run_cluster(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, fids: tuple[int, ...],
                options: Options) -> DocumentClusters:
    config = ConceptConfig(min_jaccard=options.min_jaccard, max_share=options.max_share, threshold=options.threshold)
    return _ws.cluster(_corpus, list(fids), k=options.k, method=options.method, config=config,
                       min_cluster_size=options.min_size)


@st.cache_data(show_spinner="Describing clusters…", max_entries=16)
def run_describe(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, labels: tuple[int, ...],
                 fids: tuple[int, ...] | None, threshold: float) -> pd.DataFrame:
    return describe_clusters(_ws.latents(_corpus, "max"), np.asarray(labels), feature_ids=fids, top=8, threshold=threshold)


@st.cache_data(show_spinner="Clustering MiniLM embeddings and reading the clusters…", max_entries=16)
def run_topics(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, n_stored: int, k: int, method: str,
               min_support: int) -> ClusterReading:
    return _ws.cluster_dense(_corpus, k=k, method=method, top=5, n_docs=3, min_support=min_support)


@st.cache_data(show_spinner="Clustering MiniLM embeddings…", max_entries=16)
def run_dense(_vectors: np.ndarray, key: widgets.CacheKey, n_stored: int, k: int, method: str) -> np.ndarray:
    return dense_cluster(_vectors, k, method=method)


@st.cache_data(show_spinner="Laying out the map (UMAP)…", max_entries=8)
def run_umap(_data, key: widgets.CacheKey, what: tuple) -> np.ndarray:
    if what[0] == "sae":
        return umap_2d(_data, metric="jaccard", feature_ids=list(what[1]), threshold=what[2])
    return umap_2d(_data, metric="cosine")


# -- choosing ------------------------------------------------------------------------------
def arrive_with_feature(ws: Workspace) -> None:
    """A feature sent here by "Cluster on it" joins the chosen ones (once)."""
    sel = widgets.selected_feature()
    if sel is None or sel == st.session_state.get(SEEN_KEY):
        return
    st.session_state[SEEN_KEY] = sel
    if 0 <= int(sel) < ws.d_sae:
        current = list(st.session_state.get("clu_chosen", []))
        st.session_state["clu_chosen"] = current + [int(sel)] if int(sel) not in current else current


def choose_options(corpus: Corpus) -> Options:
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox("Method", list(METHODS), format_func=METHODS.get, key="clu_method")
    k_mode = c2.radio("Number of clusters", ["suggested", "choose"], key="clu_k_mode", horizontal=True,
                      format_func={"suggested": "Suggested (eigengap)", "choose": "Choose"}.get,
                      disabled=method == "hdbscan")
    k = c3.number_input("Clusters (k)", 2, 50, 2 if method == "concepts" else 4, key="clu_k",
                        disabled=k_mode != "choose" or method == "hdbscan")
    threshold = c4.number_input("Activation threshold", 0.0, value=0.0, step=0.1, key="clu_threshold")
    if method == "concepts":
        st.caption("With **concepts**, k counts the group of documents that carry *none* of the chosen concepts: "
                   "k = 2 splits the documents that carry a chosen concept from those that carry none; larger k "
                   "also splits the carriers by which concepts they carry.")
    else:
        st.caption("With pattern clustering, k counts clusters of documents where some chosen feature fires; the "
                   "documents where none fires form one more group on top.")
    with st.expander("How features fold into concepts"):
        f1, f2 = st.columns(2)
        min_jaccard = f1.slider("Fold features whose documents overlap at least (Jaccard)", 0.05, 1.0, 0.5, 0.05,
                                key="clu_min_jaccard")
        max_share = f2.slider("Background: a concept in more than this share of documents", 0.05, 1.0, 0.5, 0.05,
                              key="clu_max_share")
    min_size = None
    if method == "hdbscan":
        min_size = int(st.number_input("HDBSCAN: minimum cluster size (documents)", 2, max(2, corpus.n_docs),
                                       min(max(5, corpus.n_docs // 20), max(2, corpus.n_docs // 2)), key="clu_min_size"))
    want_k = None if (k_mode == "suggested" or method == "hdbscan") else int(k)
    return Options(method, want_k, float(threshold), float(min_jaccard), float(max_share), min_size)


# -- what came out ---------------------------------------------------------------------------
def show_metrics(result: DocumentClusters, options: Options) -> None:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Clusters found", result.n_clusters)
    m2.metric("Suggested k", result.suggested_k if result.suggested_k is not None else "n/a")
    silhouette = result.detail.silhouette
    m3.metric("Silhouette (Jaccard)", f"{silhouette:.3f}" if np.isfinite(silhouette) else "n/a")
    m4.metric("Documents with none of them", f"{result.n_none:,}")
    if not result.detail.exact:
        st.caption("Many distinct patterns: the Jaccard affinity uses a nearest-neighbour graph (approximate).")
    if result.n_clusters == 0:
        if (result.labels == NONE_LABEL).all():
            st.warning("None of the chosen features fires in this corpus; choose others or lower the threshold.")
        else:
            st.warning(f"HDBSCAN put every document in noise (it needs dense groups of at least {options.min_size} "
                       "documents); try another method.")
        st.stop()


def concept_role(concept: Concept, max_share: float) -> str:
    if concept.background:
        return f"background (in over {max_share:.0%} of documents: described, does not split)"
    if concept.explicit:
        return "your group"
    return "co-firing features" if concept.n_features > 1 else "one feature"


def show_concepts(ws: Workspace, corpus: Corpus, result: DocumentClusters, labels: dict[int, str],
                  options: Options) -> None:
    """The chosen features folded into concepts: one row per concept, its member features behind it."""
    concepts = result.concepts
    st.subheader(f"The chosen features as {len(concepts)} concepts")
    st.caption(f"Features whose document sets overlap (Jaccard ≥ {options.min_jaccard:.2f} for every pair) fold into "
               "one concept; a document carries a concept when any member fires. Each concept is named by its lead "
               "feature (the member firing in most documents).")
    table = pd.DataFrame({
        "concept": [c.concept_id for c in concepts], "feature_id": [c.lead for c in concepts],
        "features": [c.n_features for c in concepts], "documents": [c.n_docs for c in concepts],
        "share": [c.share for c in concepts], "role": [concept_role(c, options.max_share) for c in concepts]})
    show_table(with_evidence(ws, corpus, table, labels), share=SHARE,
               feature_id=st.column_config.NumberColumn("lead feature"))
    with st.expander("Member features of each concept"):
        members = pd.DataFrame([(c.concept_id, f, f == c.lead) for c in concepts for f in c.feature_ids],
                               columns=["concept", "feature_id", "lead"])
        show_table(with_evidence(ws, corpus, members, labels), height=420)


def describe_table(ws: Workspace, corpus: Corpus, result: DocumentClusters, scope: str, chosen: list[int],
                   threshold: float) -> pd.DataFrame:
    """One row per (group, describing concept or feature) with in/out shares, in the clusters' order."""
    if scope == "concepts":
        desc = result.descriptions.rename(columns={"concept_id": "concept", "n_features": "features"})
        return desc[["cluster", "concept", "lead_feature", "features", "n_in", "in_share", "out_share", "diff",
                     "background"]]
    desc = run_describe(ws, corpus, widgets.cache_key(ws, corpus), tuple(int(x) for x in result.labels),
                        None if scope == "all" else tuple(chosen), threshold)
    return desc[["cluster", "feature_id", "in_share", "out_share", "diff", "ratio", "n_in"]]


def show_descriptions(ws: Workspace, corpus: Corpus, result: DocumentClusters, labels: dict[int, str],
                      chosen: list[int], threshold: float) -> list[int]:
    """Per group (clusters, then none, then noise): what is more common inside than outside. Returns the
    features named."""
    st.subheader("What each cluster is about")
    scope = st.radio("Describe with", list(DESCRIBE_SCOPES), horizontal=True, key="clu_describe_scope",
                     format_func=DESCRIBE_SCOPES.get)
    desc = describe_table(ws, corpus, result, scope, chosen, threshold)
    column = "lead_feature" if scope == "concepts" else "feature_id"
    named: list[int] = []
    describing: list[int] = []  # what each group carries more than the rest: the features to label
    for row in result.clusters.itertuples(index=False):
        part = with_evidence(ws, corpus, desc[desc["cluster"] == row.cluster].drop(columns="cluster"), labels, column)
        ahead = part[part["diff"] > 0]
        mostly = f" · mostly *{md_escape(ahead['label'].iloc[0], 80)}*" if len(ahead) and ahead["label"].iloc[0] else ""
        what = " (they carry none of the chosen concepts)" if row.cluster == NONE_LABEL else ""
        st.markdown(f"**{row.name.capitalize()}** · {row.size:,} documents ({row.share:.0%}){what}{mostly}")
        show_table(part, in_share=st.column_config.NumberColumn("in share", format="%.2f"),
                   out_share=st.column_config.NumberColumn("out share", format="%.2f"),
                   diff=st.column_config.NumberColumn("in − out", format="%+.2f"), ratio=SHARE)
        named.extend(int(f) for f in part[column])
        describing.extend(int(f) for f in ahead[column])
    st.caption("in share: documents of the group that carry it; out share: documents outside the group that do.")
    label_on_demand(ws, corpus, describing, key="clu_describing")
    return named


# -- dense baseline, agreement, map, export ------------------------------------------------------
def dense_baseline(ws: Workspace, corpus: Corpus, result: DocumentClusters,
                   method: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(MiniLM vectors, their clustering into as many groups as the SAE clustering made), when available."""
    st.subheader("Compared with dense MiniLM embeddings")
    vectors = None
    if doc_embeddings.is_complete(ws, corpus) or corpus.n_docs <= AUTO_DENSE_MAX:
        vectors = dense_vectors(ws, corpus, allow_compute=True)
    else:
        st.caption(f"MiniLM embeddings of the {corpus.n_docs:,} documents are computed once and stored in the workspace.")
        if st.button("Compute MiniLM embeddings", key="clu_dense_compute", icon=":material/calculate:"):
            vectors = dense_vectors(ws, corpus, allow_compute=True)
    if vectors is None or vectors.shape[0] < 3:
        return vectors, None
    d1, d2 = st.columns(2)
    dense_method = d1.selectbox("Dense method", list(DENSE_METHODS), format_func=DENSE_METHODS.get,
                                key="clu_dense_method")
    groups = result.n_clusters + int(method == "concepts" and result.n_none > 0)  # concepts: k counts the none group
    dense_k = max(2, min(groups, vectors.shape[0] - 1))
    d2.caption(f"As many clusters as the SAE clustering made: {dense_k}.")
    dense_labels = run_dense(vectors, widgets.cache_key(ws, corpus), doc_embeddings.n_stored(ws, corpus), dense_k,
                             dense_method)
    st.bar_chart(pd.Series(dense_labels).value_counts().sort_index().rename("documents"), height=160)
    return vectors, dense_labels


def show_agreement(ws: Workspace, corpus: Corpus, result: DocumentClusters, dense_labels: np.ndarray | None) -> None:
    if not corpus.meta_columns:
        return
    default = corpus.meta_columns.index("label") if "label" in corpus.meta_columns else 0
    truth_column = st.selectbox("Agreement with metadata column", corpus.meta_columns, index=default, key="clu_truth")
    truth = metadata(ws, corpus, truth_column).to_numpy()
    known = ~pd.isna(truth)
    if known.sum() < 2:
        return
    truth = truth[known].astype(str)
    sae = agreement(result.labels[known], truth)
    a1, a2, a3, a4 = st.columns(4)
    a1.metric("SAE clusters · ARI", f"{sae['ari']:.3f}")
    a2.metric("SAE clusters · NMI", f"{sae['nmi']:.3f}")
    if dense_labels is not None:
        dense = agreement(dense_labels[known], truth)
        a3.metric("MiniLM clusters · ARI", f"{dense['ari']:.3f}")
        a4.metric("MiniLM clusters · NMI", f"{dense['nmi']:.3f}")
    st.caption(f"Adjusted Rand index and normalized mutual information against `{md_escape(truth_column)}` over "
               f"{int(known.sum()):,} documents with a value (documents with none of the chosen concepts count as "
               "one group). 1 = the same partition, 0 = chance.")
    crosstab = pd.crosstab(pd.Series([cluster_name(int(c)) for c in result.labels[known]], name="SAE cluster"),
                           pd.Series(truth, name=str(truth_column)))
    st.dataframe(crosstab, width="stretch")


def show_maps(ws: Workspace, corpus: Corpus, result: DocumentClusters, chosen: list[int], threshold: float,
              vectors: np.ndarray | None) -> None:
    """UMAP maps of the SAE patterns and the MiniLM vectors, drawn only on request (UMAP is slow to load)."""
    st.subheader("Map")
    if st.button("Draw UMAP maps", key="clu_umap_btn", icon=":material/map:",
                 help="UMAP takes a while the first time (it compiles)."):
        st.session_state["clu_umap"] = True
    if not st.session_state.get("clu_umap"):
        return
    import plotly.express as px  # lazy: only once a map is asked for

    color_by = st.selectbox("Colour by", ["cluster", *corpus.meta_columns], key="clu_color")
    hover = documents(ws, corpus, range(corpus.n_docs))["text"].map(lambda t: html.escape(snippet(t, 120))).to_numpy()
    colour = ([cluster_name(int(c)) for c in result.labels] if color_by == "cluster"
              else metadata(ws, corpus, color_by).fillna("(missing)").astype(str).to_numpy())
    maps = [("SAE features (Jaccard on the chosen features)", latents(ws, corpus, "max"), ("sae", tuple(chosen), threshold))]
    if vectors is not None:
        maps.append(("MiniLM embeddings (cosine)", vectors, ("dense",)))
    st.caption("Both maps are coloured the same way, so you can see where the SAE clusters fall on the dense map.")
    for col, (title, data, what) in zip(st.columns(len(maps)), maps):
        xy = run_umap(data, widgets.cache_key(ws, corpus), what)
        frame = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "colour": colour, "doc_id": np.arange(len(xy)), "text": hover})
        fig = px.scatter(frame, x="x", y="y", color="colour", title=title,
                         hover_data={"doc_id": True, "text": True, "x": False, "y": False})
        fig.update_traces(marker=dict(size=6, opacity=0.8))
        fig.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10), legend_title_text=color_by)
        col.plotly_chart(fig, width="stretch", key=f"clu_umap_{what[0]}")


def export_cluster(ws: Workspace, corpus: Corpus, result: DocumentClusters, dense_labels: np.ndarray | None,
                   chosen: list[int], labels: dict[int, str]) -> None:
    st.subheader("Export a cluster's documents")
    sizes = dict(zip(result.clusters["cluster"].astype(int), result.clusters["size"].astype(int)))
    pick = st.selectbox("Cluster", list(sizes), key="clu_export_cluster",
                        format_func=lambda c: f"{cluster_name(c)} ({sizes[c]:,})")
    rows = result.rows(pick)
    extra = pd.DataFrame({"cluster": result.labels[rows]})
    if dense_labels is not None:
        extra["minilm_cluster"] = dense_labels[rows]
    export_block(ws, corpus, latents(ws, corpus), rows, key="clu_export", stem=f"cluster_{pick}",
                 default_features=chosen, labels=labels, extra=extra)
    with st.expander("Preview"):
        show_documents(ws, corpus, rows[:5], chosen, key="clu_preview", labels=labels)


# -- topics: MiniLM clusters read through SAE features --------------------------------------------
def topic_options(corpus: Corpus) -> tuple[int, str, int]:
    c1, c2, c3 = st.columns(3)
    k = int(c1.number_input("Topics (k)", 2, max(2, min(50, corpus.n_docs - 1)), min(5, max(2, corpus.n_docs - 1)),
                            key="clu_topics_k"))
    method = c2.selectbox("Dense method", list(DENSE_METHODS), format_func=DENSE_METHODS.get, key="clu_topics_method")
    support = int(c3.number_input("A describing feature fires in at least (documents)", 1, max(1, corpus.n_docs),
                                  min(5, max(2, corpus.n_docs // 50)), key="clu_topics_support"))
    return k, method, support


def show_topic(ws: Workspace, corpus: Corpus, reading: ClusterReading, row, labels: dict[int, str]) -> list[int]:
    """One topic: its over- and under-represented features and typical documents. Returns the over features."""
    feats = reading.features[reading.features["cluster"] == row.cluster]
    over = feats[feats["side"] == "over"]
    about = f" · about *{md_escape(row.about, 160)}*" if row.about else ""  # what ws.cluster_dense says it is about
    st.markdown(f"**Topic {row.cluster}** · {row.size:,} documents ({row.share:.0%}){about}")
    table = feats[["side", "feature_id", "in_share", "out_share", "lift", "z", "n_in"]].rename(
        columns={"in_share": "in_topic", "out_share": "rest"})
    show_table(with_evidence(ws, corpus, table, labels), in_topic=SHARE, rest=SHARE,
               lift=st.column_config.NumberColumn(format="%.1f"), z=st.column_config.NumberColumn(format="%+.1f"))
    docs = reading.documents[reading.documents["cluster"] == row.cluster]["doc_id"].tolist()
    texts = documents(ws, corpus, docs).set_index("doc_id")["text"]
    st.caption("Typical: " + " · ".join(f"{d}: {md_escape(snippet(texts[d], 120))}" for d in docs))
    return [int(f) for f in over["feature_id"]]


def topics_tab(ws: Workspace, corpus: Corpus, labels: dict[int, str]) -> None:
    st.caption("MiniLM sentence embeddings group documents by topic better than SAE features do; each group is then "
               "read through SAE features: those more common inside than in the rest (over) and rarer inside (under), "
               "ranked by z of the log-odds ratio; features in over half of all documents are skipped.")
    if not (doc_embeddings.is_complete(ws, corpus) or corpus.n_docs <= AUTO_DENSE_MAX
            or st.button("Compute MiniLM embeddings", key="clu_topics_compute", icon=":material/calculate:")):
        st.caption(f"MiniLM embeddings of the {corpus.n_docs:,} documents are computed once and stored in the workspace.")
        return
    if corpus.n_docs < 3:
        st.info("Topics need at least 3 documents.")
        return
    dense_vectors(ws, corpus, allow_compute=True)
    k, method, support = topic_options(corpus)
    reading = run_topics(ws, corpus, widgets.cache_key(ws, corpus), doc_embeddings.n_stored(ws, corpus), k, method,
                         support)
    t1, t2 = st.columns(2)
    t1.metric("Topic clusters", int((reading.clusters["cluster"] >= 0).sum()))
    if "label" in corpus.meta_columns:
        truth = metadata(ws, corpus, "label").to_numpy()
        known = ~pd.isna(truth)
        if known.sum() >= 2:
            t2.metric("Topics · ARI against label", f"{agreement(reading.labels[known], truth[known].astype(str))['ari']:.3f}")
    describing: list[int] = []
    for row in reading.clusters.itertuples(index=False):
        describing += show_topic(ws, corpus, reading, row, labels)
    label_on_demand(ws, corpus, describing, key="clu_topics")


def concepts_tab(ws: Workspace, corpus: Corpus, labels: dict[int, str]) -> None:
    chosen = feature_picker(ws, corpus, key="clu", title="Concepts to cluster along")
    if not chosen:
        st.info("Choose at least one feature above (search by meaning, paste an example, or pick from the list).")
        st.stop()
    options = choose_options(corpus)
    try:
        result = run_cluster(ws, corpus, widgets.cache_key(ws, corpus), tuple(chosen), options)
    except (UserError, ValueError) as exc:  # e.g. fewer documents with the chosen features than the minimum size
        st.warning(f"Cannot cluster with these settings: {md_escape(exc, max_len=None)}")
        st.stop()
    show_metrics(result, options)
    st.bar_chart(pd.DataFrame({"documents": result.clusters["size"].to_numpy()},
                              index=[str(n) for n in result.clusters["name"]]), height=200, horizontal=True)
    show_concepts(ws, corpus, result, labels, options)
    named = show_descriptions(ws, corpus, result, labels, chosen, options.threshold)
    pick = st.selectbox("Open a feature", sorted(set(chosen) | set(named)), key="clu_open_pick",
                        format_func=lambda f: feature_name(f, labels))
    open_feature_button(pick, "clu")
    vectors, dense_labels = dense_baseline(ws, corpus, result, options.method)
    show_agreement(ws, corpus, result, dense_labels)
    show_maps(ws, corpus, result, chosen, options.threshold, vectors)
    export_cluster(ws, corpus, result, dense_labels, chosen, labels)


TABS = ("Topics (MiniLM, read through SAE features)", "Along chosen concepts")


def main() -> None:
    st.title("Clustering")
    st.caption("Group documents by topic (MiniLM sentence embeddings, each group read through the SAE features that "
               "set it apart), or along the concepts you care about: the chosen features are folded into concepts "
               "(features that fire on the same documents); documents are grouped by which concepts they carry, or "
               "by their raw feature patterns (Jaccard similarity). Documents that carry none of the chosen concepts "
               "stay one explicit group. The same corpus clustered on dense MiniLM sentence embeddings is shown beside it.")
    ws, corpus = widgets.require_corpus()
    labels = corpus_labels(ws, corpus)
    arrive_with_feature(ws)
    tab_topics, tab_concepts = st.tabs(TABS, default=TABS[1] if st.session_state.get("clu_chosen") else TABS[0])
    with tab_topics:
        topics_tab(ws, corpus, labels)
    with tab_concepts:  # last: it stops the script until features are chosen
        concepts_tab(ws, corpus, labels)


main()
