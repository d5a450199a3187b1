"""Home: what this workspace holds and what to do next; builds the default workspace on first launch.

Layout and widgets only: the first-launch build is a backend.background job (embedding, then the finishing
steps: statistics, contexts, labels, logit lens), each shown with its own progress, also after a browser
reload while it runs (jobs live in the server process). Once the default workspace is ready, its MiniLM
document vectors and then its feature-search index are built in the background (backend.background)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.background import BackgroundJob, default_build_job, ensure_doc_vectors, ensure_feature_index, start_default_build
from backend.demo import FIRST_LAUNCH_STEPS, default_workspace_path
from backend.saes import workspace_sae_name
from backend.search import feature_index_status
from backend.workspace import Workspace
from pages import widgets
from pages.widgets import md_escape

NEXT_STEPS = (
    "- **Features**: browse and search the SAE's features; open one to see where it fires.\n"
    "- **Corpora**: upload your own CSV, TSV, JSONL, Parquet or TXT file and embed it.\n"
    "- **Dataset diff**: compare two corpora, or two groups of one corpus, feature by feature.\n"
    "- **Clustering**, **Correlations**, **Retrieval**: the paper's analyses along the concepts you choose.\n"
    "- **Steering**: push the model along a feature and measure whether it worked."
)


def build_steps(job: BackgroundJob) -> None:
    """The embedding bar, then one line per first-launch step: done, under way (its own bar) or waiting."""
    p = job.progress
    if p.step is None:
        widgets.job_status(job)
    else:
        st.progress(1.0, text=f"{md_escape(p.corpus)}: {p.docs_total:,}/{p.docs_total:,} documents embedded")
    current = FIRST_LAUNCH_STEPS.index(p.step) if p.step in FIRST_LAUNCH_STEPS else (-1 if p.step is None else None)
    for i, step in enumerate(FIRST_LAUNCH_STEPS):
        if current is None and step == FIRST_LAUNCH_STEPS[0]:  # a step this list does not name: show it first
            st.progress(min(1.0, max(0.0, p.step_fraction)), text=f"{md_escape(p.step)} · {p.step_fraction:.0%}")
        if current is not None and i < current or p.status == "done":
            st.markdown(f":material/check_circle: {step}")
        elif i == current and p.status == "running":
            st.progress(min(1.0, max(0.0, p.step_fraction)), text=f"{step} · {p.step_fraction:.0%}")
        else:
            st.caption(f":material/schedule: {step}")
    if job.error:
        st.error(f"The build failed: {md_escape(job.error, max_len=None)}")


@st.fragment(run_every=1.0)
def build_progress() -> None:
    """The first-launch build: embedding progress, then each step; opens the workspace when done."""
    job = default_build_job()
    if job is None:
        return
    build_steps(job)
    if not job.running and not job.error:
        st.success("The default workspace is ready.")
        if st.session_state.get("_build_opened") != id(job):  # once: a page that still finds no workspace must not loop
            st.session_state["_build_opened"] = id(job)
            st.session_state[widgets.WS_KEY] = str(default_workspace_path())
            st.rerun()


def first_launch() -> None:
    st.subheader("First launch")
    st.write(
        "The default workspace uses SmolLM2-135M-Instruct with the project's SAE and a demo corpus of "
        "movie-review snippets labelled fresh, rotten or plot summary. Building it embeds the documents, then "
        "computes feature statistics, contexts, labels and the logit lens. MiniLM document vectors and the "
        "search-by-meaning index follow in the background once the dashboard is up."
    )
    job = default_build_job()
    if job is None and st.button("Build the default workspace", type="primary", icon=":material/construction:"):
        job = start_default_build()
    if job is not None:
        build_progress()


def search_index_note(ws: Workspace) -> None:
    """The default workspace's document vectors, then its feature-search index, build in the background once
    the dashboard is up (and an interrupted index resumes); say how far they are."""
    for corpus in ws.corpus_list():
        vectors = ensure_doc_vectors(ws, corpus)  # starts only for the demo corpus; starts the index when done
        if vectors is not None and vectors.running:
            p = vectors.progress
            st.caption(f":material/hourglass_top: MiniLM document vectors of **{md_escape(corpus.name)}** (the dense "
                       f"comparisons on Clustering and Retrieval): {p.docs_done:,} of {p.docs_total:,} documents, in "
                       "the background; the search-by-meaning index follows.")
            continue
        job = ensure_feature_index(ws, corpus)  # starts only for the demo corpus, or to resume a started index
        if job is not None and job.running:
            status = feature_index_status(ws, corpus)
            sofar = f"{status.n_searched:,} of {status.n_features:,} features indexed so far" if status.started else "starting"
            st.caption(f":material/manage_search: Search by meaning on **{md_escape(corpus.name)}**: {sofar}, in "
                       "the background (a search covers the indexed features meanwhile).")


def workspace_summary(ws: Workspace) -> None:
    settings = ws.settings
    st.subheader("Workspace")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Reader model", settings.model)
    c2.metric("Hook", settings.hook)
    c3.metric("SAE features", f"{settings.d_sae:,}")
    report = settings.sae_report or {}
    c4.metric("SAE held-out FVE", f"{report['fve']:.3f}" if report.get("fve") is not None else "n/a")
    st.caption(f"SAE: **{md_escape(workspace_sae_name(ws), max_len=None)}** (pick another when creating a workspace "
               "on the Corpora page; `python -m backend saes` lists the shipped ones).")
    if report:
        st.caption(
            f"SAE ({md_escape(settings.architecture)}): L0 {report.get('l0', float('nan')):.1f} active features per "
            f"token, dead features {100 * report.get('dead_frac', 0):.2f}%, trained on "
            f"{report.get('n_train_tokens', 0):,} tokens. Documents are read as `{settings.formatting}` text, "
            f"at most {settings.max_tokens:,} tokens each."
        )


def corpora_summary(ws: Workspace) -> None:
    st.subheader("Corpora")
    corpora = ws.corpus_list()
    if not corpora:
        st.info("No corpus yet: add one on the **Corpora** page.")
        return
    df = pd.DataFrame({
        "name": [c.name for c in corpora], "documents": [c.n_docs for c in corpora],
        "embedded": [c.n_embedded for c in corpora], "tokens": [c.n_tokens for c in corpora],
        "truncated": [c.n_truncated for c in corpora], "status": [c.status for c in corpora],
        "metadata": [c.meta_columns for c in corpora], "source": [c.source for c in corpora],
    })
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"truncated": st.column_config.NumberColumn(
                     "truncated", help=f"Documents cut at {ws.settings.max_tokens:,} tokens")})
    unfinished = [c for c in corpora if c.status != "ready" or ws.needs_finalize(c)]
    if unfinished:
        names = ", ".join(f"**{md_escape(c.name)}**" for c in unfinished)
        st.warning(f"Not finished yet: {names}.", icon=":material/hourglass_top:")
        widgets.page_link("corpora", "Go to Corpora", ":material/library_books:")


st.title("SAE embeddings of text corpora")
st.caption(
    "Each document is read by a language model; a sparse autoencoder turns its residual stream into "
    "interpretable features, max-pooled over tokens. Browse the features, diff datasets, cluster along "
    "concepts, find correlations, retrieve by property, steer the model."
)
workspace = widgets.current_workspace()
build = default_build_job()
if workspace is None or build is not None and build.running:  # a reload while it builds still shows the steps
    first_launch()
    st.stop()
workspace_summary(workspace)
search_index_note(workspace)
corpora_summary(workspace)
st.subheader("What next")
st.markdown(NEXT_STEPS)
