"""End-to-end fixtures: a workspace folder for the real app and the app server (`python app.py`) on a free port."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.server import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture()
def e2e_workspaces(tmp_path, request) -> tuple[Path, str]:
    """(folder with one workspace that has no corpus yet, 'real' or 'tiny').

    The real default model + SAE when the SAE is in data/, else the tiny test model (whose session
    temp folders outlive the server: the server loads them from the paths in the workspace meta)."""
    from backend.config import DEFAULT_SAE_DIR
    from backend.workspace import Workspace, WorkspaceSpec

    folder = tmp_path / "workspaces"
    folder.mkdir()
    path = folder / "e2e.duckdb"
    if (DEFAULT_SAE_DIR / "cfg.json").exists():
        ws, kind = Workspace.create(path, WorkspaceSpec(sae=str(DEFAULT_SAE_DIR)), device="cpu"), "real"
    else:
        reader, sae = request.getfixturevalue("tiny_reader"), request.getfixturevalue("tiny_sae")
        sae_dir = request.getfixturevalue("tiny_sae_dir")
        ws = Workspace.create(path, WorkspaceSpec(model=reader.name, sae=str(sae_dir)), device="cpu", reader=reader, sae=sae)
        kind = "tiny"
    ws.close()  # the server process opens it
    return folder, kind


@pytest.fixture()
def app_server(e2e_workspaces, tmp_path):
    """Base URL of the real app served by `python app.py` (as `make run` does); its log is printed when the test fails."""
    folder, kind = e2e_workspaces
    try:
        with serve([sys.executable, "app.py"], folder, tmp_path / "server.log",
                   ("--server.fileWatcherType", "none")) as url:
            yield url, kind
    finally:
        print(f"server log: {tmp_path / 'server.log'}")
