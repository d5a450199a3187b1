"""Shared UI pieces: workspace/corpus pickers, safe token highlighting, export buttons, feature links.

Layout and widgets only; every computation is a backend call."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from backend.config import WORKSPACES_DIR
from backend.jobs import REGISTRY, BackgroundJob
from backend.workspace import Workspace

PAGES_DIR = Path(__file__).resolve().parent
WS_KEY, CORPUS_KEY, FEATURE_KEY = "workspace_path", "corpus", "feature_id"


# -- workspace and corpus --------------------------------------------------------
def workspace_dir() -> Path:
    return Path(os.environ.get("SAEDASH_WORKSPACES", WORKSPACES_DIR))


def workspace_paths() -> list[Path]:
    d = workspace_dir()
    return sorted(d.glob("*.duckdb")) if d.is_dir() else []


@st.cache_resource(show_spinner="Opening the workspace…")
def open_workspace(path: str) -> Workspace:
    """One Workspace (DuckDB connection, lazily loaded model and SAE) per file for the whole server."""
    return Workspace.open(path)


def current_workspace() -> Workspace | None:
    path = st.session_state.get(WS_KEY)
    if not path or not Path(path).exists():
        return None
    return open_workspace(path)


def current_corpus() -> str | None:
    ws = current_workspace()
    name = st.session_state.get(CORPUS_KEY)
    if ws is None or not name or not ws.store.corpus_exists(name):
        return None
    return name


def ready_corpora(ws: Workspace) -> list[str]:
    return [c.name for c in ws.store.corpora() if c.n_embedded > 0]


def sidebar() -> None:
    """Workspace and corpus pickers (the choice is kept in the session and the URL)."""
    paths = workspace_paths()
    with st.sidebar:
        if not paths:
            st.info("No workspace yet. Build the default one from the Home page.")
            return
        names = [p.stem for p in paths]
        wanted = st.query_params.get("ws") or Path(st.session_state.get(WS_KEY, paths[0])).stem
        idx = names.index(wanted) if wanted in names else 0
        choice = st.selectbox("Workspace", names, index=idx, key="_ws_pick")
        st.session_state[WS_KEY] = str(paths[names.index(choice)])
        ws = current_workspace()
        if ws is None:
            return
        corpora = [c.name for c in ws.store.corpora()]
        if not corpora:
            st.caption("This workspace has no corpus yet: add one on the Corpora page.")
            return
        wanted_c = st.query_params.get("corpus") or st.session_state.get(CORPUS_KEY)
        cidx = corpora.index(wanted_c) if wanted_c in corpora else 0
        st.session_state[CORPUS_KEY] = st.selectbox("Corpus", corpora, index=cidx, key="_corpus_pick")
        st.caption(f"Model `{ws.meta.get('model')}` · `{ws.hook}` · {ws.d_sae:,} features")


def require_corpus() -> tuple[Workspace, str]:
    """Stop the page with a hint when no embedded corpus is selected."""
    ws = current_workspace()
    if ws is None:
        st.info("No workspace is open. Go to **Home** to build the default workspace.")
        st.stop()
    name = current_corpus()
    if name is None or ws.store.corpus(name).n_embedded == 0:
        st.info("Pick an embedded corpus in the sidebar, or add one on the **Corpora** page.")
        st.stop()
    return ws, name


def data_version(ws: Workspace, corpus: str) -> tuple:
    """A cache key that changes when the corpus's embeddings change."""
    c = ws.store.corpus(corpus)
    return (str(ws.store.path), c.corpus_id, c.n_embedded, c.status)


# -- features ------------------------------------------------------------------
def selected_feature(default: int | None = None) -> int | None:
    q = st.query_params.get("feature")
    if q is not None and str(q).isdigit():
        st.session_state[FEATURE_KEY] = int(q)
    return st.session_state.get(FEATURE_KEY, default)


