"""Retrieval by property: documents where chosen features fire (AND / OR, per-feature thresholds), or
documents for a text query: the SAE and MiniLM rankings fused (hybrid, first), then each ranking beside the other.

Layout and widgets only. A text query is ranked by `Workspace.retrieve(..., mode="hybrid")` (each hit with the
query features that make it relevant), by `Workspace.retrieve` (IDF-weighted SAE features; the weights come from
`Workspace.query_features` and are shown) and by `Workspace.retrieve_dense`, so the page shows what a notebook
gets; feature conditions go through backend.analysis.retrieve on the workspace's latents."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from backend import doc_embeddings
from backend.analysis.retrieve import Condition, retrieve
from backend.store import Corpus
from backend.workspace import Workspace
from pages import widgets
from pages.analysis_widgets import (
    with_evidence,
    corpus_labels, dense_vectors, documents, export_block, feature_name, feature_picker, latents,
    label_on_demand, open_feature_button, show_documents, snippet,
)
from pages.widgets import md_escape

POOLINGS = {"max": "max activation", "mean": "mean activation per token", "count": "tokens where it fires"}
WEIGHTINGS = {"idf": "IDF-weighted (rare features count more)", "none": "None (plain cosine)"}
AUTO_DENSE_MAX = 2000  # corpora up to this size get MiniLM embeddings without asking
N_HIGHLIGHT = 5  # the query's heaviest features shaded in the SAE results
N_LABEL = 10  # the query's heaviest features offered for LLM labelling


# -- cached workspace calls (the workspace and handle are not hashed; the cache key is) --------------
@st.cache_data(show_spinner="Ranking documents by the query's SAE features…", max_entries=32)
def sae_ranking(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, query: str, weighting: str,
                top: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ranking: doc_id, score, n_overlap; the query's features with their weights)."""
    return (_ws.retrieve(_corpus, query, top=top, weighting=weighting),
            _ws.query_features(_corpus, query, weighting=weighting))


@st.cache_data(show_spinner="Fusing the SAE and MiniLM rankings…", max_entries=32)
def hybrid_ranking(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, n_stored: int, query: str, weighting: str,
                   top: int) -> pd.DataFrame:
    return _ws.retrieve(_corpus, query, top=top, weighting=weighting, mode="hybrid")


@st.cache_data(show_spinner="Ranking documents by MiniLM…", max_entries=32)
def dense_ranking(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, n_stored: int, query: str,
                  top: int) -> pd.DataFrame:
    return _ws.retrieve_dense(_corpus, query, top=top)


# -- shared layout ---------------------------------------------------------------------------
def result_table(ws: Workspace, corpus: Corpus, doc_ids: np.ndarray, extra: dict[str, np.ndarray]) -> pd.DataFrame:
    """rank, doc_id, the extra columns, a text snippet and up to four metadata columns."""
    ids = [int(d) for d in doc_ids]
    docs = documents(ws, corpus, ids).set_index("doc_id").reindex(ids)
    out = pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "doc_id": ids, **extra})
    out["text"] = [snippet(t, 200) for t in docs["text"].fillna("")]
    for column in corpus.meta_columns[:4]:
        out[column] = docs[column].to_numpy()
    return out


def show_table(table: pd.DataFrame, height: int = 420, **column_config) -> None:
    st.dataframe(table, hide_index=True, width="stretch", height=min(height, 38 + 35 * len(table)),
                 column_config=column_config)


SCORE_FORMAT = st.column_config.NumberColumn(format="%.3f")


# -- by features ----------------------------------------------------------------------------
def conditions_for(chosen: list[int], values, pooling: str, labels: dict[int, str]) -> list[Condition]:
    """One threshold input per chosen feature (strictly above it fires)."""
    st.caption(f"Minimum {POOLINGS[pooling]} per feature (the feature must be strictly above it):")
    cols = st.columns(min(4, len(chosen)))
    conditions = []
    for i, fid in enumerate(chosen):
        col_max = float(values[:, [fid]].max()) if values.nnz else 0.0
        minimum = cols[i % len(cols)].number_input(
            md_escape(feature_name(fid, labels), 60), 0.0, value=0.0, step=max(col_max / 20, 0.01), key=f"ret_min_{fid}",
            help=f"Largest value in this corpus: {col_max:.3f}")
        conditions.append(Condition(int(fid), float(minimum)))
    return conditions


