"""What the services below the façade need of a workspace, and nothing more.

`Workspace` (backend/workspace.py) sits on top and satisfies `WorkspaceContext` structurally; the services
(jobs, labels, feature queries, search, streaming, steering inputs, engines, …) take a `WorkspaceContext`
or exactly the values they need, as SAELens's `SAETrainer(cfg, sae, data_provider: DataProvider)` does.
Nothing in this module, or below it, imports `backend.workspace`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

from backend.activations import EmbedConfig
from backend.models import ReaderModel
from backend.store import Corpus, Store, StoreError

DEFAULT_MAX_TOKENS = 512
FORMATTINGS = ("raw", "chat")
CorpusKey = Union[str, int, Corpus]


@dataclass(frozen=True)
class WorkspaceSettings:
    """What a workspace file records about its model and SAE, read once when it opens."""

    model: str
    hook: str
    sae_source: str
    d_sae: int
    d_in: int | None = None
    sae_sha256: str | None = None
    architecture: str | None = None
    formatting: str = "raw"
    max_tokens: int = DEFAULT_MAX_TOKENS
    dtype: str = "float32"
    sae_report: dict | None = None
    schema_version: int = 0
    presence_threshold: float = 0.0  # files made before schema 3 stored every positive activation

    def __post_init__(self) -> None:
        if self.formatting not in FORMATTINGS:
            raise StoreError(f"This workspace records an unknown formatting {self.formatting!r}.")
        if self.d_sae <= 0:
            raise StoreError("This workspace records no SAE width.")

    @classmethod
    def from_meta(cls, meta: dict[str, Any], path: Path) -> "WorkspaceSettings":
        if "hook" not in meta or "model" not in meta:
            raise StoreError(f"{path} is not a workspace (no model/SAE recorded).")
        return cls(
            model=str(meta["model"]), hook=str(meta["hook"]), sae_source=str(meta.get("sae_source")),
            d_sae=int(meta.get("d_sae") or 0), d_in=meta.get("d_in"), sae_sha256=meta.get("sae_sha256"),
            architecture=meta.get("architecture"), formatting=meta.get("formatting") or "raw",
            max_tokens=int(meta.get("max_tokens") or DEFAULT_MAX_TOKENS), dtype=meta.get("dtype") or "float32",
            sae_report=meta.get("sae_report"), schema_version=int(meta.get("schema_version") or 0),
            presence_threshold=float(meta.get("presence_threshold") or 0.0),
        )


class WorkspaceContext(Protocol):
    """The narrow view of an open workspace that services read: its store, its recorded settings, the
    reader model and SAE (loaded on first use) and corpus lookup."""

    store: Store
    settings: WorkspaceSettings
    device: str | None

    @property
    def path(self) -> Path: ...

    @property
    def hook(self) -> str: ...

    @property
    def d_sae(self) -> int: ...

    @property
    def embed_config(self) -> EmbedConfig: ...

    @property
    def reader(self) -> ReaderModel: ...

    @property
    def sae(self) -> Any: ...

    def corpus(self, corpus: CorpusKey) -> Corpus: ...
