"""Retrieval by property: documents where chosen features fire (AND / OR, per-feature thresholds), or
documents whose SAE features match a text query, beside dense MiniLM cosine retrieval.

Layout and widgets only; computation is backend.analysis.retrieve."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from backend.analysis.retrieve import Condition, dense_retrieve, retrieve, retrieve_by_vector
from pages import analysis_widgets as aw
from pages import widgets

POOLINGS = {"max": "max activation", "mean": "mean activation per token", "count": "tokens where it fires"}
AUTO_DENSE_MAX = 2000

st.title("Retrieval")
st.caption(
    "Find documents by what is in them: the SAE features that must fire (with thresholds), or the features "
    "a query text activates. Dense MiniLM retrieval of the same query is shown beside it."
)
ws, corpus = widgets.require_corpus()
version = widgets.data_version(ws, corpus)
info = ws.store.corpus(corpus)
lab = aw.corpus_labels(ws, corpus)


def result_table(rows: np.ndarray, extra: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [int(r) for r in rows]
    docs = aw.documents(ws, version, corpus, tuple(rows)).set_index("doc_id").reindex(rows)
    out = pd.DataFrame({"rank": np.arange(1, len(rows) + 1), "doc_id": rows, **extra})
    out["text"] = [aw.snippet(t, 200) for t in docs["text"].fillna("")]
    for c in info.meta_columns[:4]:
        out[c] = docs[c].to_numpy()
    return out


tab_feat, tab_text = st.tabs(["By features", "By a text query"])

# -- by features ----------------------------------------------------------------------------
with tab_feat:
    chosen = aw.feature_picker(ws, corpus, key="ret", title="Features that must fire")
    if not chosen:
        st.info("Choose one or more features above.")
    else:
        c1, c2, c3 = st.columns(3)
        mode = c1.radio("Documents must have", ["and", "or"], horizontal=True, key="ret_mode",
                        format_func={"and": "all of them (AND)", "or": "any of them (OR)"}.get)
        pooling = c2.selectbox("Compare thresholds against", list(POOLINGS), format_func=POOLINGS.get, key="ret_pooling")
        top = c3.number_input("Documents", 1, 1000, 20, key="ret_top")
        X = aw.latents(ws, version, corpus, pooling)
        st.caption(f"Minimum {POOLINGS[pooling]} per feature (the feature must be strictly above it):")
        cols = st.columns(min(4, len(chosen)))
        conditions = []
        for i, f in enumerate(chosen):
            col_max = float(X[:, [f]].max()) if X.nnz else 0.0
            v = cols[i % len(cols)].number_input(aw.md_escape(aw.feature_name(f, lab), 60), 0.0, value=0.0, step=max(col_max / 20, 0.01),
                                                 key=f"ret_min_{f}", help=f"Largest value in this corpus: {col_max:.3f}")
            conditions.append(Condition(int(f), float(v)))
        res = retrieve(X, conditions, mode=mode, top=int(top))
        st.markdown(f"**{len(res):,} documents** match" + (" (the top ones)." if len(res) == int(top) else "."))
        if len(res):
            table = result_table(res["row"].to_numpy(), {"score": res["score"].to_numpy(), "n_matched": res["n_matched"].to_numpy()})
            st.dataframe(table, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
                         column_config={"score": st.column_config.NumberColumn(format="%.3f")})
            n_show = st.slider("Highlighted documents", 1, min(20, len(res)), min(5, len(res)), key="ret_n_show")
            aw.show_documents(ws, corpus, res["row"].to_numpy()[:n_show], chosen, key="ret_docs", labels=lab,
                              scores=res["score"].to_numpy()[:n_show])
            open_pick = st.selectbox("Open a feature", chosen, key="ret_open", format_func=lambda f: aw.feature_name(f, lab))
            aw.open_feature_button(open_pick, "ret")
            st.markdown("**Export the result set**")
            aw.export_block(ws, corpus, X, res["row"].to_numpy(), key="ret_export", stem="retrieval",
                            default_features=chosen, labels=lab,
                            extra=pd.DataFrame({"rank": np.arange(1, len(res) + 1), "score": res["score"].to_numpy()}))
            st.caption(f"Activation columns hold the {POOLINGS[pooling]} of each feature.")

# -- by text -------------------------------------------------------------------------------
with tab_text:
    query = st.text_area("Query text", key="ret_text", height=80,
                         placeholder="A sentence with the properties you look for; its SAE features become the query.")
    t1, t2 = st.columns(2)
    top_t = t1.number_input("Documents", 1, 500, 10, key="ret_text_top")
    n_feat = t2.number_input("Use the query's strongest features (0 = all)", 0, 500, 0, key="ret_text_nfeat")
    if query.strip():
        with st.spinner("Reading the query…"):
            qf = aw.text_features(ws, str(ws.store.path), query)
        ranked = sorted(qf.items(), key=lambda kv: (-kv[1], kv[0]))
        if n_feat:
            ranked = ranked[: int(n_feat)]
        qsel = dict(ranked)
        Xmax = aw.latents(ws, version, corpus, "max")
        qtab = aw.with_labels(pd.DataFrame({"feature_id": [f for f, _ in ranked], "query_act": [a for _, a in ranked]}), lab)
        with st.expander(f"The query's {len(qtab)} features", expanded=False):
            st.dataframe(qtab, hide_index=True, width="stretch", height=min(300, 38 + 35 * len(qtab)))
        sae_res = retrieve_by_vector(Xmax, qsel, top=int(top_t))

        E = None
        from backend import doc_embeddings as de

        if de.is_complete(ws, corpus) or info.n_docs <= AUTO_DENSE_MAX:
            E = aw.dense_vectors(ws, corpus, allow_compute=True)
        elif st.button("Compute MiniLM embeddings for the dense comparison", key="ret_dense_compute"):
            E = aw.dense_vectors(ws, corpus, allow_compute=True)

        left, right = st.columns(2)
        with left:
            st.markdown("**SAE features** (cosine of feature vectors)")
            if len(sae_res) == 0:
                st.info("No document shares a feature with the query.")
            else:
                sae_tab = result_table(sae_res["row"].to_numpy(), {"score": sae_res["score"].to_numpy(),
                                                                   "n_overlap": sae_res["n_overlap"].to_numpy()})
                st.dataframe(sae_tab, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(sae_tab)),
                             column_config={"score": st.column_config.NumberColumn(format="%.3f")})
                hl = [f for f, _ in ranked[:5]]
                st.caption("Highlights: the query's five strongest features.")
                aw.show_documents(ws, corpus, sae_res["row"].to_numpy()[:3], hl, key="ret_text_docs", labels=lab,
                                  scores=sae_res["score"].to_numpy()[:3])
        dense_res = None
        with right:
            st.markdown("**Dense MiniLM** (cosine of sentence embeddings)")
            if E is None:
                st.caption("Dense embeddings are not computed yet for this corpus.")
            else:
                from backend.doc_embeddings import embed_query

                dense_res = dense_retrieve(embed_query(query), E, top=int(top_t))
                dense_tab = result_table(dense_res["row"].to_numpy(), {"cosine": dense_res["score"].to_numpy()})
                st.dataframe(dense_tab, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(dense_tab)),
                             column_config={"cosine": st.column_config.NumberColumn(format="%.3f")})
                for d in dense_res["row"].to_numpy()[:3]:
                    with st.container(border=True):
                        st.caption(f"Document {int(d)}")
                        st.text(aw.documents(ws, version, corpus, (int(d),))["text"].iloc[0])
        if dense_res is not None and len(sae_res):
            both = len(set(sae_res["row"]) & set(dense_res["row"]))
            st.caption(f"{both} of the top {int(top_t)} documents are found by both methods.")
        if len(sae_res):
            st.markdown("**Export the SAE result set**")
            aw.export_block(ws, corpus, Xmax, sae_res["row"].to_numpy(), key="ret_text_export", stem="text_retrieval",
                            default_features=[f for f, _ in ranked[:10]], labels=lab,
                            extra=pd.DataFrame({"rank": np.arange(1, len(sae_res) + 1), "score": sae_res["score"].to_numpy()}))
