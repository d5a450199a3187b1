"""The notebook-facing API: a Workspace = one DuckDB store + its (model, hook, SAE), loaded lazily.

    ws = Workspace.open_or_create("workspaces/default.duckdb")
    ws.add_corpus("reviews", df, text_column="text"); ws.embed("reviews")
    X = ws.latents("reviews", pooling="binary")          # scipy CSR, docs x features
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend.activations import EmbedConfig, embed_texts, token_activations
from backend.config import DEFAULT_MODEL, DEFAULT_SAE_DIR
from backend.corpora import ReadOptions, guess_text_column, read_corpus, validate_text_column
from backend.jobs import JobConfig, Progress, ProgressCallback, embed_corpus
from backend.models import ReaderModel, hook_layer, load_reader
from backend.saes import SAEError, check_pairing, load_sae, sae_info
from backend.store import Pooling, Store, StoreError


@dataclass
class WorkspaceSpec:
    """Which model, SAE and formatting a new workspace uses."""

    model: str = DEFAULT_MODEL
    sae: str = str(DEFAULT_SAE_DIR)
    formatting: str | None = None  # None: what the SAE was trained with
    max_tokens: int = 512
    dtype: str = "float32"


@dataclass
class TokenActivations:
    tokens: list[str]
    acts: np.ndarray  # [n_tokens, n_features asked]
    count_mask: list[bool]
    features: list[int] | None


class Workspace:
    """A DuckDB workspace and the reader model + SAE it was built with."""

    def __init__(self, store: Store, device: str | None = None, reader: ReaderModel | None = None, sae: Any = None):
        self.store = store
        self.device = device
        self._reader = reader
        self._sae = sae
        self._load_lock = threading.Lock()
        self.meta = store.meta()
        if "hook" not in self.meta:
            raise StoreError(f"{store.path} is not a workspace (no model/SAE recorded).")

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
        info = sae_info(sae, spec.sae)
        model_name = reader.name if reader is not None else spec.model
        if reader is not None:
            check_pairing(info, model_name, reader.d_model)
        elif info.model_name and info.model_name != model_name:
            raise SAEError(f"This SAE was trained on {info.model_name!r}, not {model_name!r}; pair it with its own model.")
        hook_layer(info.hook_name)  # refuses hooks we cannot stop at
        store = Store(path)
        store.set_meta(
            model=model_name, hook=info.hook_name, sae_source=info.source, sae_sha256=info.sha256,
            d_sae=info.d_sae, d_in=info.d_in, architecture=info.architecture,
            formatting=spec.formatting or info.formatting, max_tokens=spec.max_tokens, dtype=spec.dtype,
            sae_report=info.report,
        )
        return cls(store, device, reader, sae)

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, reader: ReaderModel | None = None, sae: Any = None) -> "Workspace":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"No workspace at {path}.")
        return cls(Store(path), device, reader, sae)

    @classmethod
    def open_or_create(cls, path: str | Path, spec: WorkspaceSpec = WorkspaceSpec(), device: str | None = None) -> "Workspace":
        return cls.open(path, device) if Path(path).exists() else cls.create(path, spec, device)

    def close(self) -> None:
        self.store.close()

    # -- model and SAE, loaded on first use ------------------------------------
    @property
    def hook(self) -> str:
        return self.meta["hook"]

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @property
    def embed_config(self) -> EmbedConfig:
        return EmbedConfig(formatting=self.meta.get("formatting", "raw"), max_tokens=int(self.meta.get("max_tokens", 512)))

    @property
    def sae(self) -> Any:
        with self._load_lock:
            if self._sae is None:
                self._sae = load_sae(self.meta["sae_source"], device=self.device)
                if int(self._sae.cfg.d_sae) != self.d_sae:
                    raise SAEError("The SAE on disk no longer matches this workspace (its size changed).")
            return self._sae

    @property
    def reader(self) -> ReaderModel:
        sae = self.sae
        with self._load_lock:
            if self._reader is None:
                from backend.saes import model_kwargs

                self._reader = load_reader(self.meta["model"], device=self.device, dtype=self.meta.get("dtype", "float32"),
                                           from_pretrained_kwargs=model_kwargs(sae))
                check_pairing(sae_info(sae, self.meta["sae_source"]), self._reader.name, self._reader.d_model,
                              allow_other_model=True)
            return self._reader

    # -- corpora -------------------------------------------------------------
    def add_corpus(
        self, name: str, data: pd.DataFrame | str | Path | bytes | BinaryIO, text_column: str | None = None,
        file_name: str | None = None, options: ReadOptions = ReadOptions(),
    ) -> int:
        """Validate and store a corpus from a DataFrame or a file; returns its id. Nothing is stored on error."""
        df = data if isinstance(data, pd.DataFrame) else read_corpus(data, file_name, options)
        column = text_column or guess_text_column(df)
        df = validate_text_column(df, column)
        source = file_name or (str(data) if isinstance(data, (str, Path)) else "dataframe")
        return self.store.add_corpus(name, df, column, source=source)

    def corpora(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.store.corpora()])

    def embed(
        self, corpus: str | int, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
        job_cfg: JobConfig = JobConfig(),
    ) -> Progress:
        """Embed what is not embedded yet (resumable), then compute the corpus's feature statistics."""
        state = embed_corpus(self.store, corpus, self.reader, self.sae, self.hook, self.embed_config, job_cfg, progress, cancel)
        if state.status == "done":
            self.finalize(corpus)
        return state

    def finalize(self, corpus: str | int) -> None:
        """Per-corpus feature statistics and labels (backend.features), once embedding is complete."""
        from backend import features

        features.finalize_corpus(self, self.store.corpus_id(corpus))

    def delete_corpus(self, corpus: str | int) -> None:
        self.store.delete_corpus(corpus)

    def rename_corpus(self, corpus: str | int, new_name: str) -> None:
        self.store.rename_corpus(corpus, new_name)

    # -- reading embeddings ------------------------------------------------------
    def latents(self, corpus: str | int, pooling: Pooling = "max", threshold: float = 0.0) -> sp.csr_matrix:
        return self.store.latents(corpus, pooling, self.d_sae, threshold)

    def documents(self, corpus: str | int, doc_ids: list[int] | np.ndarray | None = None, limit: int | None = None) -> pd.DataFrame:
        return self.store.documents(corpus, doc_ids, limit)

    def top_documents(self, corpus: str | int, feature_id: int, n: int = 10) -> pd.DataFrame:
        return self.store.top_documents(corpus, feature_id, n)

    def token_activations(self, corpus: str | int, doc_id: int, features: list[int] | int | None = None) -> TokenActivations:
        """Recompute token-level activations of one stored document (for highlighting)."""
        text = self.store.texts(corpus, [int(doc_id)])
        if not text:
            raise StoreError(f"No document {doc_id} in corpus {corpus!r}.")
        return self.text_activations(text[0], features)

    def text_activations(self, text: str, features: list[int] | int | None = None) -> TokenActivations:
        """Token-level activations of any text (search by example)."""
        feats = [features] if isinstance(features, (int, np.integer)) else features
        tokens, acts, mask = token_activations(self.reader, self.sae, self.hook, text, self.embed_config, feats)
        return TokenActivations(tokens, acts, mask, feats)

    def embed_text(self, text: str) -> dict[int, float]:
        """Max-pooled feature activations of one text: {feature_id: max_act}."""
        rows = embed_texts(self.reader, self.sae, self.hook, [text], self.embed_config)
        return {int(f): float(a) for f, a in zip(rows.feature, rows.max_act)}

    def summary(self) -> dict[str, Any]:
        """Model, hook, SAE size and quality figures, corpora with document and token counts."""
        m = self.meta
        return {
            "path": str(self.store.path), "model": m.get("model"), "hook": m.get("hook"), "sae": m.get("sae_source"),
            "d_sae": m.get("d_sae"), "architecture": m.get("architecture"), "formatting": m.get("formatting"),
            "sae_report": m.get("sae_report"),
            "corpora": [asdict(c) for c in self.store.corpora()],
        }
