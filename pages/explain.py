"""Explain a column and trends: which concepts go with a metadata column, and how concepts rose and fell
along an ordered one (a date, a year, a number).

Layout and widgets only: everything shown comes from one `ws.explain` or `ws.trend` call
(backend.workspace_analyses), the same calls a notebook makes. Results are kept in the session, keyed by
their inputs, so a rerun (a slider moved elsewhere) does not recompute them."""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import streamlit as st

from backend.analysis.explain import ExplainResult
from backend.analysis.trend import TrendResult
from backend.store import Corpus
from backend.workspace import Workspace
from pages import analysis_widgets as analysis_ui
from pages import charts, widgets

KINDS = {"auto": "Automatic", "numeric": "Numbers (higher / lower)", "categorical": "Categories (value by value)",
         "date": "Dates (later / earlier)"}
BINS = {"auto": "Automatic", "year": "Years", "month": "Months", "quantile": "Quantiles (10)", "number": "Quantiles (choose)"}
DATE_HINTS = ("date", "time", "year", "month", "day", "created", "published")


def intro() -> None:
    st.title("Explain a column")
    st.caption(
        "Which concepts go with higher or lower values of a column (stars, votes, a score), or with each value of "
        "a category, and how much of the column they explain; and how concepts rose and fell along a date or a "
        "number. Findings are chosen on one half of the documents and tested on the other half "
        "(Benjamini-Hochberg q-values), so a finding is not an artefact of searching thousands of features.")


def run_with_progress(key: tuple, run: Callable[[Callable[[float, str], None]], Any], state_key: str) -> Any:
    """The result stored for `key`, or run it with a progress bar and store it."""
    stored = st.session_state.get(state_key)
    if stored is not None and stored[0] == key:
        return stored[1]
    bar = st.progress(0.0, text="Starting…")

    def report(fraction: float, message: str) -> None:
        bar.progress(min(1.0, max(0.0, float(fraction))), text=widgets.md_escape(message, max_len=None))

    result = run(report)
    bar.empty()
    st.session_state[state_key] = (key, result)
    return result


def messages(result: ExplainResult | TrendResult) -> None:
    for message in result.messages:
        st.info(widgets.md_escape(message, max_len=None), icon=":material/info:")


def extra_columns(docs: pd.DataFrame, corpus: Corpus) -> pd.DataFrame:
    """A result's per-document columns for the export, less doc_id and any the metadata already carries."""
    return docs.drop(columns=["doc_id", *[c for c in docs.columns if c in corpus.meta_columns]])


# -- explain ----------------------------------------------------------------------------------------
def explain_inputs(ws: Workspace, corpus: Corpus) -> tuple[str, str, bool, dict]:
    c1, c2, c3 = st.columns([2, 2, 1])
    columns = corpus.meta_columns
    column = c1.selectbox("Column to explain", columns, key="explain_column",
                          index=columns.index("label") if "label" in columns else 0)
    kind = c2.selectbox("Read its values as", list(KINDS), format_func=KINDS.get, key="explain_kind")
    compute = c3.toggle("MiniLM baseline", value=False, key="explain_baseline",
                        help="Compute MiniLM document vectors if they are not stored yet (they are used whenever "
                             "they are stored). The same sparse model on them is the baseline.")
    with st.expander("Options"):
        o1, o2, o3 = st.columns(3)
        min_docs = o1.number_input("A feature fires in at least (documents)", 2, 1000, 5, key="explain_min_docs")
        test_size = o2.slider("Held-out share of documents", 0.2, 0.8, 0.5, 0.05, key="explain_test_size")
        seed = o3.number_input("Split seed", 0, 10_000, 0, key="explain_seed")
    return column, kind, bool(compute), dict(min_docs=int(min_docs), test_size=float(test_size), seed=int(seed))


def score_section(res: ExplainResult) -> None:
    st.subheader("How much of the column the concepts explain")
    if res.model is None:
        st.caption("No feature fires often enough to fit a model.")
        return
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.explain_scores(res.score, res.baseline, res.metric), width="stretch",
                        key="explain_scores_chart")
    with right:
        st.metric(f"SAE concepts ({res.metric})", f"{res.score:.3f}",
                  delta=None if res.baseline is None else f"{res.score - res.baseline:+.3f} vs MiniLM")
        st.caption(f"L1 model on {res.model.n_inputs:,} screened features ({res.model.n_nonzero:,} used); trained on "
                   f"{res.n_select:,} documents, scored on {res.n_test:,} held-out ones."
                   + ("" if res.baseline_note is None else " " + widgets.md_escape(res.baseline_note, max_len=None)))