def open_feature(feature_id: int, page: str = "features") -> None:
    """Select a feature and go to a page that shows it."""
    st.session_state[FEATURE_KEY] = int(feature_id)
    st.query_params["feature"] = str(int(feature_id))
    target = PAGES_DIR / f"{page}.py"
    if target.exists():
        st.switch_page(f"pages/{page}.py")


def feature_links(feature_id: int, key: str, exclude: str | None = None) -> None:
    """Buttons that open this feature in the other pages that exist (not `exclude`, the current page)."""
    targets = [("features", "Feature page"), ("clustering", "Cluster on it"), ("diff", "Diff"), ("steering", "Steer with it")]
    targets = [t for t in targets if t[0] != exclude]
    cols = st.columns(len(targets))
    for col, (page, label) in zip(cols, targets):
        if (PAGES_DIR / f"{page}.py").exists():
            if col.button(label, key=f"{key}-{page}-{feature_id}"):
                open_feature(feature_id, page)


# -- safe HTML -----------------------------------------------------------------
def highlight_html(
    tokens: Sequence[str], acts: Sequence[float] | np.ndarray, max_act: float | None = None,
    count_mask: Sequence[bool] | None = None, mark_pos: int | None = None,
) -> str:
    """Tokens as escaped spans shaded by activation; the mark_pos token is outlined.

    Document text is untrusted: every token goes through html.escape, so markup shows as text."""
    acts = np.asarray(acts, dtype=float)
    scale = max_act if max_act and max_act > 0 else (acts.max() if len(acts) and acts.max() > 0 else 1.0)
    out = []
    for i, (tok, a) in enumerate(zip(tokens, acts)):
        if count_mask is not None and not count_mask[i]:
            continue
        alpha = float(min(1.0, max(0.0, a / scale)))
        style = f"background: rgba(255,140,0,{alpha:.2f});"
        if mark_pos is not None and i == mark_pos:
            style += "outline: 2px solid #c0392b; border-radius: 3px;"
        title = f"{a:.3f}"
        text = html.escape(tok).replace("\n", "↵<br>")
        out.append(f'<span class="tok" style="{style}" title="{title}">{text}</span>')
    body = "".join(out)
    return f'<div class="saedash-doc" style="line-height:1.9;white-space:pre-wrap;font-family:monospace">{body}</div>'


def show_html(markup: str) -> None:
    """Render markup built only from escaped pieces (never raw document text)."""
    st.html(markup)


# -- export --------------------------------------------------------------------
def export_buttons(df: pd.DataFrame, key: str, stem: str = "documents") -> None:
    """Download buttons for CSV (formula-safe), JSONL and Parquet."""
    from backend.export import export_frame

    if df is None or len(df) == 0:
        st.caption("Nothing to export.")
        return
    cols = st.columns(3)
    mimes = {"csv": "text/csv", "jsonl": "application/jsonl", "parquet": "application/octet-stream"}
    for col, fmt in zip(cols, ("csv", "jsonl", "parquet")):
        col.download_button(
            f"{fmt.upper()} ({len(df):,} rows)", data=export_frame(df, fmt), file_name=f"{stem}.{fmt}",
            mime=mimes[fmt], key=f"{key}-{fmt}",
        )


# -- jobs ----------------------------------------------------------------------
def job_status(job: BackgroundJob | None) -> None:
    """A progress bar with documents done, tokens/s and time left."""
    if job is None:
        return
    p = job.progress
    frac = p.docs_done / p.docs_total if p.docs_total else 0.0
    eta = f", about {p.eta_s:,.0f} s left" if p.eta_s is not None and p.status == "running" else ""
    st.progress(min(1.0, frac), text=f"{p.corpus}: {p.docs_done:,}/{p.docs_total:,} documents · {p.tokens_per_s:,.0f} tokens/s{eta} · {p.status}")
    if job.error:
        st.error(f"Embedding failed: {job.error}")


def running_job(ws: Workspace, corpus: str) -> BackgroundJob | None:
    return REGISTRY.get(str(ws.store.path), ws.store.corpus_id(corpus))
