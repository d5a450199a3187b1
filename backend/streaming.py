"""Corpora larger than memory: read a file in chunks and store it chunk by chunk.

`backend.corpora.read_corpus` reads a whole file (up to its size limit) into one DataFrame. Here Parquet
is read by record batches (one row group at a time), JSONL / TXT line by line and CSV / TSV with pandas'
chunked reader, so memory holds one chunk of `chunk_rows` documents, whatever the file's size. Each chunk
is validated by the same per-document rules as `corpora.prepare_documents` (the text column is guessed
on the first chunk) and the store writes all chunks in one transaction: a bad row anywhere stores nothing.

    add_corpus_streamed(ws, "web", "crawl.jsonl")      # then ws.embed("web") as usual
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pandas as pd

from backend.corpora import (CorpusError, ReadOptions, guess_format, guess_text_column, split_long_documents,
                             validate_corpus_name, validate_text_column)
from backend.store import Store

if TYPE_CHECKING:
    from backend.workspace import Workspace

DEFAULT_CHUNK_ROWS = 10_000


def iter_document_chunks(path: str | Path, fmt: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                         txt_mode: str = "line") -> Iterator[pd.DataFrame]:
    """The file's rows as DataFrames of at most `chunk_rows` rows, read lazily."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"No such file: {path}.")
    if chunk_rows < 1:
        raise CorpusError(f"chunk_rows must be a positive whole number, not {chunk_rows!r}.")
    fmt = fmt or guess_format(path.name)
    if fmt == "parquet":
        yield from _parquet_chunks(path, chunk_rows)
    elif fmt == "jsonl":
        yield from _jsonl_chunks(path, chunk_rows)
    elif fmt in ("csv", "tsv"):
        try:
            reader = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False,
                                 chunksize=chunk_rows, encoding="utf-8")
            yield from reader
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CorpusError(f"Unparseable CSV: {exc}") from exc
    elif fmt == "txt":
        if txt_mode != "line":
            raise CorpusError("A streamed TXT file is read one document per line (txt_mode='line').")
        yield from _line_chunks(path, chunk_rows)
    else:
        raise CorpusError(f"Cannot stream {fmt!r} files.")


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise CorpusError(f"Not a readable Parquet file ({exc}).") from exc
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"The file is not UTF-8 text (invalid byte at line {number}); re-save it as UTF-8.") from exc


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    records: list[dict] = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"Unparseable row {number}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(obj, dict):
            raise CorpusError(f"Unparseable row {number}: expected a JSON object, found {type(obj).__name__}.")
        records.append(obj)
        if len(records) == chunk_rows:
            yield pd.DataFrame.from_records(records)
            records = []
    if records:
        yield pd.DataFrame.from_records(records)


def _line_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    texts: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            texts.append(line.strip())
        if len(texts) == chunk_rows:
            yield pd.DataFrame({"text": texts})
            texts = []
    if texts:
        yield pd.DataFrame({"text": texts})


def prepared_chunks(chunks: Iterator[pd.DataFrame], text_column: str, options: ReadOptions) -> Iterator[pd.DataFrame]:
    """Each chunk validated as `corpora.prepare_documents` validates a whole frame (row numbers count from
    the file's first row) and split into windows when `options.split_long`."""
    offset = 0
    for chunk in chunks:
        try:
            out = validate_text_column(chunk, text_column, options.max_doc_chars)
        except CorpusError as exc:
            raise CorpusError(f"{exc} (row numbers count from row {offset + 1:,} of the file)") from exc
        if options.split_long:
            out = split_long_documents(out, text_column, options.window_chars)
            out["source_doc"] += offset
        offset += len(chunk)
        yield out


def add_corpus_streamed(target: "Workspace | Store", name: str, path: str | Path, text_column: str | None = None,
                        options: ReadOptions = ReadOptions(), chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Store a corpus file of any size (Parquet, JSONL, CSV, TSV, TXT) chunk by chunk; returns its id.

    Memory holds one chunk. The file-size limit of `read_corpus` does not apply; the per-document limit does."""
    store = target if isinstance(target, Store) else target.store
    name = validate_corpus_name(name)
    chunks = iter_document_chunks(path, options.fmt, chunk_rows, options.txt_mode)
    first = next(chunks, None)
    if first is None or len(first) == 0:
        raise CorpusError("The file is empty.")
    column = text_column or guess_text_column(first)

    def all_chunks() -> Iterator[pd.DataFrame]:
        yield first
        yield from chunks

    return store.add_corpus_chunks(name, prepared_chunks(all_chunks(), column, options), column, source=str(path))
