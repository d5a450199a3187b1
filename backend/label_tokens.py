"""What one firing token is, from its text alone: a word, or punctuation, formatting and symbols in plain words.

`token_unit` reads a decoded token (`comma`, `line break`, `links (URLs)`, `numbers`, a lower-case word); the
constants are the category names labels are made of, and `CATEGORY_KINDS` / `_PREFIX_KINDS` read a stored label's
kind back. Split out of `backend.label_text`, which re-exports these names."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from backend.label_properties import (CONTRACTIONS, IN_CLAUSES_WITH, IN_QUESTIONS, NEAR, PROPER_NAMES, WORD_CLASSES,
                                      WORD_PIECES, WORD_SHAPES)


@dataclass(frozen=True)
class Unit:
    """One firing token as counted: `key` merges variants, `display` is how it reads, `bg_key` finds
    the same thing in the background counts."""

    key: str
    display: str
    kind: str
    bg_key: str


_PUNCT = {
    ",": "comma", "?": "question mark", "!": "exclamation mark", ":": "colon", ";": "semicolon",
    "...": "ellipsis", "..": "ellipsis", "…": "ellipsis", "-": "hyphen", "–": "dash", "—": "dash", "--": "dash",
    '"': "quotation marks", "“": "quotation marks", "”": "quotation marks", "``": "quotation marks",
    "''": "quotation marks", "'": "quotes or apostrophes", "‘": "quotes or apostrophes", "’": "quotes or apostrophes",
    "(": "opening parenthesis", ")": "closing parenthesis", "[": "brackets", "]": "brackets", "{": "braces",
    "}": "braces", "<": "angle brackets", ">": "angle brackets", "*": "asterisk", "/": "slash", "\\": "backslash",
    "=": "equals sign", "+": "plus sign", "|": "vertical bar", "_": "underscore", "~": "tilde", "^": "caret",
    "`": "backtick",
}
_SYMBOL = {"$": "dollar sign", "€": "euro sign", "£": "pound sign", "%": "percent sign", "&": "ampersand",
           "@": "@handles (mentions)", "#": "#hashtags"}
_CONTRACTIONS = {"'s": "possessive 's", "’s": "possessive 's", "'re": "contraction 're", "'ve": "contraction 've",
                 "'ll": "contraction 'll", "'m": "contraction 'm", "'d": "contraction 'd", "’re": "contraction 're",
                 "’ve": "contraction 've", "’ll": "contraction 'll", "’m": "contraction 'm", "’d": "contraction 'd"}
_URL_PIECES = frozenset({"http", "https", "://", "https://", "http://", "www", "www.", ".com", "t.co", ".co", ".org",
                         ".net", "bit.ly", "://t.co", ".html", ".ly"})
PERIOD_FINAL, PERIOD_OTHER = "sentence-final period", "period (not sentence-final)"
LINKS, TCO_LINKS = "links (URLs)", "links (t.co URLs)"
HANDLES, HASHTAGS, NUMBERS, YEARS = "@handles (mentions)", "#hashtags", "numbers", "years"
LINE_BREAK, BLANK_LINE, SPACES, BYTES = "line break", "blank line", "spaces", "emoji or symbols"
CONTROL = "control characters"  # backspaces of nroff's bold and underline, escapes: invisible as a name
ALL_CAPS, CAPITALISED, FIRST_TOKEN = "all-caps words", PROPER_NAMES, "first token of the text"
IN_CODE, IN_QUOTES, AT_LINE_START, AT_SENTENCE_START = "in code", "inside quotations", "at line start", "at sentence start"
VARIED, ABOUT, WORDS_ABOUT = "varied tokens: ", "about ", "words about "
PARTLY = "partly "  # a property of only part of the contexts (label_text step 6): "partly -ly adverbs (…)"
# contexts that fire on the words the feature fires on most in the SAE's reference text (label_text step 7)
IN_OTHER_TEXT = "its words in other text"

# Category names a label can be made of, with their kind (used to read the kind back from a stored label).
CATEGORY_KINDS: dict[str, str] = {
    **{v: "punctuation" for v in _PUNCT.values()}, **{v: "symbol" for v in _SYMBOL.values()},
    **{v: "punctuation" for v in _CONTRACTIONS.values()}, "negation n't": "word",
    "period": "punctuation", PERIOD_FINAL: "punctuation", PERIOD_OTHER: "punctuation",
    LINKS: "symbol", TCO_LINKS: "symbol", NUMBERS: "symbol", YEARS: "symbol", BYTES: "symbol",
    LINE_BREAK: "formatting", BLANK_LINE: "formatting", SPACES: "formatting", FIRST_TOKEN: "formatting",
    CONTROL: "formatting",
}
_PREFIX_KINDS = (("special token ", "formatting"), ("punctuation ", "punctuation"), (ALL_CAPS, "formatting"),
                 (CAPITALISED, "word"), ("capitalised words", "word"), ("in code", "mixed"),
                 ("inside quotations", "mixed"), ("at line start", "mixed"), ("at sentence start", "mixed"),
                 (IN_QUESTIONS, "mixed"), (IN_CLAUSES_WITH, "mixed"), (NEAR, "mixed"),
                 *((name, "word") for name in WORD_CLASSES + WORD_SHAPES), (WORD_PIECES, "word"), (CONTRACTIONS, "punctuation"), ("about ", "word"),
                 ("after ", "mixed"), ("before ", "mixed"), ("varied tokens:", "mixed"))

_URL_RE = re.compile(r"(?:https?:/*|www\.|://)\S*|\b[\w-]+\.(?:com|org|net|co|ly|io|gov|edu)\b(?:/\S*)?", re.I)
_HANDLE_RE = re.compile(r"(?<!\w)@\w+")
_HASHTAG_RE = re.compile(r"(?<!\w)#\w+")
_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")
_YEAR_RE = re.compile(r"(?:1[5-9]|20)\d\d")
_SPAN_HINTS = ("://", "www", "@", "#", ".com", ".org", ".net", ".co", ".ly", ".io", ".gov", ".edu")
_TOKEN_HINTS = (":", "/", "@", "#", "www", "http")
_DOMAIN_PIECES = frozenset({"co", "com", "org", "net", "ly", "io", "gov", "edu", ".co", ".com", ".org", ".net"})
_SPACE_MARKERS = "Ġ▁"


def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(ch)[0] in "PS" for ch in s)


def token_unit(text: str, special: bool = False) -> Unit:
    """What a decoded token is, from its text alone."""
    if special:
        name = f"special token {text.strip()}"
        return Unit(name, name, "formatting", name)
    if "\n" in text or "\r" in text:
        name = BLANK_LINE if text.count("\n") >= 2 else LINE_BREAK
        return Unit(name, name, "formatting", name)
    s = text.translate({ord(m): " " for m in _SPACE_MARKERS}).strip()
    if not s:
        return Unit(SPACES, SPACES, "formatting", SPACES) if text else Unit(BYTES, BYTES, "symbol", BYTES)
    if "\ufffd" in s:
        return Unit(BYTES, BYTES, "symbol", BYTES)
    if all(unicodedata.category(ch) == "Cc" for ch in s):
        return Unit(CONTROL, CONTROL, "formatting", CONTROL)
    low = s.lower()
    if low in _URL_PIECES:
        return Unit(LINKS, LINKS, "symbol", LINKS)
    if low in _CONTRACTIONS:
        return Unit(_CONTRACTIONS[low], _CONTRACTIONS[low], "punctuation", _CONTRACTIONS[low])
    if low in ("n't", "n’t"):
        return Unit("negation n't", "negation n't", "word", "negation n't")
    if re.fullmatch(r"[\d.,:/%$-]*\d[\d.,:/%$-]*", s):
        name = YEARS if _YEAR_RE.fullmatch(s) else NUMBERS
        return Unit(name, name, "symbol", name)
    if s == ".":
        return Unit("period", "period", "punctuation", "period")
    if s in _SYMBOL:
        return Unit(_SYMBOL[s], _SYMBOL[s], "symbol", _SYMBOL[s])
    if _is_punct(s):
        if s in _PUNCT:
            name = _PUNCT[s]
        elif "?" in s:
            name = _PUNCT["?"]
        elif "!" in s:
            name = _PUNCT["!"]
        elif s.startswith(".") or s.endswith("."):
            name = PERIOD_FINAL
        else:
            name = f"punctuation {s}"
        return Unit(name, name, "punctuation", name)
    return Unit(low, s, "word", low)
