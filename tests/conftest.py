"""Shared fixtures: a tiny model + SAE workspace (fast) and the real default model (integration)."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tests.tiny import make_tiny_model_dir, make_tiny_sae  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: a tiny model gains nothing from threads, and the CPUs are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_reader(tiny_model_dir):
    from backend.models import load_reader

    return load_reader(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_sae(tiny_reader):
    return make_tiny_sae(tiny_reader.name)


@pytest.fixture(scope="session")
def tiny_sae_dir(tiny_sae, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_sae")
    tiny_sae.save_model(folder)
    return folder


TINY_DOCS = pd.DataFrame(
    {
        "text": [
            "the movie was great and funny", "a terrible boring film", "the plot of the story is about a family",
            "python code with a function that will return a value", "the dog and the cat in the house",
            "police and crime in the city at night", "i love this movie", "i hate this film",
            "the actor and the actress were good", "error in the file data list",
            "hello world", "the music at the ending was great",
        ],
        "label": ["fresh", "rotten", "plot", "code", "plot", "plot", "fresh", "rotten", "fresh", "code", "code", "fresh"],
    }
)


@pytest.fixture()
def tiny_workspace(tmp_path, tiny_reader, tiny_sae, tiny_sae_dir):
    """A fresh workspace with the tiny model and SAE (not embedded yet)."""
    from backend.workspace import Workspace, WorkspaceSpec

    # raw (presence_threshold=0): the unit tests check pooling against every positive activation, exactly;
    # the default compact presence has its own planted tests (tests/test_storage.py)
    ws = Workspace.create(tmp_path / "ws.duckdb", WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0),
                          device="cpu", reader=tiny_reader, sae=tiny_sae)
    yield ws
    ws.close()


@pytest.fixture()
def tiny_docs() -> pd.DataFrame:
    return TINY_DOCS.copy()


@pytest.fixture(scope="session")
def tiny_workspace_file(tmp_path_factory, tiny_reader, tiny_sae, tiny_sae_dir) -> Path:
    """A workspace file with the tiny model: corpus 't' (12 labelled docs) embedded and finalized."""
    from backend.workspace import Workspace, WorkspaceSpec

    path = tmp_path_factory.mktemp("tiny_ws") / "tiny.duckdb"
    ws = Workspace.create(path, WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0), device="cpu",
                          reader=tiny_reader, sae=tiny_sae)
    ws.add_corpus("t", TINY_DOCS, "text")
    ws.embed("t")
    ws.close()
    return path


REAL_DOCS = 40


def _share_default_reader(reader) -> None:
    """Make every later load of the default model on the CPU in float32 return `reader` (loading it costs ~11
    CPU-seconds; the real workspace, its page tests and the integration tests would each load it again).

    Other models, devices and dtypes load as before. Patched wherever `load_reader` was imported by name."""
    import sys

    from backend import models
    from backend.config import DEFAULT_MODEL
    from backend.runtime import resolve_dtype

    original = getattr(models.load_reader, "__wrapped__", models.load_reader)

    def load_reader(name=DEFAULT_MODEL, device=None, dtype="auto", from_pretrained_kwargs=None, cache_dir=None,
                    notify=None):
        if (name == DEFAULT_MODEL and models.pick_device(device) == "cpu" and cache_dir is None
                and resolve_dtype(dtype or "float32", "cpu") == reader.model.cfg.dtype and not from_pretrained_kwargs):
            return reader
        return original(name, device=device, dtype=dtype, from_pretrained_kwargs=from_pretrained_kwargs,
                        cache_dir=cache_dir, notify=notify)

    load_reader.__wrapped__ = original
    for module in [m for name, m in list(sys.modules.items()) if name == "backend" or name.startswith("backend.")]:
        if getattr(module, "load_reader", None) is original:
            module.load_reader = load_reader


@pytest.fixture(scope="session")
def real_reader():
    """The real default reader model (SmolLM2-135M-Instruct, CPU, float32), loaded once per session and shared
    by every workspace on it that the tests open (see `_share_default_reader`)."""
    import backend.workspace  # noqa: F401  (imports the modules whose `load_reader` is shared)
    from backend.models import load_reader

    reader = load_reader(device="cpu", dtype="float32")
    _share_default_reader(reader)
    return reader


@pytest.fixture(scope="session")
def real_sae():
    """The shipped default SAE, loaded once per session; skips without it."""
    from backend.config import DEFAULT_SAE_DIR
    from backend.saes import load_sae

    if not (DEFAULT_SAE_DIR / "cfg.json").exists():
        pytest.skip("the default SAE is not in data/ yet")
    return load_sae(DEFAULT_SAE_DIR, device="cpu")


@pytest.fixture(scope="session")
def real_workspace_file(tmp_path_factory, real_sae, real_reader) -> Path:
    """A workspace file with the real default model and SAE: 40 demo documents embedded and finalized.

    Built once per test session (about a minute on 2 cores) and shared READ-ONLY by every test that needs
    the real model's workspace: a test that writes (labels, corpora, indexes, page state) copies it first
    (`shutil.copy(real_workspace_file, tmp_path / ...)`, or tests/pages' `real_ws_path`)."""
    from backend.builtin_data import demo_corpus
    from backend.config import DEFAULT_SAE_DIR
    from backend.workspace import Workspace, WorkspaceSpec

    path = tmp_path_factory.mktemp("real_ws") / "real.duckdb"
    ws = Workspace.create(path, WorkspaceSpec(sae=str(DEFAULT_SAE_DIR)), device="cpu", reader=real_reader, sae=real_sae)
    ws.add_corpus("demo", demo_corpus(REAL_DOCS, seed=3), "text")
    ws.embed("demo")
    ws.close()
    return path


@pytest.fixture()
def closed_url():
    """An LLM base URL on a local port that surely refuses connections: bound by this test, never listened on
    (a fixed port such as 9 may have a listener on some machines)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()