def by_features(ws: Workspace, corpus: Corpus, labels: dict[int, str]) -> None:
    chosen = feature_picker(ws, corpus, key="ret", title="Features that must fire")
    if not chosen:
        st.info("Choose one or more features above.")
        return
    c1, c2, c3 = st.columns(3)
    mode = c1.radio("Documents must have", ["and", "or"], horizontal=True, key="ret_mode",
                    format_func={"and": "all of them (AND)", "or": "any of them (OR)"}.get)
    pooling = c2.selectbox("Compare thresholds against", list(POOLINGS), format_func=POOLINGS.get, key="ret_pooling")
    top = int(c3.number_input("Documents", 1, 1000, 20, key="ret_top"))
    values = latents(ws, corpus, pooling)
    found = retrieve(values, conditions_for(chosen, values, pooling, labels), mode=mode, top=top)
    st.markdown(f"**{len(found):,} documents** match" + (" (the top ones)." if len(found) == top else "."))
    if not len(found):
        return
    rows, scores = found["row"].to_numpy(), found["score"].to_numpy()
    show_table(result_table(ws, corpus, rows, {"score": scores, "n_matched": found["n_matched"].to_numpy()}),
               score=SCORE_FORMAT)
    n_show = (st.slider("Highlighted documents", 1, min(20, len(found)), min(5, len(found)), key="ret_n_show")
              if len(found) > 1 else 1)  # a slider needs two values
    show_documents(ws, corpus, rows[:n_show], chosen, key="ret_docs", labels=labels, scores=scores[:n_show])
    pick = st.selectbox("Open a feature", chosen, key="ret_open", format_func=lambda f: feature_name(f, labels))
    open_feature_button(pick, "ret")
    st.markdown("**Export the result set**")
    export_block(ws, corpus, values, rows, key="ret_export", stem="retrieval", default_features=chosen, labels=labels,
                 extra=pd.DataFrame({"rank": np.arange(1, len(found) + 1), "score": scores}))
    st.caption(f"Activation columns hold the {POOLINGS[pooling]} of each feature.")


# -- by a text query -------------------------------------------------------------------------
def query_weights_block(ws: Workspace, corpus: Corpus, weights: pd.DataFrame, weighting: str,
                        labels: dict[int, str]) -> None:
    """The query's features with their weights in the ranking, labels and evidence beside each."""
    st.markdown(f"**The query's {len(weights):,} features and their weights**")
    if weighting == "idf":
        top_idf = np.log((corpus.n_docs + 1) / 2) + 1
        st.caption("weight = activation in the query × idf, with idf = ln((N + 1) / (df + 1)) + 1 over the "
                   f"corpus's N = {corpus.n_docs:,} documents (df: documents where the feature fires). A feature "
                   f"firing in every document weighs ≈ 1, one firing in a single document ≈ {top_idf:.1f}; "
                   "documents are weighted the same way before the cosine.")
    else:
        st.caption("No weighting: idf = 1 for every feature, so the ranking is the plain cosine of activations "
                   "and features that fire almost everywhere count as much as rare, topical ones.")
    show_table(with_evidence(ws, corpus, weights, labels), height=320,
               query_act=st.column_config.NumberColumn("query act", format="%.3f"),
               doc_freq=st.column_config.NumberColumn("doc freq"),
               idf=st.column_config.NumberColumn(format="%.2f"), weight=st.column_config.NumberColumn(format="%.3f"))
    label_on_demand(ws, corpus, [int(f) for f in weights["feature_id"].head(N_LABEL)], key="ret_query")


def sae_results(ws: Workspace, corpus: Corpus, ranking: pd.DataFrame, weights: pd.DataFrame, weighting: str,
                labels: dict[int, str]) -> None:
    what = "IDF-weighted cosine" if weighting == "idf" else "plain cosine"
    st.markdown(f"**SAE features** ({what} of feature vectors)")
    if ranking.empty:
        st.info("No document shares a feature with the query.")
        return
    show_table(result_table(ws, corpus, ranking["doc_id"].to_numpy(),
                            {"score": ranking["score"].to_numpy(), "n_overlap": ranking["n_overlap"].to_numpy()}),
               score=SCORE_FORMAT)
    heaviest = [int(f) for f in weights["feature_id"].head(N_HIGHLIGHT)]
    st.caption(f"Highlights: the query's {len(heaviest)} heaviest features.")
    show_documents(ws, corpus, ranking["doc_id"].to_numpy()[:3], heaviest, key="ret_text_docs", labels=labels,
                   scores=ranking["score"].to_numpy()[:3])


def dense_ready(ws: Workspace, corpus: Corpus) -> bool:
    """Whether the MiniLM vectors exist or may be computed now (small corpora, or when asked)."""
    if doc_embeddings.is_complete(ws, corpus) or corpus.n_docs <= AUTO_DENSE_MAX:
        return True
    if st.button("Compute MiniLM embeddings for the hybrid and dense rankings", key="ret_dense_compute",
                 icon=":material/calculate:"):
        return True
    st.caption(f"MiniLM embeddings of the {corpus.n_docs:,} documents are computed once and stored in the workspace; "
               "until then only the SAE ranking is shown.")
    return False


