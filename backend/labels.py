"""Feature labels: automatic (from where a feature fires), LLM-written (optional) and hand-written.

Table feature_labels(feature_id, label, source ['auto'|'llm'|'hand'], score, corpus_id, updated_at).
Auto and LLM labels belong to the corpus they were derived from; hand labels are workspace-wide
(corpus_id NULL). Re-running auto or LLM labelling only replaces rows of its own source, so hand
labels always survive; the best label of a feature is hand > llm > auto (then this corpus's, then newest).

LLM labels follow the explain-then-score recipe: the LLM sees activating samples with the active
tokens marked <<like this>> plus non-activating samples and proposes a short label; the label is
then scored by asking the LLM to predict, for held-out activating and non-activating samples,
whether the feature fires (score = accuracy on a balanced held-out set)."""
from __future__ import annotations

from backend.errors import UnavailableError

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from backend.store import Store, StoreError

Decoder = Callable[[tuple[int, ...]], str]
SOURCES = ("hand", "llm", "auto")

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_labels (
    feature_id INTEGER, label VARCHAR, source VARCHAR, score FLOAT, corpus_id INTEGER,
    updated_at TIMESTAMP DEFAULT current_timestamp
);
"""
# Best label per feature: hand > llm > auto, then the given corpus's (or workspace-wide), then newest.
# Format with `filter` (a WHERE clause, no parameters); takes one parameter: the corpus id (or NULL).
BEST_LABEL_SQL = """
    SELECT feature_id, label FROM feature_labels WHERE {filter}
    QUALIFY row_number() OVER (
        PARTITION BY feature_id
        ORDER BY CASE source WHEN 'hand' THEN 0 WHEN 'llm' THEN 1 ELSE 2 END,
                 (corpus_id IS NULL OR corpus_id = ?) DESC, updated_at DESC) = 1"""


def ensure_schema(store: Store) -> None:
    if getattr(store, "_labels_schema", False):
        return
    store.con.execute(SCHEMA)
    store._labels_schema = True  # type: ignore[attr-defined]


# -- reading and writing labels ----------------------------------------------------------------
def write_labels(store: Store, df: pd.DataFrame, source: str, corpus_id: int | None, replace_all: bool = True) -> None:
    """Store df (feature_id, label, score) as `source` labels; replaces only rows of that source.

    replace_all: drop every `source` label of the corpus first (a full re-labelling);
    otherwise only those of the features in df."""
    if source not in ("auto", "llm"):
        raise StoreError("Only 'auto' and 'llm' labels are written in bulk; use set_hand_label for hand labels.")
    ensure_schema(store)
    data = pd.DataFrame({"feature_id": df["feature_id"].astype(np.int32), "label": df["label"].astype(str),
                         "score": df["score"].astype(np.float32) if "score" in df else np.float32(np.nan)})
    with store.transaction() as con:
        if replace_all:
            con.execute("DELETE FROM feature_labels WHERE source = ? AND corpus_id IS NOT DISTINCT FROM ?", [source, corpus_id])
        else:
            con.execute("DELETE FROM feature_labels WHERE source = ? AND corpus_id IS NOT DISTINCT FROM ? "
                        "AND feature_id IN (SELECT unnest(?::INTEGER[]))", [source, corpus_id, data["feature_id"].tolist()])
        con.register("_labels", data)
        try:
            con.execute("INSERT INTO feature_labels SELECT feature_id, label, ?, score, ?, current_timestamp FROM _labels "
                        "ORDER BY feature_id", [source, corpus_id])
        finally:
            con.unregister("_labels")


def set_hand_label(ws: Any, feature_id: int, text: str | None) -> None:
    """Set (or with empty text, remove) the workspace-wide hand label of a feature."""
    store: Store = ws.store
    ensure_schema(store)
    fid = int(feature_id)
    if not 0 <= fid < ws.d_sae:
        raise StoreError(f"Feature {fid} does not exist; this SAE has features 0-{ws.d_sae - 1}.")
    text = (text or "").strip()
    with store.transaction() as con:
        con.execute("DELETE FROM feature_labels WHERE source = 'hand' AND feature_id = ?", [fid])
        if text:
            con.execute("INSERT INTO feature_labels VALUES (?, ?, 'hand', NULL, NULL, current_timestamp)", [fid, text])


def best_labels(store: Store, corpus_id: int | None, feature_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Best label per feature (hand > llm > auto), preferring labels derived from corpus_id."""
    ensure_schema(store)
    if feature_ids is None:
        df = store.query_df(BEST_LABEL_SQL.format(filter="true"), [corpus_id])
    else:
        ids = [int(f) for f in feature_ids]
        if not ids:
            return {}
        df = store.query_df(BEST_LABEL_SQL.format(filter="feature_id IN (SELECT unnest(?::INTEGER[]))"), [ids, corpus_id])
    return dict(zip(df["feature_id"].astype(int), df["label"]))


