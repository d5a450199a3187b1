"""Corpora: upload a file, preview it, pick the text column, embed with live progress; rename and delete."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from backend.corpora import FORMATS, CorpusError, ReadOptions, guess_text_column, read_corpus, validate_text_column
from backend.jobs import REGISTRY
from backend.store import StoreError
from backend.workspace import Workspace
from pages import widgets

st.title("Corpora")
ws = widgets.current_workspace()
if ws is None:
    st.info("No workspace is open. Go to **Home** to build the default workspace.")
    st.stop()


def start_embedding(ws: Workspace, name: str):
    info = ws.store.corpus(name)
    return REGISTRY.start(
        str(ws.store.path), info.corpus_id, name, info.n_docs,
        lambda cb, cancel: ws.embed(name, progress=cb, cancel=cancel),
    )


# Resume work a previous server process left unfinished (the job survives closed tabs, not restarts).
for c in ws.store.corpora():
    if c.status == "embedding" and widgets.running_job(ws, c.name) is None:
        start_embedding(ws, c.name)

# -- upload --------------------------------------------------------------------
st.subheader("Add a corpus")
upload = st.file_uploader(
    "CSV, TSV, JSONL, Parquet or TXT (one document per line or per paragraph)",
    type=list(FORMATS) + ["json", "ndjson"], key="upload",
)
if upload is not None:
    is_txt = upload.name.lower().endswith(".txt")
    txt_mode = st.radio("Documents in the TXT file are", ["line", "paragraph"], horizontal=True,
                        format_func=lambda m: "one per line" if m == "line" else "one per blank-line paragraph") if is_txt else "line"
    try:
        df = read_corpus(upload.getvalue(), upload.name, ReadOptions(txt_mode=txt_mode))
    except CorpusError as exc:
        st.error(f"Cannot read **{upload.name}**: {exc} Nothing was stored.")
        st.stop()
    st.caption(f"{len(df):,} rows, columns: {', '.join(map(str, df.columns))}")
    st.dataframe(df.head(10), hide_index=True, width="stretch")
    cols = [str(c) for c in df.columns]
    try:
        guess = guess_text_column(df)
    except CorpusError:
        guess = cols[0]
    c1, c2 = st.columns(2)
    text_col = c1.selectbox("Text column", cols, index=cols.index(guess) if guess in cols else 0)
    name = c2.text_input("Corpus name", value=Path(upload.name).stem)
    if st.button("Add and embed", type="primary"):
        try:
            validate_text_column(df, text_col)
            ws.add_corpus(name, df, text_column=text_col, file_name=upload.name)
        except (CorpusError, StoreError) as exc:
            st.error(f"{exc} Nothing was stored.")
        else:
            start_embedding(ws, name.strip())
            st.session_state[widgets.CORPUS_KEY] = name.strip()
            st.success(f"Added **{name.strip()}** ({len(df):,} documents); embedding runs in the background.")

# -- progress and management ---------------------------------------------------
st.subheader("Corpora in this workspace")


@st.fragment(run_every=1.0)
def corpus_list() -> None:
    corpora = ws.store.corpora()
    if not corpora:
        st.caption("None yet.")
        return
    for c in corpora:
        with st.container(border=True):
            a, b = st.columns([3, 1])
            a.markdown(f"**{c.name}** · {c.n_docs:,} documents · {c.n_tokens:,} tokens embedded · status `{c.status}`")
            job = widgets.running_job(ws, c.name)
            if job is not None and (job.running or job.error):
                widgets.job_status(job)
            elif c.n_embedded < c.n_docs:
                st.progress(c.n_embedded / max(1, c.n_docs), text=f"{c.n_embedded:,}/{c.n_docs:,} embedded")
                if b.button("Resume embedding", key=f"resume-{c.corpus_id}"):
                    start_embedding(ws, c.name)


corpus_list()

with st.expander("Rename or delete a corpus"):
    names = [c.name for c in ws.store.corpora()]
    if names:
        target = st.selectbox("Corpus", names, key="manage_pick")
        new = st.text_input("New name", key="rename_to")
        c1, c2 = st.columns(2)
        if c1.button("Rename") and new:
            try:
                ws.rename_corpus(target, new)
                st.session_state[widgets.CORPUS_KEY] = new.strip()
                st.success(f"Renamed to **{new.strip()}**.")
                st.rerun()
            except StoreError as exc:
                st.error(str(exc))
        confirm = c2.checkbox(f"Yes, delete {target!r} and its embeddings", key="confirm_delete")
        if c2.button("Delete", disabled=not confirm):
            job = widgets.running_job(ws, target)
            if job is not None and job.running:
                st.error("An embedding job is running for this corpus; wait for it to finish.")
            else:
                ws.delete_corpus(target)
                st.success(f"Deleted **{target}**.")
                st.rerun()
