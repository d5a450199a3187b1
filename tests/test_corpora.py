"""Corpus files: every format parses, and every kind of bad input gets a clear message."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from backend.corpora import CorpusError, ReadOptions, guess_text_column, read_corpus, validate_text_column


def test_csv_keeps_metadata_and_quoted_newlines():
    data = b'text,label\n"first, with comma",a\n"multi\nline",b\n'
    df = read_corpus(data, "x.csv")
    assert list(df.columns) == ["text", "label"]
    assert df["text"].tolist() == ["first, with comma", "multi\nline"]


def test_tsv_jsonl_parquet_txt(tmp_path):
    assert read_corpus(b"text\tx\nhello\t1\n", "a.tsv")["x"].tolist() == ["1"]
    jl = b'{"body": "one", "n": 1}\n\n{"body": "two", "n": 2}\n'
    df = read_corpus(jl, "a.jsonl")
    assert df["body"].tolist() == ["one", "two"] and df["n"].tolist() == [1, 2]
    buf = io.BytesIO()
    pd.DataFrame({"content": ["p1", "p2"], "y": [0.5, 1.5]}).to_parquet(buf)
    assert read_corpus(buf.getvalue(), "a.parquet")["y"].tolist() == [0.5, 1.5]
    txt = b"line one\nline two\n\nparagraph two\n"
    assert read_corpus(txt, "a.txt")["text"].tolist() == ["line one", "line two", "paragraph two"]
    paras = read_corpus(txt, "a.txt", ReadOptions(txt_mode="paragraph"))["text"].tolist()
    assert paras == ["line one\nline two", "paragraph two"]
    p = tmp_path / "c.csv"
    p.write_text("text\nfrom a path\n", encoding="utf-8")
    assert read_corpus(p)["text"].tolist() == ["from a path"]


@pytest.mark.parametrize(
    "data,name,message",
    [
        (b"", "a.csv", "empty"),
        (b"   \n\n", "a.txt", "empty"),
        (b"text,label\n", "a.csv", "no rows"),
        (b"text,label\nok,1\ntoo,many,fields\n", "a.csv", "row 3"),
        (b'{"text": "ok"}\n{"text": broken}\n', "a.jsonl", "row 2"),
        (b'["not", "an object"]\n', "a.jsonl", "row 1"),
        ("caf\u00e9".encode("latin-1") + b"\n", "a.txt", "not UTF-8"),
        (b"text,text\na,b\n", "a.csv", "Duplicate column"),
        (b"garbage", "a.parquet", "Parquet"),
        (b"x", "a.docx", "Unsupported file type"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(data, name, message):
    with pytest.raises(CorpusError, match=message):
        read_corpus(data, name)


def test_huge_file_refused(tmp_path):
    p = tmp_path / "big.txt"
    p.write_bytes(b"x" * 2000)
    with pytest.raises(CorpusError, match="limit"):
        read_corpus(p, options=ReadOptions(max_bytes=1000))
    with pytest.raises(CorpusError, match="limit"):
        read_corpus(io.BytesIO(b"y" * 2000), "big.txt", ReadOptions(max_bytes=1000))


def test_text_column_checks():
    df = pd.DataFrame({"id": ["1", "2"], "review": ["good film", "bad film"]})
    assert guess_text_column(df) == "review"
    with pytest.raises(CorpusError, match="No column 'body'"):
        validate_text_column(df, "body")
    with pytest.raises(CorpusError, match="empty in 1 row"):
        validate_text_column(pd.DataFrame({"text": ["a", " "]}), "text")
    with pytest.raises(CorpusError, match="non-text"):
        validate_text_column(pd.DataFrame({"text": ["a", 3]}), "text")
    assert json.dumps(validate_text_column(df, "review")["review"].tolist()) == '["good film", "bad film"]'
