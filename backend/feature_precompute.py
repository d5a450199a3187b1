"""Feature precomputation: everything about a corpus's features that needs the model or a full scan.

`finalize_corpus` runs once a corpus is fully embedded: statistics, histograms and each feature's top
documents (SQL over doc_features), then top tokens, contexts, offline labels (tokenizer)
and the logit lens (model weights). Each step replaces its own rows, so finalizing is idempotent and
can be re-run after an interruption. The queries behind the pages are in backend.feature_queries.

Tables written (schema in backend.store.schema): feature_docs, feature_stats, feature_hist,
feature_top_tokens, feature_contexts, feature_labels (source 'auto'), feature_logits.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from backend import labels as labels_mod
from backend import label_reference
from backend.context import WorkspaceContext
from backend.feature_docs import DOC_FEATURES, FEATURE_DOCS, META_CODES, TOP_DOCS
from backend.feature_queries import HIST_BINS
from backend.logit_lens import compute_logits, ensure_logits, logit_directions, write_logits  # noqa: F401 (re-exported)
from backend.concept_names import minilm_namer
from backend.store import Store

N_BINS = HIST_BINS
TOP_DOCS_PER_FEATURE = TOP_DOCS  # feature_docs keeps each feature's strongest documents only (contexts use 20)
PER_CORPUS_TABLES = ("feature_docs", "feature_stats", "feature_hist")
FinalizeProgress = Callable[[str, float], None]  # (step name, fraction of that step done, 0-1)
FINALIZE_STEPS = ("statistics", "contexts", "labels", "logit lens")  # what finalize_corpus reports, in order

# -- building the per-corpus tables (SQL only) ------------------------------------------------
def build_feature_tables(store: Store, corpus_id: int, d_sae: int) -> None:
    """(Re)build feature_docs (each feature's TOP_DOCS_PER_FEATURE strongest documents), feature_stats, feature_hist.

    Everything is computed from doc_features, the one full copy of the embeddings: queries that need all of
    a feature's documents read them through backend.feature_docs.FEATURE_DOCS, not a second table.
    Histograms have N_BINS bins of width max_act / N_BINS (the reader derives the bounds)."""
    n_bins = N_BINS
    with store.transaction() as tx:
        for table in PER_CORPUS_TABLES:
            tx.delete_where(table, {"corpus_id": corpus_id})
        tx.execute(
            """INSERT INTO feature_docs (corpus_id, feature_id, rank, doc_id, max_act, argmax_pos, n_active)
               SELECT corpus_id, feature_id, rank, doc_id, max_act, argmax_pos, n_active FROM (
                   SELECT corpus_id, feature_id, doc_id, max_act, argmax_pos, n_active,
                          (row_number() OVER (PARTITION BY feature_id ORDER BY max_act DESC, doc_id) - 1)::INTEGER AS rank
                   FROM doc_features WHERE corpus_id = ? AND max_act > 0)
               WHERE rank < ? ORDER BY feature_id, rank""",
            [corpus_id, TOP_DOCS_PER_FEATURE],
        )
        n_docs = int(tx.execute("SELECT count(*) FROM doc_status WHERE corpus_id = ?", [corpus_id])[0][0])
        tx.execute(
            """INSERT INTO feature_stats
               SELECT ?, f.feature_id, ?, coalesce(s.n, 0), coalesce(s.n, 0) / greatest(?, 1)::DOUBLE,
                      s.mx, s.mean, s.q[1], s.q[2], s.q[3], s.q[4], s.tok
               FROM range(?) f(feature_id) LEFT JOIN (
                   SELECT feature_id, count(*) n, max(max_act) mx, avg(max_act) mean,
                          quantile_cont(max_act, [0.25, 0.5, 0.75, 0.99]) q, avg(n_active) tok
                   FROM doc_features WHERE corpus_id = ? AND max_act > 0 GROUP BY feature_id
               ) s USING (feature_id) ORDER BY f.feature_id""",
            [corpus_id, n_docs, n_docs, int(d_sae), corpus_id],
        )
        tx.execute(
            """INSERT INTO feature_hist (corpus_id, feature_id, bin, count)
               SELECT ?, d.feature_id, least(floor(d.max_act / s.max_act * ?), ? - 1)::INTEGER bin, count(*)::INTEGER count
               FROM doc_features d JOIN feature_stats s ON s.corpus_id = d.corpus_id AND s.feature_id = d.feature_id
               WHERE d.corpus_id = ? AND d.max_act > 0 GROUP BY ALL ORDER BY 2, 3""",
            [corpus_id, n_bins, n_bins, corpus_id],
        )
    DOC_FEATURES.invalidate(store, corpus_id)
    FEATURE_DOCS.invalidate(store, corpus_id)
    META_CODES.invalidate(store, corpus_id)


# -- contexts, top tokens and labels (need the tokenizer) ----------------------------------------
def collect_contexts(ws: WorkspaceContext, corpus_id: int, n_docs: int = 20, before: int = 8, after: int = 4,
                     chunk: int = 512, progress: Callable[[float], None] | None = None) -> labels_mod.ContextSet:
    """Token at argmax and a token window around it, for each feature's top `n_docs` documents.

    `progress(fraction)` after each chunk of documents."""
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
        if progress is not None:
            progress(min(1.0, (s + len(part)) / len(uniq)))
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
    data = pd.DataFrame({"feature_id": df["feature_id"].astype(np.int32), "token": df["token"].astype(str),
                         "count": df["count"].astype(np.int32), "mean_act": df["mean_act"].astype(np.float32)})
    store.replace_rows("feature_top_tokens", data.sort_values(["feature_id", "count"], ascending=[True, False]),
                       where={"corpus_id": int(corpus_id)}, fixed={"corpus_id": int(corpus_id)})


def write_contexts(store: Store, corpus_id: int, df: pd.DataFrame) -> None:
    """Replace the corpus's feature_contexts with df (feature_id, rank, doc_id, max_act, before, token, after)."""
    data = df[["feature_id", "rank", "doc_id", "max_act", "before", "token", "after"]]
    store.replace_rows("feature_contexts", data.sort_values(["feature_id", "rank"]),
                       where={"corpus_id": int(corpus_id)}, fixed={"corpus_id": int(corpus_id)})


def background_token_ids(ws: WorkspaceContext, corpus_id: int, n: int = 500, seed: int = 0) -> list[list[int]]:
    """Counted token ids of a random sample of the corpus's documents (the TF-IDF background)."""
    ids = ws.store.query_df("SELECT doc_id FROM documents WHERE corpus_id = ? ORDER BY hash(doc_id + ?) LIMIT ?",
                            [corpus_id, int(seed), int(n)])["doc_id"].to_numpy()
    cfg = ws.embed_config
    docs = ws.reader.encode_documents(ws.store.texts(corpus_id, ids), cfg.formatting, cfg.max_tokens)
    return [[t for t, m in zip(d.ids, d.count_mask) if m] for d in docs]


def finalize_corpus(ws: WorkspaceContext, corpus_id: int, n_top_docs: int = 20,
                    progress: FinalizeProgress | None = None) -> None:
    """Statistics, histograms, top documents per feature, top tokens, contexts, auto labels and logit lens.

    Idempotent: every step replaces its own rows. `progress(step, fraction)` follows each of FINALIZE_STEPS
    from 0 (it starts) to 1 (it is stored), with fractions in between where a step works in parts."""
    store = ws.store
    report = progress or (lambda step, frac: None)
    report("statistics", 0.0)
    build_feature_tables(store, corpus_id, ws.d_sae)
    report("statistics", 1.0)
    report("contexts", 0.0)
    decode = labels_mod.make_decoder(ws.reader.tokenizer)
    ctx = collect_contexts(ws, corpus_id, n_docs=n_top_docs, progress=lambda f: report("contexts", 0.8 * f))
    write_top_tokens(store, corpus_id, top_tokens_frame(ctx, decode))
    write_contexts(store, corpus_id, contexts_frame(ctx, decode))
    report("contexts", 1.0)
    report("labels", 0.0)
    skip = set(getattr(ws.reader.tokenizer, "all_special_ids", []) or [])
    background = background_token_ids(ws, corpus_id)
    report("labels", 0.2)
    auto = labels_mod.auto_labels(ctx, background, decode, skip_ids=skip, concepts=minilm_namer(),
                                  reference=label_reference.words_for(ws.settings.sae_source, ws.settings.sae_sha256))
    report("labels", 0.9)
    labels_mod.write_labels(store, auto, source="auto", corpus_id=corpus_id)
    report("labels", 1.0)
    report("logit lens", 0.0)
    ensure_logits(ws, progress=lambda f: report("logit lens", 0.9 * f))
    report("logit lens", 1.0)
    report("done", 1.0)
