"""The real app on a free local port, started fresh (the e2e tests' one way to serve it)."""
from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def serve(command: list[str], folder: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Base URL of the app started by `command` (e.g. `python app.py`) over the workspaces in `folder`; its
    output goes to `log_path`, whose tail is the error when it does not come up within a minute."""
    port = free_port()
    env = dict(os.environ, SAEDASH_WORKSPACES=str(folder), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    with log_path.open("w") as log:
        proc = subprocess.Popen([*command, "--server.port", str(port), "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", *extra_args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            t0 = time.time()
            while not healthy(url):
                if proc.poll() is not None or time.time() - t0 > 60:
                    raise RuntimeError(f"The app did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
