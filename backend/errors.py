"""One base class for every problem a user can fix (bad input, a wrong pairing, a missing package).

The CLI catches `UserError` and exits 2 with its message; pages show it with `st.error`. Anything else is
a bug and keeps its traceback. Concept modules subclass it (`StoreError`, `CorpusError`, `SAEError`, …)
so a caller can still be specific."""
from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral


class UserError(ValueError):
    """A request refused with a message the user can act on (never a traceback)."""


class UnavailableError(UserError, RuntimeError):
    """Something the request needs is not installed or not reachable (a model package, an LLM server)."""


def check_feature_ids(feature_ids: Iterable[int], d_sae: int, error: type[UserError] = UserError) -> list[int]:
    """Feature ids as ints, each in 0..d_sae-1; refuse the rest with `error` (a negative id would index from the
    end, a larger one fail deep inside a tensor op)."""
    ids = []
    for f in feature_ids:
        if isinstance(f, bool) or not isinstance(f, Integral):
            raise error(f"A feature id is a whole number, not {f!r}.")
        if not 0 <= int(f) < d_sae:
            raise error(f"There is no feature {int(f)}: this SAE has features 0 to {d_sae - 1:,}.")
        ids.append(int(f))
    return ids
