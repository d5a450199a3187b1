"""Dense MiniLM embeddings of a corpus's documents (the baseline the paper compares SAE embeddings with).

Computed once per corpus with all-MiniLM-L6-v2 (backend.search.embed_texts, offline) and stored in
    doc_embeddings(corpus_id, doc_id, vec FLOAT[384])
The table has a corpus_id column, so Store.delete_corpus clears it with the corpus. Embedding is
batched, resumable (only documents without a stored vector are embedded) and reports progress.

    E = doc_vectors(ws, "reviews")        # ndarray (n_docs, 384), row i = doc_id i, L2-normalized
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import pandas as pd

from backend.store import Store

DIM = 384
SCHEMA = f"CREATE TABLE IF NOT EXISTS doc_embeddings (corpus_id INTEGER, doc_id INTEGER, vec FLOAT[{DIM}]);"

DocProgress = Callable[[int, int], None]  # (documents embedded so far, documents in the corpus)
_build_lock = threading.Lock()  # one embedding pass at a time per process (two tabs must not double-insert)


def ensure_schema(store: Store) -> None:
    if getattr(store, "_doc_embeddings_schema", False):
        return
    with store._write_lock:
        store.con.execute(SCHEMA)
    store._doc_embeddings_schema = True  # type: ignore[attr-defined]


def _stored_ids(store: Store, cid: int) -> np.ndarray:
    r = store.con.execute("SELECT doc_id FROM doc_embeddings WHERE corpus_id = ?", [cid]).fetchnumpy()
    return np.asarray(r["doc_id"], dtype=np.int64)


def n_stored(ws: Any, corpus: str | int) -> int:
    """Documents of the corpus that already have a stored dense vector."""
    ensure_schema(ws.store)
    cid = ws.store.corpus_id(corpus)
    return int(ws.store.con.execute("SELECT count(*) FROM doc_embeddings WHERE corpus_id = ?", [cid]).fetchall()[0][0])


def is_complete(ws: Any, corpus: str | int) -> bool:
    return n_stored(ws, corpus) >= ws.store.corpus(corpus).n_docs


def build_doc_embeddings(
    ws: Any, corpus: str | int, batch_size: int = 64, progress: DocProgress | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Embed the corpus's documents that have no stored vector yet; returns how many were embedded now.

    Each batch is written in its own transaction, so an interrupted pass resumes where it stopped.
    ``progress(done, total)`` is called once before the first batch and after every batch."""
    from backend.search import embed_texts

    store: Store = ws.store
    ensure_schema(store)
    cid = store.corpus_id(corpus)
    total = store.corpus(cid).n_docs
    with _build_lock:
        have = _stored_ids(store, cid)
        todo = np.setdiff1d(np.arange(total, dtype=np.int64), have)
        done = total - todo.size
        embedded = 0
        if progress is not None:
            progress(done, total)
        for start in range(0, todo.size, max(1, int(batch_size))):
            if cancel is not None and cancel.is_set():
                break
            ids = todo[start:start + batch_size]
            vecs = embed_texts(store.texts(cid, ids), batch_size=batch_size)
            data = pd.DataFrame({"doc_id": ids.astype(np.int32), "vec": list(vecs.astype(np.float32))})
            with store.transaction() as con:
                con.register("_dv", data)
                try:
                    con.execute(
                        "DELETE FROM doc_embeddings WHERE corpus_id = ? AND doc_id IN (SELECT doc_id FROM _dv)", [cid])
                    con.execute(f"INSERT INTO doc_embeddings SELECT ?, doc_id, vec::FLOAT[{DIM}] FROM _dv", [cid])
                finally:
                    con.unregister("_dv")
            done += ids.size
            embedded += ids.size
            if progress is not None:
                progress(done, total)
    return int(embedded)


def doc_vectors(
    ws: Any, corpus: str | int, progress: DocProgress | None = None, batch_size: int = 64, compute: bool = True,
) -> np.ndarray:
    """Dense vectors of every document: float32 (n_docs, 384), row i = doc_id i, L2-normalized.

    Missing vectors are computed and stored first (unless ``compute`` is False, when they are zero rows)."""
    store: Store = ws.store
    ensure_schema(store)
    cid = store.corpus_id(corpus)
    if compute:
        build_doc_embeddings(ws, cid, batch_size=batch_size, progress=progress)
    n = store.corpus(cid).n_docs
    r = store.con.execute(
        "SELECT doc_id, vec FROM doc_embeddings WHERE corpus_id = ? ORDER BY doc_id", [cid]).fetchnumpy()
    out = np.zeros((n, DIM), np.float32)
    ids = np.asarray(r["doc_id"], dtype=np.int64)
    if ids.size:
        vecs = r["vec"]
        mat = np.stack([np.asarray(v, dtype=np.float32) for v in vecs]) if vecs.dtype == object else np.asarray(vecs, np.float32)
        out[ids] = mat.reshape(ids.size, DIM)
    return out


def embed_query(text: str) -> np.ndarray:
    """The L2-normalized MiniLM vector (384,) of one query text (same model as the documents)."""
    from backend.search import embed_texts

    return embed_texts([text.strip() or " "])[0]


def delete_doc_embeddings(ws: Any, corpus: str | int) -> None:
    """Drop the stored vectors of one corpus (they are recomputed on the next doc_vectors call)."""
    ensure_schema(ws.store)
    cid = ws.store.corpus_id(corpus)
    with ws.store.transaction() as con:
        con.execute("DELETE FROM doc_embeddings WHERE corpus_id = ?", [cid])
