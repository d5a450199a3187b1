"""The notebook-facing API: a Workspace = one DuckDB store + its (model, hook, SAE), loaded lazily.

    ws = Workspace.open_or_create("workspaces/default.duckdb")
    ws.add_corpus("reviews", df, text_column="text"); ws.embed("reviews")
    X = ws.latents("reviews", pooling="binary")          # scipy CSR, docs x features
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend import labels as label_store
from backend.activations import EmbedConfig, sae_embed_texts, token_activations
from backend.runtime import DTYPE_CHOICES, resolve_dtype_name
from backend.context import DEFAULT_MAX_TOKENS, FORMATTINGS, WorkspaceContext, WorkspaceSettings  # noqa: F401 (re-exported)
from backend.config import CACHE_DIR, DEFAULT_MODEL, DEFAULT_SAE_DIR, SHIPPED_SAES, pick_device
from backend.corpora import ReadOptions, validate_corpus_name
from backend.engines.ray_engine import RayConfig, embed_with_ray
from backend.errors import check_feature_ids
from backend.feature_precompute import FinalizeProgress, finalize_corpus
from backend.jobs import JobConfig, Progress, ProgressCallback, embed_corpus
from backend.models import ModelDims, ReaderModel, load_reader, model_dims
from backend.saes import (SAEError, cache_sae, check_model_name, check_pairing, check_sae_fits_model, load_sae, model_kwargs,
                          sae_info)
from backend.store import Corpus, Pooling, Store, StoreError
from backend.store.presence import DEFAULT_PRESENCE_THRESHOLD, check_threshold
from backend.streaming import add_corpus_streamed, prepare_documents, read_corpus
from backend.workspace_analyses import WorkspaceAnalyses

if TYPE_CHECKING:
    from typing import Callable

    from backend.chat import ChatFn
    from backend.llm import LLMConfig


DTYPES = DTYPE_CHOICES  # "auto": bf16 on CUDA and on CPUs with native bf16, else float32 (bench/dtype_agreement.py)


def default_dtype_name(device: str) -> str:
    """A new workspace's dtype when its spec names none: "auto", the runtime's own policy (the fastest dtype
    measured exact enough: bf16 on CUDA and on CPUs with native bf16, else float32), so the two never disagree."""
    return "auto"


@dataclass
class WorkspaceSpec:
    """Which model, SAE and formatting a new workspace uses."""

    model: str = DEFAULT_MODEL
    sae: str = str(DEFAULT_SAE_DIR)
    formatting: str | None = None  # None: what the SAE was trained with
    max_tokens: int = DEFAULT_MAX_TOKENS
    dtype: str | None = None  # None: "auto", recorded resolved (bf16 on CUDA and native-bf16 CPUs, else float32)
    # A feature is stored as present in a document when its max activation reaches this fraction of the
    # feature's typical activation (backend.store.presence); 0 keeps every positive activation, exactly (raw).
    presence_threshold: float = DEFAULT_PRESENCE_THRESHOLD

    def __post_init__(self) -> None:
        self.presence_threshold = check_threshold(self.presence_threshold)
        if self.sae in SHIPPED_SAES:  # a shipped key ("lexical", "semantic") names its folder
            self.sae = str(SHIPPED_SAES[self.sae].folder)
        if self.formatting is not None and self.formatting not in FORMATTINGS:
            raise StoreError(f"Formatting must be one of {', '.join(FORMATTINGS)}, not {self.formatting!r}.")
        if not 8 <= int(self.max_tokens) <= 32768:
            raise StoreError(f"max_tokens must be between 8 and 32768, not {self.max_tokens}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")


@dataclass
class TokenActivations:
    tokens: list[str]
    acts: np.ndarray  # [n_tokens, n_features asked]
    count_mask: list[bool]
    features: list[int] | None


class Workspace(WorkspaceAnalyses):
    """A DuckDB workspace and the reader model + SAE it was built with: the notebook's and the pages' front door."""

    def __init__(self, store: Store, device: str | None = None, reader: ReaderModel | None = None, sae: Any = None):
        self.store = store
        self.device = device
        self._reader = reader
        self._sae = sae
        self._load_lock = threading.Lock()
        self.settings = WorkspaceSettings.from_meta(store.meta(), store.path)

    # -- opening -------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, spec: WorkspaceSpec = WorkspaceSpec(), device: str | None = None,
        reader: ReaderModel | None = None, sae: Any = None,
    ) -> "Workspace":
        """Create a workspace for (model, SAE); the SAE's recorded hook decides the hook."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists; open it instead.")
        sae = sae if sae is not None else load_sae(spec.sae, device=device)
        # The workspace points at a content-addressed copy, so moving, retraining or deleting the
        # original folder cannot silently change (or break) what this workspace reads.
        source = str(cache_sae(spec.sae)) if Path(spec.sae).is_dir() else spec.sae
        info = sae_info(sae, source)
        model_name = reader.name if reader is not None else spec.model
        if reader is not None:
            check_pairing(info, model_name, reader.d_model)
        else:
            check_model_name(info, model_name)  # also knows a model's Hugging Face id (SAELens release SAEs)
        dims = ModelDims(reader.n_layers, reader.d_model) if reader is not None else model_dims(model_name)
        check_sae_fits_model(info, dims.n_layers if dims else None, dims.d_model if dims else None,
                             repr(model_name))  # refuses a hook, layer or width the model does not have
        store = Store(path)
        store.set_meta(
            model=model_name, hook=info.hook_name, sae_source=info.source, sae_origin=str(spec.sae), sae_sha256=info.sha256,
            d_sae=info.d_sae, d_in=info.d_in, architecture=info.architecture,
            formatting=spec.formatting or info.formatting, max_tokens=spec.max_tokens,
            dtype=resolve_dtype_name(spec.dtype or default_dtype_name(pick_device(device)), pick_device(device)),  # fixed
            # at creation: resumed runs embed alike
            sae_report=info.report, presence_threshold=spec.presence_threshold,
        )
        return cls(store, device, reader, sae)

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, reader: ReaderModel | None = None, sae: Any = None,
             idle_release_s: float | None = None) -> "Workspace":
        """Open an existing workspace; `idle_release_s` lets other processes in while it sits idle (the dashboard)."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"No workspace at {path}.")
        store = Store(path, idle_release_s=idle_release_s)
        try:
            return cls(store, device, reader, sae)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open_or_create(cls, path: str | Path, spec: WorkspaceSpec = WorkspaceSpec(), device: str | None = None) -> "Workspace":
        return cls.open(path, device) if Path(path).exists() else cls.create(path, spec, device)

    def close(self) -> None:
        self.store.close()

    @property
    def path(self) -> Path:
        return self.store.path

    # -- model and SAE, loaded on first use ------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """Deprecated: the settings as a dict; use `ws.settings`."""
        return asdict(self.settings)

    @property
    def hook(self) -> str:
        return self.settings.hook

    @property
    def d_sae(self) -> int:
        return self.settings.d_sae

    @property
    def embed_config(self) -> EmbedConfig:
        return EmbedConfig(formatting=self.settings.formatting, max_tokens=self.settings.max_tokens)

    @property
    def sae(self) -> Any:
        with self._load_lock:
            if self._sae is None:
                self._sae = load_sae(self._sae_folder(), device=self.device, expected_sha256=self.settings.sae_sha256)
                if int(self._sae.cfg.d_sae) != self.d_sae:
                    raise SAEError("The SAE on disk no longer matches this workspace (its size changed).")
            return self._sae

    def _sae_folder(self) -> str:
        """The recorded SAE, or its content-addressed copy when the recorded folder has gone."""
        source, digest = self.settings.sae_source, self.settings.sae_sha256
        if Path(source).exists() or ":" in source and not Path(source).is_absolute() or not digest:
            return source
        for candidate in (Path(CACHE_DIR) / "saes" / digest, Path(CACHE_DIR) / "saes" / digest[:16]):
            if candidate.is_dir():
                return str(candidate)
        raise SAEError(f"This workspace's SAE is gone from {source} and is not in the SAE cache; put the SAE folder "
                       f"(weights sha256 {digest[:16]}…) back there, or create a new workspace.")

    @property
    def reader(self) -> ReaderModel:
        sae = self.sae
        with self._load_lock:
            if self._reader is None:
                self._reader = load_reader(self.settings.model, device=self.device, dtype=self.settings.dtype,
                                           from_pretrained_kwargs=model_kwargs(sae))
                check_pairing(sae_info(sae, self.settings.sae_source), self._reader.name, self._reader.d_model,
                              allow_other_model=True)
            return self._reader

    # -- typed corpus handles -------------------------------------------------
    def corpus(self, corpus: "str | int | Corpus") -> Corpus:
        """The current handle of one corpus, by name, id or an older handle (raises StoreError if absent)."""
        key = corpus.corpus_id if isinstance(corpus, Corpus) else corpus
        if key is None or not isinstance(key, (str, int, np.integer)) or isinstance(key, bool):
            raise StoreError(f"A corpus is named by its name or id, not {type(key).__name__}.")
        return self.store.corpus(key)

    def corpus_list(self) -> list[Corpus]:
        return self.store.corpora()

    def has_corpus(self, name: str) -> bool:
        return self.store.corpus_exists(name)

    # -- corpora -------------------------------------------------------------
    def add_corpus(
        self, name: str, data: pd.DataFrame | str | Path | bytes | BinaryIO, text_column: str | None = None,
        file_name: str | None = None, options: ReadOptions = ReadOptions(),
    ) -> int:
        """Validate and store a corpus from a DataFrame or a file; returns its id. Nothing is stored on error.

        A file path is streamed into the store in chunks (backend.streaming), so a file larger than memory is
        fine; bytes and file objects are read whole, under `options.max_bytes`."""
        name = validate_corpus_name(name)
        if isinstance(data, (str, Path)):
            return add_corpus_streamed(self.store, name, data, text_column, options, file_name=file_name)
        df = data if isinstance(data, pd.DataFrame) else read_corpus(data, file_name, options)
        df, column = prepare_documents(df, text_column, options)  # one per-document limit; optional windows
        source = file_name or (str(data) if isinstance(data, (str, Path)) else "dataframe")
        return self.store.add_corpus(name, df, column, source=source)

    def corpora(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.store.corpora()])

    def embed(
        self, corpus: "str | int | Corpus", progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
        job_cfg: JobConfig = JobConfig(), finalize_progress: FinalizeProgress | None = None,
        engine: str = "local", ray: "RayConfig | None" = None,
    ) -> Progress:
        """Embed what is not embedded yet (resumable), then compute the corpus's feature statistics.

        The corpus is followed by id: renaming it meanwhile is harmless. Its status moves
        pending → embedding → finalizing → ready, and turns ready only when finalizing has committed.
        `engine="ray"` maps the batch function with Ray Data actors (backend.engines.ray_engine, `ray` its
        RayConfig: a cluster address, workers, GPUs per worker); the local engine uses this process's threads."""
        corpus_id = self.corpus(corpus).corpus_id
        if engine == "ray":
            state = embed_with_ray(self, corpus_id, ray or RayConfig(), progress, cancel)
        elif engine == "local":
            state = embed_corpus(self.store, corpus_id, self.reader, self.sae, self.hook, self.embed_config, job_cfg,
                                 progress, cancel)
        else:
            raise StoreError(f"Unknown engine {engine!r}; use 'local' or 'ray'.")
        if state.status == "done":
            self.finalize(corpus_id, finalize_progress)
        return state

    def finalize(self, corpus: "str | int | Corpus", progress: FinalizeProgress | None = None) -> None:
        """Per-corpus feature statistics and labels, once embedding is complete (idempotent, resumable).

        `progress(step, fraction)` follows each step (feature_precompute.FINALIZE_STEPS: statistics, contexts,
        labels, logit lens) from 0 to 1 within that step."""
        handle = self.corpus(corpus)
        if handle.n_embedded < handle.n_docs:
            raise StoreError(f"Corpus {handle.name!r} is not fully embedded yet ({handle.n_embedded:,} of "
                             f"{handle.n_docs:,} documents); embed it first.")
        self.store.set_status(handle.corpus_id, "finalizing")
        try:
            finalize_corpus(self, handle.corpus_id, progress=progress)
        except BaseException as exc:
            self.store.set_status(handle.corpus_id, "finalizing", f"Finishing failed: {type(exc).__name__}: {exc}")
            raise
        self.store.set_status(handle.corpus_id, "ready")

    def needs_finalize(self, corpus: "str | int | Corpus") -> bool:
        """Fully embedded but its statistics/labels are missing (an interrupted or failed finishing step)."""
        handle = self.corpus(corpus)
        if handle.n_docs == 0 or handle.n_embedded < handle.n_docs:
            return False
        if handle.status != "ready":
            return True
        row = self.store.query_one("SELECT count(*) FROM feature_stats WHERE corpus_id = ?", [handle.corpus_id])
        return not row or row[0] == 0

    def delete_corpus(self, corpus: "str | int | Corpus") -> None:
        self.store.delete_corpus(self.corpus(corpus).corpus_id)

    def rename_corpus(self, corpus: "str | int | Corpus", new_name: str) -> None:
        self.store.rename_corpus(self.corpus(corpus).corpus_id, validate_corpus_name(new_name))

    # -- reading embeddings ------------------------------------------------------
    def latents(self, corpus: "str | int | Corpus", pooling: Pooling = "max", threshold: float = 0.0) -> sp.csr_matrix:
        """Documents x features (scipy CSR). `threshold` is an absolute activation on top of the workspace's
        presence threshold: rows under that were never stored. Raw values (every positive activation, exact)
        need a workspace created with `WorkspaceSpec(presence_threshold=0)`."""
        return self.store.latents(corpus, pooling, self.d_sae, threshold)

    def documents(self, corpus: "str | int | Corpus", doc_ids: list[int] | np.ndarray | None = None, limit: int | None = None) -> pd.DataFrame:
        return self.store.documents(corpus, doc_ids, limit)

    def top_documents(self, corpus: "str | int | Corpus", feature_id: int, n: int = 10) -> pd.DataFrame:
        (fid,) = check_feature_ids([feature_id], self.d_sae, StoreError)
        return self.store.top_documents(corpus, fid, n)

    def token_activations(self, corpus: "str | int | Corpus", doc_id: int, features: list[int] | int | None = None) -> TokenActivations:
        """Recompute token-level activations of one stored document (for highlighting)."""
        text = self.store.texts(corpus, [int(doc_id)])
        if not text:
            raise StoreError(f"No document {doc_id} in corpus {corpus!r}.")
        return self.text_activations(text[0], features)

    def text_activations(self, text: str, features: list[int] | int | None = None) -> TokenActivations:
        """Token-level activations of any text (search by example)."""
        feats = [features] if np.isscalar(features) else features
        feats = None if feats is None else check_feature_ids(feats, self.d_sae)
        tokens, acts, mask = token_activations(self.reader, self.sae, self.hook, text, self.embed_config, feats)
        return TokenActivations(tokens, acts, mask, feats)

    def embed_text(self, text: str) -> dict[int, float]:
        """Max-pooled feature activations of one text: {feature_id: max_act}."""
        rows = sae_embed_texts(self.reader, self.sae, self.hook, [text], self.embed_config)
        return {int(f): float(a) for f, a in zip(rows.feature, rows.max_act)}

    def doc_lengths(self, corpus: "str | int | Corpus") -> np.ndarray:
        """Counted tokens per doc_id (what the diff's length control stratifies on)."""
        return self.store.doc_lengths(self.corpus(corpus).corpus_id)

    def metadata(self, corpus: "str | int | Corpus", column: str) -> pd.Series:
        """One metadata column as strings, indexed by doc_id."""
        return self.store.metadata(self.corpus(corpus).corpus_id, column)

    def labels(self, corpus: "str | int | Corpus | None" = None, feature_ids: list[int] | None = None) -> dict[int, str]:
        """{feature_id: best label} (hand > LLM > auto), preferring labels derived from `corpus`."""
        return label_store.labels(self, self.corpus(corpus) if corpus is not None else None, feature_ids)

    def label_features(self, corpus: "str | int | Corpus", feature_ids: list[int], llm: LLMConfig | ChatFn | None = None,
                       progress: Callable[[int, int], None] | None = None, force: bool = False) -> pd.DataFrame:
        """LLM labels (explain, then score on held-out samples) for these features, stored in the workspace.

        llm: an OpenAI-compatible server (`LLMConfig`), a chat function such as
        `backend.reader_llm.reader_chat(ws.reader)` (an instruct reader model labels its own features), or
        None for the operator's configured server (LLMError when there is none). Features already holding an
        LLM label for this corpus are not asked again unless `force`. Hand labels still win in `labels()`.
        Returns feature_id, label, score (held-out accuracy), accuracy, f1, n_scored, cached."""
        return label_store.llm_label_features(self, self.corpus(corpus), feature_ids, llm, progress=progress, force=force)

    def label_revision(self) -> tuple[int, str]:
        """Changes whenever any label is written (a cache key for pages that show labels)."""
        return label_store.label_revision(self.store)

    def active_features(self, corpus: "str | int | Corpus") -> pd.DataFrame:
        """feature_id, n_docs (documents where it fires), densest first, from the stored statistics."""
        cid = self.corpus(corpus).corpus_id
        return self.store.query_df(
            "SELECT feature_id, n_docs_active AS n_docs FROM feature_stats WHERE corpus_id = ? AND n_docs_active > 0 "
            "ORDER BY n_docs_active DESC, feature_id", [cid])

    def summary(self) -> dict[str, Any]:
        """Model, hook, SAE size and quality figures, corpora with document and token counts."""
        m = self.meta
        return {
            "path": str(self.store.path), "model": m.get("model"), "hook": m.get("hook"), "sae": m.get("sae_source"),
            "d_sae": m.get("d_sae"), "architecture": m.get("architecture"), "formatting": m.get("formatting"),
            "sae_report": m.get("sae_report"),
            "presence": self.store.presence_summary(),
            "corpora": [asdict(c) for c in self.store.corpora()],
        }
