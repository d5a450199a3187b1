"""Old and damaged workspace files through the user's doors (`Workspace.open`, `python -m backend show`):
files written by schema versions 1-3 are upgraded and open; a truncated or corrupted file is refused with a
clear UserError and left byte for byte as it was."""
from __future__ import annotations

import json
import os

import duckdb
import pytest

from backend.__main__ import main
from backend.errors import UserError
from backend.store import SCHEMA_VERSION
from backend.workspace import Workspace
from tests.test_store import make_v1, make_v2


def make_v3(path) -> None:
    """A version-3 file: today's tables minus feature_search_index, stamped 3."""
    make_v2(path)
    from backend.store import Store

    Store(path).close()  # upgraded to the current version, then stamped back to 3 without the version-4 table
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE feature_search_index")
    con.execute("UPDATE workspace_meta SET value = '3' WHERE key = 'schema_version'")
    con.close()


@pytest.mark.parametrize("make, version", [(make_v1, 1), (make_v2, 2), (make_v3, 3)])
def test_old_workspaces_open_upgraded_in_the_cli_and_the_notebook(tmp_path, capsys, make, version):
    path = tmp_path / f"v{version}.duckdb"
    make(path)
    assert main(["show", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"] == "m" and [c["name"] for c in shown["corpora"]] == ["old"]
    ws = Workspace.open(path)
    try:
        assert ws.store.meta()["schema_version"] == SCHEMA_VERSION
        assert ws.corpus("old").n_docs >= 1 and ws.settings.hook == "blocks.0.hook_resid_post"
    finally:
        ws.close()


def good_file(tmp_path) -> bytes:
    path = tmp_path / "good.duckdb"
    make_v2(path)
    Workspace.open(path).close()  # upgraded and checkpointed: a complete current file
    return path.read_bytes()


def damaged(tmp_path, how: str) -> bytes:
    data = good_file(tmp_path)
    if how.startswith("truncated"):
        return data[: int(len(data) * float(how.split(":")[1]))]
    mangled = bytearray(data)
    mangled[4096:12288] = os.urandom(8192)  # a block after the header
    return bytes(mangled)


@pytest.mark.parametrize("how", ["truncated:0.25", "truncated:0.5", "truncated:0.9", "corrupted"])
def test_a_damaged_file_is_refused_clearly_and_left_untouched(tmp_path, capsys, how):
    folder = tmp_path / "ws"
    folder.mkdir()
    path = folder / "bad.duckdb"
    path.write_bytes(damaged(tmp_path, how))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    with pytest.raises(UserError, match="not a readable DuckDB workspace file") as err:
        Workspace.open(path)
    assert "left as it is" in str(err.value)
    assert main(["show", str(path)]) == 2  # the CLI prints the message and exits 2, no traceback
    assert "not a readable DuckDB workspace file" in capsys.readouterr().err
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # byte for byte, mtime too
    assert sorted(p.name for p in folder.iterdir()) == ["bad.duckdb"]  # no WAL or other file left beside it


def test_the_good_file_opens(tmp_path):
    """The control: the file the damaged ones are made from opens."""
    path = tmp_path / "copy.duckdb"
    path.write_bytes(good_file(tmp_path))
    Workspace.open(path).close()
