"""Search by meaning's index on the Features page: its background build's progress and what a search covers.

Layout and widgets only: the index is built by a backend.background job (backend.search.build_feature_embeddings),
most useful features first; a search meanwhile covers the features indexed so far."""
from __future__ import annotations

import streamlit as st

from backend.background import BackgroundJob, ensure_feature_index, feature_index_job
from backend.search import FeatureIndexStatus
from backend.store import Corpus
from backend.workspace import Workspace
from pages.widgets import md_escape

POLL_S = 2.0


@st.fragment(run_every=POLL_S)
def index_progress(ws: Workspace, corpus: Corpus) -> None:
    """The running index job's bar; reruns the page once it stops (results then cover every feature)."""
    job = feature_index_job(ws, corpus)
    if job is None:
        return
    if not job.running:
        st.rerun()
    p = job.progress
    eta = f", about {p.eta_s / 60:,.0f} min left" if p.eta_s is not None and p.eta_s >= 60 else ""
    what = f"{p.docs_done:,} of {p.docs_total:,} features" if p.docs_total else "starting"
    st.progress(min(1.0, max(0.0, p.step_fraction)),
                text=f"Indexing the features for search by meaning, most useful first: {what}{eta}")


def index_job(ws: Workspace, corpus: Corpus, requested: bool) -> BackgroundJob | None:
    """Start or resume the background index when it is due (`requested`: the user searched) and show its
    progress, or the error of a failed build."""
    job = ensure_feature_index(ws, corpus, requested=requested)
    if job is not None and job.running:
        index_progress(ws, corpus)
        return job
    failed = feature_index_job(ws, corpus)
    if failed is not None and failed.error:
        st.error(f"Building the search index failed: {md_escape(failed.error, max_len=None)}", icon=":material/error:")
    return job


def coverage_notice(status: FeatureIndexStatus, job: BackgroundJob | None) -> None:
    """Say when a search covers only part of the features."""
    if status.n_features is not None and status.n_searched < status.n_features:
        rest = "the rest are being indexed" if job is not None and job.running else "the rest are indexed on the next search"
        st.info(f"Searching {status.n_searched:,} of {status.n_features:,} features; {rest}.",
                icon=":material/hourglass_top:")
    elif status.n_features is None and status.n_indexed == 0:
        st.info("The search index is built once the corpus is finished (statistics and labels).",
                icon=":material/hourglass_top:")
