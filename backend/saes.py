"""SAE loading (SAELens folders, SAELens releases when online) and model pairing checks."""
from __future__ import annotations

from backend.errors import UserError

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend import config
from backend.config import pick_device
from backend.models import hook_layer

WEIGHTS_FILE = "sae_weights.safetensors"


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


def _require_sae_folder(path: Path) -> None:
    if not (path / "cfg.json").exists() or not (path / WEIGHTS_FILE).exists():
        raise SAEError(f"{path} is not a SAELens SAE folder: it needs cfg.json and {WEIGHTS_FILE}.")


def weights_sha256(folder: Path) -> str:
    """Full sha256 (hex) of an SAE folder's weights file."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_hash(folder: Path) -> str:
    """The first 16 hex digits of the weights' sha256: what a workspace records and the cache is keyed by."""
    return weights_sha256(folder)[:16]


def verify_sae_folder(folder: str | Path, expected_sha256: str) -> None:
    """Refuse an SAE folder whose weights are not the ones recorded (`expected_sha256`: full or a prefix of
    at least 16 hex digits). Same-shaped weights swapped under a workspace would silently mix two SAEs."""
    path = Path(folder)
    expected = str(expected_sha256 or "").strip().lower()
    if len(expected) < 16 or any(ch not in "0123456789abcdef" for ch in expected):
        raise SAEError(f"{expected_sha256!r} is not a sha256 (at least 16 hex digits), so the SAE cannot be checked.")
    _require_sae_folder(path)
    actual = weights_sha256(path)
    if not actual.startswith(expected):
        raise SAEError(
            f"The SAE weights in {path} are not the ones this workspace was built with (sha256 {actual[:16]}, "
            f"recorded {expected[:16]}): they were retrained or replaced. Restore the original folder, or create "
            "a new workspace for these weights."
        )


def cache_sae(src_dir: str | Path, cache_root: str | Path | None = None) -> Path:
    """Copy an SAE folder into the content-addressed cache, `.cache/saes/<sha256[:16]>/`, and return the copy.

    A workspace that points at the copy keeps working when the original is moved, retrained or deleted, and
    two workspaces with the same weights share one copy. Copying goes through a temporary folder and a
    rename, so a half-written copy is never found; a damaged copy is replaced."""
    src = Path(src_dir)
    _require_sae_folder(src)
    digest = weights_hash(src)
    root = Path(cache_root) if cache_root is not None else Path(config.CACHE_DIR) / "saes"
    dest = root / digest
    if dest.resolve() == src.resolve():
        return dest
    if dest.is_dir():
        try:
            verify_sae_folder(dest, digest)
            return dest
        except SAEError:
            shutil.rmtree(dest)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{digest}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in src.iterdir():
        if item.is_file():
            shutil.copy2(item, tmp / item.name)
    try:
        verify_sae_folder(tmp, digest)  # the source changed while it was copied
        tmp.rename(dest)
    except OSError:  # another process cached the same weights first
        shutil.rmtree(tmp, ignore_errors=True)
        verify_sae_folder(dest, digest)
    except SAEError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_sae(source: str | Path, device: str | None = None, dtype: str = "float32",
             expected_sha256: str | None = None) -> Any:
    """Load an SAE from a SAELens folder (cfg.json + sae_weights.safetensors) or 'release:sae_id'.

    With `expected_sha256` (what the workspace recorded), a folder whose weights changed is refused."""
    from sae_lens import SAE

    device = pick_device(device)
    path = Path(source)
    if path.is_dir():
        _require_sae_folder(path)
        if expected_sha256:
            verify_sae_folder(path, expected_sha256)
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


def check_sae_fits_model(info: SAEInfo, n_layers: int | None, d_model: int | None, model_name: str = "the model") -> None:
    """Refuse, before anything is embedded, an SAE that cannot read this model: a hook name we cannot stop
    at, a layer the model does not have, or an input width that is not the model's d_model. A None
    dimension (unknown offline) is not checked."""
    try:
        layer = hook_layer(info.hook_name)
    except ValueError as exc:
        raise SAEError(f"The SAE's hook cannot be read: {exc}.") from None
    if d_model is not None and info.d_in != d_model:
        raise SAEError(
            f"The SAE reads vectors of width {info.d_in} but {model_name} has d_model {d_model}: they do not fit. "
            "Choose an SAE trained on this model."
        )
    if n_layers is not None and not 0 <= layer < n_layers:
        raise SAEError(
            f"The SAE's hook {info.hook_name} is at layer {layer}, but {model_name} has {n_layers} layers "
            f"(0 to {n_layers - 1}). Choose an SAE trained on this model."
        )


def model_kwargs(sae: Any) -> dict:
    """The SAE's recorded model-loading arguments (SAELens `model_from_pretrained_kwargs`)."""
    return dict(sae.cfg.metadata.model_from_pretrained_kwargs or {})


def save_fp16(sae: Any, folder: Path) -> None:
    """Save an SAE in SAELens format with fp16 weights (the shipped default SAE); `sae` itself is left as is."""
    sae16 = copy.deepcopy(sae).to(torch.float16)  # Module.to works in place
    sae16.cfg.dtype = "float16"
    sae16.save_model(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["dtype"] = "float16"
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
