"""A Ray Data engine: the pure batch function mapped over a corpus by actors, on one machine or a cluster.

    python -m backend embed WS.duckdb CORPUS --engine ray [--address ADDR] [--workers N] [--gpus-per-worker G]
    embed_with_ray(ws, "reviews", RayConfig(workers=4))        # the same from Python

How it runs:

1. The corpus's pending documents are exported from the workspace as Parquet files (streamed from DuckDB,
   bounded memory) into `<workspace>.ray/corpus-<id>/inputs/`, one row group per batch of documents. Each
   file's documents are ordered longest text first (after the presence calibration's documents, when the
   workspace still needs them): a batch then holds documents of similar lengths, so its padded forwards
   waste little (on 800 demo reviews, 64-document batches in doc-id order pad 41k tokens to 83k; ordered by
   length, to 57k), and the longest batches start first, so no worker is left with one at the end.
2. `map_batches` runs `EmbedActor` (backend.engines.lite, which imports no DuckDB, pandas or SciPy) in an
   actor pool over one small item per row group: each actor loads the reader model and the SAE once, reads
   its batch of documents, calls the pure batch function (`backend.activations.sae_embed_texts`) and writes
   the batch's sparse rows as one Parquet shard (under a temporary name, then renamed, so a shard on disk is
   always complete); it returns the shard's name, its documents and tokens and the seconds it took.
3. The driver ingests each shard as it arrives: its rows and its documents' done-marks in one transaction,
   with the shard's name recorded in `ingested_shards` (`Store.write_embeddings(..., shard=...)`).

Kill it at any point and run it again: shards on disk that were never ingested are ingested first, shards
already ingested are skipped, documents already done are never written twice, and only documents in
neither are embedded again. Presence (backend.store.presence) is judged at ingest by the workspace's
scales; a workspace that still needs them is calibrated on the same documents as the local engine (its
first `CALIBRATION_DOCS` pending documents), read from the shards, so no document is embedded twice.

On a cluster (`--address`), every node needs this project at the same path with its model cache
(`python -m backend prepare --model-only`) and the SAE folder, and the workspace's folder (where the shards
are written) must be shared storage.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from backend.activations import SparseRows
from backend.config import REPO_ROOT
from backend.engines.calibration import concat_rows, select_docs
from backend.engines.lite import SHARD_SUFFIX, EmbedActor, write_shard  # noqa: F401  (what an actor imports: lite)
from backend.errors import UnavailableError, UserError
from backend.jobs import Progress, ProgressCallback
from backend.store import Store, presence

if TYPE_CHECKING:
    from backend.context import WorkspaceContext
    from backend.store import Corpus


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray engine runs.

    `address`: None starts a local Ray for the job (stopped after it); "auto" or "ray://host:10001" joins a
    cluster. `workers` actors each use `threads_per_worker` CPU threads and `gpus_per_worker` GPUs (a fraction
    shares one GPU). `docs_per_batch` documents make one batch of the pure function and one shard."""

    address: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    docs_per_batch: int = 64
    input_rows_per_file: int = 10_000
    shard_dir: str | None = None  # default: beside the workspace, <workspace>.ray/corpus-<id>

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker", "docs_per_batch", "input_rows_per_file"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive whole number, not {value!r}.")
        if not 0 <= float(self.gpus_per_worker) <= 64:
            raise UserError(f"gpus_per_worker must be between 0 and 64, not {self.gpus_per_worker!r}.")


def shard_folder(workspace_path: Path, corpus_id: int, cfg: RayConfig) -> Path:
    base = Path(cfg.shard_dir) if cfg.shard_dir else workspace_path.with_name(workspace_path.name + ".ray")
    return base / f"corpus-{int(corpus_id)}"


# -- shards: one Parquet file of sparse rows per batch (lite.write_shard), document arrays in its metadata --
def shard_docs(path: Path) -> np.ndarray:
    """The doc ids a shard holds (from its metadata, without reading its rows)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return np.asarray(json.loads(meta[b"saedash_docs"])["doc_ids"], np.int64)


def read_shard(path: Path) -> tuple[np.ndarray, SparseRows]:
    """(doc_ids, rows whose `doc` indexes doc_ids) of a shard."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    docs = json.loads(table.schema.metadata[b"saedash_docs"])
    doc_ids = np.asarray(docs["doc_ids"], np.int64)
    cols = {c: table.column(c).to_numpy() for c in table.column_names}
    rows = SparseRows(
        np.searchsorted(doc_ids, cols["doc_id"]).astype(np.int32), cols["feature_id"], cols["max_act"],
        cols["argmax_pos"], cols["n_active"], cols["sum_act"],
        np.asarray(docs["n_tokens"], np.int32), np.asarray(docs["truncated"], bool))
    return doc_ids, rows


def input_items(parts: list[Path]) -> list[dict[str, Any]]:
    """One item per row group of the exported input files: the unit of work of one actor call."""
    import pyarrow.parquet as pq

    return [{"path": str(p), "row_group": g} for p in parts for g in range(pq.ParquetFile(p).num_row_groups)]


