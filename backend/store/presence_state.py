"""The workspace's recorded presence rule: its threshold (workspace meta) and per-feature scales (the
`presence_scales` table), read once and cached per Store, recorded after calibration, and summarized for
`Workspace.summary()` (`PresenceMixin`, part of `Store`). The rule itself and its arithmetic are
backend.store.presence."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from backend.store import presence


class PresenceMixin:
    """`Store`'s presence threshold and scales (see the module docstring)."""

    # -- presence (what counts as present: backend.store.presence) -------------------------
    @property
    def presence_threshold(self) -> float:
        """0 for a raw workspace (and for files made before version 3, which stored every positive activation)."""
        return self._presence_state()[0]

    def _presence_state(self) -> tuple[float, np.ndarray | None]:
        """(threshold, per-feature cutoff threshold * scale or None), read once and cached."""
        state = self._presence
        if state is None:
            threshold = float(self.meta().get("presence_threshold") or 0.0)
            scales = self.presence_scales() if threshold > 0 else None
            state = (threshold, None if scales is None else (np.float32(threshold) * scales.scale).astype(np.float32))
            self._presence = state
        return state

    def presence_scales(self) -> presence.PresenceScales | None:
        """The calibrated per-feature scales, or None before calibration (and in a raw workspace)."""
        r = self.fetch_numpy("SELECT feature_id, scale, n_docs FROM presence_scales ORDER BY feature_id")
        if len(r["feature_id"]) == 0:
            return None
        cal = self.meta().get("presence_calibration") or {}
        d = int(r["feature_id"].max()) + 1
        scale, n_docs = np.zeros(d, np.float32), np.zeros(d, np.int32)
        scale[r["feature_id"]] = r["scale"]
        n_docs[r["feature_id"]] = r["n_docs"]
        return presence.PresenceScales(scale, n_docs, int(cal.get("n_docs") or 0), float(cal.get("fallback") or 0.0))

    def presence_summary(self) -> dict[str, Any]:
        """What counts as present in this workspace, and what it kept: for `Workspace.summary()`."""
        threshold = self.presence_threshold
        row = self.query_one(
            "SELECT count(*), sum(n_raw_features), count(n_raw_features) FROM doc_status")
        n_docs, n_raw, n_with_raw = (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)) if row else (0, 0, 0)
        n_rows = int(self.query_one("SELECT count(*) FROM doc_features")[0])
        out: dict[str, Any] = {
            "threshold": threshold,
            "mode": "raw: every positive activation, exact" if threshold <= 0 else
                    f"compact: a feature is present when its max activation >= {threshold:g} x its scale "
                    f"(the {presence.SCALE_QUANTILE:.0%} quantile of its per-document max on the calibration documents)",
            "features_per_doc": round(n_rows / n_docs, 1) if n_docs else None,
            "raw_features_per_doc": round(n_raw / n_with_raw, 1) if n_with_raw else None,
        }
        if threshold > 0:
            out["calibration"] = self.meta().get("presence_calibration")
            out["raw_values"] = "create a workspace with presence_threshold=0 to store every positive activation"
        return out

    def needs_presence_calibration(self) -> bool:
        threshold, cutoff = self._presence_state()
        return threshold > 0 and cutoff is None

    def set_presence_scales(self, scales: presence.PresenceScales, corpus_id: int | None = None) -> None:
        """Record the workspace's per-feature scales (once: every later row is judged by them)."""
        rows = pd.DataFrame({"feature_id": np.arange(len(scales.scale), dtype=np.int32), "scale": scales.scale,
                             "n_docs": scales.n_docs})
        self.replace_rows("presence_scales", rows, where={})
        self.set_meta(presence_calibration={
            "corpus_id": corpus_id, "n_docs": scales.n_calibration_docs, "quantile": presence.SCALE_QUANTILE,
            "min_docs": presence.MIN_CALIBRATION_DOCS, "fallback": scales.fallback,
            "n_features_calibrated": scales.n_calibrated})

