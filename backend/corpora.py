"""Read CSV, TSV, JSONL, Parquet and TXT corpora into DataFrames with clear validation errors."""
from __future__ import annotations

from backend.errors import UserError

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import pandas as pd

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
TEXT_COLUMN_GUESSES = ("text", "document", "content", "body", "review", "sentence", "message")


class CorpusError(UserError):
    """A corpus file the tool refuses, with the reason in words a user can act on."""


@dataclass(frozen=True)
class ReadOptions:
    """How to parse a file; `fmt` is guessed from the file name when None."""

    fmt: str | None = None
    txt_mode: Literal["line", "paragraph"] = "line"
    max_bytes: int = DEFAULT_MAX_BYTES


def guess_format(name: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    aliases = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "text": "txt"}
    fmt = aliases.get(suffix, suffix)
    if fmt not in FORMATS:
        raise CorpusError(f"Unsupported file type {suffix!r} for {name!r}; use one of: {', '.join(FORMATS)}.")
    return fmt


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(f"The file is not UTF-8 text (invalid byte at line {line}); re-save it as UTF-8.") from exc
    return text


def _read_delimited(text: str, sep: str) -> pd.DataFrame:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise CorpusError(f"Unparseable row {reader.line_num}: {exc}.") from exc
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise CorpusError("The file is empty.")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise CorpusError(f"Duplicate column name(s) in the header: {', '.join(dupes)}.")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise CorpusError(f"Unparseable row {i}: expected {len(header)} fields, found {len(r)}.")
    if not body:
        raise CorpusError("The file has a header but no rows.")
    return pd.DataFrame(body, columns=header)


def _read_jsonl(text: str) -> pd.DataFrame:
    records = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Unparseable row {i}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(obj, dict):
            raise CorpusError(f"Unparseable row {i}: expected a JSON object, found {type(obj).__name__}.")
        records.append(obj)
    if not records:
        raise CorpusError("The file is empty.")
    return pd.DataFrame.from_records(records)


def _read_txt(text: str, mode: str) -> pd.DataFrame:
    if mode == "paragraph":
        parts = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    else:
        parts = [p.strip() for p in text.splitlines()]
    parts = [p for p in parts if p]
    if not parts:
        raise CorpusError("The file is empty.")
    return pd.DataFrame({"text": parts})


def read_corpus(source: str | Path | BinaryIO | bytes, name: str | None = None, options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Parse a corpus file (path, bytes or a binary file object) into a DataFrame of strings/values."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"No such file: {path}.")
        name = name or path.name
        size = path.stat().st_size
        if size > options.max_bytes:
            raise CorpusError(f"The file is {size / 1e6:.0f} MB, over the {options.max_bytes / 1e6:.0f} MB limit.")
        data = path.read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        data = source.read(options.max_bytes + 1)
    if name is None:
        raise CorpusError("A file name is needed to know its format.")
    if len(data) > options.max_bytes:
        raise CorpusError(f"The file is over the {options.max_bytes / 1e6:.0f} MB limit.")
    if not data.strip():
        raise CorpusError("The file is empty.")
    fmt = options.fmt or guess_format(name)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise CorpusError(f"Not a readable Parquet file ({exc}).") from exc
        if len(df) == 0:
            raise CorpusError("The file has no rows.")
        return df
    text = _decode(data)
    if fmt == "csv":
        return _read_delimited(text, ",")
    if fmt == "tsv":
        return _read_delimited(text, "\t")
    if fmt == "jsonl":
        return _read_jsonl(text)
    return _read_txt(text, options.txt_mode)


def guess_text_column(df: pd.DataFrame) -> str:
    """The column most likely to hold the documents: a known name, else the longest string column."""
    lower = {str(c).lower(): c for c in df.columns}
    for g in TEXT_COLUMN_GUESSES:
        if g in lower:
            return str(lower[g])
    best, best_len = None, -1.0
    for c in df.columns:
        if df[c].dtype == object:
            mean_len = df[c].astype(str).str.len().mean()
            if mean_len > best_len:
                best, best_len = c, mean_len
    if best is None:
        raise CorpusError("No text column found: the file has no string columns.")
    return str(best)


def validate_text_column(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Check the chosen column and return the frame with it as clean strings."""
    if column not in df.columns:
        raise CorpusError(f"No column {column!r}; the columns are: {', '.join(map(str, df.columns))}.")
    col = df[column]
    bad = col.isna() | (col.astype(str).str.strip() == "")
    if bad.all():
        raise CorpusError(f"Column {column!r} is empty in every row.")
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0]) + 1
        raise CorpusError(f"Column {column!r} is empty in {int(bad.sum())} row(s), first at row {first}; fix or drop them.")
    non_str = col.map(lambda v: not isinstance(v, str))
    if non_str.any():
        first = int(non_str.to_numpy().nonzero()[0][0]) + 1
        raise CorpusError(f"Column {column!r} holds non-text values (first at row {first}); choose a text column.")
    out = df.copy()
    out[column] = col.astype(str)
    return out.reset_index(drop=True)
