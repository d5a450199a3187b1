"""Corpora: upload a file, preview it, pick the text column, embed with live progress; finish, rename, delete;
create a new workspace (reader model, SAE, formatting) and switch to it.

Layout and widgets only: reading and validating files is backend.corpora, jobs and their resume policy are
backend.background (jobs follow a corpus by id, so renaming it while it embeds is harmless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from backend.background import next_action, resume_interrupted, start_embedding, start_finishing
from backend.config import DEFAULT_MODEL, shipped_saes, workspace_file
from backend.corpora import FORMATS, CorpusError, ReadOptions, empty_rows, guess_text_column
from backend.errors import UserError
from backend.models import BUILTIN_MODELS
from backend.saes import resolve_sae_source, sae_name, workspace_sae_name
from backend.store import Corpus
from backend.streaming import read_corpus
from backend.workspace import FORMATTINGS, Workspace, WorkspaceSpec
from pages import widgets
from pages.widgets import md_escape

STATUS_HELP = {"pending": "not embedded yet", "embedding": "embedding documents",
               "finalizing": "computing feature statistics and labels", "ready": "ready", "failed": "failed"}


def read_upload(upload: Any) -> pd.DataFrame:
    """The uploaded file as a table (stops the page with the reason when it cannot be read)."""
    is_txt = upload.name.lower().endswith(".txt")
    txt_mode = st.radio("Documents in the TXT file are", ["line", "paragraph"], horizontal=True,
                        format_func=lambda m: "one per line" if m == "line" else "one per blank-line paragraph") if is_txt else "line"
    try:
        return read_corpus(upload.getvalue(), upload.name, ReadOptions(txt_mode=txt_mode))
    except CorpusError as exc:
        st.error(f"Cannot read **{md_escape(upload.name)}**: {md_escape(exc, max_len=None)} Nothing was stored.")
        st.stop()


def upload_section(ws: Workspace) -> None:
    st.subheader("Add a corpus")
    upload = st.file_uploader("CSV, TSV, JSONL, Parquet or TXT (one document per line or per paragraph)",
                              type=list(FORMATS) + ["json", "ndjson"], key="upload")
    if upload is None:
        return
    df = read_upload(upload)
    st.caption(f"{len(df):,} rows, columns: {', '.join(md_escape(c, max_len=60) for c in df.columns)}")
    st.dataframe(df.head(10), hide_index=True, width="stretch")
    cols = [str(c) for c in df.columns]
    try:
        guess = guess_text_column(df)
    except CorpusError:
        guess = cols[0]
    c1, c2 = st.columns(2)
    text_col = c1.selectbox("Text column", cols, index=cols.index(guess) if guess in cols else 0)
    name = c2.text_input("Corpus name", value=Path(upload.name).stem)
    split = st.toggle("Split long documents into windows", key="split_long",
                      help=f"The reader model sees the first {ws.settings.max_tokens:,} tokens of a document. Split "
                           "longer ones into consecutive windows, each its own document (with its source row and offset).")
    n_empty = int(empty_rows(df[text_col]).sum())
    skip = n_empty > 0 and st.toggle(f"Skip the {n_empty:,} row(s) with no text", key="skip_empty", value=True,
                                     help="Each kept document records its row in the file as metadata `source_row`. "
                                          "Off: the file is refused and nothing is stored.")
    if st.button("Add and embed", type="primary", icon=":material/upload:"):
        add_and_embed(ws, df, text_col, name, upload.name, ReadOptions(split_long=split, skip_empty=skip))


def add_and_embed(ws: Workspace, df: pd.DataFrame, text_col: str, name: str, file_name: str, options: ReadOptions) -> None:
    try:
        corpus_id = ws.add_corpus(name, df, text_column=text_col, file_name=file_name, options=options)
    except UserError as exc:
        st.error(f"{md_escape(exc, max_len=None)} Nothing was stored.")
        return
    corpus = ws.corpus(corpus_id)
    start_embedding(ws, corpus)
    st.session_state[widgets.CORPUS_KEY] = corpus.name
    st.success(f"Added **{md_escape(corpus.name)}** ({corpus.n_docs:,} documents); embedding runs in the background. "
               f"Documents longer than {ws.settings.max_tokens:,} tokens are cut there; the list below counts them.")


def corpus_line(ws: Workspace, c: Corpus) -> str:
    truncated = f"{c.n_truncated:,} cut at {ws.settings.max_tokens:,} tokens"
    return (f"**{md_escape(c.name)}** · {c.n_docs:,} documents · {c.n_tokens:,} tokens embedded · {truncated} · "
            f"status `{c.status}`")


def corpus_card(ws: Workspace, c: Corpus) -> None:
    """One corpus: counts, status, the running job's progress, and Resume / Finish when something is missing."""
    with st.container(border=True):
        text, button = st.columns([3, 1])
        text.markdown(corpus_line(ws, c), help=STATUS_HELP.get(c.status))
        job = widgets.running_job(ws, c)
        if job is not None and (job.running or job.error):
            widgets.job_status(job, c.name)
        elif c.error:
            st.error(md_escape(c.error, max_len=300))
        action = next_action(ws, c)
        if action == "resume":
            st.progress(c.n_embedded / max(1, c.n_docs), text=f"{c.n_embedded:,}/{c.n_docs:,} embedded")
            if button.button("Resume embedding", key=f"resume-{c.corpus_id}", icon=":material/play_arrow:"):
                start_embedding(ws, c)
        elif action == "finish":
            st.caption("Embedded, but its feature statistics and labels are missing.")
            if button.button("Finish", key=f"finish-{c.corpus_id}", icon=":material/task_alt:",
                             help="Computes the statistics, top tokens, labels and logit lens (resumable)."):
                start_finishing(ws, c)