def explain_findings(ws: Workspace, corpus: Corpus, res: ExplainResult) -> None:
    st.subheader("What goes with it")
    if not res.findings:
        st.caption("No feature fires often enough to be tested.")
        return
    summary = res.summary(n_per_direction=4)
    frame = res.to_frame()
    shown = frame[frame["finding"].isin([res.findings.index(f) for f in summary])]
    st.plotly_chart(charts.explain_findings(shown, res.kind != "categorical"), width="stretch",
                    key="explain_findings_chart")
    for f in summary:
        i = res.findings.index(f)
        with st.container(border=True):
            st.markdown(f"**#{i}** {widgets.md_escape(f.sentence, max_len=240)} · q = {f.q_value:.2g}")
            analysis_ui.show_documents(ws, corpus, list(f.examples), [f.lead], key=f"explain_ex_{i}")
    analysis_ui.label_on_demand(ws, corpus, [f.named_by for f in summary], key="explain_findings")
    widgets.export_buttons(frame, key="explain_findings_export", stem=f"explain_{res.column}")


def explain_export(ws: Workspace, corpus: Corpus, res: ExplainResult) -> None:
    if not res.findings:
        return
    with st.expander("Export the documents behind a finding"):
        pick = st.selectbox("Finding", list(range(len(res.findings))), key="explain_export_pick",
                            format_func=lambda i: f"#{i} {res.findings[i].sentence}"[:160])
        docs = res.documents(pick)
        lab = analysis_ui.corpus_labels(ws, corpus)
        analysis_ui.export_block(ws, corpus, analysis_ui.latents(ws, corpus), docs["doc_id"].tolist(),
                                 key=f"explain_docs_{pick}", stem=f"explain_{res.column}_finding_{pick}",
                                 default_features=res.findings[pick].feature_ids, labels=lab,
                                 extra=extra_columns(docs, corpus))


def explain_tab(ws: Workspace, corpus: Corpus) -> None:
    column, kind, compute, opts = explain_inputs(ws, corpus)
    key = (widgets.cache_key(ws, corpus), column, kind, compute, tuple(sorted(opts.items())), ws.label_revision())
    res = run_with_progress(key, lambda report: ws.explain(corpus, column, kind=kind, progress=report,
                                                          baseline=True if compute else "stored", **opts),
                            "explain_result")
    st.caption(f"{res.n_used:,} of {res.n_total:,} documents used · read as {res.kind}"
               + (f" · values: {', '.join(widgets.md_escape(d, 40) for d in res.directions)}" if res.kind == "categorical" else ""))
    messages(res)
    score_section(res)
    explain_findings(ws, corpus, res)
    with st.expander("Every candidate feature (held-out statistics)"):
        table = analysis_ui.with_labels(res.table, analysis_ui.corpus_labels(ws, corpus))
        st.dataframe(table, hide_index=True, width="stretch", height=360, key="explain_table")
        widgets.export_buttons(table, key="explain_table_export", stem=f"explain_{column}_features")
    explain_export(ws, corpus, res)


# -- trends -----------------------------------------------------------------------------------------
def trend_inputs(ws: Workspace, corpus: Corpus) -> tuple[str, str | int | None, list[int], dict]:
    c1, c2, c3 = st.columns([2, 2, 1])
    columns = corpus.meta_columns
    hinted = [c for c in columns if any(h in c.lower() for h in DATE_HINTS)]
    column = c1.selectbox("Ordered column (a date, a year, a number)", columns, key="trend_column",
                          index=columns.index(hinted[0]) if hinted else 0)
    mode = c2.selectbox("Bins", list(BINS), format_func=BINS.get, key="trend_bins")
    n_bins = c3.number_input("Number of bins", 2, 100, 8, key="trend_n_bins", disabled=mode != "number")
    bins: str | int | None = {"auto": None, "number": int(n_bins)}.get(mode, mode)
    with st.expander("Pin features (their shares are drawn too)"):
        pinned = analysis_ui.feature_picker(ws, corpus, key="trend_pin", title="Pinned features")
    min_docs = st.number_input("A feature fires in at least (documents)", 1, 10_000, 5, key="trend_min_docs")
    return column, bins, pinned, dict(min_docs=int(min_docs))


