"""Dataset diff: which concepts are more common in one set of documents than in another.

Two corpora (e.g. one uploaded on the Corpora page against the demo), or two groups of one corpus
split by a metadata column. Layout and widgets only: everything shown comes from one `ws.diff` call
(backend.workspace_analyses), the same call a notebook makes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from backend.analysis.findings import DiffResult, Finding
from backend.analysis.hypotheses import HypothesisConfig
from backend.store import Corpus
from backend.workspace import Workspace
from pages import analysis_widgets as analysis_ui
from pages import charts, finding_label_widgets, widgets

ALL_OTHERS = "(all others)"
ALPHA = 0.05


@dataclass(frozen=True)
class Sides:
    """What the user chose to compare, as `ws.diff` arguments plus names for the page."""

    a: str
    b: str | None
    column: str | None
    value_a: str | None
    value_b: str | None
    name_a: str
    name_b: str
    cache_key: tuple


def intro() -> None:
    st.title("Dataset diff")
    st.caption(
        "Which concepts are more common in one set of documents than in another? Each feature is tested for "
        "the share of documents in which it fires (two-proportion z-test, exact Fisher test for rare features, "
        "Benjamini-Hochberg q-values); features that describe one concept are grouped into one finding.")
    with st.expander("Why document length matters, and how the length control works"):
        st.markdown(
            "Document embeddings are **max-pooled**: a feature counts as present when it fires on *any* token. "
            "A longer document has more tokens, so more chances for every feature to fire: a corpus of longer "
            "documents shows more features everywhere, and a naive diff mistakes length for content.\n\n"
            "With **length control** on, the documents of both sides are pooled and cut into token-length bins "
            "(quantiles). Each feature is then compared *within* bins (Cochran-Mantel-Haenszel test, its q-value "
            "`cmh_q`, and the Mantel-Haenszel risk difference `adj_diff`: the share difference averaged over bins). "
            "When the sides differ in length, findings are ranked by that adjusted difference, and a feature is "
            "flagged **length-confounded** when its raw difference is significant but the within-bin difference is "
            "not, or shrinks to less than half (or flips sign); such findings are listed last.")


def choose_corpora(ws: Workspace, corpus: Corpus, ready: list[str]) -> Sides:
    if len(ready) < 2:
        st.info("Only one embedded corpus in this workspace. Upload a second corpus on the **Corpora** page, "
                "then come back to diff it against this one, or compare two groups of this corpus.")
        widgets.page_link("corpora", "Go to Corpora", ":material/library_books:")
        st.stop()
    c1, c2 = st.columns(2)
    a = c1.selectbox("Corpus A", ready, index=ready.index(corpus.name) if corpus.name in ready else 0, key="diff_a")
    b = c2.selectbox("Corpus B", [c for c in ready if c != a], key="diff_b")
    key = (widgets.cache_key(ws, a), widgets.cache_key(ws, b))
    return Sides(a, b, None, None, None, a, b, key)


def choose_groups(ws: Workspace, corpus: Corpus) -> Sides:
    if not corpus.meta_columns:
        st.info(f"Corpus **{widgets.md_escape(corpus.name)}** has no metadata column to split by. "
                "Compare two corpora instead.")
        st.stop()
    c1, c2, c3 = st.columns(3)
    default_col = corpus.meta_columns.index("label") if "label" in corpus.meta_columns else 0
    column = c1.selectbox("Metadata column", corpus.meta_columns, index=default_col, key="diff_column")
    counts = analysis_ui.metadata(ws, corpus, column).value_counts(dropna=True)
    if len(counts) < 1:
        st.info("This column has no values.")
        st.stop()
    options = [str(v) for v in counts.index[:500]]
    value_a = c2.selectbox("Group A: value", options, key="diff_value_a",
                           format_func=lambda v: f"{v} ({int(counts[v]):,} docs)")
    value_b = c3.selectbox("Group B: value", [ALL_OTHERS] + [v for v in options if v != value_a], key="diff_value_b",
                           format_func=lambda v: v if v == ALL_OTHERS else f"{v} ({int(counts[v]):,} docs)")
    value_b = None if value_b == ALL_OTHERS else value_b
    name_b = f"{column} ≠ {value_a}" if value_b is None else f"{column} = {value_b}"
    return Sides(corpus.name, None, column, value_a, value_b, f"{column} = {value_a}", name_b,
                 (widgets.cache_key(ws, corpus),))


def options() -> dict:
    with st.expander("Options", expanded=False):
        o1, o2, o3, o4 = st.columns(4)
        threshold = o1.number_input("Activation threshold (fires when above)", 0.0, value=0.0, step=0.1,
                                    key="diff_threshold")
        share = o2.slider("Share coverage: test features whose share on either side is in", 0.0, 1.0, (0.0, 1.0),
                          0.01, key="diff_share")
        length_control = o3.toggle("Length control", value=True, key="diff_length")
        length_bins = o4.number_input("Length bins", 1, 20, 5, key="diff_bins", disabled=not length_control)
        confounded = o3.toggle("Rank length-confounded findings with the others", value=False, key="diff_confounded",
                               disabled=not length_control)
    return dict(threshold=float(threshold), min_share=float(share[0]), max_share=float(share[1]),
                length_control=bool(length_control), length_bins=int(length_bins), include_confounded=bool(confounded))


@st.cache_data(show_spinner="Comparing…", max_entries=16)
def run_diff(_ws: Workspace, key: tuple, sides: Sides, opts: dict, label_revision: tuple) -> DiffResult:
    return _ws.diff(sides.a, sides.b, column=sides.column, value_a=sides.value_a, value_b=sides.value_b, **opts)


def lengths_section(res: DiffResult) -> None:
    st.subheader("Document lengths")
    summ = res.length_summary
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.length_histogram(res.lengths_a, res.lengths_b), width="stretch", key="diff_lengths_chart")
    with right:
        st.dataframe(pd.DataFrame({"A": summ["a"], "B": summ["b"]}).T.round(1), width="stretch")
        ratio, p = summ["mean_ratio"], summ["mannwhitney_p"]
        msg = f"Mean length A / B = {ratio:.2f}; Mann-Whitney p = {p:.2g}."
        if np.isfinite(p) and p < ALPHA and np.isfinite(ratio) and abs(np.log(ratio)) > np.log(1.2):
            msg += " The sides differ in length: keep length control on."
        st.caption(msg)


def finding_line(finding: Finding, sides: Sides) -> str:
    side = sides.name_a if finding.side == "a" else sides.name_b
    others = f" ({finding.n_features} features)" if finding.n_features > 1 else ""
    flag = " · length-confounded" if finding.length_confounded else ""
    return (f"More common in **{widgets.md_escape(side)}**: {widgets.md_escape(finding.label, max_len=160)} — "
            f"{100 * finding.share_a:.0f}% vs {100 * finding.share_b:.0f}% of documents{others}{flag}")


def findings_section(ws: Workspace, res: DiffResult, sides: Sides, include_confounded: bool) -> None:
    st.subheader("What differs")
    table = res.table
    sig = table[table["q_value"] < ALPHA]
    confounded = int(sig["length_confounded"].sum()) if "length_confounded" in sig else 0
    st.markdown(f"{len(sig):,} of {len(table):,} tested features differ at q < {ALPHA}"
                + (f"; {confounded:,} of them are flagged as length-confounded." if confounded else ".")
                + f" Ranked by `{res.ranked_by}`.")
    summary = res.summary(n_per_side=4, include_confounded=include_confounded)
    if not summary:
        st.caption("No finding on either side.")
        return
    if sig.empty:
        st.caption("None of these differences is significant; the largest ones are:")
    for i, finding in enumerate(summary):
        with st.container(border=True):
            st.markdown(finding_line(finding, sides))
            finding_members(res, finding, sides, key=f"diff_members_{i}")
            finding_examples(ws, res, sides, finding, key=f"diff_finding_{i}")
    st.caption("Each finding folds features that describe one concept (they fire on the same documents, their "
               "labels share a word, or one fires inside the other's documents); its label is its strongest "
               "feature's, its shares count documents where any of them fires.")
    if not finding_label_widgets.auto_label_findings(ws, res, sides.a, sides.b, include_confounded):
        label_findings(ws, summary, sides)  # no LLM configured: the on-demand button says why
    widgets.export_buttons(res.to_frame(sides.name_a, sides.name_b), key="diff_findings_export", stem="diff_findings")


def finding_members(res: DiffResult, finding: Finding, sides: Sides, key: str) -> None:
    """The features folded into a multi-feature finding, with their labels and their own shares."""
    if finding.n_features < 2:
        return
    with st.expander(f"The {finding.n_features} features of this finding", icon=":material/stacks:"):
        members = res.members(finding).rename(columns={"share_a": f"share {sides.name_a}",
                                                       "share_b": f"share {sides.name_b}"})
        st.dataframe(members, hide_index=True, width="stretch", key=key)


def label_findings(ws: Workspace, summary: list[Finding], sides: Sides) -> None:
    """LLM labels for the features the findings are read by (`Finding.named_by`, as `ws.label_findings` does), each
    labelled in the corpus of the side where it is more common."""
    named_by = [f.named_by for f in summary]
    corpus_of = {fid: sides.b for fid, f in zip(named_by, summary) if f.side == "b" and sides.b is not None}
    analysis_ui.label_on_demand(ws, sides.a, named_by, key="diff_findings", corpus_of=corpus_of)


def finding_examples(ws: Workspace, res: DiffResult, sides: Sides, finding: Finding, key: str) -> None:
    """Two documents per side where the finding's lead feature fires, the firing tokens marked."""
    corpus_b = sides.b if sides.b is not None else sides.a
    left, right = st.columns(2)
    for col, side, ids, corpus_name, name in ((left, "a", finding.examples_a, sides.a, sides.name_a),
                                              (right, "b", finding.examples_b, corpus_b, sides.name_b)):
        with col:
            st.caption(f"{side.upper()}: {widgets.md_escape(name)}")
            if not ids:
                st.caption("Does not fire on this side.")
                continue
            analysis_ui.show_documents(ws, corpus_name, list(ids)[:2], [finding.lead], key=f"{key}_{side}")