@st.fragment(run_every=1.0)
def corpus_list(ws: Workspace) -> None:
    with widgets.user_errors(key="retry_corpus_list"):
        corpora = ws.corpus_list()
        if not corpora:
            st.caption("None yet.")
            return
        for c in corpora:
            corpus_card(ws, c)


def manage_section(ws: Workspace) -> None:
    """Rename or delete a corpus (by id: a job running for it keeps following it)."""
    corpora = {c.corpus_id: c for c in ws.corpus_list()}
    if not corpora:
        return
    target = corpora[st.selectbox("Corpus", list(corpora), key="manage_pick", format_func=lambda i: corpora[i].name)]
    new = st.text_input("New name", key="rename_to")
    c1, c2 = st.columns(2)
    if c1.button("Rename", icon=":material/edit:") and new:
        try:
            ws.rename_corpus(target, new)
        except UserError as exc:
            st.error(md_escape(exc, max_len=None))
        else:
            st.session_state[widgets.CORPUS_KEY] = new.strip()
            st.rerun()
    confirm = c2.checkbox(f"Yes, delete {md_escape(target.name)} and its embeddings", key="confirm_delete")
    if c2.button("Delete", disabled=not confirm, icon=":material/delete:"):
        job = widgets.running_job(ws, target)
        if job is not None and job.running:
            st.error("A job is running for this corpus; wait for it to finish.")
        else:
            ws.delete_corpus(target)
            st.rerun()


def workspace_line(ws: Workspace) -> str:
    """The open workspace in one line: its reader model and the SAE it uses (by name), hook and size."""
    settings = ws.settings
    sae = workspace_sae_name(ws)
    fve = (settings.sae_report or {}).get("fve")
    quality = f" · held-out FVE {float(fve):.3f}" if fve is not None else ""
    return (f"Workspace **{md_escape(ws.path.stem)}** · reader model {md_escape(settings.model)} · "
            f"SAE **{md_escape(sae)}** at {md_escape(settings.hook)} · {settings.d_sae:,} features{quality}")


CUSTOM_SAE, OTHER_MODEL, SAE_FORMATTING = "__custom__", "__other__", "__sae__"
NEW_WS_FLASH = "new_workspace_created"
SIDEBAR_PICKERS = ("_ws_pick", "_corpus_pick")  # widgets.sidebar's widget keys


def model_choice(name: str) -> str:
    if name == OTHER_MODEL:
        return "Another model: a local Hugging Face folder"
    spec = BUILTIN_MODELS[name]
    size = f" (~{spec.install_mb} MB)" if spec.install_mb else ""
    first_use = f", its packages{size} installed on first use" if spec.requirements_file else ""
    default = " (default)" if name == DEFAULT_MODEL else ""
    return f"{name}{default}: {spec.official_name}{first_use}"