def hybrid_results(ws: Workspace, corpus: Corpus, query: str, weighting: str, top: int,
                   labels: dict[int, str]) -> None:
    """The fused ranking first: what wins on topics (MiniLM) and on properties (SAE features) in one list."""
    st.markdown("**Hybrid: SAE features and MiniLM fused**")
    ranking = hybrid_ranking(ws, corpus, widgets.cache_key(ws, corpus), doc_embeddings.n_stored(ws, corpus), query,
                             weighting, top)
    st.caption("Each ranking's scores are standardized and summed, weighted by how clearly its best documents stand "
               "apart for this query: MiniLM leads on topics, the SAE features on properties (hedging, questions, "
               "capitals, links). *why*: the query's features in the document that weigh most in its SAE score.")
    table = result_table(ws, corpus, ranking["doc_id"].to_numpy(),
                         {"fused": ranking["score"].to_numpy(), "sae_rank": ranking["sae_rank"].to_numpy(),
                          "dense_rank": ranking["dense_rank"].to_numpy(), "why": ranking["why"].to_numpy()})
    show_table(table, fused=st.column_config.NumberColumn("fused", format="%.2f"),
               sae_rank=st.column_config.NumberColumn("SAE rank"), dense_rank=st.column_config.NumberColumn("MiniLM rank"),
               why=st.column_config.TextColumn("why (query features in it)", width="large"))
    top_hits = ranking.head(3)
    features = list(dict.fromkeys(int(f) for fids in top_hits["features"] for f in fids))
    if features:
        show_documents(ws, corpus, top_hits["doc_id"].to_numpy(), features, key="ret_hybrid_docs", labels=labels,
                       scores=top_hits["score"].to_numpy())


def dense_results(ws: Workspace, corpus: Corpus, query: str, top: int, ready: bool) -> pd.DataFrame | None:
    st.markdown("**Dense MiniLM** (cosine of sentence embeddings)")
    if not ready:
        st.caption("Not computed yet (see above).")
        return None
    ranking = dense_ranking(ws, corpus, widgets.cache_key(ws, corpus), doc_embeddings.n_stored(ws, corpus), query, top)
    show_table(result_table(ws, corpus, ranking["doc_id"].to_numpy(), {"cosine": ranking["score"].to_numpy()}),
               cosine=SCORE_FORMAT)
    for doc_id in ranking["doc_id"].to_numpy()[:3]:
        with st.container(border=True):
            st.caption(f"Document {int(doc_id)}")
            st.text(documents(ws, corpus, (int(doc_id),))["text"].iloc[0])
    return ranking


def by_text(ws: Workspace, corpus: Corpus, labels: dict[int, str]) -> None:
    query = st.text_area("Query text", key="ret_text", height=80,
                         placeholder="A sentence with the properties or the topic you look for.")
    c1, c2 = st.columns([1, 2])
    top = int(c1.number_input("Documents", 1, 500, 10, key="ret_text_top"))
    weighting = c2.radio("Feature weighting", list(WEIGHTINGS), format_func=WEIGHTINGS.get, horizontal=True,
                         key="ret_text_weighting",
                         help="IDF: features firing in most documents (punctuation, frequent words) weigh little, "
                              "so the query's rarer, topical features decide the ranking.")
    if not query.strip():
        return
    ready = dense_ready(ws, corpus)
    if ready:
        dense_vectors(ws, corpus, allow_compute=True)  # computes and stores them with a progress bar
        hybrid_results(ws, corpus, query, weighting, top, labels)
    ranking, weights = sae_ranking(ws, corpus, widgets.cache_key(ws, corpus), query, weighting, top)
    query_weights_block(ws, corpus, weights, weighting, labels)
    st.markdown("**Each ranking on its own**")
    left, right = st.columns(2)
    with left:
        sae_results(ws, corpus, ranking, weights, weighting, labels)
    with right:
        dense = dense_results(ws, corpus, query, top, ready)
    if dense is not None and len(ranking):
        both = len(set(ranking["doc_id"]) & set(dense["doc_id"]))
        st.caption(f"{both} of the top {top} documents are found by both methods.")
    if len(ranking):
        st.markdown("**Export the SAE result set**")
        export_block(ws, corpus, latents(ws, corpus, "max"), ranking["doc_id"].to_numpy(), key="ret_text_export",
                     stem="text_retrieval", default_features=[int(f) for f in weights["feature_id"].head(10)],
                     labels=labels, extra=pd.DataFrame({"rank": np.arange(1, len(ranking) + 1),
                                                        "score": ranking["score"].to_numpy()}))


st.title("Retrieval")
st.caption(
    "Find documents by what is in them: the SAE features that must fire (with thresholds), or a query text. "
    "A query is answered first by the hybrid ranking (SAE features and MiniLM fused: MiniLM wins on topics, the "
    "SAE features on properties such as hedging or questions), then by each ranking beside the other."
)
workspace, corpus_handle = widgets.require_corpus()
corpus_label_map = corpus_labels(workspace, corpus_handle)
tab_features, tab_text = st.tabs(["By features", "By a text query"])
with tab_features:
    by_features(workspace, corpus_handle, corpus_label_map)
with tab_text:
    by_text(workspace, corpus_handle, corpus_label_map)
