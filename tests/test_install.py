"""backend.install: uv with pip's own index settings, pip when uv fails (no network: subprocess is faked)."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

from backend import install

PIP_CONFIG = """global.cert='/etc/ssl/certs/ca.crt'
global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'
:env:.find-links='/opt/wheels'
install.constraint='/etc/pip/constraints.txt'
global.index-url='https://mirror.example/simple'
"""


def fake_run(calls: list[list[str]], fail: set[str] = frozenset()):
    def run(command, capture_output=False, text=False, check=False, env=None, **kwargs):
        calls.append(list(command))
        joined = " ".join(command)
        if command[1:4] == ["-m", "pip", "config"]:
            return SimpleNamespace(returncode=0, stdout=PIP_CONFIG, stderr="")
        code = 1 if any(word in joined for word in fail) else 0
        return SimpleNamespace(returncode=code, stdout="", stderr="")

    return run


def test_uv_gets_every_index_setting_pip_would_use(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", fake_run(calls))
    monkeypatch.delenv("SAEDASH_INSTALLER", raising=False)
    assert install.install(["-r", "requirements.txt"], python="/venv/bin/python") == 0
    uv = next(c for c in calls if c[1:5] == ["-m", "uv", "pip", "install"])
    pairs = list(zip(uv, uv[1:]))
    for pair in [("--extra-index-url", "file:///opt/a/simple"), ("--extra-index-url", "file:///opt/b/simple"),
                 ("--find-links", "/opt/wheels"), ("--constraint", "/etc/pip/constraints.txt"),
                 ("--index-url", "https://mirror.example/simple"), ("--python", "/venv/bin/python"),
                 ("--index-strategy", "unsafe-best-match")]:
        assert pair in pairs, pair
    assert uv[-2:] == ["-r", "requirements.txt"]
    assert not any(c[1:4] == ["-m", "pip", "install"] and "-r" in c for c in calls)  # pip did not install them


def test_pip_installs_when_uv_fails_or_is_turned_off(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", fake_run(calls, fail={"uv pip install"}))
    assert install.install(["--no-deps", "-r", "x.txt"], python="py") == 0
    assert calls[-1] == ["py", "-m", "pip", "install", "--quiet", "--no-deps", "-r", "x.txt"]
    calls.clear()
    monkeypatch.setenv("SAEDASH_INSTALLER", "pip")
    assert install.install(["-r", "x.txt"], python="py") == 0
    assert calls == [["py", "-m", "pip", "install", "--quiet", "-r", "x.txt"]]  # uv never tried


def test_no_uv_to_be_had_means_pip(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", fake_run(calls, fail={"uv --version", "uv=="}))
    monkeypatch.delenv("SAEDASH_INSTALLER", raising=False)
    assert install.install(["-r", "x.txt"], python="py") == 0
    assert calls[-1] == ["py", "-m", "pip", "install", "--quiet", "-r", "x.txt"]
    assert not any("--index-strategy" in c for c in calls)
