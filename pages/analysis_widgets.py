"""Widgets shared by the analysis pages (diff, clustering, correlations, retrieval).

- cached loaders (latents, labels, metadata, documents, token activations, dense vectors), keyed by the
  corpus's cache key (widgets.cache_key) and the workspace's label revision;
- a concept/feature picker: search by meaning, by example text, from a list, or by label phrase;
- documents rendered with token highlights for chosen features (escaped, via widgets.highlight_html);
- a document-set export block (metadata + feature activation columns, widgets.export_buttons);
- LLM labels on demand for the features a page shows (label_on_demand).

Loaders take a `Corpus` handle (or a corpus name, resolved once). Layout and widgets only; every
computation is a backend call."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import streamlit as st

from backend import background, doc_embeddings
from backend.errors import UserError
from backend.export import feature_columns
from backend.feature_queries import feature_contexts
from backend.label_text import evidence_text, split_label
from backend.labels import Labeller, stored_llm_labels
from backend.search import SearchModelMissing, search_features
from backend.store import Corpus
from backend.workspace import Workspace
from pages import widgets
from pages.widgets import CacheKey, corpus_handle, md_escape  # noqa: F401  (md_escape: re-exported for the pages)

PICK_MODES = {
    "list": "From a list",
    "meaning": "Search by meaning",
    "example": "Features of an example text",
    "phrase": "Every feature whose label matches",
}
MAX_LIST_OPTIONS = 5000  # features offered in the list picker (densest first)
CorpusRef = Corpus | str


# -- small helpers ---------------------------------------------------------------
def feature_name(fid: int, labels: dict[int, str]) -> str:
    lab = labels.get(int(fid))
    return f"#{int(fid)} · {lab}" if lab else f"#{int(fid)} · (no label)"


def with_labels(df: pd.DataFrame, labels: dict[int, str], column: str = "feature_id", name: str = "label") -> pd.DataFrame:
    """Insert a label column right after a feature id column."""
    out = df.copy()
    if name in out.columns:
        out = out.drop(columns=name)
    pos = list(out.columns).index(column) + 1
    out.insert(pos, name, out[column].map(lambda f: labels.get(int(f), "")))
    return out


def snippet(text: str, n: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def open_feature_button(fid: int, key: str) -> None:
    """A button that opens the feature on the Features page."""
    if st.button(f"Open #{int(fid)} on the Features page", key=f"{key}-open-{int(fid)}", icon=":material/open_in_new:"):
        widgets.open_feature(int(fid), "features")


# -- cached loaders (the workspace and handle are not hashed; the cache key is) ---------------------
@st.cache_data(show_spinner=False, max_entries=16)
def _latents(_ws: Workspace, _corpus: Corpus, key: CacheKey, pooling: str, threshold: float) -> sp.csr_matrix:
    return _ws.latents(_corpus, pooling=pooling, threshold=threshold)


def latents(ws: Workspace, corpus: CorpusRef, pooling: str = "max", threshold: float = 0.0) -> sp.csr_matrix:
    handle = corpus_handle(ws, corpus)
    return _latents(ws, handle, widgets.cache_key(ws, handle), pooling, float(threshold))


@st.cache_data(show_spinner=False, max_entries=16)
def _labels(_ws: Workspace, _corpus: Corpus, key: CacheKey, label_revision: tuple) -> dict[int, str]:
    return _ws.labels(_corpus)


def corpus_labels(ws: Workspace, corpus: CorpusRef) -> dict[int, str]:
    """{feature_id: best label}, preferring the corpus's own; refreshed whenever any label is written."""
    handle = corpus_handle(ws, corpus)
    return _labels(ws, handle, widgets.cache_key(ws, handle), ws.label_revision())


@st.cache_data(show_spinner=False, max_entries=32)
def _metadata(_ws: Workspace, _corpus: Corpus, key: CacheKey, column: str) -> pd.Series:
    return _ws.metadata(_corpus, column)


def metadata(ws: Workspace, corpus: CorpusRef, column: str) -> pd.Series:
    handle = corpus_handle(ws, corpus)
    return _metadata(ws, handle, widgets.cache_key(ws, handle), column)


@st.cache_data(show_spinner=False, max_entries=32)
def _documents(_ws: Workspace, _corpus: Corpus, key: CacheKey, doc_ids: tuple[int, ...]) -> pd.DataFrame:
    return _ws.documents(_corpus, list(doc_ids))


