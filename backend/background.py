"""Background jobs of the dashboard: embedding, finishing and MiniLM jobs in threads of this process, and the
policy that starts, resumes and joins them (one of each kind per corpus; they follow a corpus by id).

Above the workspace: a job calls `Workspace.embed` / `Workspace.finalize`, the first-launch build
(backend.demo), document vectors (backend.doc_embeddings) and the feature-search index (backend.search).
The embedding loop itself is backend.jobs, below the workspace."""
from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from backend import demo, doc_embeddings, search
from backend.jobs import JobConfig, Progress, ProgressCallback  # noqa: F401 (Progress: re-exported for the pages)
from backend.models import model_status
from backend.store import Corpus
from backend.store.handoff import waiting_for_the_file
from backend.workspace import Workspace


@dataclass
class BackgroundJob:
    """An embedding job running in a thread of this process; shared across UI sessions."""

    key: tuple[str, int, str]  # (workspace file, corpus id, kind of job)
    thread: threading.Thread
    cancel: threading.Event
    progress: Progress
    error: str | None = None
    listeners: list[ProgressCallback] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


EMBED_JOB, INDEX_JOB, VECTORS_JOB = "embed", "feature-index", "doc-vectors"  # kinds: one of each may run per corpus


class JobRegistry:
    """At most one job of each kind per (workspace file, corpus): a second request joins the running one."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, int, str], BackgroundJob] = {}
        self._lock = threading.Lock()

    def get(self, workspace_path: str, corpus_id: int, kind: str = EMBED_JOB) -> BackgroundJob | None:
        with self._lock:
            return self._jobs.get((workspace_path, corpus_id, kind))

    def start(self, workspace_path: str, corpus_id: int, corpus_name: str, n_docs: int,
              run: Callable[[ProgressCallback, threading.Event], Any],
              listeners: Iterable[ProgressCallback] = (), kind: str = EMBED_JOB) -> BackgroundJob:
        """Start `run(progress_cb, cancel_event)` in a thread unless one of this kind already runs for the corpus.

        `listeners` are called with every progress report of a new job (attached before it starts)."""
        key = (workspace_path, corpus_id, kind)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            cancel = threading.Event()
            job = BackgroundJob(key, threading.Thread(), cancel, Progress(corpus_name, 0, n_docs, 0, 0.0),
                                listeners=list(listeners))

            def on_progress(p: Progress) -> None:
                job.progress = Progress(**p.__dict__)
                for cb in list(job.listeners):
                    cb(job.progress)

            def target() -> None:
                try:
                    with waiting_for_the_file():  # a command asking for the workspace pauses the job (store.handoff)
                        run(on_progress, cancel)
                except BaseException as exc:  # noqa: BLE001 - kept for the UI to show
                    job.error = f"{type(exc).__name__}: {exc}"
                    job.progress.status = "failed"
                    job.progress.error = job.error

            job.thread = threading.Thread(target=target, name=f"{kind}-{corpus_name}", daemon=True)
            self._jobs[key] = job
            job.thread.start()
            return job

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """Cancel every running job and wait up to `timeout_s` in all for them to stop (an embedding stops between
        batches and its corpus is pending again). Run at exit: a daemon thread still inside torch or DuckDB when the
        interpreter finalizes is unwound by force, which can abort the process ("FATAL: exception not rethrown")."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.running]
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + timeout_s
        for job in jobs:
            job.thread.join(max(0.0, deadline - time.monotonic()))


REGISTRY = JobRegistry()
atexit.register(REGISTRY.stop_all)


# -- what the dashboard starts: embedding and finishing jobs that follow a corpus by id ------------------
FinishProgress = Callable[[str, float], None]  # (step, fraction): what Workspace.finalize reports
DEFAULT_BUILD_SLOT = 0  # registry slot of the first-launch build (no corpus id exists yet; ids start at 1)


def _step_reporter(progress: ProgressCallback, last: list[Progress]) -> FinishProgress:
    """A finalize callback that reports each finishing step as a Progress on the embedding's last one."""

    def report(step: str, fraction: float) -> None:
        if step != "done":
            last[0] = replace(last[0], status="running", step=step, step_fraction=float(fraction))
            progress(last[0])

    return report


def _run_job(progress: ProgressCallback, initial: Progress, body: Callable[[ProgressCallback, FinishProgress], Any]) -> None:
    """Run `body(embed_progress, step_progress)` and report "done" (no step) once it returns."""
    last = [initial]

    def on_embed(p: Progress) -> None:
        last[0] = p
        progress(p)

    body(on_embed, _step_reporter(progress, last))
    if last[0].status in ("running", "done"):  # a cancelled run keeps its status
        progress(replace(last[0], status="done", step=None, step_fraction=1.0))


