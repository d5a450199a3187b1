"""Readable offline feature labels: say what a feature fires on the way a person would.

Offline labels (no LLM) come from each feature's top contexts: the token at the argmax of its strongest
documents and a token window around it (`labels.ContextSet`). From the label alone a reader should be
able to name the concept, so a label reads

    <name> — "<one short context, the firing token marked «like this»>"

where <name> is, in this order of preference:
  * the words the feature fires on, normalised (leading-space markers stripped, case variants and the
    pieces of one word and singular/plural merged), most distinctive first (share x log lift against
    the background token frequency): ``certain / few / some``;
  * a plain phrase for punctuation, formatting and symbols: ``sentence-final period``, ``line break``,
    ``possessive 's``, ``links (t.co URLs)``, ``numbers``, ``all-caps words (LOL / OMG)``;
  * for a feature whose firing tokens vary (many different tokens, none dominant): what their contexts
    share, the commonest of: the firing word's class (``first-person pronouns (I / my / we)``, ``number
    words``, ``negations``, ``contractions``, ``proper names``; `backend.label_properties`), the context
    (``in code``, ``inside quotations``), the position (``first token of the text``, ``at line start``), the
    neighbouring word or its class (``after 'the' (film / plot)``, ``after modal verbs``); else a word class
    that the firing words, or the words before or after them, share far above its base rate (a part of
    speech or a General Inquirer category, `backend.word_groups`: ``carrying and getting (brings / carry /
    fetch)``, ``after verbs (…)``), or letters they share (``words with 'represent' (…)``); else, given a
    concept namer (MiniLM over a Roget's-thesaurus vocabulary, `backend.concept_names`), the concept the
    firing words are about (``words about memory (memory / recalls)``); else one of the contexts' shared
    properties above, or of the sentence around the firing token (``in questions``, ``in clauses with negations
    (not / never)``, ``near hostile words (hit / slash)``), or one firing word, or a word class or Roget's category
    of the firing words, that holds far above its rate among all the contexts labelled together (binomial, under
    0.1%), for fewer of them (a quarter of the contexts or of the activation) said so (``partly -ly adverbs
    (deeply / sadly)``, ``partly catch``, ``partly words about danger (perilous / risky)``), or a concept the
    firing words of a quarter are about (``partly words about cooking (sandwich / cuisine)``); else, given the SAE's
    reference words (`backend.label_reference`), the few contexts that fire on the words the feature fires on most
    in other text, far above those words' rate (``partly its words in other text (main / master)``); only with
    `name_contexts`, the concept the contexts are about (``about food (cake / soup / bread)``); else ``varied
    tokens: a / b / c``, the one label that names no shared property (`names_no_property`).

score in [0, 1]: how much of the feature's top activations the name accounts for, i.e. the
activation-weighted share of its top contexts whose firing token is one of the named words or
categories (for position labels: that sit in the named position). 1 = every top context is explained.
kind: word | symbol (links, handles, numbers) | punctuation | formatting | mixed (position features);
`is_formatting` is what a summary uses to keep punctuation and formatting from leading it.

Pure: no store, no model; `decode` turns token ids into text (`labels.make_decoder`)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import pandas as pd

from backend.analysis.label_reading import base_forms, is_form_of  # noqa: F401  (is_form_of: re-exported)
from backend.errors import UserError
from backend.label_evidence import _flat, evidence, evidence_text, mark_context  # noqa: F401  (re-exported)
from backend.label_properties import (CONTRACTION_KEYS, CONTRACTIONS, IN_CLAUSES_WITH, IN_QUESTIONS, WORD_PIECES,
                                      clause_classes, in_question, inside_quotes, looks_like_code, word_class,
                                      word_shape)
from backend.label_tokens import (  # noqa: F401  (re-exported)
    Unit, _PUNCT, _SYMBOL, _CONTRACTIONS, _URL_PIECES, PERIOD_FINAL, PERIOD_OTHER, LINKS, TCO_LINKS, HANDLES,
    HASHTAGS, NUMBERS, YEARS, LINE_BREAK, BLANK_LINE, SPACES, BYTES, ALL_CAPS, CAPITALISED, FIRST_TOKEN, IN_CODE,
    IN_QUOTES, AT_LINE_START, AT_SENTENCE_START, VARIED, ABOUT, WORDS_ABOUT, PARTLY, IN_OTHER_TEXT, CATEGORY_KINDS, _PREFIX_KINDS,
    _URL_RE, _HANDLE_RE, _HASHTAG_RE, _NUMBER_RE, _YEAR_RE, _SPAN_HINTS, _TOKEN_HINTS, _DOMAIN_PIECES,
    _SPACE_MARKERS, _is_punct, token_unit)
from backend.word_groups import (NEAR, WordGroupConfig, base_rates, binomial_tail, context_categories, is_function_word,
                                 shared_class, shared_spelling, spelling_rates, word_classes)
from backend.word_lexicon import lookup, thesaurus_categories

Decoder = Callable[[tuple[int, ...]], str]
# (context texts per feature, strongest first; their activation weights) -> per feature (concept, which contexts
# it describes) or None: what `backend.concept_names.ConceptNamer` is.
ConceptFn = Callable[[list[list[str]], list[np.ndarray]], list["tuple[str, list[bool]] | None"]]


class WordConceptFn(Protocol):
    """The same over the firing word of each context (None: not a word), with the share of the weight a concept
    needs and its chance (None: the namer's own): `ConceptNamer.name_words`."""

    def __call__(self, words: list[list[str | None]], weights: list[np.ndarray], min_share: float | None = None,
                 max_p: float | None = None) -> list[tuple[str, list[bool]] | None]: ...


KINDS = ("word", "symbol", "punctuation", "formatting", "mixed")
FORMATTING_KINDS = frozenset({"punctuation", "formatting"})
LABEL_COLUMNS = ["feature_id", "label", "score", "name", "kind", "example", "n_contexts"]
EXAMPLE_SEP = ' — "'
# step 6's keys of a firing unit and of a word class of the firing words (rates and tries; never shown)
_FIRING_UNIT, _WORD_CLASS, _ROGET = "\0unit ", "\0class ", "\0roget "
_FAMILIES = (_FIRING_UNIT, _WORD_CLASS, _ROGET, NEAR)  # step 6 tries many of each per feature: Bonferroni over them


class Contexts(Protocol):
    """Where features fire, one entry per (feature, top document); `labels.ContextSet` is one."""

    feature_id: np.ndarray
    rank: np.ndarray  # 0 = the feature's strongest document
    act: np.ndarray
    token_id: np.ndarray
    windows: list[list[int]]  # token ids around the argmax
    centers: np.ndarray  # index of the argmax token inside its window


@dataclass(frozen=True)
class LabelTextConfig:
    """How labels are built.

    max_names: most words/categories a name lists. min_coverage: the named tokens must explain this share of the
    top contexts, or the feature is labelled by its position instead. min_context_share: a context n-gram ("after
    'the'") must sit at this share of the positions. max_name_chars: the name is cut to this length.
    example_before/after_chars: characters of context either side of the marked token. with_example: append the
    quoted example to the label. max_concept_contexts: the strongest contexts a concept namer reads per feature.
    name_contexts: name what the contexts are about when nothing else names a feature (`about <concept> (…)`); off
    by default: its names were right for about a quarter of the features on a corpus of fortunes, and near chance
    on the bench's (docs/labels.md). word_groups: when a word class the firing words share names a feature
    (`backend.word_groups`). rare_share, rare_lift, rare_max_p: a shared property of fewer than min_context_share
    of the contexts names a feature nothing else names when it holds at least rare_share of them or of their
    activation, at least rare_lift times its rate among `rate_sample` contexts of all the features labelled
    together, and that many are this unlikely by chance (binomial); else, with a concept namer, when the firing
    words of rare_share of the weight are about one concept with a chance under rare_concept_max_p (a tenth of step
    5's: at 1e-3 it named a quarter as many random groups of contexts as features, at 1e-4 a twentieth). The
    chance test, not rare_share, keeps random groups out: at 0.25 and at 0.2 about the same share of them was named
    (1.2-1.6%), against 11-22% of the features (docs/labels.md). roget_max_senses: a Roget's category needs two
    firing words listed under at most this many of its 757 categories (94% of its words are; `good` is under 49).
    reference_min_contexts, reference_max_p: given the SAE's reference words (`backend.label_reference`), a feature
    nothing else names is named by the contexts that fire on its words in other text when they are at least
    reference_min_contexts and that many is this unlikely at those words' rate among all the contexts labelled
    together (binomial): at 1e-3 it named 43 of 410 varied fortunes features, and 2 of them when each feature was
    given another's reference words (docs/labels.md)."""

    max_names: int = 5
    min_coverage: float = 0.5
    min_context_share: float = 0.4
    max_name_chars: int = 60
    example_before_chars: int = 28
    example_after_chars: int = 20
    with_example: bool = True
    max_concept_contexts: int = 8
    name_contexts: bool = False
    word_groups: WordGroupConfig = WordGroupConfig()
    rare_share: float = 0.25
    rare_lift: float = 3.0
    rare_max_p: float = 1e-3
    rare_concept_max_p: float = 1e-4
    rate_sample: int = 3000
    roget_max_senses: int = 5
    reference_min_contexts: int = 2
    reference_max_p: float = 1e-3

    def __post_init__(self) -> None:
        if self.max_names < 1 or self.max_concept_contexts < 1:
            raise UserError("max_names and max_concept_contexts must be at least 1.")
        for name in ("min_coverage", "min_context_share", "rare_share", "rare_max_p", "rare_concept_max_p",
                     "reference_max_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UserError(f"{name} must be in (0, 1], not {getattr(self, name)}.")
        if min(self.rare_lift, self.rate_sample, self.roget_max_senses, self.reference_min_contexts) < 1:
            raise UserError("rare_lift, rate_sample, roget_max_senses and reference_min_contexts must be at least 1.")
        if self.max_name_chars < 10 or self.example_before_chars < 0 or self.example_after_chars < 0:
            raise UserError("max_name_chars must be at least 10 and the example widths non-negative.")


# -- reading one context -------------------------------------------------------------------------
class _Reader:
    """Decodes contexts of one ContextSet with caches (the decoder's own cache covers repeated ids)."""

    def __init__(self, decode: Decoder, skip_ids: frozenset[int]):
        self.decode = decode
        self.skip_ids = skip_ids
        self._units: dict[int, Unit] = {}
        self._texts: dict[int, str] = {}
        self._hint_ids: set[int] = set()  # learned tokens that may be part of a link, handle or hashtag

    def text(self, token_id: int) -> str:
        s = self._texts.get(token_id)
        if s is None:
            s = self._texts[token_id] = self.decode((int(token_id),))
        return s

    def unit(self, token_id: int) -> Unit:
        u = self._units.get(token_id)
        if u is None:
            u = self._units[token_id] = token_unit(self.text(token_id), token_id in self.skip_ids)
        return u

    def continues(self, left: int, right: int) -> bool:
        """Whether token `right` continues the word that `left` ends (a subword piece, no space between)."""
        a, b = self.text(left), self.text(right)
        if not (a and b and a[-1].isalnum() and b[0].isalnum()):
            return False
        return self.decode((int(left), int(right))) == a + b

    def word_around(self, window: list[int], c: int) -> tuple[str, bool, bool]:
        """(the whole word holding window[c], whether a piece precedes it, whether one follows)."""
        lo, hi = c, c
        while lo > 0 and c - lo < 4 and self.continues(window[lo - 1], window[lo]):
            lo -= 1
        while hi + 1 < len(window) and hi - c < 4 and self.continues(window[hi], window[hi + 1]):
            hi += 1
        word = "".join(self.text(t) for t in window[lo : hi + 1])
        return word.translate({ord(m): " " for m in _SPACE_MARKERS}).strip(), lo < c, hi > c

    def context_units(self, window: list[int], c: int) -> tuple[Unit, Unit]:
        """(unit keyed by whole words, unit keyed by token pieces) of the firing token window[c]."""
        tok = int(window[c])
        base = self.unit(tok)
        spans = self._span_unit(window, c)
        if spans is not None:
            return spans, spans
        if base.key == "period":
            nxt = self.text(window[c + 1]) if c + 1 < len(window) else ""
            s = nxt.lstrip(_SPACE_MARKERS)
            final = not nxt or nxt[0].isspace() or nxt[0] in _SPACE_MARKERS or s[:1].isupper() or _is_punct(s[:1])
            name = PERIOD_FINAL if final else PERIOD_OTHER
            u = Unit(name, name, "punctuation", "period")
            return u, u
        if base.kind != "word":
            return base, base
        word, piece_before, piece_after = self.word_around(window, c)
        if not (piece_before or piece_after):
            return base, base
        piece = base.display
        shown = ("-" if piece_before else "") + piece + ("-" if piece_after else "")
        return Unit(word.lower(), word, "word", word.lower()), Unit("piece " + shown.lower(), shown, "word", base.bg_key)

    def learn(self, token_ids: np.ndarray) -> None:
        """Decode these tokens once and note those that may belong to a link, handle or hashtag."""
        for t in np.unique(token_ids).tolist():
            s = self.text(t)
            if any(h in s for h in _TOKEN_HINTS) or s.strip().lower() in _DOMAIN_PIECES:
                self._hint_ids.add(t)

    def _span_unit(self, window: list[int], c: int) -> Unit | None:
        """Links, handles, hashtags and numbers: found on the window's text, as they span several tokens."""
        if self._hint_ids.isdisjoint(window) and not any(ch.isdigit() for ch in self.text(window[c])):
            return None
        pieces = [self.text(t) for t in window]
        text = "".join(pieces)
        if not any(m in text for m in _SPAN_HINTS) and not any(ch.isdigit() for ch in pieces[c]):
            return None
        start = sum(len(p) for p in pieces[:c])
        end = start + len(pieces[c])
        start += len(pieces[c]) - len(pieces[c].lstrip())
        if start >= end:
            return None
        for regex, name in ((_URL_RE, LINKS), (_HANDLE_RE, HANDLES), (_HASHTAG_RE, HASHTAGS), (_NUMBER_RE, NUMBERS)):
            for m in regex.finditer(text):
                if m.start() < end and start < m.end():
                    if name == NUMBERS and not any(ch.isdigit() for ch in pieces[c]):
                        continue
                    if name == LINKS:
                        return Unit(LINKS, TCO_LINKS if "t.co" in m.group(0).lower() else LINKS, "symbol", LINKS)
                    if name == NUMBERS and _YEAR_RE.fullmatch(m.group(0)):
                        name = YEARS
                    return Unit(name, name, "symbol", name)
        return None

    def segments(self, window: list[int], c: int) -> tuple[str, str, str]:
        """(before, token, after) text of a window, cut so that joining them gives the decoded window."""
        pre, thru, full = self.decode(tuple(window[:c])), self.decode(tuple(window[: c + 1])), self.decode(tuple(window))
        tok = thru[len(pre):] if thru.startswith(pre) else self.text(window[c])
        post = full[len(thru):] if full.startswith(thru) else self.decode(tuple(window[c + 1:]))
        return pre, tok, post


# -- reading labels back ---------------------------------------------------------------------------
def split_label(label: str) -> tuple[str, str | None]:
    """(name, example or None) of a label written by this module."""
    i = label.find(EXAMPLE_SEP)
    if i < 0 or not label.endswith('"'):
        return label, None
    return label[:i], label[i + len(EXAMPLE_SEP): -1]


def label_kind(label: str) -> str:
    """The kind of a stored label, read from its name; labels not written here (hand, LLM) read as 'word'."""
    name = split_label(label)[0].strip()
    for prefix, kind in _PREFIX_KINDS:
        if name.startswith(prefix):
            return kind
    kinds = {CATEGORY_KINDS.get(part.strip()) for part in name.split(" / ")}
    if None in kinds or not kinds:
        return "word"
    for kind in ("word", "symbol", "punctuation"):
        if kind in kinds:
            return kind
    return "formatting"


def is_formatting(label_row: Mapping[str, object] | pd.Series | str) -> bool:
    """Whether a feature is about punctuation or formatting rather than content.

    Takes a row of `readable_labels` (its `kind`) or a stored label string."""
    if isinstance(label_row, str):
        return label_kind(label_row) in FORMATTING_KINDS
    kind = label_row.get("kind") if hasattr(label_row, "get") else None
    if kind is None or (isinstance(kind, float) and math.isnan(kind)):
        return label_kind(str(label_row.get("label", ""))) in FORMATTING_KINDS
    return str(kind) in FORMATTING_KINDS


# -- labelling -------------------------------------------------------------------------------------
@dataclass
class _Feature:
    """One feature's top contexts, read."""

    idx: np.ndarray  # rows of the ContextSet, strongest first
    word_units: list[Unit]
    piece_units: list[Unit]
    weights: np.ndarray  # activation share of each context (sums to 1)


def _join_fit(parts: list[str], budget: int) -> list[str]:
    """The leading parts that fit `budget` characters joined with ' / ' (at least one)."""
    out: list[str] = []
    for p in parts:
        if out and len(" / ".join(out + [p])) > budget:
            break
        out.append(p)
    return out


def _shown(counter: Counter) -> str:
    """How a merged key reads: its lowercase form when the feature fires on one, else its commonest form."""
    lower = [d for d in counter if d == d.lower()]
    return max(lower, key=lambda d: counter[d]) if lower else counter.most_common(1)[0][0]


@dataclass
class _Tally:
    """Counts, activation mass and shown forms of one feature's firing units."""

    units: list[Unit]
    weights: np.ndarray

    def __post_init__(self) -> None:
        self.count: Counter = Counter(u.key for u in self.units)
        self.mass: Counter = Counter()
        self.forms: dict[str, Counter] = {}
        self.first: dict[str, Unit] = {}
        for u, w in zip(self.units, self.weights):
            self.mass[u.key] += float(w)
            self.forms.setdefault(u.key, Counter())[u.display] += 1
            self.first.setdefault(u.key, u)
        self.ranked = sorted(self.count, key=lambda k: (-self.count[k], -self.mass[k]))

    def display(self, key: str) -> str:
        forms = self.forms[key]
        return key if len(forms) > 1 and key in forms else _shown(forms)  # merged forms read as their base


def _unit_class(u: Unit) -> str | None:
    """The closed class of a firing unit (pronouns, number words, contractions, …), or None."""
    if u.key in CONTRACTION_KEYS:
        return CONTRACTIONS
    return word_class(u.key) if u.kind == "word" else None


def names_no_property(name: str) -> bool:
    """Whether a label (or its name) names no property its contexts share: `varied tokens: a / b / c`."""
    return split_label(str(name))[0].strip().startswith(VARIED.strip())


def _merge_plurals(units: list[Unit]) -> list[Unit]:
    """Fold a word's plural into its singular when the feature fires on both (power, powers)."""
    words = {u.key for u in units if u.kind == "word"}
    out = []
    for u in units:
        base = next((u.key[: -len(e)] for e in ("es", "s") if u.key.endswith(e) and u.key[: -len(e)] in words
                     and len(u.key) > len(e) + 2), None) if u.kind == "word" and not u.key.endswith("ss") else None
        out.append(Unit(base, u.display, u.kind, u.bg_key) if base else u)
    return out


def _merge_forms(units: list[Unit]) -> list[Unit]:
    """Fold the forms of one word the feature fires on into the shortest of them (revealed, reveal -> reveal)."""
    to = base_forms({u.key for u in units if u.kind == "word" and u.key.isalpha()})
    return [Unit(to[u.key], u.display, u.kind, u.bg_key) if u.kind == "word" and to.get(u.key, u.key) != u.key else u
            for u in units]


class _Labeller:
    def __init__(self, ctx: Contexts, background: list[list[int]], reader: _Reader, cfg: LabelTextConfig):
        self.ctx, self.reader, self.cfg = ctx, reader, cfg
        ids, counts = np.unique(np.fromiter((t for doc in background for t in doc), np.int64), return_counts=True)
        self.bg: Counter = Counter()
        for t, n in zip(ids.tolist(), counts.tolist()):
            self.bg[reader.unit(int(t)).bg_key] += n
        self.bg_total = max(int(counts.sum()) if len(counts) else 0, 1)
        self._row_units: dict[int, tuple[Unit, Unit]] = {}  # each context is read by several steps: once is enough
        self._row_segments: dict[int, tuple[str, str, str]] = {}

    def units(self, row: int) -> tuple[Unit, Unit]:
        """`_Reader.context_units` of one context, read once."""
        got = self._row_units.get(row)
        if got is None:
            got = self._row_units[row] = self.reader.context_units(self.ctx.windows[row], int(self.ctx.centers[row]))
        return got

    def segments(self, row: int) -> tuple[str, str, str]:
        """`_Reader.segments` of one context, decoded once."""
        got = self._row_segments.get(row)
        if got is None:
            got = self._row_segments[row] = self.reader.segments(self.ctx.windows[row], int(self.ctx.centers[row]))
        return got

    def distinctiveness(self, unit: Unit, share: float) -> float:
        """share x log(lift), lift = share / background frequency: rare words first, but not a stray
        rare word before the token the feature mostly fires on."""
        lift = share / ((self.bg.get(unit.bg_key, 0) + 0.5) / self.bg_total)
        return share * math.log(max(lift, 1.0))

    def read(self, idx: np.ndarray) -> _Feature:
        acts = np.maximum(self.ctx.act[idx].astype(np.float64), 0.0)
        weights = acts / acts.sum() if acts.sum() > 0 else np.full(len(idx), 1.0 / len(idx))
        pairs = [self.units(int(i)) for i in idx]
        return _Feature(idx, [p[0] for p in pairs], [p[1] for p in pairs], weights)

    def tally(self, f: _Feature) -> _Tally:
        """The feature's firing units, counted as whole words or as pieces (whichever is more concentrated)."""
        word_top = Counter(u.key for u in f.word_units).most_common(1)[0][1]
        piece_top = Counter(u.key for u in f.piece_units).most_common(1)[0][1]
        return _Tally(_merge_forms(_merge_plurals(f.word_units if word_top >= piece_top else f.piece_units)), f.weights)

    def named_group(self, f: _Feature, head: str, hit: list[bool]) -> tuple[str, str, float, int]:
        """`<head> (a / b / c)`: a word class or concept the contexts in `hit` share, with the words it fires on there."""
        return self._group_label(f, self.tally(f), head, "word", hit)

    def context_text(self, row: int) -> str:
        """A context window as one line of plain text (what a concept namer reads)."""
        return _flat("".join(self.segments(row))).strip()

    def label(self, f: _Feature) -> tuple[str, str, float, int]:
        """(name, kind, score, row of the example context)."""
        cfg, n = self.cfg, len(f.idx)
        t = self.tally(f)
        named = [k for k in t.ranked if t.count[k] >= (2 if n >= 5 else 1)][: cfg.max_names]
        caps = [u.kind == "word" and sum(ch.isalpha() for ch in u.display) >= 2 and u.display.isupper() for u in t.units]
        if float(np.dot(caps, f.weights)) >= 0.6 and (not named or t.count[named[0]] / n < 0.5):
            return self._group_label(f, t, ALL_CAPS, "formatting", caps)
        if not named or sum(t.mass[k] for k in named) < cfg.min_coverage:
            return self._position_label(f, t)
        # drop the least frequent until the name fits; show the most distinctive first
        while len(named) > 1 and len(" / ".join(t.display(k) for k in named)) > cfg.max_name_chars:
            named.pop()
        chosen = sorted(named, key=lambda k: (-self.distinctiveness(t.first[k], t.count[k] / n), -t.count[k]))
        kinds: Counter = Counter()
        for k in chosen:
            kinds[t.first[k].kind] += t.count[k]
        non_word = [(c, k) for k, c in kinds.items() if k != "word"]
        kind = max(non_word)[1] if non_word and kinds["word"] < sum(kinds.values()) / 3 else "word"
        hit = [u.key in chosen for u in t.units]
        name = " / ".join(t.display(k) for k in chosen)[: cfg.max_name_chars]
        return name, kind, float(np.dot(hit, f.weights)), self._example(f, hit)

    def _group_label(self, f: _Feature, t: _Tally, head: str, kind: str, hit: list[bool]) -> tuple[str, str, float, int]:
        """`head (a / b / c)`: the three commonest firing units of the contexts in `hit`."""
        forms: dict[str, Counter] = {}
        for h, u in zip(hit, t.units):
            if h:
                forms.setdefault(u.key, Counter())[u.display] += 1
        return self._listed(f, head, kind, [_shown(forms[k]) for k in t.ranked if k in forms][:3], hit)

    def _listed(self, f: _Feature, head: str, kind: str, shown: list[str], hit: list[bool]) -> tuple[str, str, float, int]:
        """`head (a / b / c)` with the `shown` words that fit the name's length (`head` alone without any), the
        activation share of the contexts in `hit` and the row of the strongest of them."""
        if shown and head.endswith(")") and " (" in head:  # `adjectives (-ful / -ous …)` lists its words instead
            head = head[: head.index(" (")]
            shown = [w.split(" ", 1)[1] if w in CONTRACTION_KEYS else w for w in shown]  # contractions ('re / 've)
        words = _join_fit(shown, self.cfg.max_name_chars - len(head) - 3) if shown else []
        name = (f"{head} ({' / '.join(words)})" if words else head) if head else " / ".join(words)
        return name, kind, float(np.dot(hit, f.weights)), self._example(f, hit)

    def _position_label(self, f: _Feature, t: _Tally) -> tuple[str, str, float, int]:
        """For features without a dominant token set: what their positions share."""
        n = len(f.idx)
        at_start = [int(self.ctx.centers[i]) == 0 for i in f.idx]
        if sum(at_start) / n >= 0.6:
            return FIRST_TOKEN, "formatting", float(np.dot(at_start, f.weights)), self._example(f, at_start)
        kinds = Counter(u.kind for u in t.units if _unit_class(u) is None)  # contractions are words here
        for kind in ("punctuation", "formatting", "symbol"):
            if kinds[kind] / n >= 0.6:
                return self._group_label(f, t, "punctuation" if kind == "punctuation" else "", kind,
                                         [u.kind == kind and _unit_class(u) is None for u in t.units])
        shared = self._shared_property(f, t)
        if shared is not None:
            return shared
        return self.varied_label(f, t)

    def varied_label(self, f: _Feature, t: _Tally) -> tuple[str, str, float, int]:
        """`varied tokens: a / b / c`: the label that names no shared property (the last resort)."""
        top3 = set(t.ranked[:3])
        words = _join_fit([t.display(k) for k in t.ranked[:3]], self.cfg.max_name_chars - 15)
        hit = [u.key in top3 for u in t.units]
        return VARIED + " / ".join(words), "mixed", float(np.dot(hit, f.weights)), self._example(f, hit)

    def _shared_property(self, f: _Feature, t: _Tally) -> tuple[str, str, float, int] | None:
        """The commonest property the contexts share (`properties`), when enough of them share it."""
        n, best = len(f.idx), None
        for head, kind, hit, weight in self._properties(f, t):
            share = sum(hit) / n
            if share >= self.cfg.min_context_share and (best is None or share * weight > best[0]):
                best = (share * weight, head, kind, hit)
        return None if best is None else self._property_label(f, t, *best[1:])

    def _property_label(self, f: _Feature, t: _Tally, head: str, kind: str, hit: list[bool]) -> tuple[str, str, float, int]:
        name, kind, score, row = self._group_label(f, t, head, kind, hit)
        return (name if " / " in name or "(" in name else head), kind, score, row

    def property_rates(self) -> dict[str, float]:
        """{property head: share of a sample of all the contexts (`rate_sample`) that have it}: each property's
        base rate, since "after articles" holds for a tenth of any contexts."""
        rows = np.random.default_rng(0).permutation(len(self.ctx.windows))[: self.cfg.rate_sample]
        counts: Counter = Counter()
        for r in rows:
            one = self.read(np.array([r]))
            counts.update(head for head, _, hit, _ in self._rare_candidates(one, self.tally(one)) if hit[0])
        return {head: k / max(len(rows), 1) for head, k in counts.items()}

    def rare_property(self, f: _Feature, rates: Mapping[str, float]) -> tuple[str, str, float, int] | None:
        """The shared property least likely by chance at its base rate (`rates`), when it holds for at least
        `rare_share` of the contexts and `rare_lift` times its rate, with a binomial tail under `rare_max_p` (times
        the number of tries of its family, for the families of many: firing units, their word classes, the sense
        categories around). The share counts contexts or activation, whichever is more: a property of the
        strongest contexts is what the feature is most about. A word class must hold two different firing words
        (one word is a firing unit; `_evidence_words`). Under `min_context_share` the name says `partly`."""
        cfg, n, t, best = self.cfg, len(f.idx), self.tally(f), None
        candidates = list(self._rare_candidates(f, t))
        tries = Counter(_family(c[0]) for c in candidates)
        firing = _firing_words(f)
        unambiguous = {w for w in set(firing) if w and len(thesaurus_categories(w)) <= cfg.roget_max_senses}
        for head, kind, hit, words in candidates:
            k, p0 = sum(hit), max(rates.get(head, 0.0), cfg.word_groups.min_base)
            if max(k / n, float(np.dot(hit, f.weights))) < cfg.rare_share or k < cfg.rare_lift * p0 * n:
                continue
            if head.startswith((_WORD_CLASS, _ROGET)) and len(_evidence_words(head, firing, hit, unambiguous)) < 2:
                continue
            family = _family(head)
            p = binomial_tail(k, n, p0) * (tries[family] if family else 1)  # Bonferroni over a family's tries
            if p < cfg.rare_max_p and (best is None or p < best[0]):
                best = (p, head, kind, hit, words)
        return None if best is None else self._rare_name(f, t, *best[1:])

    def _rare_name(self, f: _Feature, t: _Tally, head: str, kind: str, hit: list[bool],
                   words: list[str | None] | None) -> tuple[str, str, float, int]:
        """`partly <property> (a / b / c)` (without `partly` from `min_context_share` of the contexts), listing the
        context `words` that show it, or else the firing words; `partly <word>` for one firing unit."""
        partly = "" if sum(hit) >= self.cfg.min_context_share * len(f.idx) else PARTLY
        if head.startswith(_FIRING_UNIT):
            return self._listed(f, "", kind, [partly + t.display(head[len(_FIRING_UNIT):])], hit)
        shown = WORDS_ABOUT + head.removeprefix(_ROGET) if head.startswith(_ROGET) else head.removeprefix(_WORD_CLASS)
        head = partly + shown
        if words is None:
            return self._property_label(f, t, head, kind, hit)
        return self._listed(f, head, kind, [w for w, _ in Counter(w for w, h in zip(words, hit) if h and w).most_common(3)],
                            hit)

    def _rare_candidates(self, f: _Feature, t: _Tally) -> Iterator[tuple[str, str, list[bool], list[str] | None]]:
        """What step 6 tries: (head, kind, which contexts have it, the context word that shows it in each, or None
        to show the firing words). Each firing unit and each word class of the firing words (`word_groups`, which
        step 4 reads at 40%; and the Roget's categories that list them, `words about danger (perilous / risky)`),
        the shared properties (`_properties`), and what the sentence around the firing token holds: a question, a
        closed word class before it (`in clauses with negations (not / never)`), words of a sense category around it
        (`near hostile words (hit / slash)`). These hold for many contexts of any feature, so only step 6, which
        weighs each by its base rate, reads them."""
        for key in t.ranked:
            yield _FIRING_UNIT + key, t.first[key].kind, [u.key == key for u in t.units], None
        content = _firing_words(f, content_only=True)
        for family, classes in ((_WORD_CLASS, [set(word_classes(w)) for w in _firing_words(f)]),
                                (_ROGET, [set(thesaurus_categories(w)) for w in content])):
            for name in sorted(set().union(*classes)):
                yield family + name, "word", [name in c for c in classes], None
        yield from ((head, kind, hit, None) for head, kind, hit, _ in self._properties(f, t))
        texts = [self.segments(int(i)) for i in f.idx]
        yield IN_QUESTIONS, "mixed", [in_question(b, a) for b, _, a in texts], None
        for prefix, found in ((IN_CLAUSES_WITH, [clause_classes(b) for b, _, _ in texts]),
                              (NEAR, [context_categories(b + a) for b, _, a in texts])):
            for name in sorted(set().union(*found)):
                yield prefix + name, "mixed", [name in c for c in found], [c.get(name) for c in found]

    def _properties(self, f: _Feature, t: _Tally) -> Iterator[tuple[str, str, list[bool], float]]:
        """(label head, kind, which contexts have it, preference) for each candidate shared property: the
        firing word's class, proper names, code, quotations, line/sentence start, the neighbours' class or
        words."""
        rows = [int(i) for i in f.idx]
        classes = [_unit_class(u) for u in t.units]
        for name in dict.fromkeys(c for c in classes if c):
            yield name, "word", [c == name for c in classes], 1.3
        shapes = [word_shape(u.key) if u.kind == "word" else None for u in t.units]
        for name in dict.fromkeys(c for c in shapes if c):
            yield name, "word", [c == name for c in shapes], 1.0
        yield WORD_PIECES, "word", [u.key.startswith("piece ") for u in f.piece_units], 0.9
        starts = [self._sentence_start(i) for i in rows]
        yield CAPITALISED, "word", [u.kind == "word" and u.display[:1].isupper() and not s
                                    for u, s in zip(t.units, starts)], 1.2
        texts = [self.segments(i) for i in rows]
        yield IN_CODE, "mixed", [looks_like_code("".join(x)) for x in texts], 1.1
        yield IN_QUOTES, "mixed", [inside_quotes(x[0]) for x in texts], 1.1
        yield AT_LINE_START, "mixed", [self._after_line_break(i) for i in rows], 1.0
        yield AT_SENTENCE_START, "mixed", [s and int(self.ctx.centers[i]) > 0 for s, i in zip(starts, rows)], 0.9
        for side, offset in (("after", -1), ("before", 1)):
            near = [self._neighbour_class(i, offset) for i in rows]
            for name in dict.fromkeys(c for c in near if c):
                yield f"{side} {name}", "mixed", [c == name for c in near], 0.95
        for side, offsets in (("after", (-1,)), ("after", (-2, -1)), ("before", (1,))):
            keys = [self._gram(self.ctx.windows[i], int(self.ctx.centers[i]), offsets) for i in rows]
            top = Counter(k for k in keys if k is not None).most_common(1)
            if top:
                yield f"{side} {top[0][0]}", "mixed", [k == top[0][0] for k in keys], 1 + 0.25 * (len(offsets) - 1)

    def near_words(self, rows: np.ndarray, offset: int) -> list[str | None]:
        """The firing word of each context (offset 0: the whole word), or the token `offset` places from it when
        that is a word (None otherwise, and at the window's edge)."""
        if offset == 0:
            return [u.key if u.kind == "word" and u.key.isalpha() else None for u in
                    (self.units(int(i))[0] for i in rows)]
        out: list[str | None] = []
        for i in rows:
            w, c = self.ctx.windows[i], int(self.ctx.centers[i]) + offset
            u = self.reader.unit(int(w[c])) if 0 <= c < len(w) else None
            out.append(u.key if u is not None and u.kind == "word" and u.key.isalpha() else None)
        return out

    def _neighbour_class(self, row: int, offset: int) -> str | None:
        """The class of the token `offset` places from the firing one (None at the window's edge)."""
        w, c = self.ctx.windows[row], int(self.ctx.centers[row]) + offset
        if not 0 <= c < len(w):
            return None
        u = self.reader.unit(int(w[c]))
        return _unit_class(u) or (u.key if u.key in (NUMBERS, YEARS, LINKS, HANDLES) else None)

    def _after_line_break(self, row: int) -> bool:
        c = int(self.ctx.centers[row])
        return c > 0 and self.reader.unit(int(self.ctx.windows[row][c - 1])).key in (LINE_BREAK, BLANK_LINE)

    def _sentence_start(self, row: int) -> bool:
        """Whether the firing token of a context starts a sentence (a capital there says nothing)."""
        c = int(self.ctx.centers[row])
        if c == 0:
            return True
        prev = self.reader.unit(int(self.ctx.windows[row][c - 1]))
        return prev.key in ("period", LINE_BREAK, BLANK_LINE, "quotation marks", "question mark", "exclamation mark",
                            "colon", "ellipsis") or prev.kind == "formatting"

    def _gram(self, window: list[int], c: int, offsets: tuple[int, ...]) -> str | None:
        """The context n-gram at `offsets` from the firing token, as a label reads it ('the', comma)."""
        pos = [c + o for o in offsets]
        if min(pos) < 0 or max(pos) >= len(window):
            return None
        if len(pos) == 1:
            u = self.reader.unit(int(window[pos[0]]))
            return f"'{u.key}'" if u.kind == "word" else u.key
        text = _flat(self.reader.decode(tuple(int(window[p]) for p in pos))).strip().lower()
        return f"'{text}'" if re.search(r"\w", text) else None

    def _example(self, f: _Feature, hit: list[bool]) -> int:
        """Row of the strongest context the name describes."""
        for i, h in zip(f.idx, hit):
            if h:
                return int(i)
        return int(f.idx[0])


def readable_labels(ctx: Contexts, background: list[list[int]], decode: Decoder,
                    skip_ids: set[int] | frozenset[int] = frozenset(),
                    config: LabelTextConfig = LabelTextConfig(), concepts: ConceptFn | None = None,
                    reference: Mapping[int, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """One readable label per feature in `ctx` (see the module docstring).

    background: token ids of sample documents (the lift baseline). skip_ids: special tokens, which
    are never read as words. concepts: names what the contexts of features with no other shared property
    are about (`backend.concept_names.ConceptNamer`); without it they read `varied tokens: …`. reference: each
    feature's words in the SAE's reference text (`label_reference.ReferenceWords.words`). Returns
    feature_id, label (name + quoted example), score, name, kind, example, n_contexts."""
    labeller, features = _read_features(ctx, background, decode, skip_ids, config)
    named = [labeller.label(f) for f in features]
    _name_word_groups(labeller, features, named, config.word_groups, getattr(concepts, "name_words", None))
    _name_rare_properties(labeller, features, named, getattr(concepts, "name_words", None))
    if reference:
        _name_by_reference(labeller, features, named, reference)
    if concepts is not None and config.name_contexts:  # last: the firing words name what it fires on more closely
        _name_concepts(labeller, features, named, concepts, config.max_concept_contexts)
    out = []
    for f, (name, kind, score, row) in zip(features, named):
        example = mark_context(*labeller.segments(row), config.example_before_chars, config.example_after_chars)
        label = f"{name}{EXAMPLE_SEP}{example}\"" if config.with_example else name
        out.append((int(ctx.feature_id[f.idx[0]]), label, float(min(max(score, 0.0), 1.0)), name, kind, example,
                    len(f.idx)))
    return pd.DataFrame(out, columns=LABEL_COLUMNS)


def _read_features(ctx: Contexts, background: list[list[int]], decode: Decoder, skip_ids: set[int] | frozenset[int],
                   config: LabelTextConfig) -> "tuple[_Labeller, list[_Feature]]":
    """A labeller over `ctx` and each feature's contexts read by it, in feature order."""
    reader = _Reader(decode, frozenset(int(t) for t in skip_ids))
    reader.learn(np.fromiter((t for w in ctx.windows for t in w), np.int64))
    labeller = _Labeller(ctx, background, reader, config)
    order = np.lexsort((ctx.rank, ctx.feature_id))
    fids = np.asarray(ctx.feature_id)[order]
    starts = np.flatnonzero(np.r_[True, fids[1:] != fids[:-1]]) if len(fids) else np.zeros(0, int)
    return labeller, [labeller.read(order[s:e]) for s, e in zip(starts, np.r_[starts[1:], len(fids)].astype(int))]


def firing_words(ctx: Contexts, decode: Decoder, skip_ids: set[int] | frozenset[int] = frozenset()
                 ) -> dict[int, list[tuple[str | None, float]]]:
    """{feature_id: (the whole word its context fires on, lower case, or None for no word; the activation)} per top
    context, as the labeller reads them: what `backend.label_reference` keeps of a reference text."""
    _, features = _read_features(ctx, [], decode, skip_ids, LabelTextConfig())
    return {int(ctx.feature_id[f.idx[0]]): list(zip(_firing_words(f), ctx.act[f.idx].astype(float).tolist()))
            for f in features}


def _name_by_reference(labeller: _Labeller, features: list[_Feature], named: list[tuple[str, str, float, int]],
                       reference: Mapping[int, tuple[str, ...]]) -> None:
    """Replace, in place, the `varied tokens` labels of features with `reference_min_contexts` or more contexts that
    fire on the feature's own words in other text (or their forms), when that many is unlikely (`reference_max_p`)
    at those words' rate among the firing words of all the contexts labelled together: `partly its words in other
    text (main / master)`. Without the reference the same contexts would be a few stray words among many."""
    todo = [i for i, (name, *_) in enumerate(named) if names_no_property(name)]
    if not todo:
        return
    firing = [_firing_words(f) for f in features]
    rate = _WordRates(Counter(w for words in firing for w in words if w), sum(len(w) for w in firing))
    cfg = labeller.cfg
    for i in todo:
        own = reference.get(int(labeller.ctx.feature_id[features[i].idx[0]]))
        if not own:
            continue
        mine = rate.forms(own)
        hit = [w in mine for w in firing[i]]
        k, n = sum(hit), len(hit)
        if k >= cfg.reference_min_contexts and binomial_tail(k, n, rate.share(mine)) < cfg.reference_max_p:
            head = (PARTLY if k < cfg.min_context_share * n else "") + IN_OTHER_TEXT
            named[i] = labeller.named_group(features[i], head, hit)


@dataclass
class _WordRates:
    """How often each firing word occurs among the contexts labelled together, and which of them are forms of a
    given word (`dealt` of `deal`), found among words that share its first three letters."""

    count: Counter
    total: int

    def __post_init__(self) -> None:
        self._by_start: dict[str, list[str]] = {}
        for w in self.count:
            self._by_start.setdefault(w[:3], []).append(w)

    def forms(self, words: tuple[str, ...]) -> frozenset[str]:
        return frozenset(w for r in words for w in self._by_start.get(r[:3], ())
                         if w == r or is_form_of(w, r) or is_form_of(r, w))

    def share(self, words: frozenset[str]) -> float:
        """The share of all contexts that fire on one of `words`."""
        return sum(self.count[w] for w in words) / max(self.total, 1)


def _name_rare_properties(labeller: _Labeller, features: list[_Feature], named: list[tuple[str, str, float, int]],
                          word_concepts: WordConceptFn | None) -> None:
    """Replace, in place, the `varied tokens` labels whose contexts share a property in fewer than
    `min_context_share` of them but far above its base rate (`_Labeller.rare_property`), or else, given
    `word_concepts`, a concept the firing words of `rare_share` of the weight are about (`partly words about …`),
    at the stricter chance `rare_concept_max_p`."""
    todo = [i for i, (name, *_) in enumerate(named) if names_no_property(name)]
    if not todo:
        return
    rates = labeller.property_rates()
    left = _name_each(named, todo, lambda i: labeller.rare_property(features[i], rates))
    if word_concepts is not None and left:
        _name_by_word_concepts(labeller, features, named, left, word_concepts, partial=True,
                               min_share=labeller.cfg.rare_share, max_p=labeller.cfg.rare_concept_max_p)


def _name_each(named: list[tuple[str, str, float, int]], todo: list[int],
               name_one: Callable[[int], "tuple[str, str, float, int] | None"]) -> list[int]:
    """Replace, in place, each label `todo` lists that `name_one` names; the ones it leaves."""
    left = []
    for i in todo:
        found = name_one(i)
        if found is None:
            left.append(i)
        else:
            named[i] = found
    return left


def _name_by_word_concepts(labeller: _Labeller, features: list[_Feature], named: list[tuple[str, str, float, int]],
                           left: list[int], word_concepts: WordConceptFn, partial: bool = False,
                           **ask: float) -> None:
    """Replace, in place, the labels `left` lists whose firing words, two different ones at least, are about a
    concept (one call to `word_concepts` for all, with `ask`'s share and chance) by `words about <concept> (…)`; with
    `partial`, `partly` first when the contexts it names are fewer than `min_context_share`."""
    words = [_firing_words(features[i], content_only=True) for i in left]
    for i, mine, found in zip(left, words, word_concepts(words, [features[i].weights for i in left], **ask)):
        if found is not None and len(_hit_words(mine, found[1])) >= 2:  # one word is no concept
            few = partial and sum(found[1]) < labeller.cfg.min_context_share * len(features[i].idx)
            named[i] = labeller.named_group(features[i], f"{PARTLY if few else ''}{WORDS_ABOUT}{found[0]}", found[1])


def _name_concepts(labeller: _Labeller, features: list[_Feature], named: list[tuple[str, str, float, int]],
                   concepts: ConceptFn, max_contexts: int) -> None:
    """Replace, in place, the `varied tokens` labels whose contexts share a concept by `about <concept> (…)`.

    One call to `concepts` for all of them (it embeds every context at once)."""
    todo = [i for i, (name, *_) in enumerate(named) if names_no_property(name)]
    if not todo:
        return
    texts = [[labeller.context_text(int(r)) for r in features[i].idx[:max_contexts]] for i in todo]
    weights = [features[i].weights[:max_contexts] for i in todo]
    for i, found in zip(todo, concepts(texts, weights)):
        if found is not None:
            concept, hit = found
            f = features[i]
            full_hit = list(hit) + [False] * (len(f.idx) - len(hit))
            named[i] = labeller.named_group(f, f"{ABOUT}{concept}", full_hit)


def _family(head: str) -> str | None:
    """Which family of many tries (`_FAMILIES`) a step-6 candidate belongs to, if any."""
    return next((p for p in _FAMILIES if head.startswith(p)), None)


def _firing_words(f: _Feature, content_only: bool = False) -> list[str | None]:
    """The word each top context fires on: None where it is no word or, with `content_only` (what a concept namer
    reads), a function word or a name."""
    skip = (lambda u: is_function_word(u.key) or _is_name(u)) if content_only else (lambda u: False)
    return [u.key if u.kind == "word" and u.key.isalpha() and not skip(u) else None for u in f.word_units]


def _hit_words(words: list[str | None], hit: list[bool]) -> set[str]:
    """The different words of the contexts in `hit` (a class or concept needs two: one word is a firing unit)."""
    return {w for w, h in zip(words, hit) if h and w}


def _evidence_words(head: str, firing: list[str | None], hit: list[bool], unambiguous: set[str]) -> set[str]:
    """The different firing words of the contexts in `hit` that vouch for step 6's class `head`; for a Roget's
    category only the `unambiguous` ones, listed under at most `roget_max_senses` categories: `ground`, `work` and
    `good` (34 to 49 each) fit some rare category by chance (`words about visual arts (values / ground / worked)`)."""
    words = _hit_words(firing, hit)
    return words & unambiguous if head.startswith(_ROGET) else words


def _is_name(u: Unit) -> bool:
    """A capitalised word the lexicon does not know (Ronald, Schulz): a name, which tells MiniLM no concept (names
    voted fortunes' features into `the clergy` or `angel saint`)."""
    return u.display[:1].isupper() and lookup(u.key) is None


@dataclass
class _WordGroups:
    """What `_name_word_groups` compares a feature's words with: the base rates of word classes among the firing
    words (and the words just before and after them) of all features labelled together and of the unnamed ones."""

    labeller: _Labeller
    cfg: WordGroupConfig
    todo: list[_Feature]

    def __post_init__(self) -> None:
        every = [self.labeller.near_words(np.arange(len(self.labeller.ctx.windows)), o) for o in (0, -1, 1)]
        mine = [[w for f in self.todo for w in self.labeller.near_words(f.idx, o)] for o in (0, -1, 1)]
        # the firing word's class may be FUNCTION_WORDS (`word_groups.word_classes`); a neighbour's may not
        self.base = [base_rates([e, m], self.labeller.bg, self.cfg, function_words=k == 0)
                     for k, (e, m) in enumerate(zip(every, mine))]
        self.spelled = spelling_rates(every[0])

    def name(self, f: _Feature) -> tuple[str, str, float, int] | None:
        """`<class> (a / b / c)`, `after <class> (…)`, `before <class> (…)` or `words with '<letters>' (…)`."""
        for (head, offset), base in zip((("", 0), ("after ", -1), ("before ", 1)), self.base):
            found = shared_class(self.labeller.near_words(f.idx, offset), base, self.cfg, function_words=offset == 0)
            if found is not None:
                return self.labeller.named_group(f, head + found[0], found[1])
        found = shared_spelling(_firing_words(f), self.spelled, self.cfg)
        return None if found is None else self.labeller.named_group(f, f"words with '{found[0]}'", found[1])


def _name_word_groups(labeller: _Labeller, features: list[_Feature], named: list[tuple[str, str, float, int]],
                      cfg: WordGroupConfig, word_concepts: WordConceptFn | None) -> None:
    """Replace, in place, the `varied tokens` labels whose firing words (or the words before or after them)
    share a word class far above its base rate (`backend.word_groups`: `verbs (…)`, `carrying and getting (…)`),
    or letters, or else, given `word_concepts`, a concept most of the firing words vote for (`words about fear (…)`)."""
    todo = [i for i, (name, *_) in enumerate(named) if names_no_property(name)]
    if not todo:
        return
    groups = _WordGroups(labeller, cfg, [features[i] for i in todo])
    left = _name_each(named, todo, lambda i: groups.name(features[i]))
    if word_concepts is not None and left:
        _name_by_word_concepts(labeller, features, named, left, word_concepts)