def labels(ws: Any, corpus: int | str | None = None, feature_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Best label per feature (hand > llm > auto), preferring labels derived from `corpus`."""
    return best_labels(ws.store, ws.store.corpus_id(corpus) if corpus is not None else None, feature_ids)


def pick_best(rows: pd.DataFrame, corpus_id: int | None) -> str | None:
    """The best label among one feature's label rows (as returned by feature_labels), like BEST_LABEL_SQL."""
    if rows.empty:
        return None
    rank = rows["source"].map({"hand": 0, "llm": 1}).fillna(2)
    other = ~(rows["corpus_id"].isna() | (rows["corpus_id"] == corpus_id))
    order = pd.DataFrame({"r": rank, "o": other.astype(int), "t": rows["updated_at"]}).sort_values(
        ["r", "o", "t"], ascending=[True, True, False])
    return str(rows.loc[order.index[0], "label"])


def feature_labels(ws: Any, feature_id: int) -> pd.DataFrame:
    """Every stored label of one feature: label, source, score, corpus_id, updated_at (best source first)."""
    ensure_schema(ws.store)
    return ws.store.query_df(
        "SELECT label, source, score, corpus_id, updated_at FROM feature_labels WHERE feature_id = ? "
        "ORDER BY CASE source WHEN 'hand' THEN 0 WHEN 'llm' THEN 1 ELSE 2 END, updated_at DESC", [int(feature_id)])


# -- automatic labels ------------------------------------------------------------------------------
@dataclass
class ContextSet:
    """Where features fire: one entry per (feature, top document)."""

    feature_id: np.ndarray  # int64
    rank: np.ndarray  # 0 = the feature's strongest document
    doc_id: np.ndarray
    act: np.ndarray  # max_act in that document
    token_id: np.ndarray  # token at the argmax
    windows: list[list[int]]  # counted token ids around the argmax
    centers: np.ndarray  # index of the argmax token inside its window


def make_decoder(tokenizer: Any) -> Decoder:
    """Cached `ids -> text` (spaces handled by the tokenizer)."""

    @lru_cache(maxsize=500_000)
    def decode(ids: tuple[int, ...]) -> str:
        return tokenizer.decode(list(ids)) if ids else ""

    return decode


def _ngrams(ids: list[int], max_n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for n in range(1, max_n + 1) for i in range(len(ids) - n + 1)}


def _quote(s: str) -> str:
    return "'" + s.replace("\n", "\\n") + "'"


def _pick_ngrams(ranked: list[tuple[str, float]], exclude: set[str], k: int) -> list[str]:
    """Best distinct n-gram strings, skipping any contained in (or containing) one already chosen."""
    chosen: list[str] = []
    for s, _ in ranked:
        if len(chosen) >= k:
            break
        low = s.lower()
        if low in exclude or any(low in c.lower() or c.lower() in low for c in chosen):
            continue
        chosen.append(s)
    return chosen


def auto_labels(ctx: ContextSet, background: list[list[int]], decode: Decoder, n_tokens: int = 3, n_ngrams: int = 2,
                max_n: int = 3, n_contexts: int = 10, skip_ids: set[int] | frozenset[int] = frozenset()) -> pd.DataFrame:
    """feature_id, label, score for every feature in ctx.

    label = its most frequent argmax tokens + the n-grams most distinctive of its top contexts by
    TF-IDF (frequency among the feature's contexts x rarity in background documents);
    score = share of the feature's top documents whose argmax token is its top token.
    Tokens in `skip_ids` (special tokens) never appear in a label."""
    bg = Counter()
    for doc in background:
        bg.update(_ngrams(doc, max_n))
    n_bg = len(background)
    alnum = re.compile(r"\w")
    order = np.lexsort((ctx.rank, ctx.feature_id))
    fids = ctx.feature_id[order]
    starts = np.flatnonzero(np.r_[True, fids[1:] != fids[:-1]]) if len(fids) else np.zeros(0, int)
    out = []
    for s, e in zip(starts, np.r_[starts[1:], len(fids)].astype(int)):
        idx = order[s:e]
        tok_count = Counter()
        tok_act: Counter = Counter()
        for i in idx:
            tok_count[int(ctx.token_id[i])] += 1
            tok_act[int(ctx.token_id[i])] += float(ctx.act[i])
        best = sorted(tok_count, key=lambda t: (-tok_count[t], -tok_act[t]))
        top_toks = [decode((t,)) for t in best if t not in skip_ids and alnum.search(decode((t,)))][:n_tokens]
        top_toks = top_toks or [decode((best[0],))]
        tf = Counter()
        ctx_idx = [i for i in idx if ctx.rank[i] < n_contexts]
        for i in ctx_idx:
            tf.update(_ngrams(ctx.windows[i], max_n))
        min_tf = 2 if len(ctx_idx) >= 3 else 1
        ranked = []
        for g, c in tf.items():
            text = decode(g).strip()
            if c < min_tf or not alnum.search(text) or any(t in skip_ids for t in g):
                continue
            idf = math.log((1 + n_bg) / (1 + bg.get(g, 0)))
            ranked.append((text, c / len(ctx_idx) * idf * (1 + 0.25 * (len(g) - 1))))
        ranked.sort(key=lambda x: -x[1])
        grams = _pick_ngrams(ranked, {t.strip().lower() for t in top_toks}, n_ngrams)
        label = "top tokens: " + ", ".join(_quote(t) for t in top_toks)
        if grams:
            label += " | ngrams: " + ", ".join(_quote(g) for g in grams)
        out.append((int(fids[s]), label, tok_count[best[0]] / len(idx)))
    return pd.DataFrame(out, columns=["feature_id", "label", "score"])


# -- LLM labels ------------------------------------------------------------------------------------
class LLMError(UnavailableError):
    """The LLM endpoint is not configured, unreachable or answered something unusable."""


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat endpoint."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 300

    @classmethod
    def from_env(cls) -> "LLMConfig | None":
        """From SAEDASH_LLM_BASE_URL, SAEDASH_LLM_MODEL, SAEDASH_LLM_API_KEY; None when not configured."""
        url, model = os.environ.get("SAEDASH_LLM_BASE_URL"), os.environ.get("SAEDASH_LLM_MODEL")
        if not url or not model:
            return None
        return cls(url, model, os.environ.get("SAEDASH_LLM_API_KEY") or None)


def chat(cfg: LLMConfig, messages: list[dict[str, str]]) -> str:
    """One chat completion; returns the reply text or raises LLMError."""
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                       "max_tokens": cfg.max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise LLMError(f"LLM endpoint {url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise LLMError(f"Cannot reach the LLM endpoint {url}: {getattr(exc, 'reason', exc)}") from exc
    except json.JSONDecodeError as exc:
        raise LLMError(f"LLM endpoint {url} did not answer JSON: {exc}") from exc
    try:
        return str(payload["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"Unexpected answer from {url}: {str(payload)[:300]}") from exc


def format_sample(tokens: list[str], acts: np.ndarray | None, mask: list[bool], center: int | None = None,
                  window: int = 48, mark: bool = True) -> str:
    """Counted tokens (a window around `center`) as text, active tokens marked <<like this>> when `mark`."""
    pos = [i for i, m in enumerate(mask) if m]
    if center is not None and center in pos:
        c = pos.index(center)
        pos = pos[max(0, c - window // 2) : c + window // 2 + 1]
    else:
        pos = pos[:window]
    sep = "" if any(t[:1].isspace() for t in tokens) else " "
    parts = [f"<<{tokens[i]}>>" if mark and acts is not None and acts[i] > 0 else tokens[i] for i in pos]
    return sep.join(parts).strip().replace("\n", " ")


LABEL_PROMPT = (
    "We are studying a feature of a neural network that activates on some text. Below are text samples where the "
    "feature activates (the tokens where it activates are marked <<like this>>) and samples where it does not "
    "activate. Give a short label (at most 8 words) for what the feature detects. Answer with the label only.\n\n"
    "Activating samples:\n{pos}\n\nNon-activating samples:\n{neg}"
)
SCORE_PROMPT = (
    "A feature of a neural network is described by this label: \"{label}\".\n"
    "For each sample below, predict whether the feature activates anywhere in it. Answer with one line per sample "
    "in the form `<number>: yes` or `<number>: no`, nothing else.\n\n{samples}"
)


def parse_label(reply: str) -> str:
    """First non-empty line of the reply, without a 'Label:' prefix or quotes."""
    line = next((ln.strip() for ln in reply.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(label|answer)\s*:\s*", "", line, flags=re.I)
    return line.strip(" \"'`*").strip()


def parse_predictions(reply: str, n: int) -> np.ndarray:
    """Yes/no per numbered sample (1-based); unanswered samples count as no."""
    out = np.zeros(n, bool)
    for m in re.finditer(r"(\d+)\s*[:.)\-]\s*(yes|no|true|false|1|0)\b", reply, flags=re.I):
        i = int(m.group(1)) - 1
        if 0 <= i < n:
            out[i] = m.group(2).lower() in ("yes", "true", "1")
    return out


def score_predictions(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(accuracy, F1) of yes/no predictions."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    acc = float((pred == truth).mean()) if len(truth) else float("nan")
    tp = int((pred & truth).sum())
    denom = int(pred.sum()) + int(truth.sum())
    return acc, (2 * tp / denom if denom else 0.0)


@dataclass
class _Samples:
    shown_pos: list[str]
    shown_neg: list[str]
    held: list[str]
    held_truth: np.ndarray


def _negative_docs(store: Store, cid: int, feature_id: int, n: int, seed: int) -> list[int]:
    df = store.query_df(
        "SELECT doc_id FROM doc_status WHERE corpus_id = ? AND doc_id NOT IN "
        "(SELECT doc_id FROM feature_docs WHERE corpus_id = ? AND feature_id = ?) ORDER BY hash(doc_id + ?) LIMIT ?",
        [cid, cid, int(feature_id), int(seed), int(n)])
    return df["doc_id"].astype(int).tolist()


def _samples(ws: Any, cid: int, feature_id: int, n_show: int, n_negative: int, n_holdout: int, seed: int) -> _Samples:
    """Marked top samples, unmarked non-activating samples, and a balanced unmarked held-out set."""
    store: Store = ws.store
    st = store.query_one("SELECT n_docs_active FROM feature_stats WHERE corpus_id = ? AND feature_id = ?", [cid, int(feature_id)])
    n_act = int(st[0]) if st and st[0] else 0
    if n_act == 0:
        raise StoreError(f"Feature {feature_id} never fires in this corpus; there is nothing to label.")
    show = list(range(min(n_show, n_act)))
    rest = np.arange(len(show), n_act)
    held_ranks = sorted(set(rest[np.linspace(0, len(rest) - 1, min(n_holdout, len(rest))).round().astype(int)].tolist())) if len(rest) else []
    ranks = store.query_df("SELECT rank, doc_id, argmax_pos FROM feature_docs WHERE corpus_id = ? AND feature_id = ? "
                           "AND rank IN (SELECT unnest(?::INTEGER[])) ORDER BY rank", [cid, int(feature_id), show + held_ranks])
    negs = _negative_docs(store, cid, feature_id, n_negative + len(held_ranks), seed)

    def text(doc_id: int, center: int | None, mark: bool) -> str:
        ta = ws.token_activations(cid, doc_id, [int(feature_id)])
        return format_sample(ta.tokens, ta.acts[:, 0], ta.count_mask, center, mark=mark)

    by_rank = {int(r): (int(d), int(p)) for r, d, p in ranks.itertuples(index=False)}
    shown_pos = [text(*by_rank[r], mark=True) for r in show if r in by_rank]
    shown_neg = [text(d, None, False) for d in negs[:n_negative]]
    held_pos = [text(*by_rank[r], mark=False) for r in held_ranks if r in by_rank]
    held_neg = [text(d, None, False) for d in negs[n_negative:]]
    rng = np.random.default_rng(seed + int(feature_id))
    held = [(t, True) for t in held_pos] + [(t, False) for t in held_neg]
    perm = rng.permutation(len(held))
    return _Samples(shown_pos, shown_neg, [held[i][0] for i in perm], np.array([held[i][1] for i in perm], bool))


def _numbered(texts: list[str]) -> str:
    return "\n".join(f"Sample {i + 1}: {t}" for i, t in enumerate(texts)) or "(none)"


def llm_label_feature(ws: Any, corpus: int | str, feature_id: int, cfg: LLMConfig, n_show: int = 5, n_negative: int = 3,
                      n_holdout: int = 4, seed: int = 0) -> dict[str, Any]:
    """Ask the LLM for a label, then score it on held-out samples: {feature_id, label, score, accuracy, f1, n_scored}."""
    cid = ws.store.corpus_id(corpus)
    s = _samples(ws, cid, feature_id, n_show, n_negative, n_holdout, seed)
    label = parse_label(chat(cfg, [{"role": "user", "content": LABEL_PROMPT.format(pos=_numbered(s.shown_pos), neg=_numbered(s.shown_neg))}]))
    if not label:
        raise LLMError(f"The LLM gave an empty label for feature {feature_id}.")
    acc = f1 = float("nan")
    if len(s.held):
        reply = chat(cfg, [{"role": "user", "content": SCORE_PROMPT.format(label=label, samples=_numbered(s.held))}])
        acc, f1 = score_predictions(parse_predictions(reply, len(s.held)), s.held_truth)
    return {"feature_id": int(feature_id), "label": label, "score": acc, "accuracy": acc, "f1": f1, "n_scored": len(s.held)}


def llm_label_features(ws: Any, corpus: int | str, feature_ids: Iterable[int], cfg: LLMConfig | None = None,
                       **kwargs: Any) -> pd.DataFrame:
    """LLM-label and score several features; stores them as 'llm' labels (hand labels untouched).

    Returns feature_id, label, score, accuracy, f1, n_scored. Raises LLMError when no endpoint is configured."""
    cfg = cfg or LLMConfig.from_env()
    if cfg is None:
        raise LLMError("LLM labelling is off: set SAEDASH_LLM_BASE_URL and SAEDASH_LLM_MODEL (and SAEDASH_LLM_API_KEY).")
    cid = ws.store.corpus_id(corpus)
    df = pd.DataFrame([llm_label_feature(ws, cid, f, cfg, **kwargs) for f in feature_ids])
    if not df.empty:
        write_labels(ws.store, df, source="llm", corpus_id=cid, replace_all=False)
    return df
