"""Corpus files of any size: parsed in chunks of rows, validated chunk by chunk, stored chunk by chunk.

The one parser of every format. Parquet is read by record batches, JSONL / TXT line by line and CSV / TSV
row by row (the csv module, so quoted newlines work), so memory holds one chunk of `chunk_rows` documents
whatever the file's size. `read_corpus` (an upload held in memory) joins the same chunks into one
frame, so a file is accepted or refused with the same message either way. Each chunk is validated by the
per-document rules of `corpora.validate_text_column` (the text column is guessed on the first chunk; row
numbers count from the file's first row). The store commits chunk by chunk (DuckDB keeps a transaction's
rows in memory) and deletes the corpus again if any chunk fails: a bad row anywhere stores nothing.

    ws.add_corpus("web", "crawl.jsonl")                 # a path: streamed through here
    add_corpus_streamed(ws.store, "web", "crawl.jsonl")  # the same on a bare store
"""
from __future__ import annotations

import csv
import io
import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterable, Iterator

import pandas as pd

from backend.corpora import (CorpusError, ReadOptions, check_columns, drop_empty_rows, format_size, guess_format,
                             guess_text_column, over_limit_message, split_long_documents, validate_corpus_name,
                             validate_text_column)
from backend.store import Store

if TYPE_CHECKING:
    from backend.context import WorkspaceContext

DEFAULT_CHUNK_ROWS = 10_000
# A chunk also ends after this many bytes of the file: pandas and the store's insert hold several copies of
# a chunk's text, so a chunk of 10,000 long documents would cost hundreds of MB.
DEFAULT_CHUNK_BYTES = 1 * 2**20
# The csv module refuses fields over 128 KiB by default, which JSONL and TXT never did: with this limit
# (process-wide, only ever raised here) `max_doc_chars` stays the one rule on a document's length.
_CSV_FIELD_LIMIT = 2**31 - 1


