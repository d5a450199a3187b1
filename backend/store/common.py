"""What every store module shares: the store's errors, the `Corpus` handle and the type names of pooling
and query parameters. It imports no other store module, so database.py and the modules whose methods make
up `Store` (corpora, documents, ingest, presence_state, feature_reads) all stand on it without a cycle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from backend.errors import UserError, check_count

Pooling = Literal["max", "binary", "count", "sum", "mean"]
Params = Sequence[Any] | None


class StoreError(UserError):
    """A request the workspace refuses, with a message for the user."""


def row_limit(n: Any, name: str = "n") -> int:
    """A row count for SQL's LIMIT, or a StoreError: DuckDB refuses a negative LIMIT with a binder error."""
    return check_count(n, f"{name} is how many rows to return", 0, StoreError)


class WorkspaceLocked(StoreError):
    """Another process holds the workspace file for writing."""


@dataclass(frozen=True)
class Corpus:
    """A typed handle on one corpus (what `Workspace.corpus(name_or_id)` returns).

    `data_version` changes whenever its embeddings, statistics or labels change: caches key on it."""

    corpus_id: int
    name: str
    source: str | None
    text_column: str | None
    meta_columns: list[str]
    n_docs: int
    n_embedded: int
    n_tokens: int
    status: str
    data_version: int = 0
    n_truncated: int = 0
    error: str | None = None

    @property
    def id(self) -> int:
        return self.corpus_id

    @property
    def cache_key(self) -> tuple[int, int, int, str]:
        return (self.corpus_id, self.data_version, self.n_embedded, self.status)


CorpusInfo = Corpus  # the name before the typed front door