def documents(ws: Workspace, corpus: CorpusRef, doc_ids: Sequence[int]) -> pd.DataFrame:
    handle = corpus_handle(ws, corpus)
    return _documents(ws, handle, widgets.cache_key(ws, handle), tuple(int(d) for d in doc_ids))


@st.cache_data(show_spinner=False, max_entries=256)
def _token_acts(_ws: Workspace, _corpus: Corpus, key: CacheKey, doc_id: int, features: tuple[int, ...]):
    ta = _ws.token_activations(_corpus, int(doc_id), list(features))
    return list(ta.tokens), np.asarray(ta.acts, dtype=np.float32), list(ta.count_mask)


def token_acts(ws: Workspace, corpus: CorpusRef, doc_id: int, features: Sequence[int]):
    """(tokens, activations [n_tokens, n_features], count mask) of one stored document (runs the model)."""
    handle = corpus_handle(ws, corpus)
    return _token_acts(ws, handle, widgets.cache_key(ws, handle), int(doc_id), tuple(int(f) for f in features))


@st.cache_data(show_spinner=False, max_entries=64)
def _text_features(_ws: Workspace, ws_path: str, text: str) -> dict[int, float]:
    return _ws.embed_text(text)


def text_features(ws: Workspace, text: str) -> dict[int, float]:
    """Max-pooled SAE features of a text (reader LM + SAE)."""
    return _text_features(ws, str(ws.path), text)


def dense_vectors(ws: Workspace, corpus: CorpusRef, allow_compute: bool) -> np.ndarray | None:
    """MiniLM document vectors (stored in the workspace); computed with a progress bar when allowed."""
    handle = corpus_handle(ws, corpus)
    if not doc_embeddings.is_complete(ws, handle):
        if not allow_compute:
            return None
        bar = st.progress(0.0, text="Embedding documents with MiniLM…")

        def report(done: int, total: int) -> None:
            bar.progress(done / max(1, total), text=f"MiniLM embeddings: {done:,}/{total:,} documents")

        # the dashboard's background job may be building them already (the demo corpus): follow it, then finish
        background.wait_for_doc_vectors(ws, handle, lambda p: report(p.docs_done, p.docs_total))
        doc_embeddings.build_doc_embeddings(ws, handle, progress=report)
        bar.empty()
    return _dense(ws, handle, widgets.cache_key(ws, handle), doc_embeddings.n_stored(ws, handle))


@st.cache_data(show_spinner=False, max_entries=8)
def _dense(_ws: Workspace, _corpus: Corpus, key: CacheKey, n_stored: int) -> np.ndarray:
    return doc_embeddings.doc_vectors(_ws, _corpus, compute=False)


# -- the concept/feature picker ------------------------------------------------------
def _add(state_key: str, fids: Iterable[int], replace: bool = False) -> None:
    cur = [] if replace else list(st.session_state.get(state_key, []))
    for f in fids:
        if int(f) not in cur:
            cur.append(int(f))
    st.session_state[state_key] = cur


def feature_picker(ws: Workspace, corpus: CorpusRef, key: str, title: str = "Concepts (SAE features)",
                   preselect: Sequence[int] = ()) -> list[int]:
    """Choose features four ways; returns the chosen feature ids (kept in st.session_state[f"{key}_chosen"])."""
    handle = corpus_handle(ws, corpus)
    state_key = f"{key}_chosen"
    lab = corpus_labels(ws, handle)
    if state_key not in st.session_state:
        st.session_state[state_key] = [int(f) for f in preselect if 0 <= int(f) < ws.d_sae]
    chosen = [int(f) for f in st.session_state[state_key]]
    active = ws.active_features(handle)
    n_docs = dict(zip(active["feature_id"].astype(int), active["n_docs"].astype(int)))

    st.markdown(f"**{md_escape(title)}**")
    mode = st.radio("Pick features", list(PICK_MODES), format_func=PICK_MODES.get, horizontal=True, key=f"{key}_pk_mode")
    hits = {"meaning": _meaning_hits, "example": _example_hits, "phrase": _phrase_hits}.get(mode)
    if hits is not None:
        found = hits(ws, handle, key, lab)
        if found is not None:
            _candidates(found, key, state_key, n_docs, default_n=len(found) if mode == "phrase" else 5)
    options = [int(f) for f in active["feature_id"].head(MAX_LIST_OPTIONS)]
    options = sorted(set(options) | set(chosen), key=lambda f: (-n_docs.get(f, 0), f))
    st.multiselect(
        "Chosen features" if mode != "list" else "Chosen features (type an id or a word of a label)",
        options, format_func=lambda f: f"{feature_name(f, lab)} ({n_docs.get(int(f), 0):,} docs)", key=state_key,
        help="Features are listed densest first; an id or label word filters the list.",
    )
    return [int(f) for f in st.session_state.get(state_key, [])]


