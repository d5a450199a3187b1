"""Resumable embedding: the loop that owns I/O around the pure batch function (the local engine).

Each batch's rows and its documents' done-marks are written in one transaction, so a job
killed at any point restarts with no lost and no duplicated rows. The background jobs the dashboard
starts around it (registry, resume and finishing policy) are backend.background, above the workspace."""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from backend.activations import EmbedConfig, SparseRows, embed_encoded
from backend.engines.calibration import ensure_calibrated
from backend.models import ReaderModel
from backend.store import Store


@dataclass
class Progress:
    """What a progress callback receives."""

    corpus: str
    docs_done: int
    docs_total: int
    tokens_done: int
    elapsed_s: float
    status: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    step: str | None = None  # the finishing step under way (statistics, labels, …); None while embedding
    step_fraction: float = 0.0  # how far that step is, 0-1 (each step has its own)
    docs_at_start: int = 0  # done before this run began (a resumed job): the rate counts this run's work only
    note: str | None = None  # model setup under way before the first batch ("Installing the packages of …")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.docs_done - self.docs_at_start <= 0 or self.elapsed_s <= 0:
            return None
        rate = (self.docs_done - self.docs_at_start) / self.elapsed_s
        return (self.docs_total - self.docs_done) / rate if rate > 0 else None


ProgressCallback = Callable[[Progress], None]


@dataclass
class JobConfig:
    docs_per_batch: int = 256
    overlap_writes: bool = True  # write batch i while computing batch i+1


def embed_corpus(
    store: Store,
    corpus: int,
    reader: ReaderModel,
    sae: Any,
    hook_name: str,
    embed_cfg: EmbedConfig,
    job_cfg: JobConfig = JobConfig(),
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Progress:
    """Embed every document of the corpus that is not embedded yet; returns the final progress.

    The job follows the corpus by id, so renaming it while the job runs changes nothing here."""
    info = store.corpus(corpus)
    pending = store.pending_doc_ids(info.corpus_id)
    total = info.n_docs
    done0 = total - len(pending)
    state = Progress(info.name, done0, total, 0, 0.0, docs_at_start=done0)
    store.set_status(info.corpus_id, "embedding")
    t0 = time.time()
    writes: queue.Queue = queue.Queue(maxsize=2)
    write_error: list[BaseException] = []

    def writer() -> None:
        while True:
            item = writes.get()
            if item is None:
                return
            try:
                if not write_error:
                    store.write_embeddings(info.corpus_id, *item)
            except BaseException as exc:  # noqa: BLE001 - surfaced in the main loop
                write_error.append(exc)

    def embed_ids(ids: Any) -> SparseRows:
        docs = reader.encode_documents(store.texts(info.corpus_id, ids), embed_cfg.formatting, embed_cfg.max_tokens)
        return embed_encoded(reader, sae, hook_name, docs, embed_cfg)

    thread = threading.Thread(target=writer, daemon=True) if job_cfg.overlap_writes else None
    if thread:
        thread.start()
    try:
        # a workspace with a presence threshold first calibrates it on its first documents (backend.store.presence)
        calibration = ensure_calibrated(store, info.corpus_id, pending, embed_ids, int(sae.cfg.d_sae))
        for start in range(0, len(pending), job_cfg.docs_per_batch):
            if cancel is not None and cancel.is_set():
                state.status = "cancelled"
                break
            if write_error:
                raise write_error[0]
            ids = pending[start : start + job_cfg.docs_per_batch]
            rows: SparseRows = calibration.take(ids, embed_ids) if calibration is not None else embed_ids(ids)
            if thread:
                writes.put((ids, rows))
            else:
                store.write_embeddings(info.corpus_id, ids, rows)
            state.docs_done += len(ids)
            state.tokens_done += int(rows.n_tokens.sum())
            state.elapsed_s = time.time() - t0
            if progress:
                progress(state)
    except BaseException as exc:
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        if thread:
            writes.put(None)
            thread.join()
        store.set_status(info.corpus_id, "failed", traceback.format_exc(limit=3))
        if progress:
            progress(state)
        raise
    if thread:
        writes.put(None)
        thread.join()
    if write_error:
        state.status, state.error = "failed", str(write_error[0])
        store.set_status(info.corpus_id, "failed", state.error)
        raise write_error[0]
    state.elapsed_s = time.time() - t0
    if state.status == "running":
        state.docs_done = total - len(store.pending_doc_ids(info.corpus_id))
        state.status = "done" if state.docs_done == total else "failed"
    # "ready" only once finalizing (statistics, labels) has committed: see Workspace.finalize.
    store.set_status(info.corpus_id, "finalizing" if state.status == "done" else ("pending" if state.status == "cancelled" else state.status))
    if progress:
        progress(state)
    return state
