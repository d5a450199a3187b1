"""Feature labels: automatic (from where a feature fires), LLM-written (optional) and hand-written.

Table feature_labels(feature_id, label, source ['auto'|'llm'|'hand'], score, corpus_id, updated_at).
Auto and LLM labels belong to the corpus they were derived from; hand labels are workspace-wide
(corpus_id NULL). Re-running auto or LLM labelling only replaces rows of its own source, so hand
labels always survive; the best label of a feature is hand > llm > auto (then this corpus's, then newest).

LLM labels follow the explain-then-score recipe: the LLM sees activating samples with the active
tokens marked <<like this>> plus non-activating samples and proposes a short label; the label is
then scored by asking the LLM to predict, for held-out activating and non-activating samples,
whether the feature fires (score = accuracy on a balanced held-out set). The LLM is an OpenAI-compatible
server (`LLMConfig`) or any chat function (`backend.reader_llm.reader_chat`: the reader model itself);
`llm_label_features` does not ask again about features that already hold an LLM label for the corpus."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import numpy as np
import pandas as pd

from backend.activations import token_activations
from backend.chat import ChatFn, parse_predictions
from backend.context import WorkspaceContext
from backend.feature_docs import ranked_documents
from backend.label_text import readable_labels
# The HTTP client lives in backend.llm; its names stay importable from here.
from backend.llm import (LLMConfig, LLMError, chat, chat_completion, operator_llm_config,  # noqa: F401
                         same_endpoint, session_llm_config)
from backend.store import Corpus, Store, StoreError

Decoder = Callable[[tuple[int, ...]], str]
SOURCES = ("hand", "llm", "auto")

# Best label per feature: hand > llm > auto, then the given corpus's (or workspace-wide), then newest.
# Format with `filter` (a WHERE clause, no parameters); takes one parameter: the corpus id (or NULL).
BEST_LABEL_SQL = """
    SELECT feature_id, label, score AS label_score, source AS label_source FROM feature_labels WHERE {filter}
    QUALIFY row_number() OVER (
        PARTITION BY feature_id
        ORDER BY CASE source WHEN 'hand' THEN 0 WHEN 'llm' THEN 1 ELSE 2 END,
                 (corpus_id IS NULL OR corpus_id = ?) DESC, updated_at DESC) = 1"""


# -- reading and writing labels ----------------------------------------------------------------
def write_labels(store: Store, df: pd.DataFrame, source: str, corpus_id: int | None, replace_all: bool = True) -> None:
    """Store df (feature_id, label, score) as `source` labels; replaces only rows of that source.

    replace_all: drop every `source` label of the corpus first (a full re-labelling);
    otherwise only those of the features in df."""
    if source not in ("auto", "llm"):
        raise StoreError("Only 'auto' and 'llm' labels are written in bulk; use set_hand_label for hand labels.")
    data = pd.DataFrame({"feature_id": df["feature_id"].astype(np.int32), "label": df["label"].astype(str),
                         "score": df["score"].astype(np.float32) if "score" in df else np.float32(np.nan)})
    where: dict[str, Any] = {"source": source, "corpus_id": corpus_id}
    if not replace_all:
        where["feature_id"] = data["feature_id"].tolist()
    store.replace_rows("feature_labels", data.sort_values("feature_id"), where=where,
                       fixed={"source": source, "corpus_id": corpus_id})


def set_hand_label(ws: WorkspaceContext, feature_id: int, text: str | None) -> None:
    """Set (or with empty text, remove) the workspace-wide hand label of a feature."""
    store: Store = ws.store
    fid = int(feature_id)
    if not 0 <= fid < ws.d_sae:
        raise StoreError(f"Feature {fid} does not exist; this SAE has features 0-{ws.d_sae - 1}.")
    text = (text or "").strip()
    with store.transaction() as tx:
        tx.execute("DELETE FROM feature_labels WHERE source = 'hand' AND feature_id = ?", [fid])
        if text:
            tx.execute("INSERT INTO feature_labels VALUES (?, ?, 'hand', NULL, NULL, current_timestamp)", [fid, text])


def best_labels(store: Store, corpus_id: int | None, feature_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Best label per feature (hand > llm > auto), preferring labels derived from corpus_id."""
    if feature_ids is None:
        df = store.query_df(BEST_LABEL_SQL.format(filter="true"), [corpus_id])
    else:
        ids = [int(f) for f in feature_ids]
        if not ids:
            return {}
        df = store.query_df(BEST_LABEL_SQL.format(filter="feature_id IN (SELECT unnest(?::INTEGER[]))"), [ids, corpus_id])
    return dict(zip(df["feature_id"].astype(int), df["label"]))


