"""Shared UI pieces: workspace/corpus pickers, escaping, token highlighting, export buttons, job progress,
feature links and the one place that shows a problem the user can fix.

Layout and widgets only; every computation is a backend call. Every user-supplied string (corpus, column
and file names, labels, metadata values, error messages that quote them) goes through `md_escape` before
it reaches markdown, and through `html.escape` (in `highlight_html`) before it reaches HTML."""
from __future__ import annotations

import html
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from backend import reader_llm
from backend.background import BackgroundJob, job_for
from backend.config import WORKSPACES_DIR
from backend.errors import UserError
from backend.export import export_frame
from backend.llm import LLMConfig, LLMError, operator_llm_config, session_llm_config
from backend.store import Corpus, WorkspaceLocked
from backend.workspace import Workspace

PAGES_DIR = Path(__file__).resolve().parent
WS_KEY, CORPUS_KEY, FEATURE_KEY = "workspace_path", "corpus", "feature_id"
IDLE_RELEASE_S = 30.0  # an idle dashboard lets the CLI open the workspace after this long
RETRY_EVERY_S = 5.0  # a page locked out by another process tries again this often
CacheKey = tuple  # (workspace path, corpus id, data version, documents embedded, status)


# -- escaping ------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|~$:@&^])")
_TYPOGRAPHIC = re.compile(r"(?<=[-<>~])(?=[-<>=])")  # --, ->, <-, >=, <=, ~= become dashes and arrows
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=\bwww)(?=\.)|(?<=@)")  # bare URLs and e-mail addresses
_LINE_START = re.compile(r"^([-+=])|^(\d+)([.)])")
JOINER = "\u2060"  # an invisible word joiner: breaks a pattern without changing what is shown


def md_escape(text: Any, max_len: int | None = 120) -> str:
    """Any user-supplied string made inert for st.markdown, captions, messages and widget labels.

    One line; markdown characters backslash-escaped (no link, image, code, LaTeX, colour or emoji
    syntax survives); bare URLs and e-mail addresses, which Streamlit links even when escaped, and the
    typographic pairs it turns into dashes and arrows (`--`, `->`) are broken with an invisible joiner."""
    s = " ".join(str(text).split())
    if max_len is not None and len(s) > max_len:
        s = s[: max_len - 1] + "…"
    s = _AUTOLINK.sub(JOINER, _TYPOGRAPHIC.sub(JOINER, s))
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _LINE_START.sub(lambda m: f"\\{m.group(1)}" if m.group(1) else f"{m.group(2)}\\{m.group(3)}", s)


def file_stem(text: Any) -> str:
    """A download file name made from user text: letters, digits, dot, dash and underscore only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "export"


# -- problems the user can fix ---------------------------------------------------------
@contextmanager
def user_errors(key: str = "retry") -> Iterator[None]:
    """Show a `UserError` (a locked workspace, a refused request) as a message with a Retry button, never
    as a traceback. The page shell wraps every page in it; fragments that refresh on their own wrap their
    body (with their own `key`)."""
    try:
        yield
    except UserError as exc:
        show_user_error(exc, key)


def show_user_error(exc: UserError, key: str = "retry") -> None:
    st.error(md_escape(exc, max_len=None), icon=":material/error:")
    st.button("Retry", icon=":material/refresh:", key=key)  # any click reruns the page, which tries again
    if isinstance(exc, WorkspaceLocked):
        st.caption(f"This page tries again every {RETRY_EVERY_S:.0f} seconds.")
        _retry_later(time.monotonic())


@st.fragment(run_every=RETRY_EVERY_S)
def _retry_later(since: float) -> None:
    """Rerun the page once the retry interval has passed (the first, inline run only starts the timer)."""
    if time.monotonic() - since >= RETRY_EVERY_S - 0.5:
        st.rerun(scope="app")


# -- workspace and corpus --------------------------------------------------------
def workspace_dir() -> Path:
    return Path(os.environ.get("SAEDASH_WORKSPACES", WORKSPACES_DIR))


def workspace_paths() -> list[Path]:
    d = workspace_dir()
    return sorted(d.glob("*.duckdb")) if d.is_dir() else []


@st.cache_resource(show_spinner="Opening the workspace…")
def open_workspace(path: str) -> Workspace:
    """One Workspace per file for the whole server; its connection is released while idle, so the CLI can
    use the file between page views. A file held by another process raises WorkspaceLocked (not cached)."""
    return Workspace.open(path, idle_release_s=IDLE_RELEASE_S)


def current_workspace() -> Workspace | None:
    path = st.session_state.get(WS_KEY)
    if not path or not Path(path).exists():
        return None
    return open_workspace(path)


def corpus_handle(ws: Workspace, corpus: Corpus | str | int) -> Corpus:
    """A Corpus as given, or the handle of a corpus named by name or id."""
    return corpus if isinstance(corpus, Corpus) else ws.corpus(corpus)


def current_corpus() -> Corpus | None:
    ws = current_workspace()
    name = st.session_state.get(CORPUS_KEY)
    if ws is None or not name or not ws.has_corpus(name):
        return None
    return ws.corpus(name)


def ready_corpora(ws: Workspace) -> list[str]:
    """Names of the corpora with embedded documents."""
    return [c.name for c in ws.corpus_list() if c.n_embedded > 0]


def cache_key(ws: Workspace, corpus: Corpus | str) -> CacheKey:
    """What page caches key on: the workspace file and the corpus's cache key (changes with its data)."""
    return (str(ws.path), *corpus_handle(ws, corpus).cache_key)


