"""A `python -m backend` command gets a workspace from a dashboard whose background jobs keep writing to it
(issue "Runs everywhere", item 6): the dashboard's Store lets go when asked, its job pauses, then carries on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend.store import Store, WorkspaceLocked
from backend.store import handoff

ROOT = Path(__file__).resolve().parents[1]


class BusyJob:
    """A dashboard background job: a patient thread writing to the workspace every 0.1 s (a MiniLM batch)."""

    def __init__(self, store: Store) -> None:
        self.store, self.writes, self.errors = store, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            with handoff.waiting_for_the_file():
                while not self.stop.is_set():
                    self.store.set_meta(busy_job_writes=self.writes + 1)
                    self.writes += 1
                    time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            self.errors.append(exc)


def cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "backend", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture()
def dashboard(tiny_workspace_file, tmp_path):
    """A copy of the tiny workspace open as the dashboard opens it (30 s idle release), with a busy job."""
    path = tmp_path / "dash.duckdb"
    shutil.copy(tiny_workspace_file, path)
    store = Store(path, idle_release_s=30.0)
    job = BusyJob(store)
    time.sleep(0.5)
    yield path, store, job
    job.stop.set()
    job.thread.join(10)
    store.close()


def test_a_command_gets_the_workspace_from_a_dashboard_with_busy_background_jobs(dashboard):
    path, store, job = dashboard
    t0 = time.monotonic()
    out = cli(["show", str(path)])
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"corpora"' in out.stdout or "corpus" in out.stdout.lower()
    assert "hand it over" in out.stderr  # it said it was waiting
    assert took < handoff.HANDOFF_WAIT_S + 30  # the command did not run out its wait (startup included)
    assert not handoff.request_path(path).exists()  # the request is withdrawn
    before = job.writes
    deadline = time.monotonic() + 20
    while job.writes <= before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.writes > before + 3 and job.errors == []  # the job paused, then carried on without failing
    assert store.meta()["busy_job_writes"] >= job.writes - 1


def test_without_asking_another_process_is_refused_while_the_job_writes(dashboard):
    """The control: a process that opens the file without asking (the old CLI) is locked out."""
    path, _store, job = dashboard
    code = ("import sys; from backend.store import Store, WorkspaceLocked\n"
            "try:\n    Store(sys.argv[1])\nexcept WorkspaceLocked as e:\n    print('LOCKED', e)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("LOCKED") and "hands the file over within seconds" in out.stdout, out.stderr[-2000:]
    assert job.errors == []


def test_while_lent_the_dashboard_pages_say_so_and_do_not_take_it_back(dashboard, tmp_path):
    path, store, job = dashboard
    marker = handoff.request_path(path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live requester
    try:
        marker.write_text(str(holder.pid))
        deadline = time.monotonic() + 15
        while not store.release_if_idle() and store._con is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store._con is None  # released although the job wrote a moment ago
        with pytest.raises(WorkspaceLocked, match="lent to a `python -m backend` command"):
            store.meta()  # a page's call (not a background job): a clear message, not a hang
        paused_at = job.writes
        time.sleep(1.0)
        assert job.writes == paused_at  # the job waits
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while job.writes == paused_at and time.monotonic() < deadline:  # a dead requester's file is stale
        time.sleep(0.1)
    assert job.writes > paused_at and job.errors == []
    marker.write_text(str(os.getppid()))  # a live process, but a request older than any command's wait
    old = time.time() - handoff.HANDOFF_WAIT_S - 60
    os.utime(marker, (old, old))
    assert not handoff.requested(path)  # stale (a reused pid cannot keep the dashboard out)
    marker.unlink(missing_ok=True)
