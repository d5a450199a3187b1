"""The feature browser's backend: per-corpus feature statistics, top documents, top tokens,
logit lens, correlated features and metadata breakdowns.

`finalize_corpus` runs once a corpus is fully embedded and precomputes everything that needs
the model (top tokens, contexts, labels, logit lens) or a full scan (statistics, histograms, a
feature-ordered copy of the embeddings). The query functions behind the feature pages are then
plain parameterized SQL over those tables and never load the model.

Tables (all per corpus except `feature_logits`, which depends only on the SAE and the model):
    feature_docs(corpus_id, feature_id, rank, doc_id, max_act, argmax_pos, n_active)
        doc_features of active documents, sorted by (corpus_id, feature_id, max_act DESC);
        rank 0 = strongest document. Zone maps on feature_id make per-feature reads cheap.
    feature_stats(corpus_id, feature_id, n_docs, n_docs_active, density, max_act, mean_act,
                  p25_act, p50_act, p75_act, p99_act, mean_tokens_active)  one row per SAE feature.
    feature_hist(corpus_id, feature_id, bin, lo, hi, count)  max_act histogram of active documents.
    feature_top_tokens(corpus_id, feature_id, token, count, mean_act)  tokens at argmax of top docs.
    feature_contexts(corpus_id, feature_id, rank, doc_id, max_act, before, token, after)
    feature_logits(feature_id, rank, token, value, kind ['promoted'|'suppressed'])
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from backend import labels as labels_mod
from backend.store import Store, StoreError

N_BINS = 20
QUANTILE_BUCKETS: tuple[tuple[float, float], ...] = ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))
SORTABLE = ("feature_id", "density", "n_docs_active", "max_act", "mean_act", "p99_act")

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_docs (
    corpus_id INTEGER, feature_id INTEGER, rank INTEGER, doc_id INTEGER, max_act FLOAT, argmax_pos INTEGER,
    n_active INTEGER
);
CREATE TABLE IF NOT EXISTS feature_stats (
    corpus_id INTEGER, feature_id INTEGER, n_docs INTEGER, n_docs_active INTEGER, density DOUBLE, max_act FLOAT,
    mean_act FLOAT, p25_act FLOAT, p50_act FLOAT, p75_act FLOAT, p99_act FLOAT, mean_tokens_active FLOAT
);
CREATE TABLE IF NOT EXISTS feature_hist (
    corpus_id INTEGER, feature_id INTEGER, bin INTEGER, lo FLOAT, hi FLOAT, count INTEGER
);
CREATE TABLE IF NOT EXISTS feature_top_tokens (
    corpus_id INTEGER, feature_id INTEGER, token VARCHAR, count INTEGER, mean_act FLOAT
);
CREATE TABLE IF NOT EXISTS feature_contexts (
    corpus_id INTEGER, feature_id INTEGER, rank INTEGER, doc_id INTEGER, max_act FLOAT, before VARCHAR,
    token VARCHAR, after VARCHAR
);
CREATE TABLE IF NOT EXISTS feature_logits (feature_id INTEGER, rank INTEGER, token VARCHAR, value FLOAT, kind VARCHAR);
"""
PER_CORPUS_TABLES = ("feature_docs", "feature_stats", "feature_hist")


def ensure_schema(store: Store) -> None:
    """Create the feature tables once per Store object."""
    if getattr(store, "_features_schema", False):
        return
    store.con.execute(SCHEMA)
    labels_mod.ensure_schema(store)
    store._features_schema = True  # type: ignore[attr-defined]


def _insert_df(con: Any, table: str, df: pd.DataFrame) -> None:
    """Bulk insert a DataFrame whose columns are in the table's column order."""
    con.register("_bulk", df)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _bulk")
    finally:
        con.unregister("_bulk")


