"""Home: what this workspace holds and what to do next; builds the default workspace on first launch."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.demo import DEMO_CORPUS, DEMO_DOCS, default_workspace_path, ensure_default_workspace
from backend.jobs import REGISTRY
from pages import widgets

st.title("SAE embeddings of text corpora")
st.caption(
    "Each document is read by a language model; a sparse autoencoder turns its residual stream into "
    "interpretable features, max-pooled over tokens. Browse the features, diff datasets, cluster along "
    "concepts, find correlations, retrieve by property, steer the model."
)

ws = widgets.current_workspace()
if ws is None:
    st.subheader("First launch")
    st.write(
        "The default workspace uses SmolLM2-135M-Instruct with the project's SAE and a demo corpus of "
        "movie-review snippets labelled fresh, rotten or plot summary."
    )
    path = str(default_workspace_path())
    job = REGISTRY.get(path, 0)
    if job is None and st.button("Build the default workspace", type="primary"):
        job = REGISTRY.start(path, 0, DEMO_CORPUS, DEMO_DOCS, lambda cb, cancel: ensure_default_workspace(cb))

    @st.fragment(run_every=1.0)
    def _progress() -> None:
        j = REGISTRY.get(path, 0)
        widgets.job_status(j)
        if j is not None and not j.running and not j.error:
            st.success("The default workspace is ready.")
            st.rerun()

    if job is not None:
        _progress()
    st.stop()

s = ws.summary()
st.subheader("Workspace")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Reader model", s["model"])
c2.metric("Hook", s["hook"])
c3.metric("SAE features", f"{s['d_sae']:,}")
rep = s.get("sae_report") or {}
c4.metric("SAE held-out FVE", f"{rep['fve']:.3f}" if rep.get("fve") is not None else "n/a")
if rep:
    st.caption(
        f"SAE ({s['architecture']}): L0 {rep.get('l0', float('nan')):.1f} active features per token, "
        f"dead features {100 * rep.get('dead_frac', 0):.2f}%, trained on {rep.get('n_train_tokens', 0):,} tokens. "
        f"Documents are read as `{s['formatting']}` text."
    )

st.subheader("Corpora")
if not s["corpora"]:
    st.info("No corpus yet: add one on the **Corpora** page.")
else:
    df = pd.DataFrame(s["corpora"])[["name", "n_docs", "n_embedded", "n_tokens", "status", "meta_columns", "source"]]
    df = df.rename(columns={"n_docs": "documents", "n_embedded": "embedded", "n_tokens": "tokens", "meta_columns": "metadata"})
    st.dataframe(df, hide_index=True, width="stretch")

st.subheader("What next")
st.markdown(
    "- **Features**: browse and search the SAE's features; open one to see where it fires.\n"
    "- **Corpora**: upload your own CSV, TSV, JSONL, Parquet or TXT file and embed it.\n"
    "- **Dataset diff**: compare two corpora, or two groups of one corpus, feature by feature.\n"
    "- **Clustering**, **Correlations**, **Retrieval**: the paper's analyses along the concepts you choose.\n"
    "- **Steering**: push the model along a feature and measure whether it worked."
)
