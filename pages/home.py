"""Home: what this workspace holds and what to do next; builds the default workspace on first launch.

Layout and widgets only: the first-launch build is a backend.jobs job (embedding, then the finishing
steps: statistics, labels, logit lens, document vectors), shown with its progress."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.jobs import default_build_job, start_default_build
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


@st.fragment(run_every=1.0)
def build_progress() -> None:
    """The first-launch build: embedding progress, then each finishing step; opens the workspace when done."""
    job = default_build_job()
    widgets.job_status(job)
    if job is not None and not job.running and not job.error:
        st.success("The default workspace is ready.")
        st.rerun()


def first_launch() -> None:
    st.subheader("First launch")
    st.write(
        "The default workspace uses SmolLM2-135M-Instruct with the project's SAE and a demo corpus of "
        "movie-review snippets labelled fresh, rotten or plot summary. Building it embeds the documents, then "
        "computes feature statistics, labels, the logit lens and document vectors."
    )
    job = default_build_job()
    if job is None and st.button("Build the default workspace", type="primary", icon=":material/construction:"):
        job = start_default_build()
    if job is not None:
        build_progress()


def workspace_summary(ws: Workspace) -> None:
    settings = ws.settings
    st.subheader("Workspace")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Reader model", settings.model)
    c2.metric("Hook", settings.hook)
    c3.metric("SAE features", f"{settings.d_sae:,}")
    report = settings.sae_report or {}
    c4.metric("SAE held-out FVE", f"{report['fve']:.3f}" if report.get("fve") is not None else "n/a")
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
if workspace is None:
    first_launch()
    st.stop()
workspace_summary(workspace)
corpora_summary(workspace)
st.subheader("What next")
st.markdown(NEXT_STEPS)