# -- building the per-corpus tables (SQL only) ------------------------------------------------
def build_feature_tables(store: Store, corpus_id: int, d_sae: int, n_bins: int = N_BINS) -> None:
    """(Re)build feature_docs, feature_stats and feature_hist of one corpus."""
    ensure_schema(store)
    with store.transaction() as con:
        for table in PER_CORPUS_TABLES:
            con.execute(f"DELETE FROM {table} WHERE corpus_id = ?", [corpus_id])
        con.execute(
            """INSERT INTO feature_docs
               SELECT corpus_id, feature_id,
                      (row_number() OVER (PARTITION BY feature_id ORDER BY max_act DESC, doc_id) - 1)::INTEGER AS rank,
                      doc_id, max_act, argmax_pos, n_active
               FROM doc_features WHERE corpus_id = ? AND max_act > 0
               ORDER BY feature_id, rank""",
            [corpus_id],
        )
        n_docs = int(con.execute("SELECT count(*) FROM doc_status WHERE corpus_id = ?", [corpus_id]).fetchall()[0][0])
        con.execute(
            """INSERT INTO feature_stats
               SELECT ?, f.feature_id, ?, coalesce(s.n, 0), coalesce(s.n, 0) / greatest(?, 1)::DOUBLE,
                      s.mx, s.mean, s.q[1], s.q[2], s.q[3], s.q[4], s.tok
               FROM range(?) f(feature_id) LEFT JOIN (
                   SELECT feature_id, count(*) n, max(max_act) mx, avg(max_act) mean,
                          quantile_cont(max_act, [0.25, 0.5, 0.75, 0.99]) q, avg(n_active) tok
                   FROM feature_docs WHERE corpus_id = ? GROUP BY feature_id
               ) s USING (feature_id) ORDER BY f.feature_id""",
            [corpus_id, n_docs, n_docs, int(d_sae), corpus_id],
        )
        con.execute(
            """INSERT INTO feature_hist
               SELECT ?, h.feature_id, h.bin, h.bin * w, (h.bin + 1) * w, h.count FROM (
                   SELECT d.feature_id, least(floor(d.max_act / s.max_act * ?), ? - 1)::INTEGER bin, count(*)::INTEGER count
                   FROM feature_docs d JOIN feature_stats s ON s.corpus_id = d.corpus_id AND s.feature_id = d.feature_id
                   WHERE d.corpus_id = ? GROUP BY ALL
               ) h JOIN (SELECT feature_id, max_act / ? w FROM feature_stats WHERE corpus_id = ?) USING (feature_id)
               ORDER BY h.feature_id, h.bin""",
            [corpus_id, n_bins, n_bins, corpus_id, n_bins, corpus_id],
        )
    DOC_FEATURES.invalidate(store, corpus_id)
    META_CODES.invalidate(store, corpus_id)


# -- contexts, top tokens and labels (need the tokenizer) ----------------------------------------
def collect_contexts(ws: Any, corpus_id: int, n_docs: int = 20, before: int = 8, after: int = 4,
                     chunk: int = 512) -> labels_mod.ContextSet:
    """Token at argmax and a token window around it, for each feature's top `n_docs` documents."""
    rows = ws.store.query_df(
        "SELECT feature_id, rank, doc_id, max_act, argmax_pos FROM feature_docs WHERE corpus_id = ? AND rank < ? "
        "ORDER BY doc_id, feature_id",
        [corpus_id, int(n_docs)],
    )
    reader, cfg = ws.reader, ws.embed_config
    tok_ids = np.full(len(rows), -1, np.int64)
    windows: list[list[int]] = [[] for _ in range(len(rows))]
    centers = np.zeros(len(rows), np.int64)  # index of the argmax token inside its window
    doc_ids = rows["doc_id"].to_numpy()
    positions = rows["argmax_pos"].to_numpy()
    uniq = np.unique(doc_ids)
    for s in range(0, len(uniq), chunk):
        part = uniq[s : s + chunk]
        enc = dict(zip(part.tolist(), reader.encode_documents(ws.store.texts(corpus_id, part), cfg.formatting, cfg.max_tokens)))
        lo_row, hi_row = np.searchsorted(doc_ids, part[0], "left"), np.searchsorted(doc_ids, part[-1], "right")
        for i in range(lo_row, hi_row):
            doc = enc[int(doc_ids[i])]
            pos = int(positions[i])
            if pos >= len(doc.ids):
                continue
            counted = [j for j in range(max(0, pos - before), min(len(doc.ids), pos + after + 1)) if doc.count_mask[j] or j == pos]
            windows[i] = [doc.ids[j] for j in counted]
            centers[i] = counted.index(pos)
            tok_ids[i] = doc.ids[pos]
    keep = tok_ids >= 0
    return labels_mod.ContextSet(
        feature_id=rows["feature_id"].to_numpy()[keep].astype(np.int64),
        rank=rows["rank"].to_numpy()[keep].astype(np.int64),
        doc_id=doc_ids[keep].astype(np.int64),
        act=rows["max_act"].to_numpy()[keep].astype(np.float32),
        token_id=tok_ids[keep],
        windows=[w for w, k in zip(windows, keep) if k],
        centers=centers[keep],
    )


