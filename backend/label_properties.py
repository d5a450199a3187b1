"""What the contexts of a feature share when its firing tokens vary: word classes and context classes.

A feature that fires on "I", "my" and "we" fires on no one word, but on first-person pronouns; one that fires on
whatever follows "three", "ten" or "twelve" fires after number words; one that fires on `self`, `=` and `(` fires
in code. `word_class` names the closed class of one word (pronouns, number words, negations, modal verbs, …);
`context_class` names what a whole context window looks like (code, a quotation). Both are pure lookups on
text, used by `backend.label_text` before it falls back to MiniLM concept names or "varied tokens"."""
from __future__ import annotations

import re

_CLASSES: dict[str, frozenset[str]] = {
    "first-person pronouns": frozenset("i me my mine myself we us our ours ourselves i'm i've i'd i'll im ive".split()),
    "second-person pronouns": frozenset("you your yours yourself yourselves u ur ya you're you've you'll youre".split()),
    "third-person pronouns": frozenset("he him his himself she her hers herself they them their theirs themselves "
                                       "it its itself he's she's they're".split()),
    "number words": frozenset("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                              "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
                              "eighty ninety hundred hundreds thousand thousands million millions billion billions "
                              "dozen dozens half couple single double triple first second third fourth fifth sixth "
                              "seventh eighth ninth tenth once twice".split()),
    "negations": frozenset("not no never nothing none nobody nowhere neither nor cannot n't without don't doesn't "
                           "didn't isn't wasn't aren't weren't won't can't couldn't shouldn't wouldn't".split()),
    "modal verbs": frozenset("can could may might must shall should will would ought".split()),
    "forms of be, have and do": frozenset("be am is are was were been being have has had having do does did doing "
                                          "'s 're 'm 've 'd".split()),
    "question words": frozenset("what who whom whose which when where why how whatever whoever".split()),
    "articles and determiners": frozenset("the a an this that these those each every any some another such".split()),
    "prepositions": frozenset("in on at of to for with by from about into onto over under between through during "
                              "against among across after before behind beyond within without toward towards upon "
                              "around near off out up down".split()),
    "conjunctions": frozenset("and or but so because although though while if unless until whereas yet nor since "
                              "than whether".split()),
    "intensifiers": frozenset("very really so too quite extremely incredibly totally absolutely pretty rather fairly "
                              "highly truly deeply utterly completely most more less least".split()),
    "time words": frozenset("today tomorrow yesterday tonight now then soon later ago already yet still recently "
                            "monday tuesday wednesday thursday friday saturday sunday january february march april "
                            "june july august september october november december morning afternoon evening night "
                            "day days week weeks month months year years hour hours minute minutes decade century "
                            "time times".split()),
    "family words": frozenset("mother father mom dad mum parent parents son daughter brother sister brothers sisters "
                              "wife husband family child children kid kids baby grandmother grandfather uncle aunt "
                              "cousin".split()),
}
WORD_CLASSES = tuple(_CLASSES)
# {word: its first class}: word_class is asked hundreds of thousands of times per labelling
_CLASS_OF = {w: name for name, words in reversed(_CLASSES.items()) for w in words}
# Contractions read as their own categories in label_text ("possessive 's", "contraction 're"); together they are one class.
CONTRACTION_KEYS = frozenset({"possessive 's", "contraction 're", "contraction 've", "contraction 'll", "contraction 'm",
                              "contraction 'd", "negation n't"})
CONTRACTIONS = "contractions ('s / 're / n't)"
PROPER_NAMES = "proper names"
CODE, QUOTES = "code", "quotations"

_CODE_SIGNS = re.compile(r"[_{};]|==|!=|\+=|->|=>|\(\)|\w\(|\)\.|\bdef\b|\breturn\b|\bself\b|\bimport\b|\bnull\b|"
                         r"\bNone\b|\btrue\b|\bfalse\b|</?\w+>|\w\.\w+\(|\[\d*\]")
_QUOTE_CHARS = '"“”'


def word_class(key: str) -> str | None:
    """The closed word class of a lower-case word (without its leading space), or None."""
    return _CLASS_OF.get(key.strip().lower().replace("’", "'"))


_SHAPES = (("-ly adverbs", ("ly",), 5), ("-ing forms", ("ing",), 5), ("-ed forms", ("ed",), 5),
           ("abstract nouns (-tion / -ness / -ity / -ment)", ("tion", "sion", "ness", "ity", "ment", "ance", "ence"), 6),
           ("adjectives (-ful / -ous / -ive / -able / -al)", ("ful", "ous", "ive", "able", "ible", "al", "less"), 5))
WORD_SHAPES = tuple(name for name, _, _ in _SHAPES)
WORD_PIECES = "pieces of longer words"


def word_shape(key: str) -> str | None:
    """The suffix class of a lower-case word (`-ly adverbs`, `-ing forms`, …), or None."""
    w = key.strip().lower()
    if not w.isalpha():
        return None
    for name, endings, min_len in _SHAPES:
        if len(w) >= min_len and w.endswith(endings):
            return name
    return None


def looks_like_code(text: str) -> bool:
    """Whether a context window reads as program code: at least two code signs (`_`, `()`, `==`, `self`, …)."""
    return len(_CODE_SIGNS.findall(text)) >= 2


def inside_quotes(before: str) -> bool:
    """Whether the firing token sits inside a quotation: an odd number of double quotes precede it in its window."""
    n = sum(before.count(q) for q in _QUOTE_CHARS)
    return n % 2 == 1 or ("“" in before and before.rfind("“") > before.rfind("”"))


_SENTENCE_END = re.compile(r"[.!?]+[\s\"')\]]|\n\s*\n|[.!?]+$")
_WORD = re.compile(r"[A-Za-z]+(?:['’][a-z]+)?")
_QUESTION_OPENERS = _CLASSES["question words"] | frozenset(
    "do does did is are was were can could will would should shall may might have has had isn't aren't don't doesn't "
    "didn't can't won't wouldn't couldn't shouldn't".split())
IN_QUESTIONS = "in questions"
IN_CLAUSES_WITH = "in clauses with "
NEAR = "near "  # a sense category of the words around the firing token (`word_groups.context_categories`)


def clause_before(before: str) -> str:
    """The words of the firing token's sentence that come before it in its window (from the last sentence end)."""
    ends = list(_SENTENCE_END.finditer(before))
    return before[ends[-1].end():] if ends else before


def in_question(before: str, after: str) -> bool:
    """Whether the firing token sits in a question: its sentence opens with a question word or an auxiliary
    ("Why do you…", "Does it…"), or a question mark comes before the next sentence end."""
    words = _WORD.findall(clause_before(before))
    if words and words[0].lower() in _QUESTION_OPENERS:
        return True
    mark = re.search(r"[.!?]", after)
    return mark is not None and mark.group() == "?"


def clause_classes(before: str) -> dict[str, str]:
    """{closed word class (`word_class`): its last word} of the words before the firing token in its sentence: a
    feature that fires in negated or "why" clauses shares them even when it fires on different words."""
    return {c: w.lower() for w in _WORD.findall(clause_before(before)) if (c := word_class(w)) is not None}

