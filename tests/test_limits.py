"""The input limits as documented (docs/cpus-and-dtypes.md): `max_bytes` bounds what is read whole into memory
(uploads, bytes, file objects, `read_corpus`); a streamed file path has no byte limit by design (it is never
held whole), and `max_doc_chars` holds for every document on every path."""
from __future__ import annotations

import io

import pytest

from backend.corpora import CorpusError, ReadOptions


def write_lines(path, n: int, width: int = 40) -> None:
    path.write_text("".join(f"document number {i} " + "x" * width + "\n" for i in range(n)))


def test_a_streamed_file_has_no_byte_limit_but_what_is_read_whole_has(tiny_workspace, tmp_path):
    path = tmp_path / "big.txt"
    write_lines(path, 400)
    size = path.stat().st_size
    small = ReadOptions(max_bytes=size // 4)
    cid = tiny_workspace.add_corpus("streamed", path, options=small)  # 4x over max_bytes: streamed, accepted
    assert tiny_workspace.corpus(cid).n_docs == 400
    with pytest.raises(CorpusError, match="over the limit"):
        tiny_workspace.add_corpus("whole", path.read_bytes(), file_name="big.txt", options=small)
    with pytest.raises(CorpusError, match="over the limit"):
        tiny_workspace.add_corpus("handle", io.BytesIO(path.read_bytes()), file_name="big.txt", options=small)
    assert [c.name for c in tiny_workspace.corpus_list()] == ["streamed"]


def test_the_document_limit_holds_for_streamed_files(tiny_workspace, tmp_path):
    path = tmp_path / "long.txt"
    write_lines(path, 30)
    with path.open("a") as f:
        f.write("y" * 5000 + "\n")
    with pytest.raises(CorpusError, match="over the limit of 1,000 characters"):
        tiny_workspace.add_corpus("long", path, options=ReadOptions(max_doc_chars=1000))
    assert tiny_workspace.corpus_list() == []  # nothing stored
