"""One base class for every problem a user can fix (bad input, a wrong pairing, a missing package).

The CLI catches `UserError` and exits 2 with its message; pages show it with `st.error`. Anything else is
a bug and keeps its traceback. Concept modules subclass it (`StoreError`, `CorpusError`, `SAEError`, …)
so a caller can still be specific."""
from __future__ import annotations


class UserError(ValueError):
    """A request refused with a message the user can act on (never a traceback)."""


class UnavailableError(UserError, RuntimeError):
    """Something the request needs is not installed or not reachable (a model package, an LLM server)."""
