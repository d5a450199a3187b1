"""The diff's findings labelled by the configured LLM as soon as the diff is shown, offline label beside it.

Layout only: the labels come from `ws.label_findings` (backend/finding_labels.py), the call a notebook makes.
LLM labels are stored in the workspace, so a rerun of the page asks the LLM nothing new."""
from __future__ import annotations

import streamlit as st

from backend.analysis.findings import DiffResult
from backend.errors import UserError
from backend.workspace import Workspace
from pages import widgets
from pages.analysis_widgets import LABEL_SCORE_HELP

OFFLINE_SCORE_HELP = ("Offline label score: the activation-weighted share of the feature's top contexts that the "
                      "offline label describes (1 = all of them).")


def auto_label_findings(ws: Workspace, res: DiffResult, corpus_a: str, corpus_b: str | None,
                        include_confounded: bool, key: str = "diff_auto_labels") -> bool:
    """With an LLM configured (this session's server, else an instruct reader of 1B+ parameters), label the
    summary's findings now, with a progress bar, and show the offline and LLM labels side by side.

    Returns False, showing nothing, when no LLM is configured (the caller offers what it offers then)."""
    llm, source = widgets.labelling_llm(ws)
    if llm is None:
        return False
    bar = st.progress(0.0, text=f"Labelling the findings with {widgets.md_escape(source, max_len=None)}…")

    def report(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Labelled {done} of {total} findings")

    try:
        table = ws.label_findings(res, corpus_a, corpus_b, llm=llm, progress=report,
                                  include_confounded=include_confounded)
    except UserError as exc:
        bar.empty()
        st.error(f"LLM labelling stopped: {widgets.md_escape(exc, max_len=None)} The labels written so far are kept.")
        return True
    bar.empty()
    if not table["cached"].all():
        st.rerun()  # the findings above read their new LLM labels; the rerun asks nothing (all cached)
    st.caption(f"Findings labelled by {widgets.md_escape(source, max_len=None)} (kept in the workspace; asked once), "
               "beside the offline label. LLM score: " + LABEL_SCORE_HELP)
    st.dataframe(table, hide_index=True, width="stretch", key=key, column_config={
        "finding": st.column_config.NumberColumn("finding", format="%d"),
        "feature_id": st.column_config.NumberColumn("feature", format="%d"),
        "offline_label": st.column_config.TextColumn("offline label"),
        "offline_score": st.column_config.NumberColumn("offline score", format="%.2f", help=OFFLINE_SCORE_HELP),
        "llm_label": st.column_config.TextColumn("LLM label"),
        "llm_score": st.column_config.NumberColumn("LLM score", format="%.2f", help=LABEL_SCORE_HELP),
    })
    return True
