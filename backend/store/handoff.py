"""Handing a workspace file from the dashboard to a `python -m backend` command.

DuckDB lets one process write a file. The dashboard opens its workspaces with an idle release, but its
background MiniLM jobs write every few seconds, so the file is never idle while they run. A command that
finds the file held leaves a request next to it (`WS.duckdb.handoff`, its pid inside) and keeps trying;
a dashboard Store that sees a live request closes its connection as soon as no call is using it and does
not reopen it while the request stands. Its background jobs wait (they run `waiting_for_the_file()`)
and carry on once the command is done; its pages say the workspace is in use meanwhile."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
# how long a command waits for a dashboard to let go (the message promises a minute; tests shorten it)
HANDOFF_WAIT_S = float(os.environ.get("SAEDASH_HANDOFF_WAIT_S", "60"))
POLL_S = 0.5
_patient = threading.local()


def request_path(path: str | Path) -> Path:
    """The request file of the workspace at `path`."""
    path = Path(path)
    return path.with_name(path.name + ".handoff")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requested(path: str | Path) -> bool:
    """Whether a live process (not this one) asks for the file now. A request lives only while its command
    waits (at most HANDOFF_WAIT_S), so an older one, or one whose process is gone, is stale and ignored."""
    marker = request_path(path)
    try:
        pid = int(marker.read_text().strip() or 0)
        age = time.time() - marker.stat().st_mtime
    except (OSError, ValueError):
        return False
    return pid > 0 and pid != os.getpid() and age < HANDOFF_WAIT_S + 30 and _alive(pid)


@contextmanager
def requesting(path: str | Path) -> Iterator[None]:
    """Ask dashboards holding `path` to let go for the block."""
    marker = request_path(path)
    marker.write_text(str(os.getpid()))
    try:
        yield
    finally:
        if marker.exists() and marker.read_text().strip() == str(os.getpid()):
            marker.unlink(missing_ok=True)


def open_when_free(open_fn: Callable[[], T], path: str | Path, locked: type[Exception],
                   wait_s: float = HANDOFF_WAIT_S, on_wait: Callable[[str], None] | None = None) -> T:
    """`open_fn()`, and while it raises `locked`, ask for the file and retry for up to `wait_s` seconds.
    The request is withdrawn once the file is open: the opener then holds DuckDB's own lock."""
    try:
        return open_fn()
    except locked as first:
        if wait_s <= 0 or not Path(path).exists():
            raise
        if on_wait is not None:
            on_wait(f"{Path(path).name} is in use; asking its holder to hand it over, waiting up to {wait_s:.0f} s ({first})")
    deadline = time.monotonic() + wait_s
    with requesting(path):
        while True:
            try:
                return open_fn()
            except locked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_S)


@contextmanager
def waiting_for_the_file() -> Iterator[None]:
    """In this thread, a Store call waits while another process holds or asks for the file (background jobs)
    instead of raising WorkspaceLocked."""
    before = getattr(_patient, "on", False)
    _patient.on = True
    try:
        yield
    finally:
        _patient.on = before


def patient() -> bool:
    return bool(getattr(_patient, "on", False))
