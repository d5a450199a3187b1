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
from typing import TYPE_CHECKING, Any

import torch

from backend import config
from backend.config import pick_device
from backend.models import BUILTIN_MODELS, hook_layer

if TYPE_CHECKING:
    from backend.context import WorkspaceContext  # (no DuckDB for the Ray actors, which import this module)

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


def model_aliases(model_name: str) -> set[str]:
    """The names one reader model goes by: ours (`gemma-3-270m`) and its Hugging Face id (`google/gemma-3-270m`),
    which is what SAELens release SAEs record. Compared case-insensitively."""
    names = {str(model_name).strip().lower()}
    for builtin in BUILTIN_MODELS.values():
        ids = {builtin.name.lower(), builtin.official_name.lower()}
        if names & ids:
            names |= ids
    return names


def same_model(sae_model: str | None, model_name: str) -> bool:
    """Whether an SAE recorded for `sae_model` reads `model_name` (one of its aliases; no record: yes)."""
    return not sae_model or bool(model_aliases(sae_model) & model_aliases(model_name))


def check_model_name(info: SAEInfo, model_name: str, allow_other_model: bool = False) -> None:
    """Refuse an SAE whose recorded model is not `model_name` under any of its names."""
    if not allow_other_model and not same_model(info.model_name, model_name):
        raise SAEError(
            f"This SAE was trained on {info.model_name!r}, not {model_name!r}; pair it with its own model."
        )


def check_pairing(info: SAEInfo, model_name: str, d_model: int, allow_other_model: bool = False) -> None:
    """Refuse an SAE trained on another model or with a mismatched width."""
    if info.d_in != d_model:
        raise SAEError(
            f"The SAE reads vectors of width {info.d_in} but model {model_name!r} has d_model {d_model}: they do not fit."
        )
    check_model_name(info, model_name, allow_other_model)


def resolve_sae_source(choice: str | Path) -> str:
    """What `WorkspaceSpec.sae` takes, from a user's choice: a shipped key (`config.SHIPPED_SAES`, e.g.
    "lexical", "semantic"), a SAELens folder, or a SAELens `release:sae_id` (needs the network)."""
    text = str(choice or "").strip()
    if not text:
        raise SAEError(f"Choose an SAE: one of {', '.join(config.SHIPPED_SAES)}, a SAELens folder, or release:sae_id.")
    shipped = config.SHIPPED_SAES.get(text)
    if shipped is not None:
        if not shipped.present:
            raise SAEError(f"The shipped SAE {text!r} is missing from {shipped.folder}; restore data/ from the repository.")
        return str(shipped.folder)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SAEError(f"{path} is a file; an SAE is a SAELens folder (cfg.json + {WEIGHTS_FILE}).")
        _require_sae_folder(path)
        return str(path)
    release, _, sae_id = text.partition(":")
    if release and sae_id and "/" not in release and "\\" not in release:
        return text
    raise SAEError(
        f"No SAE {text!r}: give a shipped SAE ({', '.join(config.SHIPPED_SAES)}), a SAELens folder that exists, "
        "or release:sae_id from the SAELens registry."
    )


def workspace_sae_name(ws: WorkspaceContext) -> str:
    """The SAE a workspace uses, in words (`sae_name` of what it was created from)."""
    settings = ws.settings
    return sae_name(ws.store.meta().get("sae_origin"), settings.sae_source, settings.sae_sha256)


def sae_name(sae_origin: str | None, sae_source: str | None = None, sae_sha256: str | None = None) -> str:
    """A workspace's SAE in words: the shipped key and folder name when it is a shipped SAE (by the folder it
    was created from, or by its weights' hash), else the folder name or release id it was created from."""
    for candidate in (sae_origin, sae_source):
        shipped = config.shipped_sae_for(candidate)
        if shipped is not None:
            return f"{shipped.key} ({shipped.folder.name})"
    if sae_sha256 and not sae_origin:  # a workspace from before origins were recorded: hash the shipped weights
        for shipped in config.shipped_saes():
            try:
                if weights_hash(shipped.folder) == str(sae_sha256)[:16]:
                    return f"{shipped.key} ({shipped.folder.name})"
            except OSError:
                continue
    origin = str(sae_origin or sae_source or "unknown")
    path = Path(origin)
    return path.name if path.is_absolute() or path.exists() else origin


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
