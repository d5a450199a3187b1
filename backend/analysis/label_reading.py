"""What a feature's label says, read offline: whether it names formatting (punctuation, whitespace,
newlines, digits) rather than content, whether it names nothing its contexts share (``varied tokens: …``),
and which concept words it names, so that features named alike fold into one finding."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

# A label *starting* with one of these names a formatting feature ("sentence-final period", "commas in lists").
_FORMAT_PREFIX = re.compile(
    r"^(?:sentence[- ]final|end[- ]of[- ](?:a[- ])?sentence|full[- ]stops?|commas?|newlines?|new[- ]lines?|"
    r"line[- ]breaks?|whitespace|punctuation|quotation[- ]marks?|apostrophes?|semi-?colons?|colons?|"
    r"parenthes[ie]s|brackets?|question[- ]marks?|exclamation[- ](?:marks?|points?)|ellips[ie]s|digits?|"
    r"indentation|formatting|end[- ]of[- ](?:text|line|document)|"
    r"(?:start|beginning)[- ]of[- ](?:text|line|document))\b",
    re.I,
)
# Words that name formatting only when they are the whole item ("period" yes, "period of time" no).
_FORMAT_WORDS = frozenset(
    "period periods dot dots space spaces tab tabs dash dashes hyphen hyphens quote quotes number numbers "
    "numeral numerals bullet bullets".split()
)
_LETTER = re.compile(r"[^\W\d_]")
_QUOTES = "\"'`«»“”‘’ "


def _no_letters(text: str) -> bool:
    return not _LETTER.search(text.replace("\\n", " ").replace("\\t", " "))


def is_formatting_label(label: str | None) -> bool:
    """Whether a feature label names punctuation, whitespace, newlines or digits rather than content.

    Reads both label styles: ``top tokens: '.', ',' | ngrams: …`` (formatting when every top token has
    no letter) and ``name / name — "context"`` (formatting when every name before the dash has no
    letter, is a formatting word such as "period", or starts like "sentence-final period", "comma",
    "newline", "punctuation"). Unknown or empty labels are content.
    """
    text = (label or "").strip()
    if not text:
        return False
    old = re.match(r"top tokens:\s*(.*?)(?:\s*\|\s*ngrams:.*)?$", text, flags=re.S | re.I)
    if old:
        tokens = re.findall(r"'(.*?)'(?=\s*,\s*'|\s*$)", old.group(1), flags=re.S)
        return bool(tokens) and all(_no_letters(t) for t in tokens)
    head = label_name(text)
    items = [item.strip() for item in re.split(r"\s+/\s+", head) if item.strip()]

    def formatting(item: str) -> bool:
        core = item.strip(_QUOTES) or item
        return _no_letters(core) or core.lower() in _FORMAT_WORDS or bool(_FORMAT_PREFIX.match(core))

    return bool(items) and all(formatting(item) for item in items)


UNNAMED_PREFIX = "varied tokens:"  # backend.label_text's label for a feature whose contexts share nothing it could name


def names_nothing(label: str | None) -> bool:
    """Whether a label names no property its feature's contexts share (`varied tokens: a / b / c`): a
    finding a reader cannot read, shown after the readable ones."""
    return (label or "").strip().startswith(UNNAMED_PREFIX)


def is_plain_label(label: str | None) -> bool:
    """Whether a label names punctuation or formatting, or nothing shared (`varied tokens: …`): what a finding or
    a cluster is named by only when no other label is there."""
    return is_formatting_label(label) or names_nothing(label)


def naming_member(labels: Sequence[str | None]) -> int:
    """Which of a group's member labels (lead first) names the group: the lead's, unless it names nothing
    (`varied tokens: …`); then the first member's that names something other than punctuation or formatting;
    else the lead's. "constant / harmonic / tangent" read `varied tokens` while its member read `number / constant`."""
    if not labels or not names_nothing(labels[0]):
        return 0
    return next((i for i, label in enumerate(labels) if i and label and not is_plain_label(label)), 0)


