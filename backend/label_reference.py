"""Reference words: the words each SAE feature fires on most in other text, kept beside the SAE.

A feature that fires only weakly in a corpus fires there on whatever tokens push it into the SAE's top k, and
its top contexts often share nothing the labeller finds (`varied tokens`). When a few of them fire on the words
the feature fires on most in the SAE's reference text, and that many is unlikely at those words' rate among all
the contexts labelled together, those contexts are the feature's own: the labeller names them
(`partly its words in other text (main / master)`, `backend.label_text`). This is what the feature's strong
activations elsewhere tell about its weak ones here; nothing else is borrowed from the reference text.

File: `<SAE folder>/reference_words.tsv.gz`, gzip-compressed text: the header line
`# sae_sha256=<16 hex> docs=<n> source=<what text>`, then one `feature_id<TAB>word<TAB>share` line per word
(share: of the feature's top-context activation in the reference text). Built by
`python -m backend reference-words --sae DIR` (backend/__main__.py) with the labeller's own reading of the
firing words (`label_text.firing_words`), so both sides of a match are the same lower-case whole words."""
from __future__ import annotations

import gzip
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

from backend.config import CACHE_DIR, shipped_saes
from backend.errors import UserError

FILE_NAME = "reference_words.tsv.gz"
_HEADER = re.compile(r"^# sae_sha256=(?P<sha>[0-9a-f]{16,64}) docs=(?P<docs>\d+) source=(?P<source>.*)$")


@dataclass(frozen=True)
class ReferenceConfig:
    """Which firing words of the reference text count as a feature's own: those of at least `min_share` of its
    top-context activation there, at most `max_words` of them, strongest first."""

    min_share: float = 0.1
    max_words: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.min_share <= 1.0 or self.max_words < 1:
            raise UserError("min_share must be in (0, 1] and max_words at least 1.")


@dataclass(frozen=True)
class ReferenceWords:
    """Each feature's own words in the reference text (`words[feature_id]`, strongest first), for one SAE."""

    sae_sha256: str
    n_docs: int
    source: str
    words: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    shares: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{16,64}", self.sae_sha256):
            raise UserError(f"{self.sae_sha256!r} is not an SAE weights sha256 (16 to 64 hex digits).")
        if "\n" in self.source:
            raise UserError("The reference text's description must be one line.")

    def matches(self, sae_sha256: str | None) -> bool:
        """Whether these words were read with the SAE whose weights have this sha256 (either may be a prefix)."""
        digest = str(sae_sha256 or "").lower()
        return len(digest) >= 16 and (digest.startswith(self.sae_sha256) or self.sae_sha256.startswith(digest))


def from_firing_words(firing: Mapping[int, Iterable[tuple[str | None, float]]], sae_sha256: str, n_docs: int,
                      source: str, cfg: ReferenceConfig = ReferenceConfig()) -> ReferenceWords:
    """ReferenceWords from each feature's (firing word or None, activation) per top context in the reference text."""
    words: dict[int, tuple[str, ...]] = {}
    shares: dict[int, tuple[float, ...]] = {}
    for fid, pairs in firing.items():
        mass: dict[str, float] = defaultdict(float)
        total = 0.0
        for word, act in pairs:
            total += max(float(act), 0.0)
            if word:
                mass[word] += max(float(act), 0.0)
        kept = sorted(((w, m / total) for w, m in mass.items() if total > 0 and m / total >= cfg.min_share),
                      key=lambda x: (-x[1], x[0]))[: cfg.max_words]
        if kept:
            words[int(fid)], shares[int(fid)] = tuple(w for w, _ in kept), tuple(round(s, 4) for _, s in kept)
    return ReferenceWords(sae_sha256[:16].lower(), int(n_docs), source, words, shares)


def write(path: str | Path, ref: ReferenceWords) -> Path:
    """Write `ref` to `path` (gzip text, see the module docstring); returns the path."""
    path = Path(path)
    lines = [f"# sae_sha256={ref.sae_sha256} docs={ref.n_docs} source={ref.source}"]
    for fid in sorted(ref.words):
        lines += [f"{fid}\t{w}\t{s:.4f}" for w, s in zip(ref.words[fid], ref.shares[fid])]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def read(path: str | Path) -> ReferenceWords:
    """Read a reference-words file; a clear UserError when it is not one."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header, *rows = fh.read().splitlines()
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a reference-words file ({exc}).") from exc
    m = _HEADER.match(header)
    if m is None:
        raise UserError(f"{path} is not a reference-words file (no '# sae_sha256=… docs=… source=…' header).")
    words: dict[int, list[str]] = defaultdict(list)
    shares: dict[int, list[float]] = defaultdict(list)
    for n, row in enumerate(rows, start=2):
        parts = row.split("\t")
        if len(parts) != 3 or not parts[0].isdigit():
            raise UserError(f"{path}, line {n}: expected feature_id, word and share separated by tabs.")
        words[int(parts[0])].append(parts[1])
        shares[int(parts[0])].append(float(parts[2]))
    return ReferenceWords(m["sha"], int(m["docs"]), m["source"], {f: tuple(w) for f, w in words.items()},
                          {f: tuple(s) for f, s in shares.items()})


def for_sae(sae_source: str, sae_sha256: str | None) -> ReferenceWords | None:
    """The reference words of a workspace's SAE: from its recorded folder, its cached copy (`.cache/saes/`) or a
    shipped SAE's folder with the same weights; None when none has them."""
    digest = str(sae_sha256 or "")
    folders = [Path(sae_source), CACHE_DIR / "saes" / digest[:16]] + [s.folder for s in shipped_saes()]
    return find(digest, folders)


def words_for(sae_source: str, sae_sha256: str | None) -> Mapping[int, tuple[str, ...]]:
    """`for_sae(...).words`, or no words when the SAE has none: what the labeller and the feature page read."""
    ref = for_sae(sae_source, sae_sha256)
    return {} if ref is None else ref.words


@lru_cache(maxsize=8)
def _read_once(path: str, mtime_ns: int) -> ReferenceWords:
    """`read`, once per file version: every corpus finished and every feature page reads the same file."""
    return read(path)


def find(sae_sha256: str | None, folders: Iterable[str | Path]) -> ReferenceWords | None:
    """The reference words of the SAE with these weights from the first of `folders` whose file was read with it
    (the workspace's SAE folder first, then the shipped SAEs' folders), or None: labels are then made without."""
    for folder in folders:
        path = Path(folder) / FILE_NAME
        if not path.is_file():
            continue
        try:
            ref = _read_once(str(path), path.stat().st_mtime_ns)
        except (UserError, OSError):
            continue  # a damaged file names nothing; the labeller goes on without it
        if ref.matches(sae_sha256):
            return ref
    return None
