"""Feature queries: what the feature pages read, as parameterized SQL over precomputed tables.

No function here loads the model (the logit lens table is built once by backend.feature_precompute;
`logit_lens` asks it to on a workspace that predates it). Public functions take a WorkspaceContext and a
typed `Corpus` handle (from `ws.corpus(name_or_id)`); the `_q_*` helpers take a resolved corpus id so
`feature_detail` runs as few queries as possible.

Tables read (schema in backend.store.schema):
    feature_docs(corpus_id, feature_id, rank, doc_id, max_act, argmax_pos, n_active)
        each feature's TOP_DOCS strongest documents, sorted by (corpus_id, feature_id, rank); rank 0 = strongest.
        Deeper ranks and whole document sets come from doc_features through FEATURE_DOCS (per process).
    feature_stats(corpus_id, feature_id, n_docs, n_docs_active, density, max_act, mean_act,
                  p25_act, p50_act, p75_act, p99_act, mean_tokens_active)  one row per SAE feature.
    feature_hist(corpus_id, feature_id, bin, count)  max_act histogram of active documents, HIST_BINS bins
        of width max_act / HIST_BINS (feature_stats.max_act).
    feature_top_tokens(corpus_id, feature_id, token, count, mean_act)  tokens at argmax of top docs.
    feature_contexts(corpus_id, feature_id, rank, doc_id, max_act, before, token, after)
    feature_logits(feature_id, rank, token, value, kind ['promoted'|'suppressed'])
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from backend import label_reference
from backend import labels as labels_mod
from backend.feature_docs import (DOC_FEATURES, FEATURE_DOCS, META_CODES, TOP_DOCS, DocFeatureCache,  # noqa: F401
                                  FeatureDocsCache, MetaCodeCache, ranked_documents)
from backend.logit_lens import _stored_logits, logit_lens  # noqa: F401 (logit_lens: re-exported)
from backend.activations import token_activations
from backend.context import WorkspaceContext
from backend.store import Corpus, Store, StoreError

HIST_BINS = 20
QUANTILE_BUCKETS: tuple[tuple[float, float], ...] = ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))
SORTABLE = ("specificity", "feature_id", "density", "n_docs_active", "max_act", "mean_act", "p99_act")
NEAR_CONSTANT_DENSITY = 0.5  # near-constant: fires in at least this share of documents (hidden on request)


# -- queries behind the feature pages (SQL only, no model) ------------------------------------
# Public functions take (ws, corpus, feature_id); the `_q_*` helpers take a resolved corpus id so
# that feature_detail resolves the corpus once and runs as few queries as possible.
def _cid(ws: WorkspaceContext, corpus: Corpus) -> int:
    """The corpus id of a handle (a name or id from an older caller is resolved through the workspace)."""
    return corpus.corpus_id if isinstance(corpus, Corpus) else ws.corpus(corpus).corpus_id


def feature_table(ws: WorkspaceContext, corpus: Corpus, min_density: float = 0.0, max_density: float = 1.0, hide_dead: bool = True,
                  sort_by: str = "density", descending: bool = True, limit: int | None = None, offset: int = 0,
                  n_tokens: int = 5, hide_near_constant: bool = False,
                  near_constant_density: float = NEAR_CONSTANT_DENSITY) -> pd.DataFrame:
    """feature_id, label, label_score, specificity, density, n_docs_active, max_act, mean_act, p99_act, top_tokens.

    One page, sorted. `specificity` orders informative features first: the offline label's score (how
    well the named words explain where the feature fires; 0.5 when unlabelled) × (1 − density), so
    near-constant features sink, × min(1, active documents / 10), so one-document noise sinks too.
    hide_near_constant: leave out features firing in at least `near_constant_density` of the documents
    (punctuation, frequent words: they say little about a document and crowd the top of the table)."""
    if sort_by not in SORTABLE:
        raise StoreError(f"Cannot sort features by {sort_by!r}; choose one of {', '.join(SORTABLE)}.")
    cid = _cid(ws, corpus)
    order = f"{sort_by} {'DESC' if descending else 'ASC'} NULLS LAST, feature_id"
    sql = f"""
        WITH page AS (
            SELECT s.feature_id, s.density, s.n_docs_active, s.max_act, s.mean_act, s.p99_act,
                   coalesce(a.score, 0.5) * (1 - s.density) * least(1.0, s.n_docs_active / 10.0) AS specificity
            FROM feature_stats s LEFT JOIN (
                SELECT feature_id, max(score) score FROM feature_labels WHERE corpus_id = ? AND source = 'auto'
                GROUP BY feature_id) a USING (feature_id)
            WHERE s.corpus_id = ? AND s.density BETWEEN ? AND ? AND (NOT ? OR s.n_docs_active > 0)
                  AND (NOT ? OR s.density < ?)
            ORDER BY {order} LIMIT ? OFFSET ?
        ), toks AS (
            SELECT feature_id, string_agg(token, ' · ' ORDER BY count DESC, mean_act DESC) top_tokens FROM (
                SELECT t.feature_id, t.token, t.count, t.mean_act,
                       row_number() OVER (PARTITION BY t.feature_id ORDER BY t.count DESC, t.mean_act DESC) r
                FROM feature_top_tokens t SEMI JOIN page p ON p.feature_id = t.feature_id WHERE t.corpus_id = ?
            ) WHERE r <= ? GROUP BY feature_id
        ), lab AS ({labels_mod.BEST_LABEL_SQL.format(filter="feature_id IN (SELECT feature_id FROM page)")})
        SELECT p.feature_id, lab.label, lab.label_score, p.specificity, p.density, p.n_docs_active, p.max_act,
               p.mean_act, p.p99_act, toks.top_tokens
        FROM page p LEFT JOIN toks USING (feature_id) LEFT JOIN lab USING (feature_id) ORDER BY {order}"""
    lim = int(limit) if limit is not None else 2**62
    return ws.store.query_df(sql, [cid, cid, float(min_density), float(max_density), bool(hide_dead),
                                   bool(hide_near_constant), float(near_constant_density), lim, int(offset),
                                   cid, int(n_tokens), cid])


def _q_stats(store: Store, cid: int, fid: int) -> dict[str, Any]:
    df = store.query_df("SELECT * EXCLUDE (corpus_id) FROM feature_stats WHERE corpus_id = ? AND feature_id = ?", [cid, fid])
    return {} if df.empty else {k: (None if pd.isna(v) else v) for k, v in df.to_dict("records")[0].items()}


def feature_stats(ws: WorkspaceContext, corpus: Corpus, feature_id: int) -> dict[str, Any]:
    """The feature's row of feature_stats (empty dict when the corpus is not finalized)."""
    return _q_stats(ws.store, _cid(ws, corpus), int(feature_id))


