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


class _BatchWrites:
    """Writes each batch's rows, in a thread while the next batch computes (`overlap`) or inline; a write error
    is kept and raised by the embedding loop (`check`)."""

    def __init__(self, store: Store, corpus_id: int, overlap: bool) -> None:
        self.store, self.corpus_id = store, corpus_id
        self.error: list[BaseException] = []
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, daemon=True) if overlap else None
        if self.thread:
            self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if not self.error:
                    self.store.write_embeddings(self.corpus_id, *item)
            except BaseException as exc:  # noqa: BLE001 - surfaced in the main loop
                self.error.append(exc)

    def check(self) -> None:
        if self.error:
            raise self.error[0]

    def put(self, ids: Any, rows: SparseRows) -> None:
        if self.thread:
            self.queue.put((ids, rows))
        else:
            self.store.write_embeddings(self.corpus_id, ids, rows)

    def close(self) -> None:
        if self.thread:
            self.queue.put(None)
            self.thread.join()


def _batch_embedder(store: Store, corpus_id: int, reader: ReaderModel, sae: Any, hook_name: str,
                    embed_cfg: EmbedConfig) -> Callable[[Any], SparseRows]:
    """doc ids -> their sparse rows: the pure batch function on the stored texts."""

    def embed_ids(ids: Any) -> SparseRows:
        docs = reader.encode_documents(store.texts(corpus_id, ids), embed_cfg.formatting, embed_cfg.max_tokens)
        return embed_encoded(reader, sae, hook_name, docs, embed_cfg)

    return embed_ids


def _record_failure(store: Store, corpus_id: int, state: Progress, error: str, detail: str,
                    progress: ProgressCallback | None) -> None:
    """A failed run: its error in the progress, `detail` (a traceback or the error) with the corpus's status."""
    state.status, state.error = "failed", error
    store.set_status(corpus_id, "failed", detail)
    if progress:
        progress(state)


def _record_end(store: Store, corpus_id: int, state: Progress, t0: float, progress: ProgressCallback | None) -> Progress:
    """The run's final status, in the progress and in the store ("ready" only once finalizing has committed:
    see Workspace.finalize; a cancelled corpus is pending again)."""
    state.elapsed_s = time.time() - t0
    if state.status == "running":
        state.docs_done = state.docs_total - len(store.pending_doc_ids(corpus_id))
        state.status = "done" if state.docs_done == state.docs_total else "failed"
    store.set_status(corpus_id, "finalizing" if state.status == "done" else ("pending" if state.status == "cancelled" else state.status))
    if progress:
        progress(state)
    return state


def embed_corpus(store: Store, corpus: int, reader: ReaderModel, sae: Any, hook_name: str, embed_cfg: EmbedConfig,
                 job_cfg: JobConfig = JobConfig(), progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> Progress:
    """Embed every document of the corpus that is not embedded yet; returns the final progress.

    The job follows the corpus by id, so renaming it while the job runs changes nothing here."""
    info = store.corpus(corpus)
    cid, pending = info.corpus_id, store.pending_doc_ids(info.corpus_id)
    state = Progress(info.name, info.n_docs - len(pending), info.n_docs, 0, 0.0, docs_at_start=info.n_docs - len(pending))
    store.set_status(cid, "embedding")
    t0 = time.time()
    embed_ids = _batch_embedder(store, cid, reader, sae, hook_name, embed_cfg)
    writes = _BatchWrites(store, cid, job_cfg.overlap_writes)
    try:
        # a workspace with a presence threshold first calibrates it on its first documents (backend.store.presence)
        calibration = ensure_calibrated(store, cid, pending, embed_ids, int(sae.cfg.d_sae))
        for start in range(0, len(pending), job_cfg.docs_per_batch):
            if cancel is not None and cancel.is_set():
                state.status = "cancelled"
                break
            writes.check()
            ids = pending[start : start + job_cfg.docs_per_batch]
            rows: SparseRows = calibration.take(ids, embed_ids) if calibration is not None else embed_ids(ids)
            writes.put(ids, rows)
            state.docs_done += len(ids)
            state.tokens_done += int(rows.n_tokens.sum())
            state.elapsed_s = time.time() - t0
            if progress:
                progress(state)
    except BaseException as exc:
        writes.close()
        _record_failure(store, cid, state, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3), progress)
        raise
    writes.close()
    if writes.error:
        _record_failure(store, cid, state, str(writes.error[0]), str(writes.error[0]), None)
        raise writes.error[0]
    return _record_end(store, cid, state, t0, progress)