def top_tokens_frame(ctx: labels_mod.ContextSet, decode: labels_mod.Decoder, per_feature: int = 10) -> pd.DataFrame:
    """feature_id, token, count, mean_act: tokens at argmax of the top documents, most frequent first."""
    df = pd.DataFrame({"feature_id": ctx.feature_id, "token_id": ctx.token_id, "act": ctx.act})
    if df.empty:
        return pd.DataFrame({"feature_id": [], "token": [], "count": [], "mean_act": []})
    g = df.groupby(["feature_id", "token_id"], as_index=False).agg(count=("act", "size"), mean_act=("act", "mean"))
    g = g.sort_values(["feature_id", "count", "mean_act"], ascending=[True, False, False])
    g = g.groupby("feature_id").head(per_feature)
    g["token"] = [decode((int(t),)) for t in g["token_id"]]
    return g[["feature_id", "token", "count", "mean_act"]].reset_index(drop=True)


def contexts_frame(ctx: labels_mod.ContextSet, decode: labels_mod.Decoder, per_feature: int = 5) -> pd.DataFrame:
    """feature_id, rank, doc_id, max_act, before, token, after for each feature's top contexts."""
    sel = np.flatnonzero(ctx.rank < per_feature)
    out = []
    for i in sel:
        w, c = ctx.windows[i], int(ctx.centers[i])
        out.append((int(ctx.feature_id[i]), int(ctx.rank[i]), int(ctx.doc_id[i]), float(ctx.act[i]),
                    decode(tuple(w[:c])), decode((w[c],)), decode(tuple(w[c + 1:]))))
    return pd.DataFrame(out, columns=["feature_id", "rank", "doc_id", "max_act", "before", "token", "after"])


def write_top_tokens(store: Store, corpus_id: int, df: pd.DataFrame) -> None:
    """Replace the corpus's feature_top_tokens with df (feature_id, token, count, mean_act)."""
    ensure_schema(store)
    data = pd.DataFrame({"corpus_id": np.int32(corpus_id), "feature_id": df["feature_id"].astype(np.int32),
                         "token": df["token"].astype(str), "count": df["count"].astype(np.int32),
                         "mean_act": df["mean_act"].astype(np.float32)})
    with store.transaction() as con:
        con.execute("DELETE FROM feature_top_tokens WHERE corpus_id = ?", [corpus_id])
        _insert_df(con, "feature_top_tokens", data.sort_values(["feature_id", "count"], ascending=[True, False]))


def write_contexts(store: Store, corpus_id: int, df: pd.DataFrame) -> None:
    """Replace the corpus's feature_contexts with df (feature_id, rank, doc_id, max_act, before, token, after)."""
    ensure_schema(store)
    data = df[["feature_id", "rank", "doc_id", "max_act", "before", "token", "after"]].copy()
    data.insert(0, "corpus_id", np.int32(corpus_id))
    with store.transaction() as con:
        con.execute("DELETE FROM feature_contexts WHERE corpus_id = ?", [corpus_id])
        _insert_df(con, "feature_contexts", data.sort_values(["feature_id", "rank"]))


def background_token_ids(ws: Any, corpus_id: int, n: int = 500, seed: int = 0) -> list[list[int]]:
    """Counted token ids of a random sample of the corpus's documents (the TF-IDF background)."""
    ids = ws.store.query_df("SELECT doc_id FROM documents WHERE corpus_id = ? ORDER BY hash(doc_id + ?) LIMIT ?",
                            [corpus_id, int(seed), int(n)])["doc_id"].to_numpy()
    cfg = ws.embed_config
    docs = ws.reader.encode_documents(ws.store.texts(corpus_id, ids), cfg.formatting, cfg.max_tokens)
    return [[t for t, m in zip(d.ids, d.count_mask) if m] for d in docs]


def finalize_corpus(ws: Any, corpus_id: int, n_top_docs: int = 20) -> None:
    """Statistics, histograms, feature-ordered copy, top tokens, contexts, auto labels and logit lens."""
    store = ws.store
    build_feature_tables(store, corpus_id, ws.d_sae)
    decode = labels_mod.make_decoder(ws.reader.tokenizer)
    ctx = collect_contexts(ws, corpus_id, n_docs=n_top_docs)
    write_top_tokens(store, corpus_id, top_tokens_frame(ctx, decode))
    write_contexts(store, corpus_id, contexts_frame(ctx, decode))
    skip = set(getattr(ws.reader.tokenizer, "all_special_ids", []) or [])
    auto = labels_mod.auto_labels(ctx, background_token_ids(ws, corpus_id), decode, skip_ids=skip)
    labels_mod.write_labels(store, auto, source="auto", corpus_id=corpus_id)
    ensure_logits(ws)


# -- logit lens (workspace level) ---------------------------------------------------------
def logit_directions(ws: Any) -> tuple[Any, Any]:
    """(W_dec scaled by the final norm's weight when it has one, W_U) as float32 CPU tensors."""
    import torch

    model = ws.reader.model
    w_dec = ws.sae.W_dec.detach().float().cpu()
    ln_w = getattr(model.ln_final, "w", None)
    if isinstance(ln_w, torch.Tensor):
        w_dec = w_dec * ln_w.detach().float().cpu()
    return w_dec, model.W_U.detach().float().cpu()


