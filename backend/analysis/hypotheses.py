"""Hypotheses from a dataset diff, checked against the documents (the last step of an SAE data diff).

An LLM reads the strongest findings with example documents and writes a few hypotheses of the form
"Documents in A more often <property>". Each hypothesis is then checked blind: the LLM judges, for a
sample of A and B documents mixed in numbered batches, whether each document has the property, and
the shares of matching documents per side say whether the hypothesis holds. Tokens and seconds are
counted, since every check costs one call per batch.

The LLM is any ``ChatFn``: a callable from chat messages to the reply text (or a :class:`ChatReply`
with token usage, the protocol of :mod:`backend.chat`), so an OpenAI-compatible server
(``backend.llm.endpoint_chat``) and the reader model itself can serve. Texts are passed in: nothing here reads the workspace.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from backend.analysis.findings import Finding
from backend.errors import UserError
from backend.chat import ChatFn, ChatReply, ChatSource, LLMError, Messages, parse_predictions  # noqa: F401 (ChatReply, Messages: re-exported)


def estimate_tokens(text: str) -> int:
    """Rough token count (about four characters a token) for replies that carry no usage."""
    return math.ceil(len(text) / 4)


class _Meter:
    """Wraps a ChatFn and counts calls and tokens (reported usage, else estimated)."""

    def __init__(self, chat: ChatFn) -> None:
        self.chat = chat
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.estimated = False

    def __call__(self, messages: Messages) -> str:
        reply = self.chat(messages)
        reply = reply if isinstance(reply, ChatReply) else ChatReply(str(reply))
        self.calls += 1
        if reply.prompt_tokens is None or reply.completion_tokens is None:
            self.estimated = True
        self.prompt_tokens += (reply.prompt_tokens if reply.prompt_tokens is not None
                               else estimate_tokens("\n".join(m.get("content", "") for m in messages)))
        self.completion_tokens += (reply.completion_tokens if reply.completion_tokens is not None
                                   else estimate_tokens(reply.text))
        return reply.text


# -- proposing ------------------------------------------------------------------------------------------
PROPOSE_PROMPT = (
    "We compared two sets of documents, A ({name_a}) and B ({name_b}), with a sparse autoencoder. These are the "
    "strongest differences it found, each with example documents where it fires:\n\n{findings}\n\n"
    "Write {n} hypotheses about how documents in A differ from documents in B. Write each on its own numbered "
    "line, in the form \"Documents in A more often <property>.\" or \"Documents in B more often <property>.\", "
    "where <property> can be checked by reading a single document. Answer with the numbered hypotheses only."
)
CHECK_PROMPT = (
    "Hypothesis: {hypothesis}\nProperty to look for in each document: {property}\n"
    "For each numbered document below, decide whether the document has this property. Answer with one line "
    "per document in the form `<number>: yes` or `<number>: no`, nothing else.\n\n{documents}"
)
_HYPOTHESIS = re.compile(
    r"^(?:\s*(?:\d+\s*[.):]|[-*•])\s*)?\**\s*(documents?\s+(?:in|from)\s+(A|B)\b\s*"
    r"(?:(?:are|is)\s+)?(?:more\s+often|more\s+frequently|more\s+likely\s+to|tend\s+to)?\s*(.*?))\s*\**\s*$",
    re.I,
)


@dataclass(frozen=True)
class Hypothesis:
    """One hypothesis and, once checked, the share of sampled documents of each side that match it."""

    text: str
    side: Literal["a", "b"]
    property: str
    share_a: float = float("nan")
    share_b: float = float("nan")
    n_a: int = 0
    n_b: int = 0
    matches_a: tuple[int, ...] = ()
    matches_b: tuple[int, ...] = ()

    @property
    def diff(self) -> float:
        """share_a - share_b (positive supports an A hypothesis)."""
        return self.share_a - self.share_b

    @property
    def supported(self) -> bool:
        """Whether the checked shares differ in the hypothesised direction."""
        return self.diff > 0 if self.side == "a" else self.diff < 0


def parse_hypotheses(reply: str, n_max: int = 5) -> list[Hypothesis]:
    """Hypotheses "Documents in A|B more often <property>" from a reply, one per line, at most ``n_max``."""
    out: list[Hypothesis] = []
    for line in reply.splitlines():
        m = _HYPOTHESIS.match(line.strip())
        if not m or not m.group(3).strip(" .*"):
            continue
        text = m.group(1).strip().rstrip("*").strip()
        out.append(Hypothesis(text=text, side=m.group(2).lower(), property=m.group(3).strip(" .*")))
        if len(out) >= n_max:
            break
    return out


def _one_line(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def findings_prompt(findings: Sequence[Finding], example_texts_a: Mapping[int, str],
                    example_texts_b: Mapping[int, str], max_chars: int = 400) -> str:
    """The findings as numbered sentences, each followed by its example documents that have a text."""
    lines = []
    for i, f in enumerate(findings, 1):
        lines.append(f"{i}. {f.sentence}")
        for name, ids, texts in (("A", f.examples_a, example_texts_a), ("B", f.examples_b, example_texts_b)):
            for doc_id in ids:
                if doc_id in texts:
                    lines.append(f"   Example from {name}: {_one_line(texts[doc_id], max_chars)}")
    return "\n".join(lines)


# -- checking ------------------------------------------------------------------------------------------
def sample_doc_ids(doc_ids: Sequence[int] | np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``size`` doc ids, in increasing order (draw it before fetching texts)."""
    ids = np.unique(np.asarray(doc_ids, dtype=np.int64))
    if ids.size <= size:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))


