"""Corpus rules: options, names, the text column, per-document limits and windows, with clear errors.

One set of limits for every format: a file-size limit (`max_bytes`) on what is read whole into memory
(an upload, `backend.streaming.read_corpus`), and a per-document limit (`max_doc_chars`) checked on the chosen text column,
so a document is accepted or refused the same way whether it arrives as CSV, TSV, JSONL, Parquet, TXT or a
DataFrame, whole or streamed. Parsing the formats (`read_corpus`, `prepare_documents`) is `backend.streaming`'s (in chunks, for files of any size)."""
from __future__ import annotations

from backend.errors import UserError

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
DEFAULT_MAX_BYTES = 200 * 1024 * 1024  # a file
DEFAULT_MAX_DOC_CHARS = 2_000_000  # a document (about a 600-page book)
# A window when splitting: with SmolLM2's tokenizer, 1,200 characters of the training mix (prose and code) were
# 296 tokens at the median and 486 at most (300 windows), inside the 511 a 512-token read has room for.
DEFAULT_WINDOW_CHARS = 1_200
MAX_NAME_CHARS = 200
TEXT_COLUMN_GUESSES = ("text", "document", "content", "body", "review", "sentence", "message")
WINDOW_COLUMNS = ("source_doc", "char_offset")  # metadata added to each window of a split document
SOURCE_ROW = "source_row"  # metadata added with skip_empty: each kept document's 0-based row in the input
GUESS_SAMPLE_ROWS = 2_000


class CorpusError(UserError):
    """A corpus file the tool refuses, with the reason in words a user can act on."""