def group_labels(labels: Mapping[int, str], members: Sequence[int]) -> tuple[str, tuple[str, ...]]:
    """(the label a group of features, lead first, is read by: its `naming_member`'s; each member's label, in
    order, `feature <id>` where it has none)."""
    names = tuple(labels.get(int(m)) or f"feature {int(m)}" for m in members)
    return names[naming_member(names)], names


# Words that say nothing about which concept a label names: function words, and the vocabulary labels
# use around a concept ("varied tokens: …", "after 'the' (…)", "in clauses with …", "near …", "mentions of …").
_NOT_CONCEPT = frozenset(
    "a an the of and or in on at to for with by from as is are be been this that these those it its into "
    "than then via vs etc partly near clause clauses "
    "text texts token tokens word words phrase phrases term terms name names feature features content "
    "about related relating mention mentions mentioning reference references referring containing contains "
    "varied various mixed other misc miscellaneous special kind kinds type types class classes category "
    "categories concept concepts like such use usage used after before first last start beginning end "
    "capitalised capitalized all-caps wording topic topics language expression expressions style".split()
)
_LABEL_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_OLD_STYLE = re.compile(r"top tokens:\s*(.*?)(?:\s*\|\s*ngrams:.*)?$", re.S | re.I)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


_SUFFIXES = frozenset(("s", "es", "ed", "d", "ing", "er", "est", "ly", "y", "ion", "ions", "ation", "ity", "ness", "ment",
                       "al", "ied", "ies", "ier", "iest", "ily"))


def is_form_of(word: str, base: str) -> bool:
    """Whether `word` is `base` with an inflection or derivation suffix (revealed, deeper, honesty, carried of
    reveal, deep, honest, carry; a final e or y of the base may drop, a final consonant may double)."""
    if len(base) < 4 or len(word) <= len(base):
        return False
    stems = {base, base[:-1] if base[-1] in "ey" else base, base + base[-1]}
    return any(word.startswith(stem) and word[len(stem):] in _SUFFIXES for stem in stems)


def base_forms(words: set[str] | frozenset[str]) -> dict[str, str]:
    """{word: the shortest of `words` it is a form of, or itself}: program, programming, programmer -> program."""
    keys = sorted(words, key=lambda k: (len(k), k))
    to: dict[str, str] = {}
    for i, word in enumerate(keys):
        base = next((b for b in keys[:i] if is_form_of(word, b)), None)
        to[word] = word if base is None else to[base]
    return to


def label_name(label: str | None) -> str:
    """A label's name: the part before `` — "example"``."""
    return re.split(r"\s+[—–]\s+", (label or "").strip(), maxsplit=1)[0]


def label_words(label: str | None) -> frozenset[str]:
    """The concept words of a label: the words of its name (before `` — "example"``, or the top tokens of
    an old ``top tokens: …`` label), lower-cased and singular, without function words, generic label
    words ("tokens", "after", "mentions", …) and words without a letter.

    Two features whose labels share one of these words name the same concept (``coronavirus`` and
    ``pandemic / coronavirus``), so a diff folds them into one finding."""
    text = (label or "").strip()
    old = _OLD_STYLE.match(text)
    name = old.group(1) if old else label_name(text)
    words = (_singular(w) for w in _LABEL_WORD.findall(name.lower()))
    return frozenset(w for w in words if w not in _NOT_CONCEPT and _LETTER.search(w) and len(w) > 1)


def concept_keys(label: str | None) -> frozenset[str]:
    """What two labels must share to name one concept: their :func:`label_words`, or, for a label without
    any (``the``, ``a / an``), its whole name, so two findings both named "the" fold too."""
    words = label_words(label)
    if words or not (label or "").strip():
        return words
    name = label_name(label)
    return frozenset({"=" + " ".join(name.lower().split())})
