"""Calibrating a workspace's presence scales on its first documents, without embedding them twice.

A workspace with a presence threshold needs each feature's scale before it stores a row (see
backend.store.presence). The scales come from the raw rows of the first `CALIBRATION_DOCS` pending
documents of the first corpus embedded, whatever the batch size, so two runs (or two engines) calibrate
on the same documents. Those rows are kept and reused as the job's first batches."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from backend.activations import SparseRows
from backend.store import Store
from backend.store import presence

EmbedIds = Callable[[np.ndarray], SparseRows]


def select_docs(rows: SparseRows, positions: np.ndarray) -> SparseRows:
    """The rows of the batch documents at `positions` (in that order), re-indexed 0..len(positions)-1."""
    positions = np.asarray(positions, np.int64)
    new_index = np.full(len(rows.n_tokens), -1, np.int64)
    new_index[positions] = np.arange(len(positions))
    doc = new_index[np.asarray(rows.doc, np.int64)]
    keep = doc >= 0
    order = np.lexsort((np.asarray(rows.feature)[keep], doc[keep]))
    pick = np.flatnonzero(keep)[order]
    return SparseRows(
        doc[pick].astype(np.int32), np.asarray(rows.feature)[pick], np.asarray(rows.max_act)[pick],
        np.asarray(rows.argmax_pos)[pick], np.asarray(rows.n_active)[pick], np.asarray(rows.sum_act)[pick],
        np.asarray(rows.n_tokens)[positions], np.asarray(rows.truncated)[positions],
    )


def concat_rows(parts: list[SparseRows]) -> SparseRows:
    """Rows of several batches as one batch (document indexes offset in order)."""
    offsets = np.cumsum([0] + [len(p.n_tokens) for p in parts])
    return SparseRows(
        np.concatenate([np.asarray(p.doc, np.int64) + o for p, o in zip(parts, offsets)]).astype(np.int32),
        *(np.concatenate([getattr(p, name) for p in parts])
          for name in ("feature", "max_act", "argmax_pos", "n_active", "sum_act", "n_tokens", "truncated")),
    )


@dataclass
class CalibrationRows:
    """The calibration documents' raw rows, reused for the first batches of the job that computed them."""

    doc_ids: np.ndarray
    rows: SparseRows

    def take(self, ids: np.ndarray, embed: EmbedIds) -> SparseRows:
        """Rows of `ids`: reused where calibrated, embedded otherwise."""
        ids = np.asarray(ids, np.int64)
        where = {int(d): i for i, d in enumerate(self.doc_ids)}
        have = np.array([int(d) in where for d in ids], bool)
        if not have.any():
            return embed(ids)
        reused = select_docs(self.rows, np.array([where[int(d)] for d in ids[have]], np.int64))
        if have.all():
            return reused
        fresh = embed(ids[~have])
        merged = concat_rows([reused, fresh])
        # back into the order of ids
        order = np.concatenate([np.flatnonzero(have), np.flatnonzero(~have)])
        return select_docs(merged, np.argsort(order, kind="stable"))


_LOCK = threading.Lock()  # two jobs starting in a fresh workspace calibrate it once, not twice


def ensure_calibrated(store: Store, corpus_id: int, pending: np.ndarray, embed: EmbedIds,
                      d_sae: int) -> CalibrationRows | None:
    """Calibrate the workspace's presence scales on the first pending documents if it needs it."""
    if not store.needs_presence_calibration() or len(pending) == 0:
        return None
    with _LOCK:
        if not store.needs_presence_calibration():
            return None
        ids = np.asarray(pending[: presence.CALIBRATION_DOCS], np.int64)
        rows = embed(ids)
        store.set_presence_scales(presence.calibrate(rows, len(ids), d_sae), corpus_id)
    return CalibrationRows(ids, rows)