def _check_one(hypothesis: Hypothesis, docs: list[tuple[str, int, str]], chat: Callable[[Messages], str],
               batch_size: int, max_chars: int) -> Hypothesis:
    said_yes = np.zeros(len(docs), bool)
    for start in range(0, len(docs), batch_size):
        batch = docs[start : start + batch_size]
        numbered = "\n".join(f"Document {i + 1}: {_one_line(text, max_chars)}" for i, (_, _, text) in enumerate(batch))
        prompt = CHECK_PROMPT.format(hypothesis=hypothesis.text, property=hypothesis.property, documents=numbered)
        reply = chat([{"role": "user", "content": prompt}])
        said_yes[start : start + len(batch)] = parse_predictions(reply, len(batch))
    side = np.array([s for s, _, _ in docs])
    ids = np.array([d for _, d, _ in docs], dtype=np.int64)
    in_a, in_b = side == "a", side == "b"
    n_a, n_b = int(in_a.sum()), int(in_b.sum())
    return dataclasses.replace(
        hypothesis,
        share_a=float(said_yes[in_a].mean()) if n_a else float("nan"),
        share_b=float(said_yes[in_b].mean()) if n_b else float("nan"),
        n_a=n_a, n_b=n_b,
        matches_a=tuple(sorted(int(d) for d in ids[in_a & said_yes])),
        matches_b=tuple(sorted(int(d) for d in ids[in_b & said_yes])),
    )


def check_hypotheses(hypotheses: Sequence[Hypothesis], docs_a: Mapping[int, str], docs_b: Mapping[int, str],
                     chat: ChatFn, sample_size: int = 40, batch_size: int = 10, seed: int = 0,
                     max_chars: int = 600) -> list[Hypothesis]:
    """Judge each hypothesis on a sample of at most ``sample_size`` documents per side.

    ``docs_a``/``docs_b``: {doc_id: text}. A and B documents are shuffled together into numbered batches
    of ``batch_size``, so the judge does not know the side; one call per batch and hypothesis."""
    chat = chat if isinstance(chat, _Meter) else _Meter(chat)
    sample = [("a", int(d), docs_a[int(d)]) for d in sample_doc_ids(list(docs_a), sample_size, seed)]
    sample += [("b", int(d), docs_b[int(d)]) for d in sample_doc_ids(list(docs_b), sample_size, seed + 1)]
    sample = [sample[i] for i in np.random.default_rng(seed).permutation(len(sample))]
    return [_check_one(h, sample, chat, batch_size, max_chars) for h in hypotheses]


