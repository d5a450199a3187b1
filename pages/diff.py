"""Dataset diff: which SAE features fire more often in one set of documents than in another.

Two corpora (e.g. one uploaded on the Corpora page against the demo), or two groups of one corpus
split by a metadata column. Layout and widgets only; statistics are backend.analysis.diff calls."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from backend.analysis.diff import diff_features, example_documents, length_summary, split_by_column, summarize_diff
from backend.workspace import Workspace
from pages import analysis_widgets as aw
from pages import widgets

ALL_OTHERS = "(all others)"
ALPHA = 0.05

st.title("Dataset diff")
st.caption(
    "Which concepts are more common in one set of documents than in another? Each feature is tested for "
    "the share of documents in which it fires (two-proportion z-test, exact Fisher test for rare features, "
    "Benjamini-Hochberg q-values), and features are ranked by the difference in share."
)
ws, corpus = widgets.require_corpus()

with st.expander("Why document length matters, and how the length control works"):
    st.markdown(
        "Document embeddings are **max-pooled**: a feature counts as present when it fires on *any* token. "
        "A longer document has more tokens, so more chances for every feature to fire: a corpus of longer "
        "documents shows more features everywhere, and a naive diff mistakes length for content.\n\n"
        "With **length control** on, the documents of both sides are pooled and cut into token-length bins "
        "(quantiles). Each feature is then compared *within* bins (Cochran-Mantel-Haenszel test, its q-value "
        "`cmh_q`, and the Mantel-Haenszel risk difference `adj_diff`: the share difference averaged over bins). "
        "A feature is flagged **length-confounded** when its raw difference is significant but the "
        "within-bin difference is not, or shrinks to less than half (or flips sign)."
    )

# -- what to compare -----------------------------------------------------------------
ready = widgets.ready_corpora(ws)
info = ws.store.corpus(corpus)
mode = st.radio(
    "Compare", ["corpora", "groups"], horizontal=True, key="diff_mode",
    format_func={"corpora": "Two corpora", "groups": "Two groups of this corpus (by a metadata column)"}.get,
    index=0 if len(ready) > 1 or not info.meta_columns else 1,
)


@st.cache_data(show_spinner="Comparing…", max_entries=16)
def run_diff(_ws: Workspace, key: tuple, spec: dict) -> dict:
    """Backend diff of the two sides described by spec; returns the table, lengths and row maps."""
    threshold = float(spec["threshold"])
    if spec["mode"] == "corpora":
        XA, XB = _ws.latents(spec["a"], "max"), _ws.latents(spec["b"], "max")
        la, lb = _ws.store.doc_lengths(spec["a"]), _ws.store.doc_lengths(spec["b"])
        ids_a, ids_b = np.arange(XA.shape[0]), np.arange(XB.shape[0])
    else:
        X = _ws.latents(spec["corpus"], "max")
        meta = pd.DataFrame({spec["column"]: _ws.store.metadata(spec["corpus"], spec["column"]).to_numpy()})
        XA, XB, ids_a, ids_b = split_by_column(X, meta, spec["column"], spec["value_a"], spec["value_b"])
        lengths = _ws.store.doc_lengths(spec["corpus"])
        la, lb = lengths[ids_a], lengths[ids_b]
    if XA.shape[0] == 0 or XB.shape[0] == 0:
        return {"error": "One side has no documents."}
    table = diff_features(
        XA, XB, threshold=threshold, min_share=float(spec["min_share"]), max_share=float(spec["max_share"]),
        lengths_a=la if spec["length_control"] else None, lengths_b=lb if spec["length_control"] else None,
        length_bins=int(spec["length_bins"]),
    )
    return {"table": table, "lengths_a": la, "lengths_b": lb, "ids_a": ids_a, "ids_b": ids_b,
            "XA": XA, "XB": XB, "summary": length_summary(la, lb)}


if mode == "corpora":
    if len(ready) < 2:
        st.info("Only one embedded corpus in this workspace. Upload a second corpus on the **Corpora** page, "
                "then come back to diff it against this one, or compare two groups of this corpus.")
        st.page_link("pages/corpora.py", label="Go to Corpora", icon="📚")
        st.stop()
    c1, c2 = st.columns(2)
    a = c1.selectbox("Corpus A", ready, index=ready.index(corpus) if corpus in ready else 0, key="diff_a")
    others = [c for c in ready if c != a]
    b = c2.selectbox("Corpus B", others, key="diff_b")
    spec = {"mode": "corpora", "a": a, "b": b}
    name_a, name_b = a, b
    side_corpus = {"a": a, "b": b}
    key = (widgets.data_version(ws, a), widgets.data_version(ws, b))
else:
    if not info.meta_columns:
        st.info(f"Corpus **{aw.md_escape(corpus)}** has no metadata column to split by. Compare two corpora instead.")
        st.stop()
    c1, c2, c3 = st.columns(3)
    default_col = info.meta_columns.index("label") if "label" in info.meta_columns else 0
    column = c1.selectbox("Metadata column", info.meta_columns, index=default_col, key="diff_column")
    values = aw.metadata(ws, widgets.data_version(ws, corpus), corpus, column)
    counts = values.value_counts(dropna=True)
    if len(counts) < 1:
        st.info("This column has no values.")
        st.stop()
    opts = [str(v) for v in counts.index[:500]]
    value_a = c2.selectbox("Group A: value", opts, key="diff_value_a",
                           format_func=lambda v: f"{v} ({int(counts[v]):,} docs)")
    value_b = c3.selectbox("Group B: value", [ALL_OTHERS] + [v for v in opts if v != value_a], key="diff_value_b",
                           format_func=lambda v: v if v == ALL_OTHERS else f"{v} ({int(counts[v]):,} docs)")
    spec = {"mode": "groups", "corpus": corpus, "column": column, "value_a": value_a,
            "value_b": None if value_b == ALL_OTHERS else value_b}
    name_a, name_b = f"{column} = {value_a}", (f"{column} ≠ {value_a}" if value_b == ALL_OTHERS else f"{column} = {value_b}")
    side_corpus = {"a": corpus, "b": corpus}
    key = (widgets.data_version(ws, corpus),)

with st.expander("Options", expanded=False):
    o1, o2, o3, o4 = st.columns(4)
    threshold = o1.number_input("Activation threshold (fires when above)", 0.0, value=0.0, step=0.1, key="diff_threshold")
    share = o2.slider("Share coverage: test features whose share on either side is in", 0.0, 1.0, (0.0, 1.0), 0.01,
                      key="diff_share")
    length_control = o3.toggle("Length control", value=True, key="diff_length")
    length_bins = o4.number_input("Length bins", 1, 20, 5, key="diff_bins", disabled=not length_control)
spec.update(threshold=float(threshold), min_share=float(share[0]), max_share=float(share[1]),
            length_control=bool(length_control), length_bins=int(length_bins))

res = run_diff(ws, key, spec)
if "error" in res:
    st.warning(res["error"])
    st.stop()
table: pd.DataFrame = res["table"]
lab = aw.corpus_labels(ws, side_corpus["a"])
if side_corpus["b"] != side_corpus["a"]:
    lab = {**aw.corpus_labels(ws, side_corpus["b"]), **lab}
st.caption(f"**A**: {aw.md_escape(name_a)} ({len(res['ids_a']):,} documents) · "
           f"**B**: {aw.md_escape(name_b)} ({len(res['ids_b']):,} documents) · {len(table):,} features tested")

# -- lengths ------------------------------------------------------------------------
st.subheader("Document lengths")
summ = res["summary"]
l1, l2 = st.columns([3, 2])
with l1:
    lengths_df = pd.concat([
        pd.DataFrame({"tokens": res["lengths_a"], "side": "A"}),
        pd.DataFrame({"tokens": res["lengths_b"], "side": "B"}),
    ], ignore_index=True)
    fig = px.histogram(lengths_df, x="tokens", color="side", barmode="overlay", histnorm="percent", opacity=0.6,
                       marginal="box", nbins=40, color_discrete_map={"A": "#1f77b4", "B": "#ff7f0e"})
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="% of documents")
    st.plotly_chart(fig, width="stretch", key="diff_lengths_chart")
with l2:
    st.dataframe(pd.DataFrame({"A": summ["a"], "B": summ["b"]}).T.round(1), width="stretch")
    ratio, p = summ["mean_ratio"], summ["mannwhitney_p"]
    msg = f"Mean length A / B = {ratio:.2f}; Mann-Whitney p = {p:.2g}."
    if np.isfinite(p) and p < ALPHA and np.isfinite(ratio) and abs(np.log(ratio)) > np.log(1.2):
        msg += " The sides differ in length: keep length control on."
    st.caption(msg)

if table.empty:
    st.info("No feature passes the share filters.")
    st.stop()

# -- summary ------------------------------------------------------------------------
st.subheader("What differs")
groups = summarize_diff(table, lab, top=30, n_groups=8)
sig = table[table["q_value"] < ALPHA]
lines = []
for g in groups:
    side = name_a if g["direction"] == "more in A" else name_b
    others = f" and {g['n_features'] - 1} similar feature(s)" if g["n_features"] > 1 else ""
    kw = f" (keywords: {', '.join(aw.md_escape(k, 30) for k in g['keywords'][:4])})" if g["keywords"] else ""
    lines.append(f"- More often in **{aw.md_escape(side)}**: {aw.md_escape(g['name'])}{others}{kw}; "
                 f"on average {100 * g['mean_abs_diff']:.0f} percentage points more documents.")
st.markdown(
    f"{len(sig):,} of {len(table):,} tested features differ at q < {ALPHA}."
    + (f" {int(sig['length_confounded'].sum()):,} of them are flagged as length-confounded." if "length_confounded" in sig else "")
)
if lines:
    if sig.empty:
        st.caption("None of these differences is significant; the largest ones are:")
    st.markdown("\n".join(lines))

# -- ranked table and volcano ---------------------------------------------------------
st.subheader("Ranked features")
show_cols = ["rank", "feature_id", "share_a", "share_b", "abs_diff", "rel_diff", "q_value"]
if "adj_diff" in table:
    show_cols += ["adj_diff", "cmh_q", "length_confounded"]
show_cols += ["n_a", "n_b", "log2_ratio", "p_value", "p_method"]
ranked = aw.with_labels(table[show_cols], lab)
only_sig = st.checkbox(f"Only features with q < {ALPHA}", value=False, key="diff_only_sig")
view = ranked[ranked["q_value"] < ALPHA] if only_sig else ranked
st.dataframe(
    view, hide_index=True, width="stretch", height=420, key="diff_table",
    column_config={
        "share_a": st.column_config.NumberColumn("share A", format="%.3f"),
        "share_b": st.column_config.NumberColumn("share B", format="%.3f"),
        "abs_diff": st.column_config.NumberColumn("abs diff", format="%+.3f"),
        "rel_diff": st.column_config.NumberColumn("rel diff", format="%+.2f"),
        "q_value": st.column_config.NumberColumn("q", format="%.2e"),
        "adj_diff": st.column_config.NumberColumn("adjusted diff", format="%+.3f"),
        "cmh_q": st.column_config.NumberColumn("CMH q", format="%.2e"),
        "length_confounded": st.column_config.CheckboxColumn("length-confounded"),
    },
)
widgets.export_buttons(ranked, key="diff_export", stem="diff")

vol = ranked.copy()
vol["-log10 q"] = -np.log10(np.clip(vol["q_value"].to_numpy(float), 1e-300, 1.0))
color = "length_confounded" if "length_confounded" in vol else None
if color:
    vol["length_confounded"] = vol["length_confounded"].map({True: "length-confounded", False: "not confounded"})
vol["name"] = [aw.feature_name(f, lab) for f in vol["feature_id"]]
vol["name"] = vol["name"].map(lambda s: s.replace("<", "‹").replace(">", "›"))
fig = px.scatter(vol, x="abs_diff", y="-log10 q", color=color, hover_name="name",
                 hover_data={"share_a": ":.3f", "share_b": ":.3f", "abs_diff": ":+.3f"},
                 color_discrete_map={"length-confounded": "#d62728", "not confounded": "#1f77b4"})
fig.add_hline(y=-np.log10(ALPHA), line_dash="dot", line_color="grey")
fig.add_vline(x=0, line_color="lightgrey")
fig.update_layout(height=420, margin=dict(l=10, r=10, t=30, b=10), title="Volcano: share difference (A − B) vs significance",
                  xaxis_title="abs diff (share A − share B)")
st.plotly_chart(fig, width="stretch", key="diff_volcano")

# -- examples ------------------------------------------------------------------------
st.subheader("Example documents")
top_ids = [int(f) for f in ranked["feature_id"].head(200)]
sel = widgets.selected_feature()
fid = st.selectbox("Feature", top_ids, key="diff_feature",
                   index=top_ids.index(sel) if sel in top_ids else 0,
                   format_func=lambda f: aw.feature_name(f, lab))
row = table.set_index("feature_id").loc[fid]
st.caption(f"Fires in {100 * row['share_a']:.1f}% of A and {100 * row['share_b']:.1f}% of B.")
aw.open_feature_button(fid, "diff")
n_ex = st.slider("Documents per side", 1, 10, 3, key="diff_n_examples")
e1, e2 = st.columns(2)
for col, side, X, ids, name in ((e1, "a", res["XA"], res["ids_a"], name_a), (e2, "b", res["XB"], res["ids_b"], name_b)):
    with col:
        st.markdown(f"**{side.upper()}: {aw.md_escape(name)}**")
        rows = example_documents(X, fid, n=n_ex, threshold=float(threshold))
        if len(rows) == 0:
            st.caption("The feature does not fire on this side.")
            continue
        acts = X[rows][:, [fid]].toarray().ravel()
        aw.show_documents(ws, side_corpus[side], [int(ids[r]) for r in rows], [fid], key=f"diff_docs_{side}",
                          labels=lab, scores=acts, score_name="max activation")