def labels(ws: WorkspaceContext, corpus: Corpus | None = None, feature_ids: Iterable[int] | None = None) -> dict[int, str]:
    """Best label per feature (hand > llm > auto), preferring labels derived from `corpus`."""
    cid = None if corpus is None else (corpus.corpus_id if isinstance(corpus, Corpus) else ws.corpus(corpus).corpus_id)
    return best_labels(ws.store, cid, feature_ids)


def label_revision(store: Store) -> tuple[int, str]:
    """(number of label rows, newest update): changes whenever any label is written (a cache key)."""
    count, newest = store.query_one("SELECT count(*), max(updated_at) FROM feature_labels") or (0, None)
    return int(count), str(newest)


def pick_best(rows: pd.DataFrame, corpus_id: int | None) -> str | None:
    """The best label among one feature's label rows (as returned by feature_labels), like BEST_LABEL_SQL."""
    if rows.empty:
        return None
    rank = rows["source"].map({"hand": 0, "llm": 1}).fillna(2)
    other = ~(rows["corpus_id"].isna() | (rows["corpus_id"] == corpus_id))
    order = pd.DataFrame({"r": rank, "o": other.astype(int), "t": rows["updated_at"]}).sort_values(
        ["r", "o", "t"], ascending=[True, True, False])
    return str(rows.loc[order.index[0], "label"])


def feature_labels(ws: WorkspaceContext, feature_id: int) -> pd.DataFrame:
    """Every stored label of one feature: label, source, score, corpus_id, updated_at (best source first)."""
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


