"""Resumable embedding jobs: the loop that owns I/O around the pure batch function.

Each batch's rows and its documents' done-marks are written in one transaction, so a job
killed at any point restarts with no lost and no duplicated rows."""
from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from backend.activations import EmbedConfig, SparseRows, embed_encoded
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

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.docs_done <= 0 or self.elapsed_s <= 0:
            return None
        rate = self.docs_done / self.elapsed_s
        return (self.docs_total - self.docs_done) / rate if rate > 0 else None


ProgressCallback = Callable[[Progress], None]


@dataclass
class JobConfig:
    docs_per_batch: int = 256
    overlap_writes: bool = True  # write batch i while computing batch i+1


def embed_corpus(
    store: Store,
    corpus: str | int,
    reader: ReaderModel,
    sae: Any,
    hook_name: str,
    embed_cfg: EmbedConfig,
    job_cfg: JobConfig = JobConfig(),
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Progress:
    """Embed every document of the corpus that is not embedded yet; returns the final progress."""
    info = store.corpus(corpus)
    pending = store.pending_doc_ids(info.corpus_id)
    total = info.n_docs
    done0 = total - len(pending)
    state = Progress(info.name, done0, total, 0, 0.0)
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

    thread = threading.Thread(target=writer, daemon=True) if job_cfg.overlap_writes else None
    if thread:
        thread.start()
    try:
        for start in range(0, len(pending), job_cfg.docs_per_batch):
            if cancel is not None and cancel.is_set():
                state.status = "cancelled"
                break
            if write_error:
                raise write_error[0]
            ids = pending[start : start + job_cfg.docs_per_batch]
            texts = store.texts(info.corpus_id, ids)
            docs = reader.encode_documents(texts, embed_cfg.formatting, embed_cfg.max_tokens)
            rows: SparseRows = embed_encoded(reader, sae, hook_name, docs, embed_cfg)
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
    store.set_status(info.corpus_id, "ready" if state.status == "done" else ("pending" if state.status == "cancelled" else state.status))
    if progress:
        progress(state)
    return state


@dataclass
class BackgroundJob:
    """An embedding job running in a thread of this process; shared across UI sessions."""

    key: tuple[str, int]
    thread: threading.Thread
    cancel: threading.Event
    progress: Progress
    error: str | None = None
    listeners: list[ProgressCallback] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


class JobRegistry:
    """At most one job per (workspace file, corpus): a second request joins the running one."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, int], BackgroundJob] = {}
        self._lock = threading.Lock()

    def get(self, workspace_path: str, corpus_id: int) -> BackgroundJob | None:
        with self._lock:
            return self._jobs.get((workspace_path, corpus_id))

    def start(self, workspace_path: str, corpus_id: int, corpus_name: str, n_docs: int, run: Callable[[ProgressCallback, threading.Event], Any]) -> BackgroundJob:
        """Start `run(progress_cb, cancel_event)` in a thread unless one already runs for this corpus."""
        key = (workspace_path, corpus_id)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            cancel = threading.Event()
            job = BackgroundJob(key, threading.Thread(), cancel, Progress(corpus_name, 0, n_docs, 0, 0.0))

            def on_progress(p: Progress) -> None:
                job.progress = Progress(**p.__dict__)
                for cb in list(job.listeners):
                    cb(job.progress)

            def target() -> None:
                try:
                    run(on_progress, cancel)
                except BaseException as exc:  # noqa: BLE001 - kept for the UI to show
                    job.error = f"{type(exc).__name__}: {exc}"
                    job.progress.status = "failed"
                    job.progress.error = job.error

            job.thread = threading.Thread(target=target, name=f"embed-{corpus_name}", daemon=True)
            self._jobs[key] = job
            job.thread.start()
            return job


REGISTRY = JobRegistry()

