"""Install pinned requirements into this interpreter's environment: with uv when it can be had, else pip.

On a fresh 2-core machine pip took 191 s to install requirements.txt and uv 17 s (parallel downloads and
unpacking; modules are compiled on first import instead of all at install time), most of the first launch's
5-minute budget. uv does not read pip's configuration, so the index settings pip would use here
(`pip config list`, including PIP_* environment variables: index-url, extra-index-url, find-links, constraint)
are passed to it, with pip's rule for several indexes (the best version from any of them:
`--index-strategy unsafe-best-match`). If uv cannot be installed or fails, pip installs the same arguments.
`SAEDASH_INSTALLER=pip` skips uv. Standard library only: it runs before anything is installed.

    python -m backend.install -r requirements.txt
    python -m backend.install --no-deps -r requirements-nodeps.txt
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

UV_VERSION = "0.13.9"
# pip settings uv understands, as (pip's key, uv's option); lists are whitespace-separated in pip's config
PIP_TO_UV = (("index-url", "--index-url"), ("extra-index-url", "--extra-index-url"),
             ("find-links", "--find-links"), ("constraint", "--constraint"))


def pip_settings(python: str = sys.executable) -> dict[str, list[str]]:
    """pip's effective index settings: {key: values} from `pip config list` (files and PIP_* environment)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        key = name.rsplit(".", 1)[-1].strip()  # "global.find-links", ":env:.find-links", "install.constraint"
        for values in shlex.split(value):
            found.setdefault(key, [])
            found[key] += [v for v in values.split() if v not in found[key]]
    return found


def uv_command(uv: list[str], python: str, settings: dict[str, list[str]], args: list[str]) -> list[str]:
    command = [*uv, "pip", "install", "--quiet", "--python", python, "--index-strategy", "unsafe-best-match"]
    for key, option in PIP_TO_UV:
        for value in settings.get(key, []):
            command += [option, value]
    return command + list(args)


def pip_command(python: str, args: list[str]) -> list[str]:
    return [python, "-m", "pip", "install", "--quiet", *args]


def ensure_uv(python: str) -> list[str] | None:
    """The uv command of this environment (installed with pip on first use), or None when it cannot be had."""
    probe = [python, "-m", "uv", "--version"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        got = subprocess.run(pip_command(python, [f"uv=={UV_VERSION}"]), check=False)
        if got.returncode != 0 or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            return None
    return [python, "-m", "uv"]


def install(args: list[str], python: str = sys.executable) -> int:
    """Install `args` (pip install's arguments: -r FILE, --no-deps, packages) into `python`'s environment."""
    uv = None if os.environ.get("SAEDASH_INSTALLER") == "pip" else ensure_uv(python)
    if uv is not None:
        settings = pip_settings(python)
        env = dict(os.environ)
        if settings.get("cert"):  # pip's CA bundle, for uv too
            env.setdefault("SSL_CERT_FILE", settings["cert"][0])
        if subprocess.run(uv_command(uv, python, settings, args), check=False, env=env).returncode == 0:
            return 0
        print("uv could not install these requirements; trying pip.", file=sys.stderr)
    return subprocess.run(pip_command(python, args), check=False).returncode


if __name__ == "__main__":
    sys.exit(install(sys.argv[1:]))