def hypotheses_section(ws: Workspace, res: DiffResult, sides: Sides) -> None:
    """The paper's last step: hypotheses from the top findings, each checked on samples of both sides."""
    st.subheader("Hypotheses")
    llm, source = widgets.labelling_llm(ws)
    if llm is None:
        st.caption(f"Hypotheses need an LLM. {widgets.md_escape(source, max_len=None)}")
        return
    st.caption(f"Written by {widgets.md_escape(source, max_len=None)} from the top findings and their examples, then "
               "checked blind on a sample of each side's documents.")
    size = st.slider("Documents checked per side", 10, 200, 40, 10, key="diff_hyp_sample")
    if st.button("Write and check hypotheses", key="diff_hypotheses", icon=":material/lightbulb:"):
        with st.spinner("Asking the LLM…"):
            report = ws.hypotheses(res, llm, sides.a, sides.b, HypothesisConfig(sample_size=int(size)),
                                   name_a=sides.name_a, name_b=sides.name_b)
        st.session_state["diff_hyp_report"] = (sides.cache_key, report)
    stored = st.session_state.get("diff_hyp_report")
    if stored and stored[0] == sides.cache_key:
        report = stored[1]
        st.dataframe(report.to_frame(), hide_index=True, width="stretch", key="diff_hyp_table")
        st.caption(f"{report.sample_size} documents sampled per side · {report.n_calls} LLM calls · "
                   f"{report.total_tokens:,} tokens{' (estimated)' if report.tokens_estimated else ''} · "
                   f"{report.seconds:.1f} s")


