"""Export tables (documents, diffs, clusters) as CSV, JSONL or Parquet bytes/files.

CSV output is neutralised against spreadsheet formula injection (OWASP "CSV injection"):
every string cell *and column name* that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading single quote, so Excel/LibreOffice/Sheets show it as text instead
of evaluating it. Numeric cells are untouched (a negative number stays a number). JSONL and
Parquet keep values verbatim (they are not opened by spreadsheets as formulas).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backend import errors
from backend.errors import UserError

FORMATS = ("csv", "jsonl", "parquet")
FORMAT_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportError(UserError):
    """An export asked in a way that cannot be honoured (an unknown format, a feature that does not exist)."""


def export_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format for `path` (its suffix unless `fmt` is given), or an ExportError naming the choices."""
    raw = (fmt or Path(path).suffix).lower().lstrip(".")
    chosen = FORMAT_ALIASES.get(raw, raw)
    if chosen not in FORMATS:
        what = f"format {fmt!r}" if fmt else f"the file name {Path(path).name!r}"
        raise ExportError(f"Cannot export to {what}: use a .csv, .jsonl or .parquet file.")
    return chosen


def check_feature_ids(feature_ids: Iterable[int], d_sae: int) -> list[int]:
    """Feature ids as ints, each in 0..d_sae-1 (`errors.check_feature_ids`); refuse the rest with an ExportError."""
    return errors.check_feature_ids(feature_ids, d_sae, ExportError)


def neutralise_cell(value):
    """Prefix a single quote to strings that a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` with formula-like string cells and column names neutralised."""
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if s.dtype == object or isinstance(s.dtype, pd.StringDtype) or isinstance(s.dtype, pd.CategoricalDtype):
            out[col] = s.astype(object).map(neutralise_cell)
    out.columns = [neutralise_cell(str(c)) for c in out.columns]
    return out


def export_frame(df: pd.DataFrame, fmt: str) -> bytes:
    """Serialise a DataFrame (index dropped): "csv" (UTF-8, neutralised), "jsonl" (one UTF-8
    JSON object per line, non-ASCII kept) or "parquet" (pyarrow)."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "csv":
        # CRLF rows (RFC 4180) also make the writer quote cells holding a bare \r or \n
        return neutralise_formulas(df).to_csv(index=False, lineterminator="\r\n").encode("utf-8")
    if fmt == "jsonl":
        if len(df) == 0:
            return b""
        text = df.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
        return (text if text.endswith("\n") else text + "\n").encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine="pyarrow")
        return buf.getvalue()
    raise ExportError(f"Unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}.")


def write_export(df: pd.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``df`` to ``path``; the format defaults to the file suffix (.csv/.jsonl/.parquet)."""
    path = Path(path)
    data = export_frame(df, export_format(path, fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def slugify(text: str, max_len: int = 40) -> str:
    """Lowercase ASCII slug of a label: non-alphanumerics become single underscores."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")
    return slug[:max_len].rstrip("_")


def feature_columns(X, rows, feature_ids, names: dict[int, str] | list[str] | None = None) -> pd.DataFrame:
    """Activation columns of chosen features for chosen documents.

    Columns are named ``f<id>_<label-slug>`` (or ``f<id>`` without a label); values are the raw
    activations (0 where the feature does not fire). The index is 0..len(rows)-1 in the order of
    ``rows``, ready for ``pd.concat([meta.iloc[rows].reset_index(drop=True), cols], axis=1)``.
    """
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(X)
    rows = np.asarray(rows, dtype=np.int64)
    fids = check_feature_ids(feature_ids, X.shape[1])
    if isinstance(names, (list, tuple)):
        names = dict(zip(fids, names))
    names = names or {}
    block = X[rows][:, fids].toarray() if fids else np.zeros((rows.size, 0))
    cols, seen = [], set()
    for f in fids:
        slug = slugify(names.get(f, "")) if names.get(f) else ""
        col = f"f{f}_{slug}" if slug else f"f{f}"
        base, k = col, 2
        while col in seen:  # the same feature twice
            col, k = f"{base}_{k}", k + 1
        seen.add(col)
        cols.append(col)
    return pd.DataFrame(block, columns=cols)
