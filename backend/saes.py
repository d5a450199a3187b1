"""SAE loading (SAELens folders, SAELens releases when online) and model pairing checks."""
from __future__ import annotations

from backend.errors import UserError

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.config import pick_device


class SAEError(UserError):
    """An SAE that cannot be used as asked, with the reason."""


@dataclass(frozen=True)
class SAEInfo:
    """What the workspace records about an SAE."""

    source: str
    model_name: str | None
    hook_name: str
    d_in: int
    d_sae: int
    architecture: str
    formatting: str
    sha256: str | None
    report: dict | None


def weights_hash(folder: Path) -> str:
    h = hashlib.sha256()
    with open(folder / "sae_weights.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_sae(source: str | Path, device: str | None = None, dtype: str = "float32") -> Any:
    """Load an SAE from a SAELens folder (cfg.json + sae_weights.safetensors) or 'release:sae_id'."""
    from sae_lens import SAE

    device = pick_device(device)
    path = Path(source)
    if path.is_dir():
        if not (path / "cfg.json").exists() or not (path / "sae_weights.safetensors").exists():
            raise SAEError(f"{path} is not a SAELens SAE folder: it needs cfg.json and sae_weights.safetensors.")
        try:
            return SAE.load_from_disk(str(path), device=device, dtype=dtype)
        except Exception as exc:  # noqa: BLE001
            raise SAEError(f"Could not load the SAE in {path}: {exc}") from exc
    if ":" in str(source):
        release, sae_id = str(source).split(":", 1)
        try:  # needs the network (or a populated HF cache); never used in tests
            return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
        except Exception as exc:  # noqa: BLE001
            raise SAEError(f"Could not load SAELens release {release!r} / {sae_id!r} (offline?): {exc}") from exc
    raise SAEError(f"No SAE at {source!r}: give a SAELens folder or 'release:sae_id'.")


def sae_info(sae: Any, source: str | Path) -> SAEInfo:
    meta = sae.cfg.metadata
    hook = meta.hook_name
    if not hook:
        raise SAEError("The SAE does not record its hook (cfg.metadata.hook_name); it cannot be paired with a model.")
    path = Path(source)
    return SAEInfo(
        source=str(source),
        model_name=meta.model_name,
        hook_name=hook,
        d_in=int(sae.cfg.d_in),
        d_sae=int(sae.cfg.d_sae),
        architecture=sae.cfg.architecture(),
        formatting=meta.get("saedash_formatting", "raw") or "raw",
        sha256=weights_hash(path) if path.is_dir() else None,
        report=meta.get("saedash_report"),
    )


def check_pairing(info: SAEInfo, model_name: str, d_model: int, allow_other_model: bool = False) -> None:
    """Refuse an SAE trained on another model or with a mismatched width."""
    if info.d_in != d_model:
        raise SAEError(
            f"The SAE reads vectors of width {info.d_in} but model {model_name!r} has d_model {d_model}: they do not fit."
        )
    if info.model_name and info.model_name != model_name and not allow_other_model:
        raise SAEError(
            f"This SAE was trained on {info.model_name!r}, not {model_name!r}; pair it with its own model."
        )


def model_kwargs(sae: Any) -> dict:
    """The SAE's recorded model-loading arguments (SAELens `model_from_pretrained_kwargs`)."""
    return dict(sae.cfg.metadata.model_from_pretrained_kwargs or {})


def save_fp16(sae: Any, folder: Path) -> None:
    """Save an SAE in SAELens format with fp16 weights (the shipped default SAE)."""
    sae16 = sae.to(torch.float16)
    sae16.cfg.dtype = "float16"
    sae16.save_model(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["dtype"] = "float16"
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