def ranked_section(res: DiffResult, labels: dict[int, str]) -> pd.DataFrame:
    st.subheader("Ranked features")
    table = res.table
    show_cols = ["rank", "feature_id", "finding", "share_a", "share_b", "abs_diff", "rel_diff", "q_value"]
    if "adj_diff" in table:
        show_cols += ["adj_diff", "cmh_q", "length_confounded"]
    show_cols += ["n_a", "n_b", "log2_ratio", "p_value", "p_method"]
    ranked = analysis_ui.with_labels(table[[c for c in show_cols if c in table]], labels)
    only_sig = st.checkbox(f"Only features with q < {ALPHA}", value=False, key="diff_only_sig")
    view = ranked[ranked["q_value"] < ALPHA] if only_sig else ranked
    st.dataframe(view, hide_index=True, width="stretch", height=420, key="diff_table", column_config={
        "share_a": st.column_config.NumberColumn("share A", format="%.3f"),
        "share_b": st.column_config.NumberColumn("share B", format="%.3f"),
        "abs_diff": st.column_config.NumberColumn("abs diff", format="%+.3f"),
        "rel_diff": st.column_config.NumberColumn("rel diff", format="%+.2f"),
        "q_value": st.column_config.NumberColumn("q", format="%.2e"),
        "adj_diff": st.column_config.NumberColumn("adjusted diff", format="%+.3f"),
        "cmh_q": st.column_config.NumberColumn("CMH q", format="%.2e"),
        "length_confounded": st.column_config.CheckboxColumn("length-confounded"),
        "finding": st.column_config.NumberColumn("finding", help="index of the finding it belongs to (-1: none)"),
    })
    widgets.export_buttons(ranked, key="diff_export", stem="diff")
    names = [analysis_ui.feature_name(f, labels) for f in ranked["feature_id"]]
    st.plotly_chart(charts.volcano(ranked, names, ALPHA), width="stretch", key="diff_volcano")
    return ranked


