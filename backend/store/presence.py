"""What counts as "present": the per-workspace presence threshold and the compact row encoding.

Max-pooling a TopK SAE over a document keeps every feature that was among the top k at any one token,
however weakly it fired there: ~900 features per 35-token review with the default SAE. Most of them are
noise for data analysis and they made a workspace grow by ~10 KB per document (twice, with the old
feature-ordered copy). A workspace therefore stores a (document, feature) row only when

    max_act >= presence_threshold * scale[feature]

where `scale[feature]` is the feature's typical strong activation: the 90th percentile of its
per-document max activation over the calibration documents (the first `CALIBRATION_DOCS` documents of
the first corpus embedded in the workspace), or the median of those scales for a feature seen in fewer
than `MIN_CALIBRATION_DOCS` of them. The scales are computed once per workspace, so every corpus in it
shares one definition of presence (diffs between its corpora compare like with like).

`presence_threshold = 0` keeps every positive activation with exact float32 values (a "raw" workspace,
what version 2 stored). With a threshold, the row's sum of activations is stored as `sum_code`, one byte
(`SUM_SQL` decodes it; max_act, argmax_pos and n_active stay exact), about 8 bytes per row on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from backend.errors import UserError

DEFAULT_PRESENCE_THRESHOLD = 0.8
MAX_PRESENCE_THRESHOLD = 1.5
CALIBRATION_DOCS = 256
MIN_CALIBRATION_DOCS = 5
SCALE_QUANTILE = 0.9
SUM_CODE_LEVELS = 255

# The sum of a row, whichever way it was stored: exact (raw workspaces and rows written by hand) or coded.
SUM_SQL = "coalesce(sum_act, max_act * (1 + (n_active - 1) * coalesce(sum_code, 0) / 255.0))"


class RowsLike(Protocol):
    """The columns of backend.activations.SparseRows that storage reads (the store does not import torch)."""

    doc: np.ndarray
    feature: np.ndarray
    max_act: np.ndarray
    argmax_pos: np.ndarray
    n_active: np.ndarray
    sum_act: np.ndarray
    n_tokens: np.ndarray


def check_threshold(value: float) -> float:
    """The threshold as a float, or a UserError naming the allowed range."""
    v = float(value)
    if not (0.0 <= v <= MAX_PRESENCE_THRESHOLD) or np.isnan(v):
        raise UserError(f"The presence threshold must lie between 0 (raw: every positive activation) and "
                         f"{MAX_PRESENCE_THRESHOLD} (a fraction of each feature's typical activation), not {value!r}.")
    return v


@dataclass(frozen=True)
class PresenceScales:
    """Each feature's scale and how many calibration documents it was seen in."""

    scale: np.ndarray  # float32 [d_sae]
    n_docs: np.ndarray  # int32 [d_sae]: calibration documents where the feature fired
    n_calibration_docs: int
    fallback: float  # the scale given to features seen in fewer than MIN_CALIBRATION_DOCS documents

    @property
    def n_calibrated(self) -> int:
        return int((self.n_docs >= MIN_CALIBRATION_DOCS).sum())


def calibrate(rows: RowsLike, n_docs: int, d_sae: int) -> PresenceScales:
    """Per-feature scales from the raw rows of the calibration documents (see the module docstring)."""
    feats = np.asarray(rows.feature, np.int64)
    acts = np.asarray(rows.max_act, np.float64)
    pos = acts > 0
    feats, acts = feats[pos], acts[pos]
    order = np.lexsort((acts, feats))
    feats, acts = feats[order], acts[order]
    counts = np.bincount(feats, minlength=d_sae)[:d_sae]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    scale = np.full(d_sae, np.nan)
    seen = np.flatnonzero(counts >= MIN_CALIBRATION_DOCS)
    for f in seen:  # the 90th percentile per feature (linear interpolation, as numpy.quantile)
        scale[f] = np.quantile(acts[starts[f]:starts[f] + counts[f]], SCALE_QUANTILE)
    fallback = float(np.nanmedian(scale)) if len(seen) else float(np.quantile(acts, SCALE_QUANTILE)) if len(acts) else 1.0
    scale[np.isnan(scale)] = fallback
    return PresenceScales(scale.astype(np.float32), counts.astype(np.int32), int(n_docs), fallback)


def keep_mask(rows: RowsLike, scales: np.ndarray | None, threshold: float) -> np.ndarray:
    """Which rows are present: every positive one when threshold is 0, else max_act >= threshold * scale."""
    acts = np.asarray(rows.max_act, np.float32)
    if threshold <= 0 or scales is None:
        return acts > 0
    return acts >= np.float32(threshold) * scales[np.asarray(rows.feature, np.int64)]


def encode_sum(max_act: np.ndarray, n_active: np.ndarray, sum_act: np.ndarray) -> np.ndarray:
    """One byte per row: where the sum lies between its bounds max_act (one token) and n_active * max_act.

    Decoded by SUM_SQL; the error is at most max_act * (n_active - 1) / 510 (0.2% of max_act per extra token)."""
    n = np.asarray(n_active, np.float64)
    mx = np.asarray(max_act, np.float64)
    span = np.where(n > 1, mx * (n - 1), 1.0)
    frac = np.where(n > 1, (np.asarray(sum_act, np.float64) - mx) / span, 0.0)
    return np.clip(np.round(frac * SUM_CODE_LEVELS), 0, SUM_CODE_LEVELS).astype(np.uint8)


def decode_sum(max_act: np.ndarray, n_active: np.ndarray, code: np.ndarray) -> np.ndarray:
    """The numpy twin of SUM_SQL for coded rows."""
    return np.asarray(max_act, np.float64) * (1 + (np.asarray(n_active, np.float64) - 1) * np.asarray(code, np.float64) / 255.0)
