"""Comparisons in the tolerance of the dtype the numbers were computed in.

A test that compares numerics either pins the dtype it means or compares in the dtype in use: float32 as
tight as before; bf16 (8 bits of mantissa, ~0.4 % per rounding) by relative error, and sparse rows by
agreement, since a different batch shape rounds differently and can flip near-ties in a top-k or an argmax.
`make test` runs the suite with SAEDASH_CPU_BF16=0 and these numerics tests again with =1, so both paths run on
any machine (Makefile `DTYPE_TESTS`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

BF16_REL = 0.03  # relative Frobenius error of bf16 vs a reference computed another way
BF16_AGREE = 0.97  # share of (doc, feature) rows and of their argmax/count that must agree in bf16


def name_of(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def exact(dtype: torch.dtype | str) -> bool:
    return name_of(dtype) == "float32"


def assert_close_in(dtype: torch.dtype | str, got: torch.Tensor, want: torch.Tensor, **float32_tolerances) -> None:
    """torch's assert_close with the test's float32 tolerances; in bf16/fp16, relative error <= BF16_REL."""
    if exact(dtype):
        torch.testing.assert_close(got, want, **float32_tolerances)
        return
    assert got.shape == want.shape
    got, want = got.float(), want.float()
    rel = float((got - want).norm() / want.norm().clamp_min(1e-12))
    assert rel <= BF16_REL, f"relative error {rel:.4f} > {BF16_REL} in {name_of(dtype)}"


def assert_rows_agree_in(dtype: torch.dtype | str, got: pd.DataFrame, want: pd.DataFrame, exact_check) -> None:
    """`exact_check(got, want)` in float32; in bf16, the same (doc, feature) rows with the same argmax and count
    for >= BF16_AGREE of them, max activations within BF16_REL, and never a duplicate."""
    if exact(dtype):
        exact_check(got, want)
        return
    key = ["doc_id", "feature_id"]
    assert not got.duplicated(key).any()
    both = got.merge(want, on=key, how="outer", suffixes=("", "_want"), indicator=True)
    same = both[both["_merge"] == "both"]
    assert len(same) >= BF16_AGREE * len(both), f"{len(same)} of {len(both)} rows in both"
    for col in ("argmax_pos", "n_active"):
        share = float((same[col] == same[f"{col}_want"]).mean())
        assert share >= BF16_AGREE, f"{col} agrees on {share:.3f} of the rows"
    rel = np.abs(same["max_act"] - same["max_act_want"]) / np.maximum(np.abs(same["max_act_want"]), 1e-6)
    assert float((rel <= BF16_REL).mean()) >= BF16_AGREE, f"max_act within {BF16_REL}: {(rel <= BF16_REL).mean():.3f}"
