"""Tests of backend.export: formula neutralisation and lossless round trips."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.errors import UserError
from backend.export import ExportError, check_feature_ids, export_format, export_frame, feature_columns, write_export


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": np.array([0, 1, 2, 3], dtype=np.int64),
            "text": ["plain", "Ünïcödé — 猫", "line\nbreak", "quote \"x\", comma"],
            "score": [0.5, -1.25, 3.0, np.nan],
            "flag": [True, False, True, False],
        }
    )


def test_csv_neutralises_formula_cells():
    df = pd.DataFrame(
        {
            "text": ["=SUM(A1:A2)", "+1", "-2", "@cmd", "\tx", "\ry", "safe", "a=b"],
            "num": [-1, 2, 3, 4, 5, 6, 7, 8],
        }
    )
    back = pd.read_csv(io.BytesIO(export_frame(df, "csv")), keep_default_na=False)
    expected = ["'=SUM(A1:A2)", "'+1", "'-2", "'@cmd", "'\tx", "'\ry", "safe", "a=b"]
    assert list(back["text"]) == expected
    assert list(back["num"]) == [-1, 2, 3, 4, 5, 6, 7, 8]  # numbers stay numbers
    hdr = pd.DataFrame({"=cmd()": [1]})
    assert export_frame(hdr, "csv").decode().splitlines()[0] == "'=cmd()"


def test_jsonl_round_trip(frame):
    data = export_frame(frame, "jsonl")
    lines = data.decode("utf-8").splitlines()
    assert len(lines) == len(frame)
    assert json.loads(lines[1])["text"] == "Ünïcödé — 猫"
    assert "猫".encode() in data  # UTF-8, not \u escapes
    back = pd.read_json(io.BytesIO(data), lines=True)
    pd.testing.assert_frame_equal(back, frame)


def test_parquet_round_trip(frame, tmp_path):
    back = pd.read_parquet(io.BytesIO(export_frame(frame, "parquet")))
    pd.testing.assert_frame_equal(back, frame)
    p = write_export(frame, tmp_path / "sub" / "out.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(p), frame)
    p = write_export(frame, tmp_path / "out.jsonl")
    pd.testing.assert_frame_equal(pd.read_json(p, lines=True), frame)
    with pytest.raises(ValueError):
        export_frame(frame, "xlsx")


def test_feature_columns_names_and_values():
    X = sp.csr_matrix(np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.25], [0.0, 0.0, 0.0]]))
    cols = feature_columns(X, [1, 0], [2, 1, 0], {2: "Cats & dogs!", 1: "Python code"})
    assert list(cols.columns) == ["f2_cats_dogs", "f1_python_code", "f0"]
    np.testing.assert_allclose(cols.to_numpy(), [[0.25, 0.0, 2.0], [0.0, 1.5, 0.0]])
    assert list(cols.index) == [0, 1]


def test_feature_ids_are_checked_not_wrapped():
    assert check_feature_ids([0, np.int64(5), 8191], 8192) == [0, 5, 8191]
    for bad, message in [(-1, "no feature -1"), (8192, "no feature 8192"), (99999, "no feature 99999"),
                         (True, "whole number"), (1.5, "whole number")]:
        with pytest.raises(ExportError, match=message):
            check_feature_ids([bad], 8192)
    X = sp.csr_matrix(np.array([[1.0, 0.0, 7.0]]))
    with pytest.raises(ExportError, match="no feature -1"):  # scipy would silently read the last column
        feature_columns(X, [0], [-1])
    with pytest.raises(ExportError, match="features 0 to 2"):
        feature_columns(X, [0], [3])


def test_unknown_export_format_is_a_user_error(frame, tmp_path):
    with pytest.raises(UserError, match="out.xlsx"):
        write_export(frame, tmp_path / "out.xlsx")
    assert not (tmp_path / "out.xlsx").exists()
    with pytest.raises(UserError, match="xlsx"):
        export_frame(frame, "xlsx")
    assert [export_format(n) for n in ("a.CSV", "a.json", "a.ndjson", "a.pq", "a.parquet")] == [
        "csv", "jsonl", "jsonl", "parquet", "parquet"]
    assert export_format("no_suffix", "csv") == "csv"
    with pytest.raises(ExportError, match="no_suffix"):
        export_format("no_suffix")