def _meaning_hits(ws: Workspace, corpus: Corpus, key: str, lab: dict[int, str]) -> pd.DataFrame | None:
    query = st.text_input("Describe the concept", key=f"{key}_pk_query", placeholder="e.g. praise, violence, source code")
    if not query.strip():
        return None
    try:
        with st.spinner("Searching…"):
            return search_features(ws, corpus, query, top=20)[["feature_id", "label", "score"]]
    except SearchModelMissing as exc:
        st.warning(md_escape(exc, max_len=None))
        return pd.DataFrame(columns=["feature_id", "label", "score"])


def _example_hits(ws: Workspace, corpus: Corpus, key: str, lab: dict[int, str]) -> pd.DataFrame | None:
    text = st.text_area("Example text", key=f"{key}_pk_example", height=80,
                        placeholder="Paste a sentence; the features that fire on it are offered.")
    if not text.strip():
        return None
    with st.spinner("Reading the text…"):
        acts = text_features(ws, text)
    hits = pd.DataFrame({"feature_id": list(acts), "max_act": list(acts.values())})
    hits = hits.sort_values(["max_act", "feature_id"], ascending=[False, True]).head(30)
    return with_labels(hits, lab)


def _phrase_hits(ws: Workspace, corpus: Corpus, key: str, lab: dict[int, str]) -> pd.DataFrame | None:
    phrase = st.text_input("Label contains", key=f"{key}_pk_phrase", placeholder="e.g. movie")
    if not phrase.strip():
        return None
    needle = phrase.strip().lower()
    fids = sorted(f for f, t in lab.items() if t and needle in str(t).lower())
    return pd.DataFrame({"feature_id": fids, "label": [lab[f] for f in fids]})


def _candidates(hits: pd.DataFrame, key: str, state_key: str, n_docs: dict[int, int], default_n: int = 5) -> None:
    if hits is None or len(hits) == 0:
        st.caption("No matching feature.")
        return
    hits = hits.copy()
    hits["docs"] = hits["feature_id"].map(lambda f: n_docs.get(int(f), 0))
    st.dataframe(hits, hide_index=True, width="stretch", height=min(300, 38 + 35 * len(hits)))
    c1, c2, c3 = st.columns([1, 1, 1])
    c1.number_input("How many (from the top)", 1, max(1, len(hits)), min(max(1, default_n), len(hits)), key=f"{key}_pk_n")
    ids = [int(f) for f in hits["feature_id"]]
    # the callback reads the count at click time (button args are bound when the button is drawn)
    c2.button("Add them", key=f"{key}_pk_add", on_click=_add_top, args=(state_key, ids, f"{key}_pk_n", False),
              icon=":material/add:")
    c3.button("Use only these", key=f"{key}_pk_replace", on_click=_add_top, args=(state_key, ids, f"{key}_pk_n", True),
              icon=":material/swap_horiz:")


def _add_top(state_key: str, ids: list[int], n_key: str, replace: bool) -> None:
    _add(state_key, ids[: int(st.session_state.get(n_key, 5))], replace)


# -- documents with highlights ---------------------------------------------------------
def show_documents(
    ws: Workspace, corpus: CorpusRef, doc_ids: Sequence[int], feature_ids: Sequence[int], key: str,
    labels: dict[int, str] | None = None, scores: Sequence[float] | None = None, score_name: str = "score",
    meta_columns: Sequence[str] | None = None,
) -> None:
    """Each document with its tokens shaded by the chosen features' activation (escaped HTML).

    One feature: shading is its activation. Several: each feature is scaled to its peak in the
    document and the strongest is shown, so every chosen feature is visible."""
    doc_ids = [int(d) for d in doc_ids]
    if not doc_ids:
        st.caption("No document.")
        return
    handle = corpus_handle(ws, corpus)
    feats = tuple(int(f) for f in feature_ids)
    docs = documents(ws, handle, doc_ids).set_index("doc_id")
    columns = meta_columns if meta_columns is not None else handle.meta_columns
    columns = [c for c in columns if c in docs.columns][:4]
    for i, d in enumerate(doc_ids):
        row = docs.loc[d] if d in docs.index else None
        head = f"Document {d}"
        if scores is not None:
            head += f" · {score_name} {float(scores[i]):.3f}"
        if row is not None and not pd.isna(row["n_tokens"]):
            head += f" · {int(row['n_tokens']):,} tokens"
        with st.container(border=True):
            st.caption(head)
            if columns and row is not None:
                st.text(" · ".join(f"{c}: {snippet(row[c], 60)}" for c in columns))
            _highlighted(ws, handle, d, feats, "" if row is None else str(row["text"]))