# -- the driver: ingest shards as they arrive ----------------------------------------------------
class ShardIngest:
    """Writes finished shards into the workspace, after calibrating its presence scales if it needs them."""

    def __init__(self, store: Store, corpus_id: int, folder: Path, pending: np.ndarray, d_sae: int) -> None:
        self.store, self.corpus_id, self.folder, self.d_sae = store, corpus_id, folder, d_sae
        self.calib_ids = (set(np.asarray(pending[: presence.CALIBRATION_DOCS]).tolist())
                          if store.needs_presence_calibration() else set())
        self.waiting: list[str] = []  # finished shards held back until the calibration documents are in
        self.docs_written = 0
        self.tokens_written = 0

    def add(self, name: str) -> None:
        self.waiting.append(name)
        if self.calib_ids:
            self._calibrate_when_ready()
        if not self.calib_ids:
            for shard in self.waiting:
                self._ingest(shard)
            self.waiting = []

    def waiting_docs(self) -> set[int]:
        out: set[int] = set()
        for name in self.waiting:
            out |= set(shard_docs(self.folder / name).tolist())
        return out

    def _calibrate_when_ready(self) -> None:
        held = [(name, shard_docs(self.folder / name)) for name in self.waiting]
        have = set().union(*(set(d.tolist()) for _, d in held)) if held else set()
        if not self.calib_ids <= have:
            return
        parts = []
        for name, docs in held:
            doc_ids, rows = read_shard(self.folder / name)
            mine = np.flatnonzero(np.isin(doc_ids, list(self.calib_ids)))
            if len(mine):
                parts.append((doc_ids[mine], select_docs(rows, mine)))
        ids = np.concatenate([p[0] for p in parts])
        rows = concat_rows([p[1] for p in parts])
        self.store.set_presence_scales(presence.calibrate(rows, len(ids), self.d_sae), self.corpus_id)
        self.calib_ids = set()

    def _ingest(self, name: str) -> None:
        path = self.folder / name
        doc_ids, rows = read_shard(path)
        written = self.store.write_embeddings(self.corpus_id, doc_ids, rows, shard=name)
        self.docs_written += written
        if written:
            self.tokens_written += int(np.asarray(rows.n_tokens).sum())
        path.unlink(missing_ok=True)  # recorded in ingested_shards: a re-run would skip it anyway


def _finished_shards(folder: Path) -> list[str]:
    """Complete shards left in the folder (temporaries of a killed writer are dropped)."""
    for tmp in folder.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)
    return sorted(p.name for p in folder.glob(f"shard-*{SHARD_SUFFIX}"))


