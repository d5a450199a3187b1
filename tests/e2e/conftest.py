"""End-to-end fixtures: a workspace folder for the real app and the app server (`python app.py`) on a free port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def app_server(e2e_workspaces, tmp_path):
    """Base URL of the real app served by `python app.py` (as `make run` does); its log is printed when the test fails."""
    folder, kind = e2e_workspaces
    port = free_port()
    env = dict(os.environ, SAEDASH_WORKSPACES=str(folder), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--server.port", str(port), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() - t0 > 60:
                raise RuntimeError(f"The app did not come up:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, kind
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print(f"server log: {tmp_path / 'server.log'}")