def start_embedding(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY, job_cfg: JobConfig = JobConfig(),
                    listeners: Iterable[ProgressCallback] = ()) -> BackgroundJob:
    """Embed what is missing of a corpus and finish it (statistics, labels…) in a background thread.

    The job holds the corpus id, never its name: renaming the corpus meanwhile changes nothing. A second
    call while it runs returns the running job."""
    corpus_id = corpus.corpus_id
    initial = Progress(corpus.name, corpus.n_embedded, corpus.n_docs, 0, 0.0)

    def run(progress: ProgressCallback, cancel: threading.Event) -> None:
        # a first use may install, assemble or dequantize the reader model: minutes the job status should name
        with model_status(lambda message: progress(replace(initial, note=message))):
            _run_job(progress, initial, lambda on_embed, on_step: ws.embed(
                corpus_id, progress=on_embed, cancel=cancel, job_cfg=job_cfg, finalize_progress=on_step))

    return registry.start(str(ws.path), corpus_id, corpus.name, corpus.n_docs, run, listeners)


def start_finishing(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY,
                    listeners: Iterable[ProgressCallback] = ()) -> BackgroundJob:
    """Run only the finishing steps (Workspace.finalize) of a fully embedded corpus in a background thread."""
    corpus_id = corpus.corpus_id
    initial = Progress(corpus.name, corpus.n_embedded, corpus.n_docs, corpus.n_tokens, 0.0, step="statistics")

    def run(progress: ProgressCallback, cancel: threading.Event) -> None:
        _run_job(progress, initial, lambda on_embed, on_step: ws.finalize(corpus_id, on_step))

    return registry.start(str(ws.path), corpus_id, corpus.name, corpus.n_docs, run, listeners)