def examples_section(ws: Workspace, res: DiffResult, sides: Sides, ranked: pd.DataFrame, labels: dict[int, str]) -> None:
    st.subheader("Example documents")
    top_ids = [int(f) for f in ranked["feature_id"].head(200)]
    selected = widgets.selected_feature()
    fid = st.selectbox("Feature", top_ids, key="diff_feature", index=top_ids.index(selected) if selected in top_ids else 0,
                       format_func=lambda f: analysis_ui.feature_name(f, labels))
    row = res.table.set_index("feature_id").loc[fid]
    st.caption(f"Fires in {100 * row['share_a']:.1f}% of A and {100 * row['share_b']:.1f}% of B.")
    analysis_ui.open_feature_button(fid, "diff")
    n_examples = st.slider("Documents per side", 1, 10, 3, key="diff_n_examples")
    corpus_b = sides.b if sides.b is not None else sides.a
    left, right = st.columns(2)
    for col, side, corpus_name, name in ((left, "a", sides.a, sides.name_a), (right, "b", corpus_b, sides.name_b)):
        with col:
            st.markdown(f"**{side.upper()}: {widgets.md_escape(name)}**")
            examples = res.examples(fid, side, n=n_examples)
            if examples.empty:
                st.caption("The feature does not fire on this side.")
                continue
            analysis_ui.show_documents(ws, corpus_name, examples["doc_id"].tolist(), [fid], key=f"diff_docs_{side}",
                                       labels=labels, scores=examples.iloc[:, 1].tolist(), score_name="max activation")


def main() -> None:
    intro()
    ws, corpus = widgets.require_corpus()
    ready = widgets.ready_corpora(ws)
    mode = st.radio("Compare", ["corpora", "groups"], horizontal=True, key="diff_mode",
                    format_func={"corpora": "Two corpora", "groups": "Two groups of this corpus (by a metadata column)"}.get,
                    index=0 if len(ready) > 1 or not corpus.meta_columns else 1)
    sides = choose_corpora(ws, corpus, ready) if mode == "corpora" else choose_groups(ws, corpus)
    opts = options()
    res = run_diff(ws, sides.cache_key, sides, opts, ws.label_revision())
    labels = {**analysis_ui.corpus_labels(ws, sides.b or sides.a), **analysis_ui.corpus_labels(ws, sides.a)}
    st.caption(f"**A**: {widgets.md_escape(sides.name_a)} ({res.n_a:,} documents) · "
               f"**B**: {widgets.md_escape(sides.name_b)} ({res.n_b:,} documents) · {len(res.table):,} features tested")
    lengths_section(res)
    if res.table.empty:
        st.info("No feature passes the share filters.")
        st.stop()
    findings_section(ws, res, sides, opts["include_confounded"])
    hypotheses_section(ws, res, sides)
    ranked = ranked_section(res, labels)
    examples_section(ws, res, sides, ranked, labels)


main()
