"""MiniLM document vectors as the baseline of `ws.explain`, or the reason there is none.

A baseline that cannot be had (the MiniLM package missing, or the caller asked not to compute vectors
that are not stored yet) is not an error: the explanation stands on its own, and the result says why
the comparison is missing."""
from __future__ import annotations

from typing import Callable, Literal, Union

import numpy as np

from backend import doc_embeddings
from backend.context import WorkspaceContext
from backend.errors import UserError
from backend.store import Corpus

BaselineMode = Union[bool, Literal["stored"]]
Progress = Callable[[float, str], None]  # (fraction done, what is running)


def scaled(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A progress callback mapping 0..1 onto start..stop of the caller's bar."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (stop - start) * float(fraction), message)


def baseline_vectors(ws: WorkspaceContext, corpus: Corpus, mode: BaselineMode = True,
                     progress: Progress | None = None) -> tuple[np.ndarray | None, str | None]:
    """(vectors, None), or (None, why not). ``mode``: True computes missing vectors (reporting progress),
    "stored" uses them only when every document has one, False skips the baseline."""
    if mode not in (True, False, "stored"):
        raise UserError("baseline is True (compute MiniLM vectors when missing), 'stored' or False.")
    if mode is False:
        return None, "No MiniLM baseline: not asked for."
    complete = doc_embeddings.is_complete(ws, corpus)  # type: ignore[arg-type]
    if mode == "stored" and not complete:
        return None, "No MiniLM baseline yet: this corpus's document vectors are not all computed."
    report = (None if progress is None or complete else
              lambda done, total: progress(done / max(1, total), f"MiniLM document vectors: {done:,}/{total:,}"))
    try:
        return doc_embeddings.doc_vectors(ws, corpus, progress=report), None  # type: ignore[arg-type]
    except (ImportError, OSError, UserError) as exc:
        return None, f"No MiniLM baseline: {exc}"
