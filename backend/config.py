"""Project-wide paths, offline defaults and device choice (no heavy imports here)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CACHE_DIR = Path(os.environ.get("SAEDASH_CACHE", REPO_ROOT / ".cache"))
WORKSPACES_DIR = Path(os.environ.get("SAEDASH_WORKSPACES", REPO_ROOT / "workspaces"))

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HOOK = "blocks.15.hook_resid_post"
DEFAULT_SAE_DIR = DATA_DIR / "sae" / "smollm2-135m-instruct-l15-resid-post"
DEFAULT_WORKSPACE_NAME = "default"


def pick_device(requested: str | None = None) -> str:
    """Return the requested device, else CUDA when present, else CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
