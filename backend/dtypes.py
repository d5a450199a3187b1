"""Which torch dtype a reader model runs in: the names a workspace records and what "auto" resolves to.

Below the model loader (backend.models) and the runtime (backend.runtime), which both read it."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
CUDA_DEFAULT_DTYPE = "bfloat16"
# CPU: bench/dtype_agreement.py on the default model + SAE and 300 held-out demo documents found bf16 exact
# enough (FVE 0.8529 vs 0.8543, drop 0.002 <= 0.01; per-document Jaccard of max-pooled feature sets 0.96 >= 0.9),
# but without native bf16 instructions the bf16 forward ran 6.5x slower than fp32 (21 vs 138 tokens/s, 1 thread,
# AVX2). So "auto" picks bf16 on CPUs with native bf16 (x86 avx512_bf16/amx_bf16, Arm bf16) and fp32 elsewhere.
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


CPU_BF16_ENV = "SAEDASH_CPU_BF16"  # "1"/"0" fakes the CPU flag (CI runs both dtype paths on any machine)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo flags; elsewhere assume it does not).
    SAEDASH_CPU_BF16=1 or 0 overrides the detection, so the bf16 path can be tested on any CPU."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV} must be 1 or 0, not {forced!r}")
        return forced == "1"
    return _cpuinfo_has_native_bf16()


@lru_cache(maxsize=1)
def _cpuinfo_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & _NATIVE_BF16_FLAGS)


def resolve_dtype_name(name: str, device: str | torch.device) -> str:
    """The concrete dtype name of a dtype setting ("auto": bf16 on CUDA and on CPUs with native bf16, else
    float32). A workspace records this at creation, so a later run on another machine embeds alike."""
    if name == "auto":
        if torch.device(device).type == "cuda":
            return CUDA_DEFAULT_DTYPE
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, not {name!r}")
    return name


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The torch dtype of a dtype setting (see `resolve_dtype_name`)."""
    return DTYPES[resolve_dtype_name(name, device)]
