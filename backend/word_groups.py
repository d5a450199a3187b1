"""Whether the words a feature fires on share a word class beyond chance: a part of speech or a sense category.

A feature whose firing words vary (`brings`, `hold`, `carry`) may still fire on one kind of word: verbs, words of
carrying and getting (`backend.word_lexicon`). But a quarter of any group of firing words are nouns and a tenth
are "words of strength", so a class names a feature only when it is far above its base rate: at least
`min_share` of the feature's top contexts, at least `min_lift` times the base rate, and unlikely by chance
(the binomial tail of that many hits among the contexts, at the base rate, below `max_p`). The base rate is
the highest of the class's share among the firing words of all features labelled together, of the features
still unnamed among them, and of the background tokens: a class common where features fire is no property.

Measured by `python bench/label_quality.py --chance`: the class of the firing word names 24% of the demo
corpus's features that reach this step and 2.2% of random groups of their contexts (chat lines: 20% vs 1.1%);
the class of the word before or after, 3.9% vs 0.7%; shared letters, 1.6% vs 0.1%."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from backend.errors import UserError
from backend.label_properties import NEAR, word_class  # noqa: F401  (NEAR: what `context_categories` names)
from backend.word_lexicon import CATEGORY_NAMES, POS_NAMES, lookup

Words = list["str | None"]  # the firing word of each top context (None: not a word)
# closed classes whose words are function words: a lexicon class of theirs ("verbs" for "to") says nothing
FUNCTION_CLASSES = frozenset({"first-person pronouns", "second-person pronouns", "third-person pronouns", "negations",
                              "modal verbs", "forms of be, have and do", "question words", "articles and determiners",
                              "prepositions", "conjunctions", "intensifiers"})


# words a thesaurus concept cannot name (scikit-learn's English stop words, without its content words: "fire",
# "system", "bill", "front", …): in MiniLM they lie near arbitrary concepts ("of" votes for "composition")
_STOP_CONTENT = frozenset("amount back bill bottom call cry describe detail empty fill find fire found front full get "
                          "give go interest keep made mill move name part put see serious show side sincere system take "
                          "thick thin top".split())
_NUMBER_WORDS = frozenset("one two three four five six eight nine ten eleven twelve fifteen twenty forty fifty sixty "
                          "hundred first third last".split())
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) - _STOP_CONTENT - _NUMBER_WORDS | {"like", "sure", "just", "really", "merely"}
FUNCTION_WORDS = "function words"  # the class of the firing word when it is one (`word_classes(..., function_words=True)`)


def is_function_word(word: str | None) -> bool:
    """Whether a lower-case word is a function word (a pronoun, determiner, preposition, conjunction, auxiliary,
    intensifier, or another stop word), which says nothing about a concept."""
    return bool(word) and (word in STOP_WORDS or word_class(word) in FUNCTION_CLASSES)


@dataclass(frozen=True)
class WordGroupConfig:
    """min_share: share of the contexts the class must hold; min_lift: times its base rate; max_p: chance of
    that many hits at the base rate; min_base: the lowest base rate assumed (rare classes are not free);
    min_pool: contexts a pool needs before its rates count as a base rate."""

    min_share: float = 0.4
    min_lift: float = 2.0
    max_p: float = 1e-2
    min_base: float = 0.01
    min_pool: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.min_share <= 1 or not 0 < self.max_p < 1 or not 0 < self.min_base < 1:
            raise UserError("min_share must be in (0, 1], max_p and min_base in (0, 1).")
        if self.min_lift < 1 or self.min_pool < 1:
            raise UserError("min_lift and min_pool must be at least 1.")


@lru_cache(maxsize=100_000)
def word_classes(word: str | None, function_words: bool = False) -> tuple[str, ...]:
    """The classes of one lower-case word as a label names them: its part of speech, then its categories (none for
    the closed classes of label_properties: pronouns, determiners, …); with `function_words`, FUNCTION_WORDS first
    for any function word (a feature that fires on varied function words, `is / a / of`, shares that much)."""
    extra = (FUNCTION_WORDS,) if function_words and is_function_word(word) else ()
    entry = lookup(word) if word and word_class(word) not in FUNCTION_CLASSES else None
    if entry is None:
        return extra
    pos, cats = entry
    return (*extra, POS_NAMES[pos], *(CATEGORY_NAMES[c] for c in cats))


def class_rates(words: Iterable[str | None], counts: Counter | None = None, function_words: bool = False) -> dict[str, float]:
    """{class: share of the words (weighted by `counts` when given) that have it}; None counts as a non-word."""
    have: Counter = Counter()
    total = 0
    for w in words:
        n = counts[w] if counts is not None else 1
        total += n
        for c in word_classes(w, function_words):
            have[c] += n
    return {c: k / total for c, k in have.items()} if total else {}


def base_rates(pools: Iterable[list[str | None]], background: Counter | None, cfg: WordGroupConfig,
               function_words: bool = False) -> dict[str, float]:
    """Per class, the highest rate among the pools large enough to count and the background token counts."""
    out: dict[str, float] = {}
    rated = [class_rates(p, None, function_words) for p in pools if len(p) >= cfg.min_pool]
    if background:
        rated.append(class_rates(background, background, function_words))
    for rates in rated:
        for c, r in rates.items():
            out[c] = max(out.get(c, 0.0), r)
    return out


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def shared_class(words: Words, base: dict[str, float], cfg: WordGroupConfig = WordGroupConfig(),
                 function_words: bool = False) -> tuple[str, list[bool]] | None:
    """(the class the firing words share, which contexts have it), the least likely by chance, or None."""
    n = len(words)
    classes = [set(word_classes(w, function_words)) for w in words]
    best: tuple[float, str] | None = None
    for c, k in Counter(c for cs in classes for c in cs).items():
        p0 = max(base.get(c, 0.0), cfg.min_base)
        if k < cfg.min_share * n or k < cfg.min_lift * p0 * n:
            continue
        p = binomial_tail(k, n, p0)
        if p < cfg.max_p and (best is None or (p, c) < best):
            best = (p, c)
    if best is None:
        return None
    return best[1], [best[1] in cs for cs in classes]


def _spellings(word: str | None, size: int) -> set[str]:
    w = (word or "").lower()
    return {w[i:i + size] for i in range(len(w) - size + 1)} if w.isalpha() else set()


def _widen(part: str, words: list[str]) -> str:
    """The longest stretch around `part` that every one of `words` holds (vie -> view)."""
    for step in (-1, 1):
        while True:
            homes = [w.find(part) for w in words]
            nxt = {w[i - 1] if step < 0 and i > 0 else w[i + len(part)] if step > 0 and i + len(part) < len(w) else ""
                   for w, i in zip(words, homes)}
            if len(nxt) != 1 or "" in nxt:
                break
            part = (nxt.pop() + part) if step < 0 else (part + nxt.pop())
    return part


def shared_spelling(words: Words, pool_rate: dict[str, float], cfg: WordGroupConfig = WordGroupConfig(),
                    size: int = 4) -> tuple[str, list[bool]] | None:
    """(a string of `size`+ letters that the firing words share, which contexts have it) when it is far above
    its rate among the firing words of all features (`spelling_rates`), or None: `lone` in alone / lonely."""
    n = len(words)
    parts = [_spellings(w, size) for w in words]
    found: tuple[float, str] | None = None
    for s, k in Counter(s for ps in parts for s in ps).items():
        p0 = max(pool_rate.get(s, 0.0), cfg.min_base)
        if k >= cfg.min_share * n and k >= cfg.min_lift * p0 * n:
            p = binomial_tail(k, n, p0)
            if p < cfg.max_p and (found is None or (p, s) < found):
                found = (p, s)
    if found is None:
        return None
    hit = [found[1] in ps for ps in parts]
    return _widen(found[1], [str(w).lower() for w, h in zip(words, hit) if h]), hit


def spelling_rates(words: Iterable[str | None], size: int = 4) -> dict[str, float]:
    """{letter string: share of the words that hold it} (what `shared_spelling` compares against)."""
    have: Counter = Counter()
    total = 0
    for w in words:
        total += 1
        have.update(_spellings(w, size))
    return {s: k / total for s, k in have.items()} if total else {}


_TEXT_WORD = re.compile(r"[A-Za-z]+")


def context_categories(text: str) -> dict[str, str]:
    """{sense category (`CATEGORY_NAMES`, not a part of speech): its first word} of the content words of a context: a
    feature that fires on varied words may still fire where a text talks about politics or violence."""
    out: dict[str, str] = {}
    for w in _TEXT_WORD.findall(text.lower()):
        entry = None if is_function_word(w) else lookup(w)
        for c in entry[1] if entry is not None else ():
            out.setdefault(CATEGORY_NAMES[c], w)
    return out