def auto_labels(ctx: ContextSet, background: list[list[int]], decode: Decoder,
                skip_ids: set[int] | frozenset[int] = frozenset(), concepts: Any = None,
                reference: Mapping[int, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """feature_id, label, score (and name, kind, example, n_contexts) for every feature in ctx.

    Readable labels from `backend.label_text`: the words (or punctuation/formatting, in plain words) the
    feature fires on, most distinctive first, plus one quoted context with the firing token marked,
    e.g. `certain / some / few — "in «certain» cases"`; score = activation-weighted share of the top
    contexts the name explains (label_text.readable_labels takes the options).
    Tokens in `skip_ids` (special tokens) are never read as words. `concepts` (a label_text.ConceptFn such as
    backend.concept_names.minilm_namer()) names the concept the varied firing words of a feature share; `reference`
    (`backend.label_reference`) the contexts of a feature with varied tokens that fire on its words in other text."""
    return readable_labels(ctx, background, decode, skip_ids=skip_ids, concepts=concepts, reference=reference)


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
        "(SELECT doc_id FROM doc_features WHERE corpus_id = ? AND feature_id = ?) ORDER BY hash(doc_id + ?) LIMIT ?",
        [cid, cid, int(feature_id), int(seed), int(n)])
    return df["doc_id"].astype(int).tolist()


def _samples(ws: WorkspaceContext, cid: int, feature_id: int, n_show: int, n_negative: int, n_holdout: int, seed: int) -> _Samples:
    """Marked top samples, unmarked non-activating samples, and a balanced unmarked held-out set."""
    store: Store = ws.store
    st = store.query_one("SELECT n_docs_active FROM feature_stats WHERE corpus_id = ? AND feature_id = ?", [cid, int(feature_id)])
    n_act = int(st[0]) if st and st[0] else 0
    if n_act == 0:
        raise StoreError(f"Feature {feature_id} never fires in this corpus; there is nothing to label.")
    show = list(range(min(n_show, n_act)))
    rest = np.arange(len(show), n_act)
    held_ranks = sorted(set(rest[np.linspace(0, len(rest) - 1, min(n_holdout, len(rest))).round().astype(int)].tolist())) if len(rest) else []
    ranks = ranked_documents(store, cid, int(feature_id), show + held_ranks)[["rank", "doc_id", "argmax_pos"]]
    negs = _negative_docs(store, cid, feature_id, n_negative + len(held_ranks), seed)

    def text(doc_id: int, center: int | None, mark: bool) -> str:
        tokens, acts, mask = _doc_activations(ws, cid, doc_id, int(feature_id))
        return format_sample(tokens, acts[:, 0], mask, center, mark=mark)

    by_rank = {int(r): (int(d), int(p)) for r, d, p in ranks.itertuples(index=False)}
    shown_pos = [text(*by_rank[r], mark=True) for r in show if r in by_rank]
    shown_neg = [text(d, None, False) for d in negs[:n_negative]]
    held_pos = [text(*by_rank[r], mark=False) for r in held_ranks if r in by_rank]
    held_neg = [text(d, None, False) for d in negs[n_negative:]]
    rng = np.random.default_rng(seed + int(feature_id))
    held = [(t, True) for t in held_pos] + [(t, False) for t in held_neg]
    perm = rng.permutation(len(held))
    return _Samples(shown_pos, shown_neg, [held[i][0] for i in perm], np.array([held[i][1] for i in perm], bool))


def _doc_activations(ws: WorkspaceContext, cid: int, doc_id: int, feature_id: int) -> tuple[list[str], np.ndarray, list[bool]]:
    """Token-level activations of one feature over one stored document (what `Workspace.token_activations` reads)."""
    text = ws.store.texts(cid, [int(doc_id)])
    if not text:
        raise StoreError(f"No document {doc_id} in corpus {cid!r}.")
    return token_activations(ws.reader, ws.sae, ws.hook, text[0], ws.embed_config, [feature_id])


def _numbered(texts: list[str]) -> str:
    return "\n".join(f"Sample {i + 1}: {t}" for i, t in enumerate(texts)) or "(none)"


Labeller = Union["LLMConfig", "ChatFn"]  # an OpenAI-compatible server, or any chat function (the reader model)


def as_chat(llm: Labeller) -> Callable[[list[dict[str, str]]], str]:
    """messages -> reply text, for a server config or a ChatFn (whose reply may be a ChatReply)."""
    if isinstance(llm, LLMConfig):
        return lambda messages: chat(llm, messages)
    if not callable(llm):
        raise LLMError(f"An LLM labeller is an LLMConfig or a chat function, not {type(llm).__name__}.")

    def ask(messages: list[dict[str, str]]) -> str:
        reply = llm(messages)
        return str(getattr(reply, "text", reply))  # a ChatReply carries token counts beside the text

    return ask


def llm_label_feature(ws: WorkspaceContext, corpus: Corpus, feature_id: int, cfg: Labeller, n_show: int = 5,
                      n_negative: int = 3, n_holdout: int = 4, seed: int = 0) -> dict[str, Any]:
    """Ask the LLM for a label, then score it on held-out samples: {feature_id, label, score, accuracy, f1, n_scored}.

    cfg: an LLMConfig (OpenAI-compatible server) or a ChatFn (e.g. backend.reader_llm.reader_chat(ws.reader))."""
    ask = as_chat(cfg)
    cid = ws.store.corpus_id(corpus)
    s = _samples(ws, cid, feature_id, n_show, n_negative, n_holdout, seed)
    label = parse_label(ask([{"role": "user", "content": LABEL_PROMPT.format(pos=_numbered(s.shown_pos), neg=_numbered(s.shown_neg))}]))
    if not label:
        raise LLMError(f"The LLM gave an empty label for feature {feature_id}.")
    acc = f1 = float("nan")
    if len(s.held):
        reply = ask([{"role": "user", "content": SCORE_PROMPT.format(label=label, samples=_numbered(s.held))}])
        acc, f1 = score_predictions(parse_predictions(reply, len(s.held)), s.held_truth)
    return {"feature_id": int(feature_id), "label": label, "score": acc, "accuracy": acc, "f1": f1, "n_scored": len(s.held)}


LLM_RESULT_COLUMNS = ["feature_id", "label", "score", "accuracy", "f1", "n_scored", "cached"]


def stored_llm_labels(ws: WorkspaceContext, corpus: Corpus, feature_ids: Iterable[int]) -> dict[int, tuple[str, float]]:
    """{feature_id: (label, score)} of the features that already hold an LLM label derived from `corpus`."""
    return _stored_llm_labels(ws.store, ws.store.corpus_id(corpus), feature_ids)


def _stored_llm_labels(store: Store, corpus_id: int, feature_ids: Iterable[int]) -> dict[int, tuple[str, float]]:
    ids = [int(f) for f in feature_ids]
    if not ids:
        return {}
    rows = store.query_all(
        "SELECT feature_id, label, score FROM feature_labels WHERE source = 'llm' AND corpus_id = ? "
        "AND feature_id IN (SELECT unnest(?::INTEGER[])) ORDER BY updated_at", [int(corpus_id), ids])
    return {int(f): (str(lab), float("nan") if score is None else float(score)) for f, lab, score in rows}


def llm_label_features(ws: WorkspaceContext, corpus: Corpus, feature_ids: Iterable[int], cfg: Labeller | None = None,
                       progress: Callable[[int, int], None] | None = None, force: bool = False,
                       **kwargs: Any) -> pd.DataFrame:
    """LLM-label and score several features; stores each as an 'llm' label as soon as it is scored.

    cfg: an LLMConfig or a ChatFn (the reader model itself, backend.reader_llm.reader_chat); None = the
    operator's configured server. Features that already hold an LLM label for this corpus are not asked
    again (the labels are cached in the workspace) unless `force`; they are listed with their stored label
    and score and `cached` True. progress(done, total) is called after each feature. Hand labels are
    untouched (and still win in best_labels). Returns LLM_RESULT_COLUMNS in the order of feature_ids
    (duplicates dropped); kwargs (n_show, n_negative, n_holdout, seed) go to llm_label_feature.
    Raises LLMError when no LLM is given or configured."""
    cfg = cfg if cfg is not None else operator_llm_config()
    if cfg is None:
        raise LLMError("LLM labelling is off: set SAEDASH_LLM_BASE_URL and SAEDASH_LLM_MODEL (and SAEDASH_LLM_API_KEY), "
                       "or name a config file in SAEDASH_LLM_CONFIG; or pass an LLM (an LLMConfig, or "
                       "backend.reader_llm.reader_chat(ws.reader) for an instruct reader model of 1B parameters or more).")
    cid = ws.store.corpus_id(corpus)
    ids = list(dict.fromkeys(int(f) for f in feature_ids))
    stored = {} if force else _stored_llm_labels(ws.store, cid, ids)
    rows = []
    for done, fid in enumerate(ids, start=1):
        if fid in stored:
            label, score = stored[fid]
            rows.append({"feature_id": fid, "label": label, "score": score, "accuracy": score, "f1": float("nan"),
                         "n_scored": float("nan"), "cached": True})
        else:
            row = llm_label_feature(ws, cid, fid, cfg, **kwargs)
            write_labels(ws.store, pd.DataFrame([row]), source="llm", corpus_id=cid, replace_all=False)
            rows.append({**row, "cached": False})
        if progress is not None:
            progress(done, len(ids))
    return pd.DataFrame(rows, columns=LLM_RESULT_COLUMNS)