def compute_logits(ws: Any, k: int = 20, block: int = 512) -> pd.DataFrame:
    """Top-k promoted and suppressed tokens of every feature's decoder direction through the unembedding."""
    import torch

    w_dec, w_u = logit_directions(ws)
    decode = labels_mod.make_decoder(ws.reader.tokenizer)
    k = min(k, w_u.shape[1])
    parts = []
    with torch.inference_mode():
        for s in range(0, w_dec.shape[0], block):
            logits = w_dec[s : s + block] @ w_u
            for kind, (vals, idx) in (("promoted", logits.topk(k, dim=1)), ("suppressed", (-logits).topk(k, dim=1))):
                vals = vals if kind == "promoted" else -vals
                n = vals.shape[0]
                parts.append(pd.DataFrame({
                    "feature_id": np.repeat(np.arange(s, s + n, dtype=np.int32), k),
                    "rank": np.tile(np.arange(k, dtype=np.int32), n),
                    "token_id": idx.reshape(-1).numpy(), "value": vals.reshape(-1).numpy().astype(np.float32),
                    "kind": kind,
                }))
    df = pd.concat(parts, ignore_index=True)
    strings = {int(t): decode((int(t),)) for t in np.unique(df["token_id"])}
    df["token"] = df["token_id"].map(strings)
    return df[["feature_id", "rank", "token", "value", "kind"]]


def write_logits(store: Store, df: pd.DataFrame) -> None:
    """Replace feature_logits with df (feature_id, rank, token, value, kind)."""
    ensure_schema(store)
    with store.transaction() as con:
        con.execute("DELETE FROM feature_logits")
        _insert_df(con, "feature_logits", df[["feature_id", "rank", "token", "value", "kind"]].sort_values(["feature_id", "kind", "rank"]))


def ensure_logits(ws: Any, k: int = 20) -> None:
    """Compute the logit-lens table once per workspace."""
    ensure_schema(ws.store)
    if ws.store.query_one("SELECT count(*) FROM feature_logits")[0] == 0:
        write_logits(ws.store, compute_logits(ws, k))