# -- the whole step --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HypothesisConfig:
    """How many hypotheses to ask for, from how many findings, checked on how many documents per side."""

    n_hypotheses: int = 4
    n_findings: int = 6
    sample_size: int = 40
    batch_size: int = 10
    seed: int = 0
    max_chars: int = 400
    propose_max_tokens: int = 800

    def __post_init__(self) -> None:
        if not 1 <= self.n_hypotheses <= 10:
            raise UserError("Ask for between 1 and 10 hypotheses.")
        if self.n_findings < 1:
            raise UserError("n_findings must be at least 1.")
        if self.sample_size < 1 or self.batch_size < 1:
            raise UserError("sample_size and batch_size must be at least 1.")
        if self.max_chars < 20:
            raise UserError("max_chars must be at least 20.")


@dataclass(frozen=True)
class HypothesisReport:
    """Checked hypotheses with what they cost: LLM calls, tokens (reported by the server, else
    estimated: ``tokens_estimated``) and seconds. ``sample_size`` is the per-side size asked for;
    each hypothesis carries the ``n_a``/``n_b`` documents actually judged."""

    hypotheses: list[Hypothesis]
    sample_size: int
    n_calls: int
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    seconds: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_frame(self) -> pd.DataFrame:
        """One row per hypothesis: text, side, property, share_a, share_b, n_a, n_b, supported."""
        return pd.DataFrame({
            "hypothesis": [h.text for h in self.hypotheses],
            "side": [h.side for h in self.hypotheses],
            "property": [h.property for h in self.hypotheses],
            "share_a": [h.share_a for h in self.hypotheses],
            "share_b": [h.share_b for h in self.hypotheses],
            "n_a": [h.n_a for h in self.hypotheses],
            "n_b": [h.n_b for h in self.hypotheses],
            "supported": [h.supported for h in self.hypotheses],
        })


def run_hypotheses(
    findings: Sequence[Finding],
    example_texts_a: Mapping[int, str],
    example_texts_b: Mapping[int, str],
    docs_a: Mapping[int, str],
    docs_b: Mapping[int, str],
    llm: ChatSource | ChatFn,
    config: HypothesisConfig = HypothesisConfig(),
    name_a: str = "A",
    name_b: str = "B",
) -> HypothesisReport:
    """Propose hypotheses from the top ``findings`` (with their example texts), then check each on samples.

    ``example_texts_a``/``_b``: {doc_id: text} for the findings' example documents; ``docs_a``/``_b``:
    {doc_id: text} to sample the check from (pass a pre-drawn :func:`sample_doc_ids` sample to avoid
    loading a whole corpus). ``llm``: any ``ChatFn``, or a ``ChatSource`` such as ``backend.llm.LLMConfig`` (an
    OpenAI-compatible server), which makes one ChatFn per use.
    Raises ``LLMError`` when the reply holds no hypothesis in the asked-for form."""
    if not findings:
        raise UserError("There are no findings to write hypotheses about.")
    started = time.perf_counter()
    if isinstance(llm, ChatSource):  # proposing writes several lines: allow a longer reply
        propose_chat, check_chat = _Meter(llm.chat_fn(config.propose_max_tokens)), _Meter(llm.chat_fn())
    else:
        propose_chat = check_chat = _Meter(llm)
    prompt = PROPOSE_PROMPT.format(
        name_a=name_a, name_b=name_b, n=config.n_hypotheses,
        findings=findings_prompt(findings[: config.n_findings], example_texts_a, example_texts_b, config.max_chars))
    reply = propose_chat([{"role": "user", "content": prompt}])
    hypotheses = parse_hypotheses(reply, config.n_hypotheses)
    if not hypotheses:
        raise LLMError(f"The LLM wrote no hypothesis of the form 'Documents in A more often …': {reply[:300]!r}")
    checked = check_hypotheses(hypotheses, docs_a, docs_b, check_chat, config.sample_size, config.batch_size,
                               config.seed, config.max_chars)
    meters = {id(propose_chat): propose_chat, id(check_chat): check_chat}.values()
    return HypothesisReport(
        hypotheses=checked,
        sample_size=config.sample_size,
        n_calls=sum(m.calls for m in meters),
        prompt_tokens=sum(m.prompt_tokens for m in meters),
        completion_tokens=sum(m.completion_tokens for m in meters),
        tokens_estimated=any(m.estimated for m in meters),
        seconds=time.perf_counter() - started,
    )