def _highlighted(ws: Workspace, corpus: Corpus, doc_id: int, feats: tuple[int, ...], text: str) -> None:
    """One document's tokens shaded by `feats` (plain text when there are none or the model is unavailable)."""
    if not feats:
        st.text(text)
        return
    try:
        tokens, acts, mask = token_acts(ws, corpus, doc_id, feats)
    except Exception as exc:  # noqa: BLE001 - the model may be unavailable; still show the text
        st.caption(f"No highlights ({type(exc).__name__}).")
        st.text(text)
        return
    if acts.ndim == 1:
        acts = acts[:, None]
    if len(feats) == 1:
        shade, scale = acts[:, 0], None
    else:
        peak = np.maximum(acts.max(axis=0, initial=0.0), 1e-9)
        shade, scale = (acts / peak).max(axis=1) if len(acts) else np.zeros(0), 1.0
    widgets.show_html(widgets.highlight_html(tokens, shade, scale, mask))
    if len(feats) > 1 and len(acts):
        st.caption(" · ".join(f"#{f} max {float(acts[:, j].max()):.2f}" for j, f in enumerate(feats)))


# -- export ------------------------------------------------------------------------
def document_table(
    ws: Workspace, corpus: CorpusRef, X: sp.csr_matrix, doc_ids: Sequence[int], feature_ids: Sequence[int],
    labels: dict[int, str] | None = None, extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """doc_id, extra columns (score, cluster…), text, n_tokens, metadata, and activation columns of the features."""
    doc_ids = [int(d) for d in doc_ids]
    docs = documents(ws, corpus, doc_ids).set_index("doc_id").reindex(doc_ids).reset_index()
    parts = [docs[["doc_id"]]]
    if extra is not None and len(extra.columns):
        parts.append(extra.reset_index(drop=True))
    parts.append(docs.drop(columns=["doc_id"]))
    if feature_ids:
        parts.append(feature_columns(X, doc_ids, list(feature_ids), labels or {}))
    return pd.concat(parts, axis=1)


def export_block(
    ws: Workspace, corpus: CorpusRef, X: sp.csr_matrix, doc_ids: Sequence[int], key: str, stem: str,
    default_features: Sequence[int] = (), labels: dict[int, str] | None = None, extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Choose activation columns, preview and download a document set (CSV, JSONL, Parquet)."""
    labels = labels or {}
    default = [int(f) for f in default_features][:50]
    options = sorted(set(default) | set(int(f) for f in st.session_state.get(f"{key}_cols", [])))
    extra_ids = st.text_input("Add activation columns by feature id (comma-separated)", key=f"{key}_ids")
    for tok in re.split(r"[,\s]+", extra_ids.strip()):
        if tok.isdigit() and int(tok) < X.shape[1] and int(tok) not in options:
            options.append(int(tok))
    if f"{key}_cols" not in st.session_state:
        st.session_state[f"{key}_cols"] = default
    cols = st.multiselect("Feature activation columns", options, key=f"{key}_cols",
                          format_func=lambda f: feature_name(f, labels))
    df = document_table(ws, corpus, X, doc_ids, cols, labels, extra)
    st.caption(f"{len(df):,} documents · {len(df.columns)} columns")
    widgets.export_buttons(df, key=key, stem=stem)
    return df


# -- labels with evidence ------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=512)
def _context_evidence(_ws: Workspace, _corpus: Corpus, key: widgets.CacheKey, feature_id: int) -> str:
    return evidence_text(feature_contexts(_ws, _corpus, feature_id))


def with_evidence(ws: Workspace, corpus: Corpus, frame: pd.DataFrame, labels: dict[int, str],
                  column: str = "feature_id") -> pd.DataFrame:
    """The frame with `label` (the feature's name) and `evidence` (one context of its top documents, the
    firing token marked «…») right after `column`. Table cells render as plain text."""
    names, examples = [], []
    for fid in frame[column].astype(int):
        name, example = split_label(str(labels.get(int(fid), "")))
        names.append(name)
        examples.append(example if example is not None
                        else _context_evidence(ws, corpus, widgets.cache_key(ws, corpus), int(fid)))
    out = frame.drop(columns=[c for c in ("label", "evidence") if c in frame.columns])
    pos = list(out.columns).index(column) + 1
    out.insert(pos, "label", names)
    out.insert(pos + 1, "evidence", examples)
    return out


# -- LLM labels on demand ------------------------------------------------------------------
LABEL_SCORE_HELP = ("Held-out accuracy: how often the LLM, given only the label, predicts correctly whether the "
                    "feature fires in samples it has not seen (half fire, half do not; 0.5 = chance).")


def label_on_demand(ws: Workspace, corpus: CorpusRef, feature_ids: Sequence[int], key: str,
                    corpus_of: dict[int, CorpusRef] | None = None) -> None:
    """A button that LLM-labels the features this page shows (`ws.label_features`, with a progress bar), and
    the LLM label and score each of them holds. Labels are cached in the workspace: features already labelled
    are not asked again, so a second click is instant. `corpus_of` names another corpus to label some features
    in (e.g. the diff's side-B findings, which fire there).

    The labeller is this session's LLM server, else the reader model when it can serve
    (widgets.labelling_llm); without one the widget says why."""
    ids = list(dict.fromkeys(int(f) for f in feature_ids))
    if not ids:
        return
    groups: dict[int, tuple[Corpus, list[int]]] = {}  # corpus id -> (handle, its features)
    for fid in ids:
        handle = corpus_handle(ws, (corpus_of or {}).get(fid, corpus))
        groups.setdefault(handle.corpus_id, (handle, []))[1].append(fid)
    noun = "feature" if len(ids) == 1 else "features"
    llm, source = widgets.labelling_llm(ws)
    if llm is None:
        st.caption(f"LLM labels: {md_escape(source, max_len=None)}")
    elif st.button(f"Label these {len(ids)} {noun}", key=f"{key}_llm_label", icon=":material/smart_toy:",
                   help=f"Asks {md_escape(source, max_len=None)} for a label of each, then scores it on held-out "
                        "samples. Features labelled before are kept and not asked again."):
        _label_groups(ws, list(groups.values()), llm, len(ids), f"{key}_llm_error")
    if error := st.session_state.pop(f"{key}_llm_error", None):
        st.error(f"LLM labelling stopped: {md_escape(error, max_len=None)} The labels written so far are kept.")
    stored: dict[int, tuple[str, float]] = {}
    for handle, group in groups.values():
        stored.update(stored_llm_labels(ws, handle, group))
    if not stored:
        return
    shown = [f for f in ids if f in stored]
    table = pd.DataFrame({"feature_id": shown, "label": [stored[f][0] for f in shown],
                          "score": [stored[f][1] for f in shown]})
    st.caption(f"LLM labels of {len(shown)} of these {len(ids)} {noun} (kept in the workspace; a hand label still "
               f"wins). Score: {LABEL_SCORE_HELP}")
    st.dataframe(table, hide_index=True, width="stretch", key=f"{key}_llm_table", column_config={
        "feature_id": st.column_config.NumberColumn("feature", format="%d"),
        "score": st.column_config.NumberColumn("score", format="%.2f", help=LABEL_SCORE_HELP)})


def _label_groups(ws: Workspace, groups: list[tuple[Corpus, list[int]]], llm: Labeller, total: int,
                  error_key: str) -> None:
    """Label each corpus's features with one progress bar over all of them; then rerun so the page's own
    labels (findings, tables) show the new ones. A failure is kept for the next run to show."""
    bar = st.progress(0.0, text=f"Labelling {total} features…")
    offset = 0

    def report(done: int, _total: int) -> None:
        bar.progress((offset + done) / total, text=f"Labelled {offset + done} of {total} features")

    try:
        for handle, group in groups:
            ws.label_features(handle, group, llm=llm, progress=report)
            offset += len(group)
    except UserError as exc:
        st.session_state[error_key] = str(exc)
    st.rerun()