def trend_chart(res: TrendResult) -> None:
    series = list(dict.fromkeys(res.table["series"]))
    default = [s for s in series if s.startswith("feature ")]
    default += [f"finding {res.findings.index(f)}" for f in res.summary(n_per_direction=2)]
    chosen = st.multiselect("Series on the chart", series, default=list(dict.fromkeys(default))[:8], key="trend_series",
                            format_func=lambda s: f"{s}: {res.table.loc[res.table['series'] == s, 'label'].iloc[0]}"[:90])
    st.plotly_chart(charts.trend_figure(res.table, chosen, title=f"Share of documents per {res.bin_mode} bin"),
                    width="stretch", key="trend_chart")


def trend_findings(ws: Workspace, corpus: Corpus, res: TrendResult) -> None:
    st.subheader("What rose and what fell")
    summary = res.summary(n_per_direction=4)
    if not summary:
        st.caption("No feature fires often enough to be tested.")
        return
    for f in summary:
        i = res.findings.index(f)
        with st.container(border=True):
            st.markdown(f"**#{i}** {widgets.md_escape(f.sentence, max_len=240)} · q = {f.q_value:.2g}")
            st.caption(f"Examples from {widgets.md_escape(f.peak_bin)}, where it peaks:")
            analysis_ui.show_documents(ws, corpus, list(f.examples), [f.lead], key=f"trend_ex_{i}")
    analysis_ui.label_on_demand(ws, corpus, [f.named_by for f in summary], key="trend_findings")
    widgets.export_buttons(res.to_frame(), key="trend_findings_export", stem=f"trend_{res.column}")


def trend_export(ws: Workspace, corpus: Corpus, res: TrendResult) -> None:
    series = list(dict.fromkeys(res.table["series"]))
    if not series:
        return
    with st.expander("Export the documents behind a finding or a pinned feature"):
        c1, c2 = st.columns(2)
        pick = c1.selectbox("Series", series, key="trend_export_pick")
        bins = ["all"] + list(range(len(res.bins)))
        in_bin = c2.selectbox("Bin", bins, key="trend_export_bin",
                              format_func=lambda b: "every bin" if b == "all" else str(res.bins["bin"].iloc[b]))
        which = (res.findings[int(pick.split()[1])] if pick.startswith("finding ") else [int(pick.split()[1])])
        docs = res.documents(which, bin=None if in_bin == "all" else int(in_bin))
        ids = which.feature_ids if hasattr(which, "feature_ids") else tuple(which)
        analysis_ui.export_block(ws, corpus, analysis_ui.latents(ws, corpus), docs["doc_id"].tolist(),
                                 key=f"trend_docs_{pick.replace(' ', '_')}_{in_bin}", stem=f"trend_{res.column}_{pick}",
                                 default_features=ids, labels=analysis_ui.corpus_labels(ws, corpus),
                                 extra=extra_columns(docs, corpus))


def trend_tab(ws: Workspace, corpus: Corpus) -> None:
    column, bins, pinned, opts = trend_inputs(ws, corpus)
    key = (widgets.cache_key(ws, corpus), column, bins, tuple(pinned), tuple(sorted(opts.items())), ws.label_revision())
    res = run_with_progress(key, lambda report: ws.trend(corpus, column, bins, features=pinned, progress=report, **opts),
                            "trend_result")
    st.caption(f"{res.n_used:,} of {res.n_total:,} documents used · {len(res.bins):,} bins by {res.bin_mode}")
    messages(res)
    trend_chart(res)
    trend_findings(ws, corpus, res)
    with st.expander("Bins and every tested feature's trend"):
        st.dataframe(res.bins, hide_index=True, width="stretch", key="trend_bins_table")
        table = analysis_ui.with_labels(res.features.sort_values("p_value"), analysis_ui.corpus_labels(ws, corpus))
        st.dataframe(table, hide_index=True, width="stretch", height=360, key="trend_features_table")
        widgets.export_buttons(table, key="trend_features_export", stem=f"trend_{column}_features")
    trend_export(ws, corpus, res)


def main() -> None:
    intro()
    ws, corpus = widgets.require_corpus()
    if not corpus.meta_columns:
        st.info(f"Corpus **{widgets.md_escape(corpus.name)}** has no metadata column to explain. Add a corpus with "
                "columns beside its text (a rating, a label, a date) on the **Corpora** page.")
        st.stop()
    tab_explain, tab_trend = st.tabs(["Explain a column", "Trends"])
    with tab_explain:
        with widgets.user_errors("explain_retry"):
            explain_tab(ws, corpus)
    with tab_trend:
        with widgets.user_errors("trend_retry"):
            trend_tab(ws, corpus)


main()