def _stored_logits(store: Store, feature_id: int, k: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    rows = store.con.execute("SELECT kind, token, value FROM feature_logits WHERE feature_id = ? AND rank < ? ORDER BY kind, rank",
                             [int(feature_id), int(k)]).fetchall()
    return [(t, float(v)) for kd, t, v in rows if kd == "promoted"], [(t, float(v)) for kd, t, v in rows if kd == "suppressed"]


def logit_lens(ws: Any, feature_id: int, k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(promoted, suppressed): tokens whose logits the feature's decoder direction raises / lowers most."""
    ensure_logits(ws, max(k, 20))
    return _stored_logits(ws.store, feature_id, k)


# -- queries behind the feature pages (SQL only, no model) ------------------------------------
# Public functions take (ws, corpus, feature_id); the `_q_*` helpers take a resolved corpus id so
# that feature_detail resolves the corpus once and runs as few queries as possible.
def _cid(ws: Any, corpus: str | int) -> int:
    ensure_schema(ws.store)
    return ws.store.corpus_id(corpus)


def feature_table(ws: Any, corpus: str | int, min_density: float = 0.0, max_density: float = 1.0, hide_dead: bool = True,
                  sort_by: str = "density", descending: bool = True, limit: int | None = None, offset: int = 0,
                  n_tokens: int = 5) -> pd.DataFrame:
    """feature_id, label, density, n_docs_active, max_act, mean_act, p99_act, top_tokens (one page, sorted)."""
    if sort_by not in SORTABLE:
        raise StoreError(f"Cannot sort features by {sort_by!r}; choose one of {', '.join(SORTABLE)}.")
    cid = _cid(ws, corpus)
    order = f"{sort_by} {'DESC' if descending else 'ASC'} NULLS LAST, feature_id"
    sql = f"""
        WITH page AS (
            SELECT feature_id, density, n_docs_active, max_act, mean_act, p99_act FROM feature_stats
            WHERE corpus_id = ? AND density BETWEEN ? AND ? AND (NOT ? OR n_docs_active > 0)
            ORDER BY {order} LIMIT ? OFFSET ?
        ), toks AS (
            SELECT feature_id, string_agg(token, ' · ' ORDER BY count DESC, mean_act DESC) top_tokens FROM (
                SELECT t.feature_id, t.token, t.count, t.mean_act,
                       row_number() OVER (PARTITION BY t.feature_id ORDER BY t.count DESC, t.mean_act DESC) r
                FROM feature_top_tokens t SEMI JOIN page p ON p.feature_id = t.feature_id WHERE t.corpus_id = ?
            ) WHERE r <= ? GROUP BY feature_id
        ), lab AS ({labels_mod.BEST_LABEL_SQL.format(filter="feature_id IN (SELECT feature_id FROM page)")})
        SELECT p.feature_id, lab.label, p.density, p.n_docs_active, p.max_act, p.mean_act, p.p99_act, toks.top_tokens
        FROM page p LEFT JOIN toks USING (feature_id) LEFT JOIN lab USING (feature_id) ORDER BY {order}"""
    lim = int(limit) if limit is not None else 2**62
    return ws.store.query_df(sql, [cid, float(min_density), float(max_density), bool(hide_dead), lim, int(offset), cid,
                                   int(n_tokens), cid])


def _q_stats(store: Store, cid: int, fid: int) -> dict[str, Any]:
    df = store.query_df("SELECT * EXCLUDE (corpus_id) FROM feature_stats WHERE corpus_id = ? AND feature_id = ?", [cid, fid])
    return {} if df.empty else {k: (None if pd.isna(v) else v) for k, v in df.to_dict("records")[0].items()}


def feature_stats(ws: Any, corpus: str | int, feature_id: int) -> dict[str, Any]:
    """The feature's row of feature_stats (empty dict when the corpus is not finalized)."""
    return _q_stats(ws.store, _cid(ws, corpus), int(feature_id))


def _q_histogram(store: Store, cid: int, fid: int) -> pd.DataFrame:
    return store.query_df("SELECT bin, lo, hi, count FROM feature_hist WHERE corpus_id = ? AND feature_id = ? ORDER BY bin",
                          [cid, fid])


def feature_histogram(ws: Any, corpus: str | int, feature_id: int) -> pd.DataFrame:
    """bin, lo, hi, count of max_act over the documents where the feature fires."""
    return _q_histogram(ws.store, _cid(ws, corpus), int(feature_id))


def _q_ranked_docs(store: Store, cid: int, fid: int, ranks: list[int]) -> pd.DataFrame:
    """rank, doc_id, max_act, argmax_pos, n_active, text of the feature's documents at these ranks (0 = strongest)."""
    df = store.query_df(
        "SELECT rank, doc_id, max_act, argmax_pos, n_active FROM feature_docs WHERE corpus_id = ? AND feature_id = ? "
        "AND rank IN (SELECT unnest(?::INTEGER[])) ORDER BY rank", [cid, fid, [int(r) for r in ranks]])
    if df.empty:
        return df.assign(text=pd.Series(dtype=object))
    texts = dict(store.con.execute("SELECT doc_id, text FROM documents WHERE corpus_id = ? AND doc_id IN (SELECT unnest(?::INTEGER[]))",
                                   [cid, [int(i) for i in df["doc_id"].unique()]]).fetchall())
    return df.assign(text=[texts.get(int(d)) for d in df["doc_id"]])


def top_documents(ws: Any, corpus: str | int, feature_id: int, n: int = 10, offset: int = 0) -> pd.DataFrame:
    """rank, doc_id, max_act, argmax_pos, n_active, text of the documents where the feature fires most."""
    return _q_ranked_docs(ws.store, _cid(ws, corpus), int(feature_id), list(range(int(offset), int(offset) + int(n))))


def quantile_ranks(n_active: int, per_bucket: int, buckets: Iterable[tuple[float, float]] = QUANTILE_BUCKETS) -> pd.DataFrame:
    """bucket, rank: ranks (0 = strongest) spread evenly over each percentile bucket of max_act among active documents."""
    out = []
    for lo, hi in buckets:
        r0, r1 = int(math.floor((1 - hi) * n_active)), int(math.floor((1 - lo) * n_active))
        if r1 <= r0:
            continue
        ranks = np.unique(np.linspace(r0, r1 - 1, min(per_bucket, r1 - r0)).round().astype(int))
        out += [(f"{int(lo * 100)}-{int(hi * 100)}%", int(r)) for r in ranks]
    return pd.DataFrame(out, columns=["bucket", "rank"])


def _split_samples(docs: pd.DataFrame, n_top: int, qranks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top documents, quantile samples) out of one fetch of ranked documents."""
    top = docs[docs["rank"] < n_top].reset_index(drop=True)
    return top, qranks.merge(docs.drop(columns="n_active"), on="rank")


def quantile_samples(ws: Any, corpus: str | int, feature_id: int, per_bucket: int = 3) -> pd.DataFrame:
    """bucket, rank, doc_id, max_act, argmax_pos, text: documents from each activation quartile."""
    cid, fid = _cid(ws, corpus), int(feature_id)
    qr = quantile_ranks(int(_q_stats(ws.store, cid, fid).get("n_docs_active") or 0), per_bucket)
    return _split_samples(_q_ranked_docs(ws.store, cid, fid, qr["rank"].tolist()), 0, qr)[1]


CORRELATED_COLUMNS = ["feature_id", "npmi", "n_cooc", "n_docs_active", "label"]


class DocFeatureCache:
    """Per process: each corpus's document -> active features lists (CSR arrays), loaded once.

    Co-occurrence needs the features of arbitrary documents; DuckDB reads whole row groups for
    that, so these lists are kept in memory (4 bytes per (document, active feature))."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def invalidate(self, store: Store, corpus_id: int) -> None:
        with self._lock:
            self._data.pop((str(store.path), int(corpus_id)), None)

    def get(self, store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, features, n_docs_active): features of doc d are features[indptr[d]:indptr[d + 1]];
        n_docs_active[f] = documents where feature f fires."""
        key = (str(store.path), int(corpus_id))
        with self._lock:
            if key not in self._data:
                self._data[key] = self._load(store, corpus_id)
            return self._data[key]

    @staticmethod
    def _load(store: Store, corpus_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = store.con.execute("SELECT doc_id, feature_id FROM doc_features WHERE corpus_id = ? AND max_act > 0",
                              [corpus_id]).fetchnumpy()
        docs, feats = np.asarray(r["doc_id"], np.int64), np.asarray(r["feature_id"], np.int32)
        if len(docs) and (np.diff(docs) < 0).any():  # written in doc order, but be safe
            order = np.argsort(docs, kind="stable")
            docs, feats = docs[order], feats[order]
        n_docs = int(docs.max()) + 1 if len(docs) else 0
        indptr = np.zeros(n_docs + 1, np.int64)
        np.cumsum(np.bincount(docs, minlength=n_docs), out=indptr[1:])
        st = store.con.execute("SELECT feature_id, n_docs_active FROM feature_stats WHERE corpus_id = ?", [corpus_id]).fetchnumpy()
        n_active = np.zeros(int(st["feature_id"].max()) + 1 if len(st["feature_id"]) else 0, np.int64)
        n_active[np.asarray(st["feature_id"], np.int64)] = st["n_docs_active"]
        return indptr, feats, n_active


DOC_FEATURES = DocFeatureCache()


def cooccurrence(store: Store, corpus_id: int, doc_ids: np.ndarray, d_sae: int) -> np.ndarray:
    """Number of the given documents in which each feature fires [d_sae]."""
    indptr, feats, _ = DOC_FEATURES.get(store, corpus_id)
    doc_ids = np.asarray(doc_ids, np.int64)
    doc_ids = doc_ids[doc_ids < len(indptr) - 1]
    starts, ends = indptr[doc_ids], indptr[doc_ids + 1]
    lens = ends - starts
    idx = np.repeat(ends - np.cumsum(lens), lens) + np.arange(int(lens.sum()))
    return np.bincount(feats[idx], minlength=d_sae)


def _q_correlated(store: Store, cid: int, fid: int, n_a: int, n: int, top: int, max_docs: int, min_count: int,
                  d_sae: int) -> pd.DataFrame:
    if n_a <= 0 or n <= 0:
        return pd.DataFrame(columns=CORRELATED_COLUMNS)
    step = max(1, math.ceil(n_a / max_docs))
    sample = store.con.execute("SELECT doc_id FROM feature_docs WHERE corpus_id = ? AND feature_id = ? AND rank % ? = 0",
                               [cid, fid, step]).fetchnumpy()["doc_id"]
    counts = cooccurrence(store, cid, sample, d_sae)
    counts[fid] = 0
    cand = np.flatnonzero(counts >= max(min_count, 1))
    n_b_all = DOC_FEATURES.get(store, cid)[2]
    cand = cand[cand < len(n_b_all)]
    nb = n_b_all[cand].astype(np.float64)
    c_ab = np.minimum(counts[cand] * (n_a / max(len(sample), 1)), np.minimum(n_a, nb))
    p_ab = c_ab / n
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.log(p_ab / ((n_a / n) * (nb / n))) / -np.log(p_ab)
    df = pd.DataFrame({"feature_id": cand, "npmi": np.where(p_ab >= 1.0, 1.0, npmi), "n_cooc": np.round(c_ab).astype(np.int64),
                       "n_docs_active": nb.astype(np.int64)})
    df = df.sort_values(["npmi", "n_cooc", "feature_id"], ascending=[False, False, True]).head(top)
    df["label"] = df["feature_id"].map(labels_mod.best_labels(store, cid, df["feature_id"].tolist()))
    return df[CORRELATED_COLUMNS].reset_index(drop=True)


def correlated_features(ws: Any, corpus: str | int, feature_id: int, top: int = 10, max_docs: int = 2000,
                        min_count: int = 2) -> pd.DataFrame:
    """feature_id, npmi, n_cooc, n_docs_active, label: features that fire in the same documents.

    NPMI over documents, log(p(ab) / (p(a) p(b))) / -log p(ab). For a feature active in more than
    `max_docs` documents the co-occurrence counts are estimated from an activation-stratified sample
    (every k-th of its documents by rank); pairs seen in fewer than `min_count` sampled documents are dropped.
    The first call per corpus and process loads the document -> features lists (DOC_FEATURES)."""
    cid, fid = _cid(ws, corpus), int(feature_id)
    st = _q_stats(ws.store, cid, fid)
    return _q_correlated(ws.store, cid, fid, int(st.get("n_docs_active") or 0), int(st.get("n_docs") or 0), top, max_docs,
                         min_count, ws.d_sae)


class MetaCodeCache:
    """Per process: one metadata column of a corpus as integer codes per embedded document, loaded once."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def invalidate(self, store: Store, corpus_id: int) -> None:
        with self._lock:
            for key in [k for k in self._data if k[:2] == (str(store.path), int(corpus_id))]:
                del self._data[key]

    def get(self, store: Store, corpus_id: int, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, codes): codes[doc_id] indexes values, -1 for documents not embedded."""
        key = (str(store.path), int(corpus_id), column)
        with self._lock:
            if key not in self._data:
                self._data[key] = self._load(store, corpus_id, column)
            return self._data[key]

    @staticmethod
    def _load(store: Store, corpus_id: int, column: str) -> tuple[np.ndarray, np.ndarray]:
        name, cols, n_docs = store.query_one("SELECT name, meta_columns, n_docs FROM corpora WHERE corpus_id = ?", [corpus_id])
        if column not in json.loads(cols or "[]"):
            raise StoreError(f"Corpus {name!r} has no metadata column {column!r}; it has {json.loads(cols or '[]')}.")
        df = store.query_df(
            """SELECT m.doc_id, coalesce(m.value, '(missing)') AS value FROM doc_meta m
               SEMI JOIN doc_status s ON s.corpus_id = m.corpus_id AND s.doc_id = m.doc_id
               WHERE m.corpus_id = ? AND m.key = ?""", [corpus_id, column])
        values, inv = np.unique(df["value"].astype(str).to_numpy(), return_inverse=True)
        codes = np.full(int(n_docs), -1, np.int64)
        codes[df["doc_id"].to_numpy(np.int64)] = inv
        return values, codes


META_CODES = MetaCodeCache()


def metadata_breakdown(ws: Any, corpus: str | int, feature_id: int, column: str) -> pd.DataFrame:
    """value, n_active, share_active, n_all, share_all, lift: where the feature fires vs all embedded documents.

    The first call per (corpus, column) and process loads the column's values (META_CODES)."""
    cid = _cid(ws, corpus)
    values, codes = META_CODES.get(ws.store, cid, column)
    docs = ws.store.con.execute("SELECT doc_id FROM feature_docs WHERE corpus_id = ? AND feature_id = ?",
                                [cid, int(feature_id)]).fetchnumpy()["doc_id"]
    c = codes[np.asarray(docs, np.int64)]
    n_active = np.bincount(c[c >= 0], minlength=len(values))
    n_all = np.bincount(codes[codes >= 0], minlength=len(values))
    df = pd.DataFrame({"value": values, "n_active": n_active, "n_all": n_all})
    df["share_active"] = df["n_active"] / max(int(n_active.sum()), 1)
    df["share_all"] = df["n_all"] / max(int(n_all.sum()), 1)
    df["lift"] = np.where(df["share_all"] > 0, df["share_active"] / df["share_all"].where(df["share_all"] > 0, 1), np.nan)
    return df[["value", "n_active", "share_active", "n_all", "share_all", "lift"]].sort_values(
        ["lift", "n_active"], ascending=False).reset_index(drop=True)


def _q_top_tokens(store: Store, cid: int, fid: int, n: int) -> pd.DataFrame:
    return store.query_df("SELECT token, count, mean_act FROM feature_top_tokens WHERE corpus_id = ? AND feature_id = ? "
                          "ORDER BY count DESC, mean_act DESC LIMIT ?", [cid, fid, int(n)])


def feature_top_tokens(ws: Any, corpus: str | int, feature_id: int, n: int = 10) -> pd.DataFrame:
    """token, count, mean_act at the argmax of the feature's top documents."""
    return _q_top_tokens(ws.store, _cid(ws, corpus), int(feature_id), n)


def _q_contexts(store: Store, cid: int, fid: int) -> pd.DataFrame:
    return store.query_df("SELECT rank, doc_id, max_act, before, token, after FROM feature_contexts "
                          "WHERE corpus_id = ? AND feature_id = ? ORDER BY rank", [cid, fid])


def feature_contexts(ws: Any, corpus: str | int, feature_id: int) -> pd.DataFrame:
    """rank, doc_id, max_act, before, token, after: windows around the argmax of the top documents."""
    return _q_contexts(ws.store, _cid(ws, corpus), int(feature_id))


@dataclass
class FeatureDetail:
    """Everything the feature detail page shows."""

    feature_id: int
    corpus_id: int
    label: str | None
    labels: pd.DataFrame  # label, source, score, corpus_id, updated_at
    stats: dict[str, Any]
    histogram: pd.DataFrame  # bin, lo, hi, count
    top_documents: pd.DataFrame  # rank, doc_id, max_act, argmax_pos, n_active, text
    quantile_samples: pd.DataFrame  # bucket, rank, doc_id, max_act, argmax_pos, text
    top_tokens: pd.DataFrame  # token, count, mean_act
    contexts: pd.DataFrame  # rank, doc_id, max_act, before, token, after
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    correlated: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CORRELATED_COLUMNS))


