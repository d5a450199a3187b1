"""One base class for every problem a user can fix (bad input, a wrong pairing, a missing package).

The CLI catches `UserError` and exits 2 with its message; pages show it with `st.error`. Anything else is
a bug and keeps its traceback. Concept modules subclass it (`StoreError`, `CorpusError`, `SAEError`, …)
so a caller can still be specific."""
from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral
from typing import Any


class UserError(ValueError):
    """A request refused with a message the user can act on (never a traceback)."""


class UnavailableError(UserError, RuntimeError):
    """Something the request needs is not installed or not reachable (a model package, an LLM server)."""


def is_whole_number(value: object) -> bool:
    """An int or a numpy integer, not a bool (True is an int to Python, never a count or an id to a user)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_count(value: Any, what: str, minimum: int, error: type[UserError] = UserError) -> int:
    """`value` as an int when it is a whole number of at least `minimum`; else `error("<what>: a whole number of at
    least <minimum>, not <value>.")`."""
    if not is_whole_number(value) or int(value) < minimum:
        raise error(f"{what}: a whole number of at least {minimum}, not {value!r}.")
    return int(value)


def check_feature_ids(feature_ids: Iterable[int], d_sae: int, error: type[UserError] = UserError) -> list[int]:
    """Feature ids as ints, each in 0..d_sae-1; refuse the rest with `error` (a negative id would index from the
    end, a larger one fail deep inside a tensor op)."""
    ids = []
    for f in feature_ids:
        if not is_whole_number(f):
            raise error(f"A feature id is a whole number, not {f!r}.")
        if not 0 <= int(f) < d_sae:
            raise error(f"There is no feature {int(f)}: this SAE has features 0 to {d_sae - 1:,}.")
        ids.append(int(f))
    return ids
