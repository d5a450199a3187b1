"""Project-wide paths, offline defaults and device choice (no heavy imports here)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from backend.errors import UserError

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

    @property
    def present(self) -> bool:
        return (self.folder / "cfg.json").exists()

    def report(self) -> dict | None:
        """The held-out figures of its training_report.json (fve, l0, dead_frac, …), read now: a retrained
        folder shows its own figures, never ones copied here."""
        try:
            return dict(json.loads((self.folder / "training_report.json").read_text())["report"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def quality(self) -> str:
        """Its held-out figures in words, e.g. "held-out FVE 0.866, L0 48, 0.02% dead"."""
        report = self.report()
        if not report or report.get("fve") is None:
            return "no training report"
        parts = [f"held-out FVE {float(report['fve']):.3f}"]
        if report.get("l0") is not None:
            parts.append(f"L0 {float(report['l0']):.0f}")
        if report.get("dead_frac") is not None:
            parts.append(f"{100 * float(report['dead_frac']):.2f}% dead")
        return ", ".join(parts)

    def describe(self) -> str:
        """One line for a picker: key, what it suits, its figures."""
        return f"{self.key}: {self.suits} ({self.quality()})"


SHIPPED_SAES: dict[str, ShippedSAE] = {
    "lexical": ShippedSAE(
        "lexical", DEFAULT_SAE_DIR, DEFAULT_MODEL, DEFAULT_HOOK,
        "Layer 15 (the default): wording, style and formatting differences such as links, hedge words, punctuation.",
    ),
    "semantic": ShippedSAE(
        "semantic", SEMANTIC_SAE_DIR, DEFAULT_MODEL, SEMANTIC_HOOK,
        "Layer 28: what documents are about, for finding documents on a topic through features (README: which SAE for which question).",
    ),
}


def shipped_saes() -> list[ShippedSAE]:
    """The shipped SAEs whose folders are present, default first."""
    return [sae for sae in SHIPPED_SAES.values() if sae.present]


def shipped_sae_for(source: str | Path | None) -> ShippedSAE | None:
    """The shipped SAE a folder path (or key) names, else None."""
    if not source:
        return None
    if str(source) in SHIPPED_SAES:
        return SHIPPED_SAES[str(source)]
    try:
        resolved = Path(source).resolve()
    except (OSError, ValueError):
        return None
    return next((sae for sae in SHIPPED_SAES.values() if sae.folder.resolve() == resolved), None)


WORKSPACE_SUFFIX = ".duckdb"
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WorkspaceNameError(UserError):
    """A workspace name that cannot become a file in the workspace folder."""


def workspace_file(folder: str | Path, name: str) -> Path:
    """`folder/<name>.duckdb` for a new workspace; refuses a name that is not a plain file name or a file
    that exists (a workspace is never overwritten)."""
    stem = str(name or "").strip()
    if stem.lower().endswith(WORKSPACE_SUFFIX):
        stem = stem[: -len(WORKSPACE_SUFFIX)]
    if not _WORKSPACE_NAME.match(stem):
        raise WorkspaceNameError(
            f"{name!r} cannot name a workspace: use 1 to 64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit."
        )
    path = Path(folder) / f"{stem}{WORKSPACE_SUFFIX}"
    if path.exists():
        raise WorkspaceNameError(f"A workspace named {stem!r} already exists in {Path(folder)}; choose another name.")
    return path


def pick_device(requested: str | None = None) -> str:
    """Return the requested device, else CUDA when present, else CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
