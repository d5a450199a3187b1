"""The logit lens: which tokens each feature's decoder direction promotes and suppresses through the unembedding.

Computed once per workspace from the model weights (`ensure_logits`, a finishing step of every corpus) into
feature_logits(feature_id, rank, token, value, kind ['promoted'|'suppressed']), and read by `logit_lens`."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from backend.context import WorkspaceContext
from backend.labels import make_decoder
from backend.store import Store


def logit_directions(ws: WorkspaceContext) -> tuple[Any, Any]:
    """(W_dec scaled by the final norm's weight when it has one, W_U) as float32 CPU tensors."""
    model = ws.reader.model
    w_dec = ws.sae.W_dec.detach().float().cpu()
    ln_w = getattr(model.ln_final, "w", None)
    if isinstance(ln_w, torch.Tensor):
        w_dec = w_dec * ln_w.detach().float().cpu()
    return w_dec, model.W_U.detach().float().cpu()


def compute_logits(ws: WorkspaceContext, k: int = 20, block: int = 1024,
                   progress: Callable[[float], None] | None = None) -> pd.DataFrame:
    """Top-k promoted and suppressed tokens of every feature's decoder direction through the unembedding.

    `progress(fraction)` after each block of features (1,024 x the vocabulary: 200 MB of float32 logits with
    SmolLM2's 49,152 tokens; larger blocks gained little)."""
    w_dec, w_u = logit_directions(ws)
    decode = make_decoder(ws.reader.tokenizer)
    k = min(k, w_u.shape[1])
    parts = []
    with torch.inference_mode():
        for s in range(0, w_dec.shape[0], block):
            logits = w_dec[s : s + block] @ w_u
            for kind, (vals, idx) in (("promoted", logits.topk(k, dim=1)),
                                      ("suppressed", logits.topk(k, dim=1, largest=False))):  # no negated copy
                n = vals.shape[0]
                parts.append(pd.DataFrame({
                    "feature_id": np.repeat(np.arange(s, s + n, dtype=np.int32), k),
                    "rank": np.tile(np.arange(k, dtype=np.int32), n),
                    "token_id": idx.reshape(-1).numpy(), "value": vals.reshape(-1).numpy().astype(np.float32),
                    "kind": kind,
                }))
            if progress is not None:
                progress(min(1.0, (s + block) / w_dec.shape[0]))
    df = pd.concat(parts, ignore_index=True)
    strings = {int(t): decode((int(t),)) for t in np.unique(df["token_id"])}
    df["token"] = df["token_id"].map(strings)
    return df[["feature_id", "rank", "token", "value", "kind"]]


def write_logits(store: Store, df: pd.DataFrame) -> None:
    """Replace feature_logits with df (feature_id, rank, token, value, kind)."""
    store.replace_rows("feature_logits", df[["feature_id", "rank", "token", "value", "kind"]].sort_values(
        ["feature_id", "kind", "rank"]), where={})


def ensure_logits(ws: WorkspaceContext, k: int = 20, progress: Callable[[float], None] | None = None) -> None:
    """Compute the logit-lens table once per workspace (`progress(fraction)` while it computes)."""
    if ws.store.query_one("SELECT count(*) FROM feature_logits")[0] == 0:
        write_logits(ws.store, compute_logits(ws, k, progress=progress))


def _stored_logits(store: Store, feature_id: int, k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    rows = store.query_all("SELECT kind, token, value FROM feature_logits WHERE feature_id = ? AND rank < ? ORDER BY kind, rank",
                           [int(feature_id), int(k)])
    return [(t, float(v)) for kd, t, v in rows if kd == "promoted"], [(t, float(v)) for kd, t, v in rows if kd == "suppressed"]


def logit_lens(ws: WorkspaceContext, feature_id: int, k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(promoted, suppressed): tokens whose logits the feature's decoder direction raises / lowers most."""
    ensure_logits(ws, max(k, 20))
    return _stored_logits(ws.store, feature_id, k)
