"""The chat protocol every LLM here speaks: messages in, a reply (text, maybe token counts) out.

Labels (backend.labels) and hypotheses (backend.analysis.hypotheses) call a `ChatFn` and know nothing of
who serves it: an OpenAI-compatible server (backend.llm.endpoint_chat) or the reader model itself
(backend.reader_llm.reader_chat). Pure: no HTTP, no model, so the analyses can import it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union, runtime_checkable

import numpy as np

from backend.errors import UnavailableError


class LLMError(UnavailableError):
    """The LLM endpoint is not configured, unreachable or answered something unusable."""


@dataclass(frozen=True)
class ChatReply:
    """A reply with the token counts the server reported (None when it did not)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Messages = list[dict[str, str]]
ChatFn = Callable[[Messages], Union[str, ChatReply]]


@runtime_checkable
class ChatSource(Protocol):
    """Something that makes ChatFns, with a reply-length limit (an `LLMConfig`: one server, several uses)."""

    def chat_fn(self, max_tokens: Optional[int] = None) -> ChatFn: ...


def parse_predictions(reply: str, n: int) -> np.ndarray:
    """Yes/no per numbered sample (1-based); unanswered samples count as no."""
    out = np.zeros(n, bool)
    for m in re.finditer(r"(\d+)\s*[:.)\-]\s*(yes|no|true|false|1|0)\b", reply, flags=re.I):
        i = int(m.group(1)) - 1
        if 0 <= i < n:
            out[i] = m.group(2).lower() in ("yes", "true", "1")
    return out