def _start_ray(cfg: RayConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it (and should stop it)."""
    try:
        import ray
    except ImportError as exc:
        raise UnavailableError("The Ray engine needs Ray Data: pip install 'ray[data]' (pinned in requirements.txt).") from exc
    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "include_dashboard": False}
    if cfg.address:
        kwargs["address"] = cfg.address
    else:
        kwargs["num_cpus"] = cfg.workers * cfg.threads_per_worker
        if cfg.gpus_per_worker:
            kwargs["num_gpus"] = int(np.ceil(cfg.workers * cfg.gpus_per_worker))
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - connection problems are the user's to fix
        if cfg.address:
            raise UnavailableError(f"Could not reach the Ray cluster at {cfg.address!r}: {exc}") from exc
        raise
    return True


class _RayRun:
    """One `embed_with_ray` call: the corpus, its shard folder, the driver's ingest and the progress it reports."""

    def __init__(self, ws: WorkspaceContext, corpus: "str | int | Corpus", cfg: RayConfig,
                 progress: ProgressCallback | None) -> None:
        self.store, self.info, self.progress = ws.store, ws.corpus(corpus), progress
        self.cid = self.info.corpus_id
        self.folder = shard_folder(self.store.path, self.cid, cfg)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending = self.store.pending_doc_ids(self.cid)
        done0 = self.info.n_docs - len(self.pending)
        self.state = Progress(self.info.name, done0, self.info.n_docs, 0, 0.0, docs_at_start=done0)
        self.store.set_status(self.cid, "embedding")
        self.t0 = time.time()
        self.ingest = ShardIngest(self.store, self.cid, self.folder, self.pending, ws.d_sae)
        self.embedded = 0  # documents in shards that arrived this run (held back while the calibration documents come)

    def report(self, note: str | None = None) -> None:
        state, ingest = self.state, self.ingest
        state.docs_done = self.info.n_docs - len(self.pending) + ingest.docs_written
        state.tokens_done = ingest.tokens_written
        state.elapsed_s = time.time() - self.t0
        if note is None and ingest.calib_ids and self.embedded:
            note = (f"Calibrating presence on the first {len(ingest.calib_ids):,} documents "
                    f"({self.embedded:,} documents embedded)")
        state.note = note if state.status == "running" else None
        if self.progress:
            self.progress(state)

    def export_inputs(self, cfg: RayConfig) -> list[Path]:
        """The pending documents as Parquet input files, one row group per batch. Longest documents first
        (batches of similar lengths pad little, the longest start first), after the calibration documents,
        which the driver needs before it ingests anything."""
        inputs = self.folder / "inputs"
        shutil.rmtree(inputs, ignore_errors=True)
        return self.store.export_pending_texts(self.cid, inputs, cfg.input_rows_per_file, cfg.docs_per_batch,
                                               by_length=True, head=presence.CALIBRATION_DOCS if self.ingest.calib_ids else 0)

    def ingest_results(self, out: Any, cancel: threading.Event | None,
                       on_shard: Callable[[dict[str, Any]], None] | None) -> None:
        """Ingest each shard as it arrives. prefetch_batches=0: each shard reaches the driver when its batch ends
        (a prefetching iterator holds it back until the next one is done)."""
        for batch in out.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            for i, name in enumerate(batch["shard"]):
                if name:
                    self.embedded += int(batch["n_docs"][i])
                    if on_shard:
                        on_shard({"shard": str(name), "n_docs": int(batch["n_docs"][i]),
                                  "n_tokens": int(batch["n_tokens"][i]), "seconds": float(batch["seconds"][i])})
                    self.ingest.add(str(name))
            self.report()
            if cancel is not None and cancel.is_set():
                self.state.status = "cancelled"
                break

    def fail(self, exc: BaseException) -> None:
        """Record a failure (call from the `except` block: the traceback is the one being handled)."""
        self.state.status, self.state.error = "failed", f"{type(exc).__name__}: {exc}"
        self.store.set_status(self.cid, "failed", traceback.format_exc(limit=3))
        if self.progress:
            self.progress(self.state)

    def finish(self) -> Progress:
        state, left = self.state, len(self.store.pending_doc_ids(self.cid))
        if state.status == "running":
            state.status = "done" if left == 0 else "failed"
            if left:
                state.error = f"{left:,} documents were not embedded"
        if state.status == "done":
            shutil.rmtree(self.folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # WS.duckdb.ray/ itself once no other corpus has shards in it
                self.folder.parent.rmdir()
        self.store.set_status(self.cid, "finalizing" if state.status == "done" else (
            "pending" if state.status == "cancelled" else state.status), state.error)
        self.report()
        return state


def _embedding_actors(ws: WorkspaceContext, cfg: RayConfig, folder: Path, held: set[int], parts: list[Path]) -> Any:
    """The Ray dataset of shards: `EmbedActor`s mapped over one small item per batch of documents (each actor
    reads its batch from the input files, so nothing holds the corpus in memory)."""
    import ray

    items = input_items(parts)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 100 * cfg.workers)))
    settings = ws.settings
    resources: dict[str, float] = {"num_cpus": cfg.threads_per_worker}
    if cfg.gpus_per_worker:
        resources["num_gpus"] = float(cfg.gpus_per_worker)
    return ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs=dict(model=settings.model, sae_source=settings.sae_source, hook=settings.hook,
                                   embed_cfg=asdict(ws.embed_config), dtype=settings.dtype,
                                   threads=cfg.threads_per_worker, shard_dir=str(folder),
                                   device="cuda" if cfg.gpus_per_worker else "cpu", skip=frozenset(held)),
        batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(cfg.workers, len(items))), **resources,
    )


def embed_with_ray(ws: WorkspaceContext, corpus: "str | int | Corpus", cfg: RayConfig = RayConfig(),
                   progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                   on_shard: Callable[[dict[str, Any]], None] | None = None) -> Progress:
    """Embed the corpus's pending documents with Ray Data actors; same guarantees as backend.jobs.embed_corpus.

    Returns the final Progress (status done, cancelled or failed). Finalizing (statistics, labels) is the
    workspace's next step, as after the local engine: `Workspace.embed(..., engine="ray")` does both.
    `on_shard` receives each shard as it arrives, before it is ingested: {"shard", "n_docs", "n_tokens",
    "seconds"} (seconds: the actor's time embedding and writing it), e.g. to measure the workers' rate."""
    import ray

    run, started = _RayRun(ws, corpus, cfg, progress), False
    try:
        for name in _finished_shards(run.folder):  # a killed run's shards: nothing in them is embedded again
            run.ingest.add(name)
        if run.ingest.docs_written:
            run.report()
        held = run.ingest.waiting_docs()
        if len(run.store.pending_doc_ids(run.cid)) - len(held) > 0 and not (cancel is not None and cancel.is_set()):
            parts = run.export_inputs(cfg)
            run.report(f"Starting {cfg.workers} Ray workers (each loads the model and the SAE)")
            started = _start_ray(cfg)
            _quiet_ray_data()
            run.ingest_results(_embedding_actors(ws, cfg, run.folder, held, parts), cancel, on_shard)
            shutil.rmtree(run.folder / "inputs", ignore_errors=True)
    except BaseException as exc:
        run.fail(exc)
        raise
    finally:
        if started:
            ray.shutdown()
    return run.finish()


def _quiet_ray_data() -> None:
    """No per-operator progress bars or INFO lines: progress reaches the user through the callback."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    for attr in ("print_on_execution_start", "verbose_stats_logs"):
        if hasattr(ctx, attr):
            setattr(ctx, attr, False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