def _q_histogram(store: Store, cid: int, fid: int) -> pd.DataFrame:
    return store.query_df(
        "SELECT h.bin, h.bin * s.max_act / ? AS lo, (h.bin + 1) * s.max_act / ? AS hi, h.count "
        "FROM feature_hist h JOIN feature_stats s ON s.corpus_id = h.corpus_id AND s.feature_id = h.feature_id "
        "WHERE h.corpus_id = ? AND h.feature_id = ? ORDER BY h.bin", [HIST_BINS, HIST_BINS, cid, fid])


def feature_histogram(ws: WorkspaceContext, corpus: Corpus, feature_id: int) -> pd.DataFrame:
    """bin, lo, hi, count of max_act over the documents where the feature fires."""
    return _q_histogram(ws.store, _cid(ws, corpus), int(feature_id))


def _q_ranked_docs(store: Store, cid: int, fid: int, ranks: list[int]) -> pd.DataFrame:
    """rank, doc_id, max_act, argmax_pos, n_active, text of the feature's documents at these ranks (0 = strongest)."""
    df = ranked_documents(store, cid, fid, ranks)
    if df.empty:
        return df.assign(text=pd.Series(dtype=object))
    texts = dict(store.query_all("SELECT doc_id, text FROM documents WHERE corpus_id = ? AND doc_id IN (SELECT unnest(?::INTEGER[]))",
                                 [cid, [int(i) for i in df["doc_id"].unique()]]))
    return df.assign(text=[texts.get(int(d)) for d in df["doc_id"]])


def top_documents(ws: WorkspaceContext, corpus: Corpus, feature_id: int, n: int = 10, offset: int = 0) -> pd.DataFrame:
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


def quantile_samples(ws: WorkspaceContext, corpus: Corpus, feature_id: int, per_bucket: int = 3) -> pd.DataFrame:
    """bucket, rank, doc_id, max_act, argmax_pos, text: documents from each activation quartile."""
    cid, fid = _cid(ws, corpus), int(feature_id)
    qr = quantile_ranks(int(_q_stats(ws.store, cid, fid).get("n_docs_active") or 0), per_bucket)
    return _split_samples(_q_ranked_docs(ws.store, cid, fid, qr["rank"].tolist()), 0, qr)[1]


CORRELATED_COLUMNS = ["feature_id", "npmi", "n_cooc", "n_docs_active", "label"]


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
    sample = FEATURE_DOCS.docs_of(store, cid, fid)[::step]  # every step-th by rank: stratified by activation
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