def feature_detail(ws: Any, corpus: str | int, feature_id: int, n_docs: int = 10, per_bucket: int = 3, n_logits: int = 10,
                   n_correlated: int = 10, max_docs_npmi: int = 2000) -> FeatureDetail:
    """The feature detail page's data; reads only precomputed tables (no model)."""
    cid, fid = _cid(ws, corpus), int(feature_id)
    if not 0 <= fid < ws.d_sae:
        raise StoreError(f"Feature {fid} does not exist; this SAE has features 0-{ws.d_sae - 1}.")
    store = ws.store
    all_labels = labels_mod.feature_labels(ws, fid)
    stats = _q_stats(store, cid, fid)
    n_a, n = int(stats.get("n_docs_active") or 0), int(stats.get("n_docs") or 0)
    qr = quantile_ranks(n_a, per_bucket)
    docs = _q_ranked_docs(store, cid, fid, sorted(set(range(min(n_docs, n_a))) | set(qr["rank"])))
    top, samples = _split_samples(docs, n_docs, qr)
    promoted, suppressed = _stored_logits(store, fid, n_logits)
    return FeatureDetail(
        feature_id=fid, corpus_id=cid, label=labels_mod.pick_best(all_labels, cid), labels=all_labels, stats=stats,
        histogram=_q_histogram(store, cid, fid), top_documents=top, quantile_samples=samples,
        top_tokens=_q_top_tokens(store, cid, fid, 10), contexts=_q_contexts(store, cid, fid),
        promoted=promoted, suppressed=suppressed,
        correlated=_q_correlated(store, cid, fid, n_a, n, n_correlated, max_docs_npmi, 2, ws.d_sae),
    )


