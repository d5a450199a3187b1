"""Which dtype a TopK SAE encode runs in: the residual's when that is bf16, else the SAE's own.

The SAE ships in float32. On a bf16 forward (CUDA, CPUs with native bf16) an fp32 encode upcasts every
residual chunk and runs the d_model x d_sae matmul at fp32 speed: about a fifth of the pipeline's time where
the bf16 forward is 2.6x faster than fp32 (bench/embed_throughput.py). Encoding in bf16 keeps the matmul
and the top-k in the forward's dtype. The bf16 weight is kept as nn.Linear keeps its weights ([d_sae, d_in],
contiguous): oneDNN's bf16 CPU kernels are fast for that layout only (x @ W_enc in bf16 ran 20x slower than
F.linear here). bench/dtype_agreement.py measures what bf16 does to the features (docs/cpus-and-dtypes.md).
float16 keeps the fp32 encode (its range is not measured for pre-activations)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOW_PRECISION_ENCODE = frozenset({torch.bfloat16})


def encode_dtype(x_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype:
    """The encode's dtype for residuals in `x_dtype` and encoder weights in `weight_dtype`."""
    return x_dtype if x_dtype in LOW_PRECISION_ENCODE else weight_dtype


def low_precision_pre_acts(owner: object, x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                           b_dec: torch.Tensor, apply_b_dec_to_input: bool) -> torch.Tensor:
    """TopK pre-activations (x - b_dec) @ W_enc + b_enc in x's dtype, the weights cast once per owner (an SAE)."""
    W_t, b_e, b_d = _weights_in(owner, x.dtype, W_enc, b_enc, b_dec)
    return F.linear(x - b_d * apply_b_dec_to_input, W_t, b_e)


def _weights_in(owner: object, dtype: torch.dtype, W_enc: torch.Tensor, b_enc: torch.Tensor,
                b_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_enc transposed and contiguous, b_enc, b_dec) in `dtype`; recast when a weight changed in place
    (training) or was replaced."""
    key = tuple((w.data_ptr(), w._version) for w in (W_enc, b_enc, b_dec))
    casts = vars(owner).setdefault("_encode_casts", {})  # lives and dies with the owner
    cached = casts.get(dtype)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = casts[dtype] = (key, (W_enc.detach().t().contiguous().to(dtype), b_enc.detach().to(dtype),
                                           b_dec.detach().to(dtype)))
    return cached[1]
