"""The command line: create a workspace, add and embed a corpus, show it, export it; errors exit 2."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest

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
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("text,n\nhello world,1\n,2\nthe dog,3\n")
    assert main(["add", ws, "g", str(gaps), "--no-embed"]) == 2 and "--skip-empty" in capsys.readouterr().err
    assert main(["add", ws, "g", str(gaps), "--no-embed", "--skip-empty"]) == 0
    assert "(2 documents)" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "nope.duckdb")]) == 2
    assert main(["create", str(tmp_path / "w2.duckdb"), "--sae", str(tmp_path)]) == 2


# -- issue 12, problems 3, 4, 5 and 9: every user error is a message and exit code 2, never a traceback ------
# The cases run through `main(argv)` in this process (each process that imports torch costs seconds of CPU),
# capturing stderr; an exception that escapes main() is recorded as its traceback, so it fails like a crash.
# The locked-workspace case runs `python -m backend` in its own process, as a user would: the workspace must
# be held by another process, and it checks the real entry point end to end (exit status and stderr).
REPO = Path(__file__).resolve().parent.parent


def _wide_or_deep_sae(folder: Path, model_name: str, d_in: int, hook: str) -> str:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name=model_name, hook_name=hook, model_from_pretrained_kwargs={})
    TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=16, k=2, dtype="float32", device="cpu", metadata=meta)).save_model(folder)
    return str(folder)


def _main_in_process(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `python -m backend ARGV` run as main(argv) here; an escaping exception is
    status 1 with its traceback on stderr, as the interpreter would print it."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - a crash: recorded, then asserted against
            traceback.print_exc(file=err)
            code = 1
    return code, err.getvalue()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_workspace_file, tiny_model_dir, tiny_sae_dir):
    """{case: (argv, CompletedProcess-like (returncode, stderr), expected message)} for every user error."""
    from backend.store import Store
    from tests.tiny import HOOK

    tmp = tmp_path_factory.mktemp("cli_errors")

    def ws_copy(name: str) -> str:
        target = tmp / f"{name}.duckdb"
        shutil.copy(tiny_workspace_file, target)
        return str(target)

    not_duckdb = tmp / "notes.duckdb"
    not_duckdb.write_text("these are my notes, not a database\n")
    ids_only = tmp / "ids.csv"
    ids_only.write_text("id,stars\n1,5\n2,4\n")
    docs = tmp / "docs.csv"
    docs.write_text("text\nhello world\n")
    trained = tmp / "trained_sae"
    shutil.copytree(tiny_sae_dir, trained)
    model = str(tiny_model_dir)
    cases = {
        "export_xlsx": (["export", ws_copy("x"), "t", str(tmp / "out.xlsx")], r"Cannot export to .*out\.xlsx.*\.csv"),
        "feature_too_big": (["export", ws_copy("big"), "t", str(tmp / "big.csv"), "--feature", "99999"],
                            r"no feature 99999: this SAE has features 0 to 63"),
        "feature_negative": (["export", ws_copy("neg"), "t", str(tmp / "neg.csv"), "--feature", "-1"],
                             r"no feature -1"),
        "show_not_duckdb": (["show", str(not_duckdb)], r"notes\.duckdb"),
        "show_locked": (["show", ws_copy("locked")], rf"open in process {os.getpid()}"),
        "create_wide_sae": (["create", str(tmp / "w.duckdb"), "--model", model, "--sae",
                             _wide_or_deep_sae(tmp / "wide", model, 48, HOOK)], r"width 48 .* d_model 32"),
        "create_missing_layer": (["create", str(tmp / "d.duckdb"), "--model", model, "--sae",
                                  _wide_or_deep_sae(tmp / "deep", model, 32, "blocks.99.hook_resid_post")],
                                 r"layer 99, but .* has 2 layers"),
        "train_over_an_sae": (["train-sae", "--model", model, "--hook", HOOK, "--out", str(trained)],
                              r"already holds an SAE.*--overwrite"),
        "add_blank_name": (["add", ws_copy("blank"), "   ", str(docs), "--no-embed"], r"needs a name"),
        "add_no_text_column": (["add", ws_copy("ids"), "ids", str(ids_only), "--no-embed"],
                               r"No column looks like free text"),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SAEDASH_HANDOFF_WAIT_S": "3",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SAEDASH_NO_INSTALL": "1"}
    holder = Store(tmp / "locked.duckdb")  # this process holds the workspace, as an open dashboard would
    results = {}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "backend", *cases["show_locked"][0]], cwd=REPO, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with pytest.MonkeyPatch.context() as mp:  # while the subprocess starts, the other cases run here
            mp.setenv("SAEDASH_NO_INSTALL", "1")
            for case, (argv, expected) in cases.items():
                if case != "show_locked":
                    results[case] = (*_main_in_process(argv), expected)
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        results["show_locked"] = (proc.returncode, stderr, cases["show_locked"][1])
    finally:
        holder.close()
    results["_files"] = [tmp / "neg.csv", tmp / "big.csv", tmp / "w.duckdb", tmp / "d.duckdb"]
    results["_trained"] = (trained, sorted((p.name, p.stat().st_mtime_ns) for p in trained.iterdir()),
                           sorted((p.name, p.stat().st_mtime_ns) for p in tiny_sae_dir.iterdir()))
    return results


CLI_CASES = ["export_xlsx", "feature_too_big", "feature_negative", "show_not_duckdb", "show_locked", "create_wide_sae",
             "create_missing_layer", "train_over_an_sae", "add_blank_name", "add_no_text_column"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_user_errors_exit_2_with_a_message_and_no_traceback(cli_runs, case):
    returncode, stderr, expected = cli_runs[case]
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, stderr
    # a locked file is asked for first (one "waiting" line, backend.store.handoff), then the error
    assert re.search(r"^error: ", stderr, re.M) and re.search(expected, stderr), stderr


def test_refused_commands_leave_nothing_behind(cli_runs):
    assert not any(path.exists() for path in cli_runs["_files"])  # no export, no half-made workspace
    trained, after, _ = cli_runs["_trained"]
    assert after == sorted((p.name, p.stat().st_mtime_ns) for p in trained.iterdir())  # the SAE was not rewritten


def test_exported_csv_neutralises_formulas(tmp_path, tiny_workspace_file, capsys):
    ws = str(tmp_path / "f.duckdb")
    shutil.copy(tiny_workspace_file, ws)
    docs = tmp_path / "formulas.csv"
    pd.DataFrame({"text": ["=HYPERLINK(\"http://x\")", "plain words here"], "note": ["@SUM(A1)", "-2+3"]}).to_csv(
        docs, index=False)
    assert main(["add", ws, "formulas", str(docs), "--no-embed"]) == 0
    out = tmp_path / "f.csv"
    assert main(["export", ws, "formulas", str(out)]) == 0
    back = pd.read_csv(out, keep_default_na=False)
    assert back["text"].tolist() == ["'=HYPERLINK(\"http://x\")", "plain words here"]
    assert back["note"].tolist() == ["'@SUM(A1)", "'-2+3"]


def test_cli_counts_truncated_documents_and_splits_them(tmp_path, tiny_model_dir, tiny_sae_dir, capsys):
    ws = str(tmp_path / "long.duckdb")
    assert main(["create", ws, "--model", str(tiny_model_dir), "--sae", str(tiny_sae_dir), "--max-tokens", "16"]) == 0
    docs = tmp_path / "long.csv"
    pd.DataFrame({"text": ["the movie was great and funny " * 8, "hello world"], "label": ["a", "b"]}).to_csv(
        docs, index=False)
    capsys.readouterr()
    assert main(["add", ws, "whole", str(docs)]) == 0
    assert "1 of 2 documents were longer than the reading window (16 tokens)" in capsys.readouterr().err
    assert main(["add", ws, "windows", str(docs), "--split-long", "--window-chars", "40"]) == 0
    out = capsys.readouterr()
    assert "Added corpus 'windows' (7 documents, after splitting long ones into windows)" in out.out and "longer than" not in out.err
    assert main(["show", ws]) == 0
    corpora = {c["name"]: c for c in json.loads(capsys.readouterr().out)["corpora"]}
    assert (corpora["whole"]["n_truncated"], corpora["windows"]["n_truncated"]) == (1, 0)
    assert main(["add", ws, "bad", str(docs), "--split-long", "--window-chars", "0"]) == 2
    assert "window_chars must be a positive whole number" in capsys.readouterr().err


# -- issue 11: pick the SAE when creating a workspace; list the shipped ones ----------------------------------
@pytest.fixture()
def shipped_tiny(monkeypatch, tiny_sae_dir, tmp_path, tiny_model_dir):
    """The shipped-SAE registry replaced by two tiny entries: 'tiny' (with a training report) and 'gone'."""
    from backend import config
    from tests.tiny import HOOK

    folder = tmp_path / "tiny_shipped"
    shutil.copytree(tiny_sae_dir, folder)
    (folder / "training_report.json").write_text(json.dumps({"report": {"fve": 0.4321, "l0": 7.0, "dead_frac": 0.125}}))
    registry = {
        "tiny": config.ShippedSAE("tiny", folder, str(tiny_model_dir), HOOK, "Tiny tests: planted figures."),
        "gone": config.ShippedSAE("gone", tmp_path / "no_such_sae", str(tiny_model_dir), HOOK, "Never present."),
    }
    monkeypatch.setattr(config, "SHIPPED_SAES", registry)
    return registry


def test_saes_lists_shipped_saes_with_figures_from_their_reports(shipped_tiny, capsys):
    assert main(["saes"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "Tiny tests: planted figures." in out
    assert "held-out FVE 0.432, L0 7, 12.50% dead" in out  # read from the folder's report, not copied
    assert re.search(r"gone.*missing from this checkout", out)


def test_saes_lists_the_real_shipped_saes(capsys):
    from backend.config import SHIPPED_SAES

    assert main(["saes"]) == 0
    out = capsys.readouterr().out
    for entry in SHIPPED_SAES.values():
        assert entry.key in out and entry.suits in out
        if entry.present:
            fve = json.loads((entry.folder / "training_report.json").read_text())["report"]["fve"]
            assert f"held-out FVE {fve:.3f}" in out


def test_create_takes_a_shipped_key_then_add_and_embed_work(shipped_tiny, tmp_path, tiny_model_dir, tiny_docs, capsys):
    from backend.workspace import Workspace

    ws_path = tmp_path / "keyed.duckdb"
    csv = tmp_path / "docs.csv"
    tiny_docs.to_csv(csv, index=False)
    assert main(["create", str(ws_path), "--model", str(tiny_model_dir), "--sae", "tiny"]) == 0
    assert "with SAE tiny (tiny_shipped)" in capsys.readouterr().err
    ws = Workspace.open(ws_path)
    try:
        assert ws.store.meta()["sae_origin"] == str(shipped_tiny["tiny"].folder)
    finally:
        ws.close()
    assert main(["add", str(ws_path), "reviews", str(csv)]) == 0
    assert main(["embed", str(ws_path), "reviews"]) == 0
    ws = Workspace.open(ws_path)
    try:
        assert ws.corpus("reviews").n_embedded == len(tiny_docs) and ws.corpus("reviews").status == "ready"
    finally:
        ws.close()


@pytest.mark.parametrize("sae, message", [
    ("nosuch", r"No SAE 'nosuch': give a shipped SAE \(tiny, gone\)"),
    ("gone", r"shipped SAE 'gone' is missing"),
])
def test_create_refuses_an_unknown_or_missing_sae(shipped_tiny, tmp_path, tiny_model_dir, capsys, sae, message):
    ws_path = tmp_path / "bad.duckdb"
    assert main(["create", str(ws_path), "--model", str(tiny_model_dir), "--sae", sae]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not ws_path.exists()
