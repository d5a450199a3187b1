"""Dense MiniLM embeddings of a corpus's documents (the baseline the paper compares SAE embeddings with).

Computed once per corpus with all-MiniLM-L6-v2 (backend.search.embed_texts, offline) and stored in
    doc_embeddings(corpus_id, doc_id, vec FLOAT[384])
The table has a corpus_id column, so Store.delete_corpus clears it with the corpus. Embedding is
batched, resumable (only documents without a stored vector are embedded) and reports progress.

    E = doc_vectors(ws, "reviews")        # ndarray (n_docs, 384), row i = doc_id i, L2-normalized
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from backend import search
from backend.context import WorkspaceContext
from backend.store import Corpus, Store
from backend.store.schema import DOC_VECTOR_DIM

DIM = DOC_VECTOR_DIM

DocProgress = Callable[[int, int], None]  # (documents embedded so far, documents in the corpus)
_build_lock = threading.Lock()  # one embedding pass at a time per process (two tabs must not double-insert)


def _stored_ids(store: Store, cid: int) -> np.ndarray:
    r = store.fetch_numpy("SELECT doc_id FROM doc_embeddings WHERE corpus_id = ?", [cid])
    return np.asarray(r["doc_id"], dtype=np.int64)


def n_stored(ws: WorkspaceContext, corpus: Corpus) -> int:
    """Documents of the corpus that already have a stored dense vector."""
    cid = ws.store.corpus_id(corpus)
    return int(ws.store.query_one("SELECT count(*) FROM doc_embeddings WHERE corpus_id = ?", [cid])[0])


def is_complete(ws: WorkspaceContext, corpus: Corpus) -> bool:
    return n_stored(ws, corpus) >= ws.store.corpus(corpus).n_docs


def build_doc_embeddings(
    ws: WorkspaceContext, corpus: Corpus, batch_size: int = 64, progress: DocProgress | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Embed the corpus's documents that have no stored vector yet; returns how many were embedded now.

    Each batch is written in its own transaction, so an interrupted pass resumes where it stopped.
    ``progress(done, total)`` is called once before the first batch and after every batch."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    total = store.corpus(cid).n_docs
    with _build_lock:
        have = _stored_ids(store, cid)
        todo = np.setdiff1d(np.arange(total, dtype=np.int64), have)
        done = total - todo.size
        embedded = 0
        if progress is not None:
            progress(done, total)
        for ids, texts in _length_batches(store, cid, todo, max(1, int(batch_size))):
            if cancel is not None and cancel.is_set():
                break
            vecs = search.sentence_embed(texts, batch_size=batch_size)
            data = pd.DataFrame({"doc_id": ids.astype(np.int32), "vec": list(vecs.astype(np.float32))})
            store.replace_rows("doc_embeddings", data, where={"corpus_id": cid, "doc_id": ids.tolist()},
                               fixed={"corpus_id": cid})
            done += ids.size
            embedded += ids.size
            if progress is not None:
                progress(done, total)
    return int(embedded)


def _length_batches(store: Store, cid: int, todo: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(doc ids, their texts) in batches of `batch_size`, shortest texts first: MiniLM pads a batch to its longest
    text, and batches in doc_id order padded short fortunes to the longest of 64 (3,000 embedded at 49 documents a
    second, against 83 sorted). Only the lengths are read up front; each batch's texts when it is embedded."""
    order = todo[np.argsort(store.text_chars(cid)[todo], kind="stable")]
    for start in range(0, order.size, batch_size):
        ids = order[start:start + batch_size]
        texts = store.texts(cid, ids)
        if len(texts) != ids.size:  # ids would pair with the wrong vectors
            raise RuntimeError(f"{ids.size - len(texts)} of the corpus's documents are missing from the workspace.")
        yield ids, texts


def doc_vectors(
    ws: WorkspaceContext, corpus: Corpus, progress: DocProgress | None = None, batch_size: int = 64, compute: bool = True,
) -> np.ndarray:
    """Dense vectors of every document: float32 (n_docs, 384), row i = doc_id i, L2-normalized.

    Missing vectors are computed and stored first (unless ``compute`` is False, when they are zero rows)."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    if compute:
        build_doc_embeddings(ws, cid, batch_size=batch_size, progress=progress)
    n = store.corpus(cid).n_docs
    r = store.fetch_numpy("SELECT doc_id, vec FROM doc_embeddings WHERE corpus_id = ? ORDER BY doc_id", [cid])
    out = np.zeros((n, DIM), np.float32)
    ids = np.asarray(r["doc_id"], dtype=np.int64)
    if ids.size:
        vecs = r["vec"]
        mat = np.stack([np.asarray(v, dtype=np.float32) for v in vecs]) if vecs.dtype == object else np.asarray(vecs, np.float32)
        out[ids] = mat.reshape(ids.size, DIM)
    return out


def embed_query(text: str) -> np.ndarray:
    """The L2-normalized MiniLM vector (384,) of one query text (same model as the documents)."""
    return search.sentence_embed([text.strip() or " "])[0]


def delete_doc_embeddings(ws: WorkspaceContext, corpus: Corpus) -> None:
    """Drop the stored vectors of one corpus (they are recomputed on the next doc_vectors call)."""
    cid = ws.store.corpus_id(corpus)
    ws.store.replace_rows("doc_embeddings", pd.DataFrame(), where={"corpus_id": cid})
