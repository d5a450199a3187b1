"""Corpus files: every format parses, and every kind of bad input gets a clear message."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from backend.corpora import (
    CorpusError, ReadOptions, format_size, guess_text_column, split_windows, validate_corpus_name, validate_text_column,
)
from backend.streaming import prepare_documents, read_corpus


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


def test_a_json_array_and_semicolon_or_pipe_csv_read_like_the_usual_files(tmp_path):
    """What spreadsheets and pandas write by default: `df.to_json(orient="records")` (one array, not JSON
    Lines) and CSV with semicolons (many locales) or pipes; the old reader refused all three."""
    df = pd.DataFrame({"body": ["Great, works well.", "Broke; in a day."], "stars": [5, 1]})
    want = read_corpus(df.to_csv(index=False).encode(), "a.csv")
    for name, data in (("a.json", df.to_json(orient="records").encode()),
                       ("b.json", b"\xef\xbb\xbf  \n" + json.dumps(df.to_dict("records"), indent=2).encode()),
                       ("semi.csv", df.to_csv(index=False, sep=";").encode()),
                       ("pipe.csv", df.to_csv(index=False, sep="|").encode())):
        got = read_corpus(data, name)
        assert got["body"].tolist() == want["body"].tolist(), name
        assert [str(v) for v in got["stars"]] == ["5", "1"], name
        (tmp_path / name).write_bytes(data)  # streamed from a path: the same rows
        assert read_corpus(tmp_path / name)["body"].tolist() == want["body"].tolist()
    # a comma file whose header has a quoted semicolon stays a comma file; one column stays one column
    assert list(read_corpus(b'text,"a;b;c"\nhello,1\n', "q.csv").columns) == ["text", "a;b;c"]
    assert read_corpus(b"text\nhi; there\n", "one.csv")["text"].tolist() == ["hi; there"]
    for bad, message in ((b"[1, 2]", "row 1: expected a JSON object"), (b"[]", "empty"), (b'[{"text": "a"},', "Not valid JSON")):
        with pytest.raises(CorpusError, match=message):
            read_corpus(bad, "bad.json")


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


# -- issue 12, problem 6: the text column is found by content under pandas 3 (no `object` string columns) --
@pytest.mark.parametrize(
    "data,expected",
    [
        (b"review_body,stars\nthis film was a delight from start to end,5\nflat and far too long,2\n", "review_body"),
        (b"id,comment,stars\n1,loved every minute of it,5\n2,not for me,1\n", "comment"),
        (b"uid,note\n3f2a9c1e-77b0-4a52-9a0e-1b2c3d4e5f60,so good\n9b1d2e3f-0000-4a52-9a0e-abcdefabcdef,meh ok\n",
         "note"),
        (b"doc_id\tsnippet\nA-000001\ta quiet walk home\nA-000002\train again today\n", "snippet"),
    ],
)
def test_text_column_found_by_content_under_pinned_pandas(data, expected):
    df = read_corpus(data, "r.tsv" if b"\t" in data else "r.csv")
    assert not pd.api.types.is_object_dtype(df[expected])  # pandas 3: the `str` dtype, which the old check missed
    assert guess_text_column(df) == expected


def test_text_column_skips_ids_longer_than_the_text():
    # object dtype (as JSONL mixes give): the old "longest object column" rule picked the uuids
    df = pd.DataFrame({"uid": ["3f2a9c1e-77b0-4a52-9a0e-1b2c3d4e5f60", "9b1d2e3f-0000-4a52-9a0e-abcdefabcdef"],
                       "tweet": ["so good", "meh ok"], "n": [1, 2]}, dtype=object)
    assert guess_text_column(df) == "tweet"
    jl = b'{"id": 17, "title_of_post": "Hi there", "stars": "4"}\n{"id": 18, "title_of_post": "a b c", "stars": "5"}\n'
    assert guess_text_column(read_corpus(jl, "a.jsonl")) == "title_of_post"


def test_no_text_column_is_refused_not_guessed():
    with pytest.raises(CorpusError, match="No column looks like free text"):
        guess_text_column(read_corpus(b"id,stars\n1,5\n2,4\n", "r.csv"))
    with pytest.raises(CorpusError, match="No column looks like free text"):
        guess_text_column(read_corpus(b"sha\nab12cd\nef34aa\n", "r.csv"))  # unique single tokens: ids


# -- issue 12, problem 8: one document limit for every format, and windows for long documents --------------
def _as_format(text: str, fmt: str) -> bytes:
    if fmt == "csv":
        return f"text,label\n{text},a\n".encode()
    if fmt == "tsv":
        return f"text\tlabel\n{text}\ta\n".encode()
    if fmt == "jsonl":
        return (json.dumps({"text": text, "label": "a"}) + "\n").encode()
    if fmt == "txt":
        return (text + "\n").encode()
    buf = io.BytesIO()
    pd.DataFrame({"text": [text], "label": ["a"]}).to_parquet(buf)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "txt"])
def test_a_one_megabyte_document_is_accepted_in_every_format(fmt):
    doc = ("word " * 210_000).strip()  # 1,049,999 characters: over the csv module's 131,072-character field limit
    df, column = prepare_documents(read_corpus(_as_format(doc, fmt), f"a.{fmt}"))
    assert column == "text" and df[column].tolist() == [doc]


def test_the_document_limit_is_the_same_for_every_format():
    options = ReadOptions(max_doc_chars=1_000)
    messages = set()
    for fmt in ["csv", "tsv", "jsonl", "parquet", "txt"]:
        assert len(prepare_documents(read_corpus(_as_format("y" * 1_000, fmt), f"a.{fmt}"), "text", options)[0]) == 1
        with pytest.raises(CorpusError, match="over the limit of 1,000 characters per document") as err:
            prepare_documents(read_corpus(_as_format("y" * 1_001, fmt), f"a.{fmt}"), "text", options)
        messages.add(str(err.value))
    assert len(messages) == 1
    with pytest.raises(CorpusError, match="per document"):  # a DataFrame too
        prepare_documents(pd.DataFrame({"text": ["z" * 1_001]}), None, options)


def test_split_long_documents_into_windows():
    words = [f"w{i}" for i in range(900)]  # 4,4xx characters
    long_doc = " ".join(words)
    df = pd.DataFrame({"text": ["short one", long_doc, "x" * 2_500], "label": ["a", "b", "c"]})
    out, column = prepare_documents(df, "text", ReadOptions(split_long=True, window_chars=1_000))
    assert out.loc[0, "text"] == "short one" and (out.loc[0, "source_doc"], out.loc[0, "char_offset"]) == (0, 0)
    from_long = out[out["source_doc"] == 1]
    assert len(from_long) == 5 and (from_long["label"] == "b").all()
    assert all(len(w) <= 1_000 for w in out["text"])
    for window, offset in zip(from_long["text"], from_long["char_offset"]):
        assert long_doc[offset:offset + len(window)] == window  # the offset points at the window in its source
    assert " ".join(from_long["text"]).split() == words  # every word kept, none cut in two
    no_spaces = out[out["source_doc"] == 2]
    assert no_spaces["char_offset"].tolist() == [0, 1_000, 2_000] and "".join(no_spaces["text"]) == "x" * 2_500
    unsplit, _ = prepare_documents(df, "text")
    assert len(unsplit) == 3 and "source_doc" not in unsplit.columns


def test_split_windows_refuses_column_clash_and_bad_options():
    with pytest.raises(CorpusError, match="source_doc"):
        prepare_documents(pd.DataFrame({"text": ["a b"], "source_doc": [1]}), "text", ReadOptions(split_long=True))
    with pytest.raises(CorpusError, match="window_chars"):
        ReadOptions(window_chars=0)
    with pytest.raises(CorpusError, match="Unknown format"):
        ReadOptions(fmt="xlsx")


def test_split_windows_offsets_and_whitespace():
    text = "  alpha beta\n\ngamma   delta epsilon  "
    pieces = split_windows(text, 12)
    assert [w for _, w in pieces] == ["alpha beta", "gamma", "delta", "epsilon"]
    assert all(text[o:o + len(w)] == w for o, w in pieces)


def test_workspace_stores_windows_with_their_source(tiny_workspace):
    df = pd.DataFrame({"text": ["the movie was great " * 20, "hello world"], "label": ["fresh", "code"]})
    tiny_workspace.add_corpus("win", df, "text", options=ReadOptions(split_long=True, window_chars=100))
    docs = tiny_workspace.documents("win")
    assert len(docs) == 5 and docs["source_doc"].astype(int).tolist() == [0, 0, 0, 0, 1]
    assert docs["char_offset"].astype(int).tolist()[:2] == [0, 100]


# -- issue 12, problem 9: clear messages instead of AttributeErrors, sizes in sensible units ----------------
@pytest.mark.parametrize("name,message", [(None, "must be text, not NoneType"), (123, "must be text, not int"),
                                          ("   ", "needs a name"), ("a\nb", "control characters"),
                                          ("x" * 201, "at most 200")])
def test_bad_corpus_names_are_refused(name, message):
    with pytest.raises(CorpusError, match=message):
        validate_corpus_name(name)


def test_corpus_name_is_stripped():
    assert validate_corpus_name("  reviews ") == "reviews"


def test_dataframe_columns_that_are_not_text_are_named_by_their_text():
    """A DataFrame built from lists has columns 0, 1, …: the guessed text column was '0' and the frame's
    was 0, so the user read "No column '0'; the columns are: 0, 1"."""
    df = pd.DataFrame({0: ["hello there", "bye now"], 1: [1, 2]})
    for given in (None, 0, "0"):
        out, column = prepare_documents(df, given)
        assert column == "0" and list(out.columns) == ["0", "1"] and out["0"].tolist() == ["hello there", "bye now"]
    with pytest.raises(CorpusError, match="Duplicate column"):
        prepare_documents(pd.DataFrame([["a", "b"]], columns=[0, "0"]), "0")


def test_duplicate_dataframe_columns_are_refused():
    df = pd.DataFrame([["a b", "c d"]], columns=["text", "text"])
    for call in (lambda: guess_text_column(df), lambda: validate_text_column(df, "text"),
                 lambda: prepare_documents(df, "text")):
        with pytest.raises(CorpusError, match="Duplicate column name"):
            call()


def test_workspace_refuses_bad_names_and_duplicate_columns(tiny_workspace):
    df = pd.DataFrame({"text": ["a b", "c d"]})
    for name in (None, 123):
        with pytest.raises(CorpusError, match="must be text"):
            tiny_workspace.add_corpus(name, df, "text")
    with pytest.raises(CorpusError, match="Duplicate column"):
        tiny_workspace.add_corpus("dup", pd.DataFrame([["a", "b"]], columns=["text", "text"]))
    with pytest.raises(CorpusError, match="not NoneType"):
        tiny_workspace.add_corpus("none", None, file_name="x.csv")
    assert tiny_workspace.corpus_list() == []  # nothing stored


def test_size_limit_message_uses_sensible_units(tmp_path):
    p = tmp_path / "big.txt"
    p.write_bytes(b"x" * 2000)
    with pytest.raises(CorpusError) as err:
        read_corpus(p, options=ReadOptions(max_bytes=1000))
    assert str(err.value) == "The file is 2.0 KB, over the limit of 1,000 bytes."
    with pytest.raises(CorpusError, match="over the limit of 1,000 bytes"):
        read_corpus(b"y" * 2000, "big.txt", ReadOptions(max_bytes=1000))
    assert [format_size(n) for n in (0, 1, 999, 1536, 200 * 1024 * 1024, 5 * 1024**3)] == [
        "0 bytes", "1 byte", "999 bytes", "1.5 KB", "200 MB", "5.0 GB"]


# -- issue 10: streamed input (backend.streaming is the one parser; read_corpus joins its chunks) ---------
from backend import streaming  # noqa: E402
from backend.store import Store  # noqa: E402


def _chunked(data: bytes, name: str, rows: int, **kw) -> list[pd.DataFrame]:
    return list(streaming.iter_document_chunks(io.BytesIO(data), chunk_rows=rows, file_name=name, **kw))


def test_every_format_streams_in_chunks_to_the_same_rows_as_a_whole_read():
    texts = [f"doc {i}, with \"quotes\"\nand a second line" if i % 5 == 0 else f"doc {i}" for i in range(23)]
    frame = pd.DataFrame({"text": texts, "label": [f"l{i % 4}" for i in range(23)]})
    buf = io.BytesIO()
    frame.to_parquet(buf, row_group_size=4)
    files = {"csv": frame.to_csv(index=False).encode(), "tsv": frame.to_csv(index=False, sep="\t").encode(),
             "jsonl": frame.to_json(orient="records", lines=True).encode(), "parquet": buf.getvalue()}
    for fmt, data in files.items():
        chunks = _chunked(data, f"a.{fmt}", 5)
        assert [len(c) for c in chunks] == [5, 5, 5, 5, 3], fmt  # quoted newlines never split a row
        joined = pd.concat(chunks, ignore_index=True)
        assert joined["text"].tolist() == texts and joined.equals(read_corpus(data, f"a.{fmt}")), fmt
    txt = b"one\ntwo\n\n\nthree\r\nfour\n\n"
    assert pd.concat(_chunked(txt, "a.txt", 3))["text"].tolist() == ["one", "two", "three", "four"]
    paras = pd.concat(_chunked(txt, "a.txt", 1, txt_mode="paragraph"))["text"].tolist()
    assert paras == ["one\ntwo", "three\nfour"] == read_corpus(txt, "a.txt", ReadOptions(txt_mode="paragraph"))["text"].tolist()
    big = ("x" * 100 + "\n").encode() * 50
    assert [len(c) for c in _chunked(big, "a.txt", 1000, chunk_bytes=1000)] == [10] * 5  # a byte cap too


def test_streamed_messages_name_rows_of_the_whole_file():
    rows = [{"text": f"document {i}", "n": i} for i in range(200)]
    rows[137]["text"] = "  "
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    column, chunks = streaming.prepare_chunks(_chunked(data, "a.jsonl", 50))
    with pytest.raises(CorpusError, match=r"empty in 1 row\(s\) among rows 101–150, first at row 138"):
        list(chunks)
    with pytest.raises(CorpusError, match="over the limit of 20 characters per document .first at row 101"):
        list(streaming.prepare_chunks(_chunked(b"text\n" + b"short\n" * 100 + b"y" * 21 + b"\n", "a.csv", 30),
                                      options=ReadOptions(max_doc_chars=20))[1])
    all_empty = b"text,n\n" + b",1\n" * 10 + b"late text,2\n"
    with pytest.raises(CorpusError, match=r"empty in 4 row\(s\) among rows 1–4, first at row 1"):  # not "every row"
        list(streaming.prepare_chunks(_chunked(all_empty, "a.csv", 4), "text")[1])
    with pytest.raises(CorpusError, match="empty in every row"):
        prepare_documents(read_corpus(b"text,n\n,1\n,2\n", "a.csv"), "text")


def test_skip_empty_drops_rows_with_no_text_and_keeps_where_each_row_was():
    """Tweets and survey answers often have rows with no text: skip_empty stores the others, each with its
    row in the file (`source_row`), the same whole or streamed in chunks (one chunk all empty); without it
    the file is still refused, and the message says how to skip them."""
    rows = [{"text": ("" if i % 7 == 3 else "  " if i == 10 else f"doc {i}" + (" long" * 12 if i == 18 else "")),
             "n": i} for i in range(23)]
    rows[4]["text"] = rows[5]["text"] = rows[6]["text"] = None
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    kept = [i for i, r in enumerate(rows) if r["text"] and r["text"].strip()]
    with pytest.raises(CorpusError, match="skip_empty=True"):
        prepare_documents(read_corpus(data, "a.jsonl"), "text")
    skip = ReadOptions(skip_empty=True)
    whole, _ = prepare_documents(read_corpus(data, "a.jsonl"), "text", skip)
    assert whole["source_row"].tolist() == kept and whole["n"].tolist() == kept
    _, chunks = streaming.prepare_chunks(_chunked(data, "a.jsonl", 3), "text", skip)  # rows 3-5: no text
    assert pd.concat(list(chunks), ignore_index=True).equals(whole)
    windows, _ = prepare_documents(read_corpus(data, "a.jsonl"), "text",
                                   ReadOptions(skip_empty=True, split_long=True, window_chars=30))
    assert windows["source_doc"].tolist() == [i for i in kept for _ in range(3 if i == 18 else 1)]
    with pytest.raises(CorpusError, match="first at row 19"):  # the file's row, not the row among those kept
        prepare_documents(read_corpus(data, "a.jsonl"), "text", ReadOptions(skip_empty=True, max_doc_chars=30))
    with pytest.raises(CorpusError, match="empty in every row"):
        list(streaming.prepare_chunks(_chunked(b"text,n\n,1\n ,2\n,3\n", "a.csv", 2), "text", skip)[1])
    with pytest.raises(CorpusError, match="already has"):
        prepare_documents(pd.DataFrame({"text": ["a", ""], "source_row": [1, 2]}), "text", skip)


def test_a_streamed_jsonl_key_missing_later_is_empty_and_a_new_key_is_refused():
    data = b'{"text": "a", "tag": "x"}\n{"text": "b", "tag": "y"}\n{"text": "c"}\n'
    _, chunks = streaming.prepare_chunks(_chunked(data, "a.jsonl", 2))
    got = pd.concat(list(chunks), ignore_index=True)
    assert got["tag"].tolist()[:2] == ["x", "y"] and pd.isna(got["tag"].iloc[2])
    late_key = b'{"text": "a"}\n{"text": "b"}\n{"text": "c", "tag": "x"}\n'
    with pytest.raises(CorpusError, match="tag first appear after row 2"):
        list(streaming.prepare_chunks(_chunked(late_key, "a.jsonl", 2))[1])


def test_add_corpus_streams_a_path_and_keeps_windows_numbered_across_chunks(tiny_workspace, tmp_path, monkeypatch):
    path = tmp_path / "upload.tmp"  # the format comes from file_name, as for an upload saved under another name
    path.write_text("text,label\n" + "".join(f"document number {i} {'word ' * (i % 40)},l{i % 2}\n" for i in range(90)))
    sizes = []
    real = streaming.iter_document_chunks

    def spy(source, fmt, chunk_rows, txt_mode, file_name, chunk_bytes):
        for chunk in real(source, fmt, 16, txt_mode, file_name, chunk_bytes):
            sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(streaming, "iter_document_chunks", spy)
    cid = tiny_workspace.add_corpus("streamed", path, file_name="docs.csv",
                                    options=ReadOptions(split_long=True, window_chars=60))
    assert sizes == [16] * 5 + [10]  # it went through the streamed reader, chunk by chunk
    monkeypatch.undo()
    docs = tiny_workspace.documents(cid)
    want = prepare_documents(read_corpus(path, "docs.csv"), None, ReadOptions(split_long=True, window_chars=60))[0]
    assert docs["text"].tolist() == want["text"].tolist()
    assert docs["source_doc"].astype(int).tolist() == want["source_doc"].tolist()  # counted from the file's row 0
    assert tiny_workspace.corpus(cid).status == "pending" and tiny_workspace.corpus(cid).source == "docs.csv"


def test_a_corpus_being_streamed_reads_as_unfinished_until_its_last_chunk(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    seen = []

    def chunks():
        for i in range(3):
            if i:
                seen.append([(c.status, c.error) for c in store.corpora()])
            yield pd.DataFrame({"text": [f"doc {i}"]})

    cid = store.add_corpus_chunks("c", chunks(), "text", source="f.jsonl", commit_each=True)
    assert seen[0][0][0] == "failed" and "Still being added from f.jsonl" in seen[0][0][1]
    assert store.corpus(cid).status == "pending" and store.corpus(cid).error is None and store.corpus(cid).n_docs == 3
    store.close()