def sidebar() -> None:
    """Workspace and corpus pickers (the choice is kept in the session and the URL)."""
    paths = workspace_paths()
    with st.sidebar:
        if not paths:
            st.info("No workspace yet. Build the default one from the Home page.")
            return
        names = [p.stem for p in paths]
        wanted = st.query_params.get("ws") or Path(st.session_state.get(WS_KEY, paths[0])).stem
        choice = st.selectbox("Workspace", names, index=names.index(wanted) if wanted in names else 0, key="_ws_pick")
        st.session_state[WS_KEY] = str(paths[names.index(choice)])
        ws = current_workspace()
        if ws is None:
            return
        corpora = [c.name for c in ws.corpus_list()]
        if not corpora:
            st.caption("This workspace has no corpus yet: add one on the Corpora page.")
            return
        wanted_corpus = st.query_params.get("corpus") or st.session_state.get(CORPUS_KEY)
        index = corpora.index(wanted_corpus) if wanted_corpus in corpora else 0
        st.session_state[CORPUS_KEY] = st.selectbox("Corpus", corpora, index=index, key="_corpus_pick")
        settings = ws.settings
        st.caption(f"Model {md_escape(settings.model)} · {md_escape(settings.hook)} · {settings.d_sae:,} features")


def require_corpus() -> tuple[Workspace, Corpus]:
    """The open workspace and the selected embedded corpus; stops the page with a hint when there is none."""
    ws = current_workspace()
    if ws is None:
        st.info("No workspace is open. Go to **Home** to build the default workspace.")
        st.stop()
    corpus = current_corpus()
    if corpus is None or corpus.n_embedded == 0:
        st.info("Pick an embedded corpus in the sidebar, or add one on the **Corpora** page.")
        st.stop()
    return ws, corpus


def unfinished_notice(ws: Workspace, corpus: Corpus) -> None:
    """Say so when the corpus is still embedding or its statistics and labels are missing."""
    if corpus.status == "ready" and not ws.needs_finalize(corpus):
        return
    if corpus.n_embedded < corpus.n_docs:
        what = f"is embedded for {corpus.n_embedded:,} of its {corpus.n_docs:,} documents"
    else:
        what = "is embedded, but its feature statistics and labels are not finished"
    st.warning(f"Corpus **{md_escape(corpus.name)}** {what}; what this page shows is incomplete.",
               icon=":material/hourglass_top:")
    page_link("corpora", "Finish it on the Corpora page", ":material/library_books:")