def iter_document_chunks(source: str | Path | BinaryIO, fmt: str | None = None,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS, txt_mode: str = "line",
                         file_name: str | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pd.DataFrame]:
    """The rows of a file (a path or a binary file object) as DataFrames of at most `chunk_rows` rows and
    about `chunk_bytes` bytes of the file (at least one row), read lazily. The format is `fmt`, else guessed
    from `file_name` or the path's name."""
    for label, value in (("chunk_rows", chunk_rows), ("chunk_bytes", chunk_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CorpusError(f"{label} must be a positive whole number, not {value!r}.")
    if txt_mode not in ("line", "paragraph"):
        raise CorpusError(f"Unknown TXT mode {txt_mode!r}; use 'line' or 'paragraph'.")
    with ExitStack() as stack:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise CorpusError(f"No such file: {path}.")
            file_name = file_name or path.name
            fh: BinaryIO = stack.enter_context(open(path, "rb"))
        elif callable(getattr(source, "read", None)):
            fh = source
        else:
            raise CorpusError(f"A corpus file is a path or a binary file object, not {type(source).__name__}.")
        if fmt is None:
            if file_name is None:
                raise CorpusError("A file name is needed to know its format.")
            fmt = guess_format(file_name)
        limit = _ChunkLimit(chunk_rows, chunk_bytes)
        if fmt == "parquet":
            yield from _parquet_chunks(fh, limit)
        elif fmt in ("csv", "tsv"):
            yield from _delimited_chunks(fh, _csv_delimiter(fh) if fmt == "csv" else "\t", limit)
        elif fmt == "jsonl":
            yield from (_json_array_chunks(fh, limit) if _opening(fh).startswith("[") else _jsonl_chunks(fh, limit))
        elif fmt == "txt":
            yield from _txt_chunks(fh, limit, txt_mode)
        else:
            raise CorpusError(f"Cannot read {fmt!r} files.")


class _ChunkLimit:
    """Counts rows and bytes of the chunk being gathered; `full` once either limit is reached."""

    def __init__(self, rows: int, n_bytes: int) -> None:
        self.rows, self.n_bytes = rows, n_bytes
        self.seen_rows = self.seen_bytes = 0

    def add(self, n_bytes: int, rows: int = 1) -> bool:
        self.seen_rows += rows
        self.seen_bytes += n_bytes
        return self.seen_rows >= self.rows or self.seen_bytes >= self.n_bytes

    def reset(self) -> None:
        self.seen_rows = self.seen_bytes = 0


def _lines(fh: BinaryIO) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its ending): one line in memory at a time."""
    for number, raw in enumerate(fh, start=1):
        if isinstance(raw, str):
            raise CorpusError("Open the file in binary mode ('rb'): a corpus is read as bytes.")
        try:
            yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"The file is not UTF-8 text (invalid byte at line {number}); re-save it as UTF-8.") from exc


def _opening(fh: BinaryIO, n_bytes: int = 64 * 1024) -> str:
    """The file's first bytes as text (BOM and leading whitespace dropped), the file left where it was;
    "" when it cannot be read twice (a stream that cannot seek: then no format is sniffed)."""
    if not (getattr(fh, "seekable", lambda: False)() and callable(getattr(fh, "tell", None))):
        return ""
    start = fh.tell()
    head = fh.read(n_bytes)
    fh.seek(start)
    if not isinstance(head, bytes):
        return ""
    return head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")


CSV_DELIMITERS = (",", ";", "\t", "|")


def _csv_delimiter(fh: BinaryIO) -> str:
    """The delimiter that splits the header into the most fields while every following row of the file's
    first 64 KiB has as many (a comma when tied): files saved with semicolons (spreadsheets in many
    locales) or pipes read like comma-separated ones."""
    head = _opening(fh)
    if not head:
        return ","
    whole = head.rsplit("\n", 1)[0] if "\n" in head else head  # the last line may be cut off

    def fields(delimiter: str) -> int:
        try:
            rows = [r for r in csv.reader(io.StringIO(whole), delimiter=delimiter) if r][:50]
        except csv.Error:
            return 0
        return len(rows[0]) if rows and all(len(r) == len(rows[0]) for r in rows) else 0

    counts = {d: fields(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] >= 2 else ","  # one column, or no consistent split: the comma's messages


def _json_array_chunks(fh: BinaryIO, limit: _ChunkLimit) -> Iterator[pd.DataFrame]:
    """A .json file holding one array of objects (what `df.to_json(orient="records")` writes), read whole:
    unlike JSON Lines it cannot be parsed row by row, so it costs memory in proportion to the file."""
    try:
        data = json.load(io.TextIOWrapper(fh, encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise CorpusError("The file is not UTF-8 text; re-save it as UTF-8.") from exc
    except json.JSONDecodeError as exc:
        raise CorpusError(f"Not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    if data == []:
        raise CorpusError("The file is empty.")
    if not isinstance(data, list):
        raise CorpusError("A JSON corpus is an array of objects, one per document.")
    bad = next((i for i, obj in enumerate(data, start=1) if not isinstance(obj, dict)), None)
    if bad is not None:
        raise CorpusError(f"Unparseable row {bad}: expected a JSON object, found {type(data[bad - 1]).__name__}.")
    step = max(1, limit.rows)
    for start in range(0, len(data), step):
        yield pd.DataFrame.from_records(data[start:start + step])


def _parquet_chunks(fh: BinaryIO, limit: _ChunkLimit) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(fh)
        meta = parquet.metadata
        if meta.num_rows == 0:
            raise CorpusError("The file has no rows.")
        row_bytes = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)) / meta.num_rows
        batches = parquet.iter_batches(batch_size=max(1, min(limit.rows, int(limit.n_bytes / max(row_bytes, 1)))))
        for batch in batches:
            yield batch.to_pandas()
    except CorpusError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise CorpusError(f"Not a readable Parquet file ({exc}).") from exc


def _delimited_chunks(fh: BinaryIO, sep: str, limit: _ChunkLimit) -> Iterator[pd.DataFrame]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    read_chars = [0]

    def counted() -> Iterator[str]:
        for _, line in _lines(fh):
            read_chars[0] += len(line)
            yield line

    reader = csv.reader(counted(), delimiter=sep)
    header: list[str] | None = None
    body: list[list[str]] = []
    row_number = 1  # counts non-blank rows, the header being row 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise CorpusError(f"Unparseable row {reader.line_num}: {exc}.") from exc
        if row is None:
            break
        if not row:  # a blank line
            continue
        if header is None:
            if len(set(row)) != len(row):
                dupes = sorted({h for h in row if row.count(h) > 1})
                raise CorpusError(f"Duplicate column name(s) in the header: {', '.join(dupes)}.")
            header = row
            continue
        row_number += 1
        if len(row) != len(header):
            raise CorpusError(f"Unparseable row {row_number}: expected {len(header)} fields, found {len(row)}.")
        body.append(row)
        if limit.add(read_chars[0]):
            yield pd.DataFrame(body, columns=header)
            body = []
            limit.reset()
        read_chars[0] = 0
    if header is None:
        raise CorpusError("The file is empty.")
    if row_number == 1:
        raise CorpusError("The file has a header but no rows.")
    if body:
        yield pd.DataFrame(body, columns=header)


def _jsonl_chunks(fh: BinaryIO, limit: _ChunkLimit) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    seen = False
    for number, line in _lines(fh):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Unparseable row {number}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(obj, dict):
            raise CorpusError(f"Unparseable row {number}: expected a JSON object, found {type(obj).__name__}.")
        records.append(obj)
        if limit.add(len(line)):
            yield pd.DataFrame.from_records(records)
            records, seen = [], True
            limit.reset()
    if records:
        yield pd.DataFrame.from_records(records)
    elif not seen:
        raise CorpusError("The file is empty.")


def _txt_chunks(fh: BinaryIO, limit: _ChunkLimit, mode: str) -> Iterator[pd.DataFrame]:
    """One document per non-blank line, or per paragraph (text between empty lines)."""
    texts: list[str] = []
    seen = False
    paragraph: list[str] = []
    for _, line in _lines(fh):
        if mode == "paragraph":
            if line not in ("\n", "\r\n"):
                paragraph.append(line)
                continue
            parts = ["".join(paragraph).replace("\r\n", "\n").strip()]
            paragraph = []
        else:
            parts = [p.strip() for p in line.splitlines()]
        kept = [p for p in parts if p]
        texts.extend(kept)
        if kept and limit.add(sum(len(p) for p in kept), len(kept)):
            yield pd.DataFrame({"text": texts})
            texts, seen = [], True
            limit.reset()
    if paragraph:
        last = "".join(paragraph).replace("\r\n", "\n").strip()
        if last:
            texts.append(last)
    if texts:
        yield pd.DataFrame({"text": texts})
    elif not seen:
        raise CorpusError("The file is empty.")


# -- validation, chunk by chunk -------------------------------------------------------------------
def prepare_chunks(chunks: Iterable[pd.DataFrame], text_column: str | None = None,
                   options: ReadOptions = ReadOptions()) -> tuple[str, Iterator[pd.DataFrame]]:
    """(text column, the chunks validated and split into windows when `options.split_long`).

    The column is guessed from the first chunk when not given. Every later chunk is aligned to the first
    chunk's columns (a JSONL key missing later is empty there; a key that first appears later is refused,
    as the store's columns are fixed by then). Row numbers in messages count from the file's first row."""
    rest = iter(chunks)
    first = next(rest, None)
    if first is None:
        raise CorpusError("The file is empty.")
    if not isinstance(first, pd.DataFrame):
        raise CorpusError(f"Expected a DataFrame, not {type(first).__name__}.")
    check_columns(first)
    column = text_column or guess_text_column(first)
    return column, _validated(first, rest, column, options)


def _validated(first: pd.DataFrame, rest: Iterator[pd.DataFrame], column: str,
               options: ReadOptions) -> Iterator[pd.DataFrame]:
    columns = list(first.columns)
    chunk: pd.DataFrame | None = first
    offset = kept = 0
    while chunk is not None:
        following = next(rest, None)  # read ahead one chunk: is this one the whole file?
        chunk = _aligned(chunk, columns, offset)
        out = drop_empty_rows(chunk, column, offset) if options.skip_empty else chunk
        if len(out) or not options.skip_empty:
            out = validate_text_column(out, column, options.max_doc_chars, first_row=offset + 1,
                                       whole_file=offset == 0 and following is None)
            if options.split_long:
                out = split_long_documents(out, column, options.window_chars, first_source_doc=offset)
            kept += len(out)
            yield out
        offset += len(chunk)
        chunk = following
    if options.skip_empty and not kept:
        raise CorpusError(f"Column {column!r} is empty in every row.")


def _aligned(chunk: pd.DataFrame, columns: list, offset: int) -> pd.DataFrame:
    if list(chunk.columns) == columns:
        return chunk
    check_columns(chunk)
    new = [str(c) for c in chunk.columns if c not in columns]
    if new:
        raise CorpusError(f"Column(s) {', '.join(new)} first appear after row {offset:,}, once the first rows had "
                          "fixed the corpus's columns; give them in the first row too (even empty).")
    return chunk.reindex(columns=columns)


def read_corpus(source: str | Path | BinaryIO | bytes, name: str | None = None, options: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Parse a corpus file (path, bytes or a binary file object) whole into one DataFrame, under the
    file-size limit. The parsing is this module's (chunks joined), so messages match a streamed read;
    `Workspace.add_corpus` streams a path instead of calling this."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"No such file: {path}.")
        name = name or path.name
        size = path.stat().st_size
        if size > options.max_bytes:
            raise CorpusError(over_limit_message(size, options.max_bytes))
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif callable(getattr(source, "read", None)):
        data = source.read(options.max_bytes + 1)
        if not isinstance(data, bytes):
            raise CorpusError("Open the file in binary mode ('rb'): a corpus is read as bytes.")
    else:
        raise CorpusError(
            f"A corpus is a DataFrame, a file path, bytes or a binary file object, not {type(source).__name__}."
        )
    if name is None:
        raise CorpusError("A file name is needed to know its format.")
    if len(data) > options.max_bytes:
        if isinstance(source, (bytes, bytearray)):
            raise CorpusError(over_limit_message(len(data), options.max_bytes))
        raise CorpusError(f"The file is over the limit of {format_size(options.max_bytes)}.")
    if not data.strip():
        raise CorpusError("The file is empty.")
    fmt = options.fmt or guess_format(name)
    chunks = list(iter_document_chunks(io.BytesIO(data), fmt, txt_mode=options.txt_mode))
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def prepare_documents(df: pd.DataFrame, text_column: str | None = None,
                      options: ReadOptions = ReadOptions()) -> tuple[pd.DataFrame, str]:
    """The documents to store and their text column: guessed when not given, validated under the
    per-document limit, and split into windows when `options.split_long`."""
    if not isinstance(df, pd.DataFrame):
        raise CorpusError(f"Expected a DataFrame, not {type(df).__name__}.")
    if any(not isinstance(c, str) for c in df.columns):  # a workspace names columns by text: 0 -> "0"
        check_columns(df)
        df = df.rename(columns=str)
    text_column = None if text_column is None else str(text_column)
    column, chunks = prepare_chunks([df], text_column, options)
    return next(chunks), column


def add_corpus_streamed(target: "WorkspaceContext | Store", name: str, path: str | Path, text_column: str | None = None,
                        options: ReadOptions = ReadOptions(), chunk_rows: int = DEFAULT_CHUNK_ROWS,
                        file_name: str | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Store a corpus file of any size (Parquet, JSONL, CSV, TSV, TXT) chunk by chunk; returns its id.

    Memory holds about two chunks plus DuckDB's cache (its `memory_limit`): each chunk is committed on its
    own (`Store.add_corpus_chunks(commit_each=True)`), and an error anywhere deletes what was stored. The
    file-size limit (`options.max_bytes`) is for what is read whole; a streamed file has none. The
    per-document limit applies. `file_name` names the format when the path does not (an upload saved under a
    temporary name)."""
    store = target if isinstance(target, Store) else target.store
    name = validate_corpus_name(name)
    chunks = iter_document_chunks(path, options.fmt, chunk_rows, options.txt_mode, file_name, chunk_bytes)
    column, prepared = prepare_chunks(chunks, text_column, options)
    return store.add_corpus_chunks(name, prepared, column, source=file_name or str(path), commit_each=True)
