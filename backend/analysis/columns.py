"""A metadata column read as numbers, dates or categories, with the rows it cannot use counted.

Metadata is stored as strings (``ws.metadata`` returns them indexed by doc_id), so an analysis that needs
a number or a date must parse it. Silently dropping the rows that do not parse would change the question
without saying so; :func:`read_column` keeps their count and a few examples so the result can say
"12 documents have no value, 3 are not numbers ('n/a', 'five')" beside the answer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Collection, Literal

import numpy as np
import pandas as pd

from backend.errors import UserError

Kind = Literal["numeric", "date", "categorical"]
KINDS = ("auto", "numeric", "date", "categorical")
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "na", "nat"})
PARSE_SHARE = 0.8  # "auto" picks a kind when at least this share of the present values parse as it
AUTO_SAMPLE = 2000


class ColumnError(UserError):
    """A metadata column that cannot be read the way an analysis needs it."""


@dataclass(frozen=True)
class ColumnValues:
    """The usable rows of a column: ``rows`` (positions, i.e. doc ids) and their parsed ``values``
    (float for numeric, datetime64[ns] for date, str for categorical), with what was left out."""

    column: str
    kind: Kind
    values: np.ndarray
    rows: np.ndarray
    n_total: int
    n_missing: int
    n_unparseable: int
    bad_examples: tuple[str, ...] = ()

    @property
    def n_used(self) -> int:
        return int(self.rows.size)

    @property
    def message(self) -> str | None:
        """One sentence on the documents left out, or None when every document was used."""
        parts = []
        if self.n_missing:
            parts.append(f"{self.n_missing:,} have no value")
        if self.n_unparseable:
            what = {"numeric": "a number", "date": "a date"}.get(self.kind, "a usable value")
            shown = ", ".join(repr(b) for b in self.bad_examples)
            parts.append(f"{self.n_unparseable:,} have a value that is not {what}" + (f" ({shown})" if shown else ""))
        if not parts:
            return None
        text = (f"{' and '.join(parts)} in {self.column!r}: left out "
                f"({self.n_used:,} of {self.n_total:,} documents used).")
        return text[0].upper() + text[1:]


def _strings(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """The values as stripped strings and the mask of missing ones (NaN, None, empty, 'nan', 'null', …)."""
    raw = pd.Series(series).reset_index(drop=True)
    text = raw.astype(object).where(raw.notna(), "").astype(str).str.strip()
    missing = text.str.lower().isin(MISSING_TOKENS).to_numpy()
    return text, missing


def parse_numbers(text: pd.Series) -> np.ndarray:
    """Floats (NaN where a value is not a finite number); thousands separators like '1,234' are accepted."""
    out = np.array(pd.to_numeric(text, errors="coerce"), dtype=float)
    retry = np.flatnonzero(np.isnan(out) & text.str.contains(",", regex=False).to_numpy(bool))
    if retry.size:
        plain = text.iloc[retry].str.replace(r"(?<=\d),(?=\d{3}\b)", "", regex=True)
        out[retry] = np.array(pd.to_numeric(plain, errors="coerce"), dtype=float)
    out[~np.isfinite(out)] = np.nan
    return out


def parse_dates(text: pd.Series) -> np.ndarray:
    """datetime64[ns] (NaT where a value is not a date); time zones are converted to UTC and dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
    return np.array(parsed.dt.tz_localize(None), dtype="datetime64[ns]")


def _auto_kind(text: pd.Series, present: np.ndarray, allowed: Collection[str], column: str) -> Kind:
    """Decided on up to AUTO_SAMPLE present values spread evenly over the column (fast on 100k rows)."""
    rows = np.flatnonzero(present)
    sample = text.iloc[rows[np.linspace(0, rows.size - 1, min(rows.size, AUTO_SAMPLE)).astype(np.int64)]]
    n = len(sample)
    if "numeric" in allowed and np.isfinite(parse_numbers(sample)).sum() >= PARSE_SHARE * n:
        return "numeric"
    if "date" in allowed and (~np.isnat(parse_dates(sample))).sum() >= PARSE_SHARE * n:
        return "date"
    if "categorical" in allowed:
        return "categorical"
    names = {"numeric": "numbers", "date": "dates", "categorical": "categories"}
    shown = ", ".join(repr(v) for v in dict.fromkeys(sample.head(50).tolist()).keys() if v)
    raise ColumnError(f"Column {column!r} holds neither {' nor '.join(names[k] for k in allowed)}"
                      f" (values such as {shown[:80]}).")


def read_column(series: pd.Series, column: str = "column", kind: str = "auto",
                allowed: Collection[str] = ("numeric", "date", "categorical")) -> ColumnValues:
    """Parse a string column as ``kind`` ("auto": numeric, else date, else categorical, among ``allowed``).

    Rows with no value are counted as missing; rows whose value does not parse are counted as
    unparseable (with up to three examples); both are left out of ``rows``."""
    if kind not in KINDS:
        raise ColumnError(f"Unknown column kind {kind!r}; use one of {', '.join(KINDS)}.")
    if kind != "auto" and kind not in allowed:
        raise ColumnError(f"This analysis cannot read a column as {kind}; use one of {', '.join(allowed)}.")
    text, missing = _strings(series)
    present = ~missing
    if not present.any():
        raise ColumnError(f"Column {column!r} has no values.")
    chosen: Kind = _auto_kind(text, present, allowed, column) if kind == "auto" else kind  # type: ignore[assignment]
    if chosen == "numeric":
        parsed = parse_numbers(text)
        ok = present & np.isfinite(parsed)
    elif chosen == "date":
        parsed = parse_dates(text)
        ok = present & ~np.isnat(parsed)
    else:
        parsed = text.to_numpy(dtype=object)
        ok = present
    bad = present & ~ok
    examples = tuple(dict.fromkeys(text[bad].head(50).tolist()))[:3]
    if not ok.any():  # a kind the user forced that no value reads as
        raise ColumnError(f"No value of {column!r} reads as {chosen} (values such as "
                          f"{', '.join(repr(e) for e in examples)}); choose another kind or column.")
    rows = np.flatnonzero(ok).astype(np.int64)
    return ColumnValues(column=column, kind=chosen, values=parsed[rows], rows=rows, n_total=int(len(text)),
                        n_missing=int(missing.sum()), n_unparseable=int(bad.sum()), bad_examples=examples)
