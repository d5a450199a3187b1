"""Project-wide paths, offline defaults and device choice (no heavy imports here)."""
from __future__ import annotations

import os
from dataclasses import dataclass
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
# A second SAE on the default model, at a later layer chosen by bench/layer_choice.py for topical questions.
SEMANTIC_HOOK = "blocks.28.hook_resid_post"
SEMANTIC_SAE_DIR = DATA_DIR / "sae" / "smollm2-135m-instruct-l28-resid-post"


@dataclass(frozen=True)
class ShippedSAE:
    """An SAE that ships in data/sae/, and in one line which questions it suits (figures: README)."""

    key: str
    folder: Path
    model: str
    hook: str
    suits: str


SHIPPED_SAES: dict[str, ShippedSAE] = {
    "lexical": ShippedSAE(
        "lexical", DEFAULT_SAE_DIR, DEFAULT_MODEL, DEFAULT_HOOK,
        "Layer 15 (the default): wording, style and formatting differences such as links, hedge words, punctuation.",
    ),
    "semantic": ShippedSAE(
        "semantic", SEMANTIC_SAE_DIR, DEFAULT_MODEL, SEMANTIC_HOOK,
        "Layer 28: what documents are about, for retrieval by topic and topic clusters.",
    ),
}


def shipped_saes() -> list[ShippedSAE]:
    """The shipped SAEs whose folders are present, default first."""
    return [sae for sae in SHIPPED_SAES.values() if (sae.folder / "cfg.json").exists()]


def pick_device(requested: str | None = None) -> str:
    """Return the requested device, else CUDA when present, else CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