def correlated_features(ws: WorkspaceContext, corpus: Corpus, feature_id: int, top: int = 10, max_docs: int = 2000,
                        min_count: int = 2) -> pd.DataFrame:
    """feature_id, npmi, n_cooc, n_docs_active, label: features that fire in the same documents.

    NPMI over documents, log(p(ab) / (p(a) p(b))) / -log p(ab). For a feature active in more than
    `max_docs` documents the co-occurrence counts are estimated from an activation-stratified sample
    (every k-th of its documents by rank); pairs seen in fewer than `min_count` sampled documents are dropped.
    The first call per corpus and process loads the document -> features lists (DOC_FEATURES, FEATURE_DOCS)."""
    cid, fid = _cid(ws, corpus), int(feature_id)
    st = _q_stats(ws.store, cid, fid)
    return _q_correlated(ws.store, cid, fid, int(st.get("n_docs_active") or 0), int(st.get("n_docs") or 0), top, max_docs,
                         min_count, ws.d_sae)


def metadata_breakdown(ws: WorkspaceContext, corpus: Corpus, feature_id: int, column: str) -> pd.DataFrame:
    """value, n_active, share_active, n_all, share_all, lift: where the feature fires vs all embedded documents.

    The first call per (corpus, column) and process loads the column's values (META_CODES) and the feature ->
    documents lists (FEATURE_DOCS)."""
    cid = _cid(ws, corpus)
    values, codes = META_CODES.get(ws.store, cid, column)
    docs = FEATURE_DOCS.docs_of(ws.store, cid, int(feature_id))
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


def feature_top_tokens(ws: WorkspaceContext, corpus: Corpus, feature_id: int, n: int = 10) -> pd.DataFrame:
    """token, count, mean_act at the argmax of the feature's top documents."""
    return _q_top_tokens(ws.store, _cid(ws, corpus), int(feature_id), n)


def _q_contexts(store: Store, cid: int, fid: int) -> pd.DataFrame:
    return store.query_df("SELECT rank, doc_id, max_act, before, token, after FROM feature_contexts "
                          "WHERE corpus_id = ? AND feature_id = ? ORDER BY rank", [cid, fid])


def feature_contexts(ws: WorkspaceContext, corpus: Corpus, feature_id: int) -> pd.DataFrame:
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
    weaker_share: float | None = None  # share of the corpus's live features whose strongest activation is lower
    elsewhere: tuple[str, ...] = ()  # the words it fires on most in the SAE's reference text (backend.label_reference)


def _q_weaker_share(store: Store, cid: int, max_act: float | None) -> float | None:
    """Share of the corpus's live features whose strongest activation there is below `max_act`: a feature that
    only fires weakly in a corpus fires on whatever tokens, and its label names nothing (docs/labels.md)."""
    if max_act is None:
        return None
    row = store.query_one("SELECT avg(CASE WHEN max_act < ? THEN 1.0 ELSE 0.0 END) FROM feature_stats "
                          "WHERE corpus_id = ? AND n_docs_active > 0", [float(max_act), cid])
    return None if row is None or row[0] is None else float(row[0])


def feature_detail(ws: WorkspaceContext, corpus: Corpus, feature_id: int, n_docs: int = 10, per_bucket: int = 3, n_logits: int = 10,
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
        weaker_share=_q_weaker_share(store, cid, stats.get("max_act")),
        elsewhere=tuple(label_reference.words_for(ws.settings.sae_source, ws.settings.sae_sha256).get(fid, ())),
    )



# -- search by example -----------------------------------------------------------------------
@dataclass
class TextFeatures:
    """Features firing on a pasted text: a table and token-level activations of those features."""

    features: pd.DataFrame  # feature_id, max_act, argmax_token, n_tokens_active, label
    tokens: list[str]
    acts: np.ndarray  # [n_tokens, len(features)], columns in the order of `features`
    count_mask: list[bool] = field(default_factory=list)  # False for position 0 and template tokens


def features_of_text(ws: WorkspaceContext, text: str, top: int = 20, corpus: Corpus | None = None) -> TextFeatures:
    """Which features fire on `text`, strongest first, with their token-level activations."""
    tokens, acts, mask = token_activations(ws.reader, ws.sae, ws.hook, text, ws.embed_config, None)
    acts = np.asarray(acts, dtype=np.float32)
    mx = acts.max(axis=0) if len(acts) else np.zeros(ws.d_sae, np.float32)
    order = [int(f) for f in np.argsort(-mx, kind="stable")[:top] if mx[f] > 0]
    cid = _cid(ws, corpus) if corpus is not None else None
    lab = labels_mod.best_labels(ws.store, cid, order)
    df = pd.DataFrame({
        "feature_id": order, "max_act": mx[order].astype(float),
        "argmax_token": [tokens[int(acts[:, f].argmax())] for f in order],
        "n_tokens_active": (acts[:, order] > 0).sum(axis=0).astype(int) if order else np.zeros(0, int),
        "label": [lab.get(f) for f in order],
    })
    return TextFeatures(df, list(tokens), acts[:, order], list(mask))