def page_link(page: str, label: str, icon: str) -> None:
    """A link to another page of the app (a page run on its own, as in AppTest, has no navigation: a caption)."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(f"pages/{page}.py", label=label, icon=icon)
    except StreamlitAPIException:
        st.caption(f"{label}: the {page.capitalize()} page.")


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
    if (PAGES_DIR / f"{page}.py").exists():
        st.switch_page(f"pages/{page}.py")


FEATURE_TARGETS = (("features", "Feature page", ":material/extension:"), ("clustering", "Cluster on it", ":material/scatter_plot:"),
                   ("diff", "Diff", ":material/compare_arrows:"), ("steering", "Steer with it", ":material/tune:"))


def feature_links(feature_id: int, key: str, exclude: str | None = None) -> None:
    """Buttons that open this feature in the other pages that exist (not `exclude`, the current page)."""
    targets = [t for t in FEATURE_TARGETS if t[0] != exclude and (PAGES_DIR / f"{t[0]}.py").exists()]
    for col, (page, label, icon) in zip(st.columns(max(1, len(targets))), targets):
        if col.button(label, key=f"{key}-{page}-{feature_id}", icon=icon):
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
        text = html.escape(tok).replace("\n", "↵<br>")
        out.append(f'<span class="tok" style="{style}" title="{a:.3f}">{text}</span>')
    body = "".join(out)
    return f'<div class="saedash-doc" style="line-height:1.9;white-space:pre-wrap;font-family:monospace">{body}</div>'


def show_html(markup: str) -> None:
    """Render markup built only from escaped pieces (never raw document text)."""
    st.html(markup)


# -- export --------------------------------------------------------------------
def export_buttons(df: pd.DataFrame, key: str, stem: str = "documents") -> None:
    """Download buttons for CSV (formula-safe), JSONL and Parquet."""
    if df is None or len(df) == 0:
        st.caption("Nothing to export.")
        return
    mimes = {"csv": "text/csv", "jsonl": "application/jsonl", "parquet": "application/octet-stream"}
    for col, fmt in zip(st.columns(3), ("csv", "jsonl", "parquet")):
        col.download_button(
            f"{fmt.upper()} ({len(df):,} rows)", data=export_frame(df, fmt), file_name=f"{file_stem(stem)}.{fmt}",
            mime=mimes[fmt], key=f"{key}-{fmt}", icon=":material/download:",
        )


# -- jobs ----------------------------------------------------------------------
def job_status(job: BackgroundJob | None, name: str | None = None) -> None:
    """A progress bar: documents done, tokens/s and time left while embedding; the step while finishing.

    `name` is the corpus's current name (the job keeps the one it started with)."""
    if job is None:
        return
    p = job.progress
    title = md_escape(name if name is not None else p.corpus)
    if p.note is not None and p.status == "running":  # setting up the model before the first batch
        st.progress(0.0, text=f"{title}: {md_escape(p.note, max_len=None)}")
    elif p.step is not None and p.status == "running":
        st.progress(min(1.0, max(0.0, p.step_fraction)), text=f"{title}: finishing · {md_escape(p.step)}")
    else:
        frac = p.docs_done / p.docs_total if p.docs_total else 0.0
        eta = f", about {p.eta_s:,.0f} s left" if p.eta_s is not None and p.status == "running" else ""
        st.progress(min(1.0, frac), text=f"{title}: {p.docs_done:,}/{p.docs_total:,} documents · "
                                         f"{p.tokens_per_s:,.0f} tokens/s{eta} · {p.status}")
    if job.error:
        st.error(f"The job failed: {md_escape(job.error, max_len=None)}")


def running_job(ws: Workspace, corpus: Corpus | str) -> BackgroundJob | None:
    """The job this server ran or runs for the corpus (by id, so a renamed corpus keeps its job)."""
    return job_for(ws, corpus_handle(ws, corpus))


# -- the LLM that writes labels and hypotheses -------------------------------------------------
LLM_SESSION_KEY = "llm_session"  # this session's LLM settings: {base_url, model, api_key}; never in os.environ


def session_llm() -> LLMConfig | None:
    """The endpoint this session uses: the operator's, with this session's settings (a key bound to its URL)."""
    entered = st.session_state.get(LLM_SESSION_KEY)
    try:
        return session_llm_config(operator_llm_config(), **entered) if entered else operator_llm_config()
    except LLMError as exc:
        st.warning(md_escape(exc, max_len=None))
        return None


def labelling_llm(ws: Workspace) -> tuple[Any, str]:
    """(the LLM to use, who it is) or (None, why there is none): a configured server first, else the reader
    model when it is an instruct model large enough to write sensible text (backend.reader_llm)."""
    cfg = session_llm()
    if cfg is not None:
        return cfg, f"the LLM server at {cfg.base_url} (model {cfg.model})"
    status = reader_llm.reader_llm_status(ws.reader)
    if status.usable:
        return reader_llm.reader_chat(ws.reader), status.reason
    return None, ("No LLM server is configured (set one on the Features page, or SAEDASH_LLM_BASE_URL and "
                  f"SAEDASH_LLM_MODEL on the server), and the reader model cannot serve: {status.reason}")