def new_workspace_section(current: Workspace | None) -> None:
    """A form that creates a workspace in the workspace folder (model, SAE, formatting) and opens it."""
    with st.expander("New workspace", icon=":material/add_box:", expanded=current is None):
        st.caption("A workspace holds one reader model and one SAE; every corpus added to it is read by both. "
                   "Pick the SAE for the questions you will ask.")
        name = st.text_input("Workspace name", key="new_ws_name", placeholder="topics")
        models = [DEFAULT_MODEL, *[m for m in BUILTIN_MODELS if m != DEFAULT_MODEL], OTHER_MODEL]
        model_pick = st.selectbox("Reader model", models, key="new_ws_model", format_func=model_choice)
        model_dir = st.text_input("Model folder", key="new_ws_model_dir") if model_pick == OTHER_MODEL else ""
        shipped = {entry.key: entry for entry in shipped_saes()}
        sae_pick = st.selectbox("SAE", [*shipped, CUSTOM_SAE], key="new_ws_sae", format_func=lambda k: (
            shipped[k].describe() if k in shipped else "Another SAE: a SAELens folder or release:sae_id"))
        custom = st.text_input("SAE folder or release:sae_id", key="new_ws_sae_custom",
                               placeholder="gemma-scope-2-270m-pt-res:layer_12_width_16k_l0_medium") if sae_pick == CUSTOM_SAE else ""
        formatting = st.selectbox("Document formatting", [SAE_FORMATTING, *FORMATTINGS], key="new_ws_formatting",
                                  format_func=lambda f: "as the SAE was trained" if f == SAE_FORMATTING else f)
        if st.button("Create workspace", type="primary", icon=":material/add_box:", key="new_ws_create"):
            model = model_dir.strip() if model_pick == OTHER_MODEL else model_pick
            create_workspace(name, model, custom if sae_pick == CUSTOM_SAE else sae_pick,
                             None if formatting == SAE_FORMATTING else formatting)


def create_workspace(name: str, model: str, sae_choice: str, formatting: str | None) -> None:
    """Create it through the Workspace API, then make it this session's workspace; a refusal is a message."""
    try:
        path = workspace_file(widgets.workspace_dir(), name)
        if model not in BUILTIN_MODELS and not (Path(model) / "config.json").is_file():
            raise UserError(f"{model or 'The model folder'!r} is not a Hugging Face model folder (no config.json there).")
        sae = resolve_sae_source(sae_choice)
        path.parent.mkdir(parents=True, exist_ok=True)
        with st.spinner("Creating the workspace…"):
            Workspace.create(path, WorkspaceSpec(model=model, sae=sae, formatting=formatting)).close()
    except UserError as exc:
        st.error(f"{md_escape(exc, max_len=None)} No workspace was created.", icon=":material/error:")
        return
    st.session_state[widgets.WS_KEY] = str(path)
    st.session_state.pop(widgets.CORPUS_KEY, None)
    st.session_state[NEW_WS_FLASH] = f"Created workspace **{md_escape(path.stem)}** with SAE **{md_escape(sae_name(sae))}**; add a corpus to it below."
    st.query_params["ws"] = path.stem
    st.query_params.pop("corpus", None)
    for picker in SIDEBAR_PICKERS:  # the sidebar's pickers keep their last choice; forget it, so they follow
        st.session_state.pop(picker, None)
    st.rerun()


st.title("Corpora")
if NEW_WS_FLASH in st.session_state:
    st.success(st.session_state.pop(NEW_WS_FLASH), icon=":material/check_circle:")
workspace = widgets.current_workspace()
if workspace is None:
    st.info("No workspace is open. Go to **Home** to build the default workspace, or create one below.")
    new_workspace_section(None)
    st.stop()
st.caption(workspace_line(workspace))
resume_interrupted(workspace)  # work a previous server process left unfinished (jobs survive closed tabs, not restarts)
upload_section(workspace)
st.subheader("Corpora in this workspace")
corpus_list(workspace)
with st.expander("Rename or delete a corpus"):
    manage_section(workspace)
new_workspace_section(workspace)
