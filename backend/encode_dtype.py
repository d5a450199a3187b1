"""Which dtype a TopK SAE encode runs in: the residual's when that is bf16, else the SAE's own.

The SAE ships in float32. On a bf16 forward (CUDA, CPUs with native bf16) an fp32 encode upcasts every
residual chunk and runs a d_model x d_sae matmul at fp32 speed: about a fifth of the pipeline's time where
the bf16 forward is 2.6x faster than fp32 (bench/embed_throughput.py). Encoding in bf16 keeps the matmul
and the top-k in the forward's dtype; bench/dtype_agreement.py measures what that does to the features
(docs/cpus-and-dtypes.md). float16 keeps the fp32 encode (its range is not measured for pre-activations)."""
from __future__ import annotations

import torch

LOW_PRECISION_ENCODE = frozenset({torch.bfloat16})


def encode_dtype(x_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype:
    """The encode's dtype for residuals in `x_dtype` and encoder weights in `weight_dtype`."""
    return x_dtype if x_dtype in LOW_PRECISION_ENCODE else weight_dtype


def weights_in(owner: object, dtype: torch.dtype, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`weights` cast to `dtype`, cast once per owner (an SAE) and dtype; recast if a weight changed in place
    (training) or was replaced."""
    if all(w.dtype == dtype for w in weights):
        return weights
    key = (dtype, tuple((w.data_ptr(), w._version) for w in weights))
    per_owner = vars(owner).setdefault("_encode_casts", {})  # lives and dies with the owner
    cached = per_owner.get(dtype)
    if cached is None or cached[0] != key:
        cached = per_owner[dtype] = (key, tuple(w.detach().to(dtype) for w in weights))
    return cached[1]