def job_for(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """The job this server process ran or runs for the corpus (None if none)."""
    return registry.get(str(ws.path), corpus.corpus_id)


def interrupted(ws: Workspace, registry: JobRegistry = REGISTRY) -> list[Corpus]:
    """Corpora a previous server process left half-done: status embedding, or finalizing without an error,
    and no job of this process for them. (A failed job keeps its error and waits for the user.)"""
    return [c for c in ws.corpus_list()
            if (c.status == "embedding" or (c.status == "finalizing" and not c.error))
            and job_for(ws, c, registry) is None]


def resume_interrupted(ws: Workspace, registry: JobRegistry = REGISTRY) -> list[BackgroundJob]:
    """Restart the jobs of `interrupted` corpora (jobs survive closed tabs, not server restarts)."""
    return [start_embedding(ws, c, registry) for c in interrupted(ws, registry)]


def next_action(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> str | None:
    """What the user can start for a corpus: "resume" (documents left to embed), "finish" (embedded, but its
    statistics and labels are missing) or None (ready, or a job is running)."""
    job = job_for(ws, corpus, registry)
    if job is not None and job.running:
        return None
    if corpus.n_embedded < corpus.n_docs:
        return "resume"
    return "finish" if ws.needs_finalize(corpus) else None


def default_build_job(registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """The first-launch build of the default workspace, if this process started one."""
    return registry.get(str(demo.default_workspace_path()), DEFAULT_BUILD_SLOT)


def start_default_build(registry: JobRegistry = REGISTRY) -> BackgroundJob:
    """Build the default workspace (model cache, demo corpus, embedding, finishing steps, document vectors)
    in a background thread, reporting each step."""
    initial = Progress(demo.DEMO_CORPUS, 0, demo.DEMO_DOCS, 0, 0.0)

    def build(on_embed: ProgressCallback, on_step: FinishProgress) -> None:
        ws = demo.ensure_default_workspace(on_embed, step_progress=on_step)
        if ws is not None:
            ws.close()  # the pages open their own (idle-released) handle; this one would keep the file held

    def run(progress: ProgressCallback, cancel: threading.Event) -> None:
        _run_job(progress, initial, build)

    return registry.start(str(demo.default_workspace_path()), DEFAULT_BUILD_SLOT, demo.DEMO_CORPUS, demo.DEMO_DOCS, run)


def _run_counted(name: str, step: str, total: int, progress: ProgressCallback, cancel: threading.Event,
                 build: Callable[[Callable[[int, int], None]], Any]) -> str:
    """Run `build(on_count)`, a resumable MiniLM pass reporting (done, total), as Progress of `step` (the count
    it resumed from is docs_at_start, so the ETA counts this run's work); returns "done" or "cancelled"."""
    t0 = time.time()
    last = [Progress(name, 0, total, 0, 0.0, step=step)]
    started = [False]

    def on_count(done: int, total: int) -> None:
        at_start = done if not started[0] else last[0].docs_at_start
        started[0] = True
        last[0] = Progress(name, done, total, 0, time.time() - t0, step=step,
                           step_fraction=done / total if total else 1.0, docs_at_start=at_start)
        progress(last[0])

    build(on_count)
    status = "cancelled" if cancel.is_set() else "done"
    progress(replace(last[0], status=status, elapsed_s=time.time() - t0))
    return status


# -- the feature-search index, built in the background once a corpus is ready ----------------------------
INDEX_STEP = "search index"  # Progress.step of an index job; docs_done/docs_total count features


def feature_index_job(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """The feature-search index job this server process ran or runs for the corpus (None if none)."""
    return registry.get(str(ws.path), corpus.corpus_id, INDEX_JOB)


def start_feature_index(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> BackgroundJob:
    """Build the corpus's feature-search vectors (backend.search.build_feature_embeddings) in a background
    thread, chunk by chunk, most useful features first; a second call while it runs returns the running job.
    Progress counts features (docs_done of docs_total)."""
    corpus_id, name = corpus.corpus_id, corpus.name

    def run(progress: ProgressCallback, cancel: threading.Event) -> None:
        _run_counted(name, INDEX_STEP, 0, progress, cancel,
                     lambda on_count: search.build_feature_embeddings(ws, corpus_id, progress=on_count, cancel=cancel))

    return registry.start(str(ws.path), corpus_id, name, 0, run, kind=INDEX_JOB)


# -- MiniLM document vectors, built in the background once the demo corpus is ready ----------------------
VECTORS_STEP = "document vectors"  # Progress.step of a document-vectors job; docs_done/docs_total count documents


def doc_vectors_job(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """The document-vectors job this server process ran or runs for the corpus (None if none)."""
    return registry.get(str(ws.path), corpus.corpus_id, VECTORS_JOB)


def start_doc_vectors(ws: Workspace, corpus: Corpus, registry: JobRegistry = REGISTRY) -> BackgroundJob:
    """Store the corpus's MiniLM document vectors (backend.doc_embeddings) in a background thread, then start
    its feature-search index when that is due (ensure_feature_index): both use MiniLM, one after the other."""
    corpus_id, name = corpus.corpus_id, corpus.name

    def run(progress: ProgressCallback, cancel: threading.Event) -> None:
        status = _run_counted(name, VECTORS_STEP, corpus.n_docs, progress, cancel,
                              lambda on_count: doc_embeddings.build_doc_embeddings(ws, corpus_id, progress=on_count, cancel=cancel))
        if status == "done":
            ensure_feature_index(ws, ws.corpus(corpus_id), registry=registry)

    return registry.start(str(ws.path), corpus_id, name, corpus.n_docs, run, kind=VECTORS_JOB)


def ensure_doc_vectors(ws: Workspace, corpus: Corpus, requested: bool = False,
                       registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """Start the background document vectors of a ready corpus that lacks some, and return the running job;
    None when nothing runs. It starts on its own for the demo corpus of the default workspace (the first
    launch leaves them to the dashboard), for other corpora when `requested`."""
    job = doc_vectors_job(ws, corpus, registry)
    if job is not None and job.running:
        return job
    handle = ws.corpus(corpus)
    if handle.status != "ready" or doc_embeddings.is_complete(ws, handle):
        return None
    if not requested and (job is not None and job.error or not demo.is_demo_corpus(ws, handle)):
        return None
    return start_doc_vectors(ws, handle, registry)


def wait_for_doc_vectors(ws: Workspace, corpus: Corpus, on_progress: ProgressCallback | None = None,
                         registry: JobRegistry = REGISTRY, poll_s: float = 0.5) -> None:
    """Wait while this process's document-vectors job for the corpus runs, reporting its progress."""
    while (job := doc_vectors_job(ws, corpus, registry)) is not None and job.running:
        if on_progress is not None:
            on_progress(job.progress)
        job.thread.join(poll_s)


def ensure_feature_index(ws: Workspace, corpus: Corpus, requested: bool = False,
                         registry: JobRegistry = REGISTRY) -> BackgroundJob | None:
    """Start (or resume) the background feature-search index of a ready corpus when it is not complete, and
    return the running job; None when nothing runs.

    It starts on its own for the demo corpus of the default workspace (once the dashboard is up), and for
    any corpus whose index was started before (an interrupted build, or labels changed since); for other
    corpora when `requested` (the user searched). A failed build waits for the next request."""
    job = feature_index_job(ws, corpus, registry)
    if job is not None and job.running:
        return job
    handle = ws.corpus(corpus)
    if handle.status != "ready" or ws.needs_finalize(handle):
        return None  # labels and contexts come from the finishing steps
    vectors = doc_vectors_job(ws, handle, registry)
    if not requested and vectors is not None and vectors.running and vectors.thread is not threading.current_thread():
        return None  # that job starts the index when it ends (MiniLM serves one job at a time)
    status = search.feature_index_status(ws, handle)
    if status.complete:
        return None
    if not requested and (job is not None and job.error or not (status.started or demo.is_demo_corpus(ws, handle))):
        return None
    return start_feature_index(ws, handle, registry)


def wait_until_searchable(ws: Workspace, corpus: Corpus, timeout_s: float = 180.0,
                          registry: JobRegistry = REGISTRY) -> search.FeatureIndexStatus:
    """Wait while this process's index job runs and nothing is indexed yet (the first chunk takes seconds);
    returns the index status then. A search before any chunk is stored would find nothing."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = search.feature_index_status(ws, corpus)
        job = feature_index_job(ws, corpus, registry)
        if status.n_indexed > 0 or job is None or not job.running or time.monotonic() > deadline:
            return status
        time.sleep(0.2)
