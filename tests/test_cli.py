"""The command line: create a workspace, add and embed a corpus, show it, export it; errors exit 2."""
from __future__ import annotations

import json

import pandas as pd

from backend.__main__ import main


def test_cli_end_to_end(tmp_path, tiny_model_dir, tiny_sae_dir, tiny_docs, capsys, monkeypatch):
    ws = str(tmp_path / "cli.duckdb")
    csv = tmp_path / "docs.csv"
    tiny_docs.to_csv(csv, index=False)
    assert main(["create", ws, "--model", str(tiny_model_dir), "--sae", str(tiny_sae_dir)]) == 0
    assert main(["add", ws, "reviews", str(csv), "--no-embed"]) == 0
    assert main(["embed", ws, "reviews"]) == 0
    capsys.readouterr()
    assert main(["show", ws]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["corpora"][0]["n_embedded"] == len(tiny_docs) and summary["d_sae"] == 64
    out = tmp_path / "out.jsonl"
    assert main(["export", ws, "reviews", str(out), "--feature", "3", "--feature", "5"]) == 0
    exported = pd.read_json(out, lines=True)
    assert len(exported) == len(tiny_docs) and {"text", "label", "f3", "f5"} <= set(exported.columns)
    active = tmp_path / "active.csv"
    assert main(["export", ws, "reviews", str(active), "--feature", "3", "--only-active"]) == 0
    kept = pd.read_csv(active)
    assert len(kept) == int((exported["f3"] > 0).sum()) and (kept["f3"] > 0).all()


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, tiny_model_dir, tiny_sae_dir, capsys):
    ws = str(tmp_path / "cli.duckdb")
    assert main(["create", ws, "--model", str(tiny_model_dir), "--sae", str(tiny_sae_dir)]) == 0
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["add", ws, "x", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["add", ws, "x", str(tmp_path / "missing.csv")]) == 2
    assert main(["show", str(tmp_path / "nope.duckdb")]) == 2
    assert main(["create", str(tmp_path / "w2.duckdb"), "--sae", str(tmp_path)]) == 2
