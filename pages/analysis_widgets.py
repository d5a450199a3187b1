"""Widgets shared by the analysis pages (diff, clustering, correlations, retrieval).

- cached loaders (latents, labels, lengths, metadata, dense vectors) keyed by widgets.data_version;
- a concept/feature picker: search by meaning, by example text, from a list, or by label phrase;
- documents rendered with token highlights for chosen features (escaped, via widgets.highlight_html);
- a document-set export block (metadata + feature activation columns, widgets.export_buttons).

Layout and widgets only; every computation is a backend call."""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import streamlit as st

from backend import labels as labels_mod
from backend.workspace import Workspace
from pages import widgets

PICK_MODES = {
    "list": "From a list",
    "meaning": "Search by meaning",
    "example": "Features of an example text",
    "phrase": "Every feature whose label matches",
}
MAX_LIST_OPTIONS = 5000  # features offered in the list picker (densest first)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


# -- small helpers ---------------------------------------------------------------
def md_escape(text: Any, max_len: int = 120) -> str:
    """A label or value made safe for st.markdown: one line, markdown characters escaped."""
    s = " ".join(str(text).split())
    if len(s) > max_len:
        s = s[: max_len - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", s)


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


def open_feature_button(fid: int, key: str, labels: dict[int, str] | None = None) -> None:
    """A button that opens the feature on the Features page."""
    label = f"Open #{int(fid)} on the Features page"
    if st.button(label, key=f"{key}-open-{int(fid)}"):
        widgets.open_feature(int(fid), "features")


# -- cached loaders (keyed by data_version; the workspace itself is not hashed) --------------------
@st.cache_data(show_spinner=False, max_entries=16)
def latents(_ws: Workspace, version: tuple, corpus: str, pooling: str = "max", threshold: float = 0.0) -> sp.csr_matrix:
    return _ws.latents(corpus, pooling=pooling, threshold=threshold)


@st.cache_data(show_spinner=False, max_entries=16)
def labels(_ws: Workspace, version: tuple, corpus: str, label_version: Any = None) -> dict[int, str]:
    return labels_mod.labels(_ws, corpus)


def label_version(ws: Workspace) -> Any:
    """Changes when any label is written (hand labels are edited while the app runs)."""
    try:
        labels_mod.ensure_schema(ws.store)
        return ws.store.query_one("SELECT count(*), max(updated_at) FROM feature_labels")
    except Exception:  # noqa: BLE001 - a missing table only means no labels yet
        return None


def corpus_labels(ws: Workspace, corpus: str) -> dict[int, str]:
    return labels(ws, widgets.data_version(ws, corpus), corpus, label_version(ws))


@st.cache_data(show_spinner=False, max_entries=16)
def lengths(_ws: Workspace, version: tuple, corpus: str) -> np.ndarray:
    return _ws.store.doc_lengths(corpus)


@st.cache_data(show_spinner=False, max_entries=32)
def metadata(_ws: Workspace, version: tuple, corpus: str, column: str) -> pd.Series:
    return _ws.store.metadata(corpus, column)


@st.cache_data(show_spinner=False, max_entries=32)
def documents(_ws: Workspace, version: tuple, corpus: str, doc_ids: tuple[int, ...]) -> pd.DataFrame:
    return _ws.documents(corpus, list(doc_ids))


@st.cache_data(show_spinner=False, max_entries=256)
def token_acts(_ws: Workspace, version: tuple, corpus: str, doc_id: int, features: tuple[int, ...]):
    ta = _ws.token_activations(corpus, int(doc_id), list(features))
    return list(ta.tokens), np.asarray(ta.acts, dtype=np.float32), list(ta.count_mask)


@st.cache_data(show_spinner=False, max_entries=64)
def text_features(_ws: Workspace, ws_path: str, text: str) -> dict[int, float]:
    """Max-pooled SAE features of a text (reader LM + SAE)."""
    return _ws.embed_text(text)


@st.cache_data(show_spinner=False, max_entries=8)
def active_features(_ws: Workspace, version: tuple, corpus: str) -> pd.DataFrame:
    """feature_id, n_docs (documents where it fires), densest first."""
    X = _ws.latents(corpus, pooling="binary")
    counts = np.bincount(X.indices, minlength=X.shape[1])
    fids = np.flatnonzero(counts)
    order = np.lexsort((fids, -counts[fids]))
    return pd.DataFrame({"feature_id": fids[order].astype(np.int64), "n_docs": counts[fids[order]].astype(np.int64)})


def dense_vectors(ws: Workspace, corpus: str, allow_compute: bool) -> np.ndarray | None:
    """MiniLM document vectors (stored in the workspace); computed with a progress bar when allowed."""
    from backend import doc_embeddings as de

    version = widgets.data_version(ws, corpus)
    if not de.is_complete(ws, corpus):
        if not allow_compute:
            return None
        bar = st.progress(0.0, text="Embedding documents with MiniLM…")

        def cb(done: int, total: int) -> None:
            bar.progress(done / max(1, total), text=f"MiniLM embeddings: {done:,}/{total:,} documents")

        de.build_doc_embeddings(ws, corpus, progress=cb)
        bar.empty()
    return _dense_cached(ws, version, corpus, de.n_stored(ws, corpus))


@st.cache_data(show_spinner=False, max_entries=8)
def _dense_cached(_ws: Workspace, version: tuple, corpus: str, n_stored: int) -> np.ndarray:
    from backend import doc_embeddings as de

    return de.doc_vectors(_ws, corpus, compute=False)


# -- the concept/feature picker ------------------------------------------------------
def _add(state_key: str, fids: Iterable[int], replace: bool = False) -> None:
    cur = [] if replace else list(st.session_state.get(state_key, []))
    for f in fids:
        if int(f) not in cur:
            cur.append(int(f))
    st.session_state[state_key] = cur


def feature_picker(ws: Workspace, corpus: str, key: str, title: str = "Concepts (SAE features)",
                   preselect: Sequence[int] = ()) -> list[int]:
    """Choose features four ways; returns the chosen feature ids (kept in st.session_state[f"{key}_chosen"])."""
    state_key = f"{key}_chosen"
    lab = corpus_labels(ws, corpus)
    if state_key not in st.session_state:
        st.session_state[state_key] = [int(f) for f in preselect if 0 <= int(f) < ws.d_sae]
    chosen = [int(f) for f in st.session_state[state_key]]
    active = active_features(ws, widgets.data_version(ws, corpus), corpus)
    n_docs = dict(zip(active["feature_id"].astype(int), active["n_docs"].astype(int)))

    def fmt(f: int) -> str:
        return f"{feature_name(f, lab)} ({n_docs.get(int(f), 0):,} docs)"

    st.markdown(f"**{title}**")
    mode = st.radio("Pick features", list(PICK_MODES), format_func=PICK_MODES.get, horizontal=True, key=f"{key}_pk_mode")
    if mode == "meaning":
        q = st.text_input("Describe the concept", key=f"{key}_pk_query", placeholder="e.g. praise, violence, source code")
        if q.strip():
            from backend.search import SearchModelMissing, search_features

            try:
                with st.spinner("Searching…"):
                    hits = search_features(ws, corpus, q, top=20)
            except SearchModelMissing as exc:
                st.warning(str(exc))
                hits = pd.DataFrame(columns=["feature_id", "label", "score"])
            _candidates(hits[["feature_id", "label", "score"]], key, state_key, n_docs)
    elif mode == "example":
        text = st.text_area("Example text", key=f"{key}_pk_example", height=80,
                            placeholder="Paste a sentence; the features that fire on it are offered.")
        if text.strip():
            with st.spinner("Reading the text…"):
                acts = text_features(ws, str(ws.store.path), text)
            hits = pd.DataFrame({"feature_id": list(acts), "max_act": list(acts.values())})
            hits = hits.sort_values(["max_act", "feature_id"], ascending=[False, True]).head(30)
            hits = with_labels(hits, lab)
            _candidates(hits, key, state_key, n_docs)
    elif mode == "phrase":
        phrase = st.text_input("Label contains", key=f"{key}_pk_phrase", placeholder="e.g. movie")
        if phrase.strip():
            pat = phrase.strip().lower()
            fids = sorted(f for f, t in lab.items() if t and pat in str(t).lower())
            hits = pd.DataFrame({"feature_id": fids, "label": [lab[f] for f in fids]})
            _candidates(hits, key, state_key, n_docs, default_n=len(fids))
    options = [int(f) for f in active["feature_id"].head(MAX_LIST_OPTIONS)]
    options = sorted(set(options) | set(chosen), key=lambda f: (-n_docs.get(f, 0), f))
    st.multiselect(
        "Chosen features" if mode != "list" else "Chosen features (type an id or a word of a label)",
        options, format_func=fmt, key=state_key,
        help="Features are listed densest first; an id or label word filters the list.",
    )
    return [int(f) for f in st.session_state.get(state_key, [])]


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
    c2.button("Add them", key=f"{key}_pk_add", on_click=_add_top, args=(state_key, ids, f"{key}_pk_n", False))
    c3.button("Use only these", key=f"{key}_pk_replace", on_click=_add_top, args=(state_key, ids, f"{key}_pk_n", True))


def _add_top(state_key: str, ids: list[int], n_key: str, replace: bool) -> None:
    _add(state_key, ids[: int(st.session_state.get(n_key, 5))], replace)


# -- documents with highlights ---------------------------------------------------------
def show_documents(
    ws: Workspace, corpus: str, doc_ids: Sequence[int], feature_ids: Sequence[int], key: str,
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
    version = widgets.data_version(ws, corpus)
    feats = tuple(int(f) for f in feature_ids)
    labels = labels or {}
    docs = documents(ws, version, corpus, tuple(doc_ids)).set_index("doc_id")
    info = ws.store.corpus(corpus)
    meta_columns = [c for c in (meta_columns if meta_columns is not None else info.meta_columns) if c in docs.columns][:4]
    for i, d in enumerate(doc_ids):
        head = f"Document {d}"
        if scores is not None:
            head += f" · {score_name} {float(scores[i]):.3f}"
        if d in docs.index and not pd.isna(docs.loc[d, "n_tokens"]):
            head += f" · {int(docs.loc[d, 'n_tokens']):,} tokens"
        with st.container(border=True):
            st.caption(head)
            if meta_columns and d in docs.index:
                st.text(" · ".join(f"{c}: {snippet(docs.loc[d, c], 60)}" for c in meta_columns))
            if not feats:
                st.text(str(docs.loc[d, "text"]) if d in docs.index else "")
                continue
            try:
                tokens, acts, mask = token_acts(ws, version, corpus, d, feats)
            except Exception as exc:  # noqa: BLE001 - the model may be unavailable; still show the text
                st.caption(f"No highlights ({type(exc).__name__}).")
                st.text(str(docs.loc[d, "text"]) if d in docs.index else "")
                continue
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
    ws: Workspace, corpus: str, X: sp.csr_matrix, doc_ids: Sequence[int], feature_ids: Sequence[int],
    labels: dict[int, str] | None = None, extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """doc_id, extra columns (score, cluster…), text, n_tokens, metadata, and activation columns of the features."""
    from backend.export import feature_columns

    doc_ids = [int(d) for d in doc_ids]
    docs = documents(ws, widgets.data_version(ws, corpus), corpus, tuple(doc_ids)).set_index("doc_id")
    docs = docs.reindex(doc_ids).reset_index()
    parts = [docs[["doc_id"]]]
    if extra is not None and len(extra.columns):
        parts.append(extra.reset_index(drop=True))
    parts.append(docs.drop(columns=["doc_id"]))
    if feature_ids:
        parts.append(feature_columns(X, doc_ids, list(feature_ids), labels or {}))
    return pd.concat(parts, axis=1)


def export_block(
    ws: Workspace, corpus: str, X: sp.csr_matrix, doc_ids: Sequence[int], key: str, stem: str,
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