# -- search by example -----------------------------------------------------------------------
@dataclass
class TextFeatures:
    """Features firing on a pasted text: a table and token-level activations of those features."""

    features: pd.DataFrame  # feature_id, max_act, argmax_token, n_tokens_active, label
    tokens: list[str]
    acts: np.ndarray  # [n_tokens, len(features)], columns in the order of `features`
    count_mask: list[bool] = field(default_factory=list)  # False for position 0 and template tokens


def features_of_text(ws: Any, text: str, top: int = 20, corpus: str | int | None = None) -> TextFeatures:
    """Which features fire on `text`, strongest first, with their token-level activations."""
    ta = ws.text_activations(text)
    acts = np.asarray(ta.acts, dtype=np.float32)
    mx = acts.max(axis=0) if len(acts) else np.zeros(ws.d_sae, np.float32)
    order = [int(f) for f in np.argsort(-mx, kind="stable")[:top] if mx[f] > 0]
    cid = ws.store.corpus_id(corpus) if corpus is not None else None
    lab = labels_mod.best_labels(ws.store, cid, order)
    df = pd.DataFrame({
        "feature_id": order, "max_act": mx[order].astype(float),
        "argmax_token": [ta.tokens[int(acts[:, f].argmax())] for f in order],
        "n_tokens_active": (acts[:, order] > 0).sum(axis=0).astype(int) if order else np.zeros(0, int),
        "label": [lab.get(f) for f in order],
    })
    return TextFeatures(df, list(ta.tokens), acts[:, order], list(ta.count_mask))