@dataclass(frozen=True)
class ReadOptions:
    """How to parse a file and which documents to accept; `fmt` is guessed from the file name when None.

    `split_long` turns each document longer than `window_chars` into consecutive windows (cut at
    whitespace where possible), each its own document with `source_doc` / `char_offset` metadata, instead of
    letting the reader model see only its first tokens. `skip_empty` drops rows whose text is missing or
    blank instead of refusing the file, and keeps each kept row's 0-based row in the input as metadata
    `source_row` (so results map back to the file). `max_bytes` limits what is read whole into memory
    (bytes, file objects, `read_corpus`); a file path given to `Workspace.add_corpus` is streamed in chunks
    and has no size limit."""

    fmt: str | None = None
    txt_mode: Literal["line", "paragraph"] = "line"
    max_bytes: int = DEFAULT_MAX_BYTES
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS
    split_long: bool = False
    window_chars: int = DEFAULT_WINDOW_CHARS
    skip_empty: bool = False

    def __post_init__(self) -> None:
        if self.fmt is not None and self.fmt not in FORMATS:
            raise CorpusError(f"Unknown format {self.fmt!r}; use one of: {', '.join(FORMATS)}.")
        if self.txt_mode not in ("line", "paragraph"):
            raise CorpusError(f"Unknown TXT mode {self.txt_mode!r}; use 'line' or 'paragraph'.")
        for field_name in ("max_bytes", "max_doc_chars", "window_chars"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CorpusError(f"{field_name} must be a positive whole number, not {value!r}.")


def format_size(n_bytes: int) -> str:
    """A byte count in words a person reads at a glance: "812 bytes", "1.5 KB", "200 MB"."""
    if n_bytes < 1024:
        return f"{n_bytes:,} byte{'s' if n_bytes != 1 else ''}"
    value = float(n_bytes)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def over_limit_message(size: int, limit: int) -> str:
    """Why a file over the size limit is refused (in bytes when the rounded sizes would read the same)."""
    shown, shown_limit = format_size(size), format_size(limit)
    if shown == shown_limit:  # rounding would print "200 MB, over the limit of 200 MB"
        shown, shown_limit = f"{size:,} bytes", f"{limit:,} bytes"
    return f"The file is {shown}, over the limit of {shown_limit}."


def validate_corpus_name(name: object) -> str:
    """The corpus name, stripped, or a CorpusError saying why it cannot be one (not text, empty, too long)."""
    if not isinstance(name, str):
        raise CorpusError(f"A corpus name must be text, not {type(name).__name__} ({name!r}).")
    clean = name.strip()
    if not clean:
        raise CorpusError("A corpus needs a name.")
    if len(clean) > MAX_NAME_CHARS:
        raise CorpusError(f"A corpus name has at most {MAX_NAME_CHARS} characters; this one has {len(clean):,}.")
    if re.search(r"[\x00-\x1f\x7f]", clean):
        raise CorpusError("A corpus name cannot hold control characters (tabs, newlines, …).")
    return clean


def guess_format(name: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    aliases = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "text": "txt"}
    fmt = aliases.get(suffix, suffix)
    if fmt not in FORMATS:
        raise CorpusError(f"Unsupported file type {suffix!r} for {name!r}; use one of: {', '.join(FORMATS)}.")
    return fmt


def check_columns(df: pd.DataFrame) -> None:
    """Refuse a frame whose column names repeat: a column must name one series of values."""
    names = [str(c) for c in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CorpusError(f"Duplicate column name(s): {', '.join(dupes)}; rename them so each column has its own name.")


def _string_values(col: pd.Series) -> pd.Series | None:
    """The stripped, non-empty string values of a column, or None when it mostly holds something else.

    Judged by content, not dtype: pandas 3 gives text the `str` dtype, JSONL mixes give `object`, and a
    CSV read as text gives every column (ids, star ratings) as strings."""
    values = col.dropna()
    if values.empty:
        return None
    is_str = values.map(lambda v: isinstance(v, str)).astype(bool)
    if is_str.mean() < 0.9:
        return None
    strings = values[is_str].astype(str).str.strip()
    strings = strings[strings != ""]
    if strings.empty or pd.to_numeric(strings, errors="coerce").notna().mean() > 0.5:
        return None  # mostly numbers written as text
    return strings


def _looks_like_id(strings: pd.Series) -> bool:
    """Unique single tokens (ids, hashes, URLs, file names) are labels of documents, not their text."""
    return len(strings) > 1 and strings.is_unique and not strings.str.contains(r"\s", regex=True).any()


def guess_text_column(df: pd.DataFrame) -> str:
    """The column most likely to hold the documents.

    A known name ("text", "review", …) holding text wins; otherwise the string column with the longest
    average value that is mostly non-numeric and not id-like (unique single tokens)."""
    check_columns(df)
    sample = df.head(GUESS_SAMPLE_ROWS)
    lower = {str(c).lower(): c for c in sample.columns}
    for guess in TEXT_COLUMN_GUESSES:
        if guess in lower and _string_values(sample[lower[guess]]) is not None:
            return str(lower[guess])
    best, best_len = None, -1.0
    for c in sample.columns:
        strings = _string_values(sample[c])
        if strings is None or _looks_like_id(strings):
            continue
        mean_len = float(strings.str.len().mean())
        if mean_len > best_len:
            best, best_len = c, mean_len
    if best is None:
        raise CorpusError(
            "No column looks like free text (the columns hold numbers, ids or nothing): "
            f"name the text column; the columns are: {', '.join(map(str, df.columns))}."
        )
    return str(best)


def empty_rows(col: pd.Series) -> np.ndarray:
    """Which entries of a text column hold no text (missing, or only whitespace)."""
    return (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()


def require_column(df: pd.DataFrame, column: str) -> None:
    """A CorpusError naming the columns there are, when `column` is not one of them."""
    if column not in df.columns:
        raise CorpusError(f"No column {column!r}; the columns are: {', '.join(map(str, df.columns))}.")


def validate_text_column(df: pd.DataFrame, column: str, max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
                         first_row: int = 1, whole_file: bool = True) -> pd.DataFrame:
    """Check the chosen column and return the frame with it as clean strings.

    `df` may be one chunk of a file (backend.streaming): `first_row` is its first row's number in the file
    and `whole_file` says whether it is all of the file, so messages name rows of the file."""
    check_columns(df)
    require_column(df, column)
    col = df[column]
    bad = empty_rows(col)
    among = "" if whole_file else f" among rows {first_row:,}–{first_row + len(df) - 1:,}"  # counts of this chunk
    if bad.all() and whole_file:
        raise CorpusError(f"Column {column!r} is empty in every row.")
    if bad.any():
        first = int(bad.nonzero()[0][0]) + first_row
        raise CorpusError(f"Column {column!r} is empty in {int(bad.sum())} row(s){among}, first at row {first}; "
                          "fix or drop them (skip_empty=True / --skip-empty drops them and keeps each other row's "
                          f"number in the metadata column {SOURCE_ROW!r}).")
    def row_number(i: int) -> int:  # the input's row: a frame with empty rows dropped says where each row was
        return int(df[SOURCE_ROW].iloc[i]) + 1 if SOURCE_ROW in df.columns else i + first_row

    non_str = col.map(lambda v: not isinstance(v, str)).astype(bool)
    if non_str.any():
        first = row_number(int(non_str.to_numpy().nonzero()[0][0]))
        raise CorpusError(f"Column {column!r} holds non-text values (first at row {first}); choose a text column.")
    lengths = col.astype(str).str.len().to_numpy()
    too_long = lengths > max_doc_chars
    if too_long.any():
        first = int(too_long.nonzero()[0][0])
        raise CorpusError(
            f"{int(too_long.sum())} document(s){among} are over the limit of {max_doc_chars:,} characters per document "
            f"(first at row {row_number(first)}: {int(lengths[first]):,} characters); shorten or split them."
        )
    out = df.copy()
    out[column] = col.astype(str)
    return out.reset_index(drop=True)


def drop_empty_rows(df: pd.DataFrame, column: str, first_row: int = 0) -> pd.DataFrame:
    """`df` without the rows whose `column` is missing or blank, with `source_row` (each kept row's 0-based
    row in the input; `df` may be a chunk starting at input row `first_row`)."""
    if SOURCE_ROW in df.columns:
        raise CorpusError(f"Skipping empty rows adds the column {SOURCE_ROW!r}, which the file already has; rename it.")
    require_column(df, column)
    keep = ~empty_rows(df[column])
    out = df[keep].copy()
    out[SOURCE_ROW] = first_row + keep.nonzero()[0]
    return out.reset_index(drop=True)


def split_windows(text: str, window_chars: int) -> list[tuple[int, str]]:
    """Consecutive (char_offset, window) pieces of `text`, each at most `window_chars` characters.

    A window ends at its last whitespace when it has one (no cut words), else at the limit. Windows are
    stripped; `text[offset:offset + len(window)] == window` always holds."""
    pieces: list[tuple[int, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        end = min(pos + window_chars, n)
        if end < n and not text[end].isspace():
            cut = max(text.rfind(ch, pos + 1, end) for ch in (" ", "\n", "\t"))
            if cut > pos:
                end = cut
        window = text[pos:end].rstrip()
        if window:
            pieces.append((pos, window))
        pos = end
    return pieces


def split_long_documents(df: pd.DataFrame, text_column: str, window_chars: int = DEFAULT_WINDOW_CHARS,
                         first_source_doc: int = 0) -> pd.DataFrame:
    """One row per window: long documents become several rows; every row gets `source_doc` (its document's
    0-based row in the input; `df` may be a chunk starting at row `first_source_doc`) and `char_offset`
    (where the window starts in that document)."""
    clash = [c for c in WINDOW_COLUMNS if c in df.columns]
    if clash:
        raise CorpusError(f"Splitting adds the column(s) {', '.join(clash)}, which the file already has; rename them.")
    texts = df[text_column].astype(str).tolist()
    rows, offsets, windows = [], [], []
    for i, text in enumerate(texts):
        pieces = split_windows(text, window_chars) if len(text) > window_chars else [(0, text)]
        for offset, window in pieces:
            rows.append(i)
            offsets.append(offset)
            windows.append(window)
    out = df.iloc[rows].reset_index(drop=True)
    out[text_column] = windows
    source = df[SOURCE_ROW].to_numpy() if SOURCE_ROW in df.columns else first_source_doc + np.arange(len(df))
    out[WINDOW_COLUMNS[0]] = [int(source[r]) for r in rows]
    out[WINDOW_COLUMNS[1]] = offsets
    return out
