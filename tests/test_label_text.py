"""Readable offline labels: hand-built contexts with a GPT-2-style fake decoder (words carry their leading space)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from backend import labels as L
from backend import label_text as T
from backend.analysis.label_reading import label_words
from backend.errors import UserError
from backend.word_groups import WordGroupConfig

VOCAB = [
    " in", " some", " certain", " few", " Some", "Some", " cases", " the", " film", " movie", " plot", " was", ".", " It",
    "\n", " good", " and", " a", " of", "https", "://", "t", ".co", "/", "xY", "9", " by", " Tar", "ant", "ino", ",",
    " is", " Paris", " to", "e", "g", " director", " story", "'s", " I", " LOL", " OMG", " WTF", " OK", "1", "8", " at",
    " <b>", "</b>", " many", " dog", " cat", " house", " red",
    # planted classes below
    " me", " my", " we", " us", " our", " three", " seven", " twelve", " twenty", " ten", " London", " Obama", " Tokyo",
    " Berlin", " said", " met", " visited", " saw", "self", "_", "x", " =", " None", "(", ")", ":", ' "', '"', " go",
    " see", " eat", " run", " can", " will", " should", " must", "'re", "'ve", "n't", " you", " they", " sleep", "'ll", "'m",
    " quickly", " slowly", " sadly", " happily", " loudly", " brightly", " Gre", "eng", "rass", " Car", "men", " ner", "dy",
    " reveal", " revealed", " revealing", " reveals",
    " brings", " carry", " fetch", " delivered", " brought", " gather", " catch", " lift", " remove", " distribute",
    " few", " home",
    " why", " do", "?", " not",
    " heart", " legs", " hand", " head", " arm", " foot", " eye",
]
ID = {t: i for i, t in enumerate(VOCAB)}


def decode(ids: tuple[int, ...]) -> str:
    return "".join(VOCAB[i] for i in ids)


def toks(words: list[str]) -> list[int]:
    return [ID[w] for w in words]


def make_contexts(features: dict[int, list[tuple[list[str], int]]]) -> L.ContextSet:
    """features: feature id -> its top contexts (window tokens, index of the firing token), strongest first."""
    fid, rank, windows, centers, acts = [], [], [], [], []
    for f, ctxs in features.items():
        for r, (words, c) in enumerate(ctxs):
            fid.append(f), rank.append(r), windows.append(toks(words)), centers.append(c), acts.append(10.0 - 0.1 * r)
    centers_arr = np.array(centers)
    return L.ContextSet(feature_id=np.array(fid), rank=np.array(rank), doc_id=np.arange(len(fid)),
                        act=np.array(acts, np.float32), token_id=np.array([w[c] for w, c in zip(windows, centers)]),
                        windows=windows, centers=centers_arr)


# " some" is common in the background, " certain" and " few" are rare: certain/few are the more distinctive.
BACKGROUND = [toks([" the", " film", " was", " good", ".", " It", " was", " some", " plot", " and", " a", " of", " the",
                    " movie", " in", " the", " story", ",", " is", " to"])] * 30

HEDGE = 1  # fires on some / certain / few (with case and space variants), one stray context
PERIOD = 2  # sentence-final periods
LINKS = 3  # every piece of t.co links: no single token dominates
AFTER_THE = 4  # whatever noun follows " the"
VARIED = 5  # nothing in common
PIECES = 6  # the last piece of " Tar" "ant" "ino"
LINE = 7  # line breaks
NOT_FINAL = 8  # "." inside e.g.
CAPS = 9  # shouted words
CONTEXTS = {
    HEDGE: [([" in", " some", " cases"], 1), ([" in", " certain", " cases"], 1), ([" a", " few", " of"], 1),
            (["Some", " film"], 0), ([" the", " certain", " film"], 1), ([" in", " few", " cases"], 1),
            ([" It", " Some", " cases"], 1), ([" in", " certain", " cases"], 1), ([" the", " film", " was"], 1)],
    PERIOD: [([" film", " was", " good", ".", " It"], 3), ([" the", " plot", ".", "\n"], 2), ([" cases", "."], 1),
             ([" the", " story", ".", " It", " was"], 2), ([" good", ".", " Some"], 1)],
    LINKS: [([" at", "https", "://", "t", ".co", "/", "xY"], 1), ([" at", "https", "://", "t", ".co", "/", "xY"], 2),
            (["https", "://", "t", ".co", "/", "xY", "9"], 3), ([" by", "https", "://", "t", ".co"], 4),
            ([" is", "https", "://", "t", ".co", "/", "xY"], 6), (["https", "://", "t", ".co", "/"], 4)],
    AFTER_THE: [([p, " the", w, " was"], 2) for p, w in zip([" in", " at", " of", " is", " to", " by"],
                                                              [" film", " plot", " director", " story", " house", " dog"])],
    VARIED: [([p, w, n], 1) for p, w, n in zip([" a", " in", " It", " was", " and", " good", " film", " the"],
                                               [" red", " dog", " to", " Paris", " cat", " house", " story", " is"],
                                               [" of", " was", " and", " film", " It", " in", " at", " the"])],
    PIECES: [([" by", " Tar", "ant", "ino", ","], 3)] * 5,
    LINE: [([" good", ".", "\n", " It"], 2), ([" plot", "\n", "Some"], 1), ([" was", "\n"], 1), ([" film", ",", "\n"], 2),
           (["\n", " the"], 0)],
    NOT_FINAL: [([" a", " film", " by", "e", ".", "g", "."], 4)] * 3 + [([" is", "e", ".", "g", " the"], 2)] * 2,
    CAPS: [([" I", w, " the"], 1) for w in [" LOL", " OMG", " WTF", " OK", " LOL", " OMG"]],
}


@pytest.fixture(scope="module")
def labelled() -> pd.DataFrame:
    return T.readable_labels(make_contexts(CONTEXTS), BACKGROUND, decode).set_index("feature_id")


def test_hedge_feature_names_its_words_most_distinctive_first(labelled):
    row = labelled.loc[HEDGE]
    parts = row["name"].split(" / ")
    assert set(parts) == {"some", "certain", "few"}  # " Some"/"Some" folded into "some", the stray " film" left out
    assert parts.index("some") == 2  # frequent in the background: least distinctive
    assert row["example"] == "in «some» cases"  # the strongest context, token marked, spaces kept
    assert row["label"] == f'{row["name"]} — "in «some» cases"'
    assert row["kind"] == "word" and not T.is_formatting(row)
    assert row["score"] == pytest.approx(1 - 9.2 / sum(10 - 0.1 * r for r in range(9)))  # all but the stray context


def test_punctuation_and_formatting_read_in_plain_words(labelled):
    assert labelled.loc[PERIOD, "name"] == "sentence-final period"
    assert labelled.loc[PERIOD, "example"] == "film was good«.» It"
    assert labelled.loc[NOT_FINAL, "name"] == "period (not sentence-final)"
    assert labelled.loc[LINE, "name"] == "line break" and "«⏎»" in labelled.loc[LINE, "example"]
    assert labelled.loc[CAPS, "name"].startswith("all-caps words (") and "LOL" in labelled.loc[CAPS, "name"]
    for f in (PERIOD, NOT_FINAL, LINE, CAPS):
        assert T.is_formatting(labelled.loc[f]), labelled.loc[f, "label"]
        assert T.is_formatting(labelled.loc[f, "label"])  # also from the stored label text


def test_link_pieces_fold_into_one_finding(labelled):
    row = labelled.loc[LINKS]
    assert row["name"] == "links (t.co URLs)" and row["score"] == pytest.approx(1.0)
    assert "«https»://t.co/" in row["example"]
    assert row["kind"] == "symbol" and not T.is_formatting(row)
    # without reading the link around each token, the firing tokens alone are five different pieces
    assert len({T.token_unit(VOCAB[ID[w]]).key for w in ["://", "t", "/", "xY"]}) > 1


def test_position_features_are_labelled_by_their_context(labelled):
    assert labelled.loc[AFTER_THE, "name"].startswith("after 'the'")
    assert labelled.loc[AFTER_THE, "kind"] == "mixed" and labelled.loc[AFTER_THE, "score"] == pytest.approx(1.0)
    assert labelled.loc[VARIED, "name"].startswith("varied tokens: ")
    assert labelled.loc[PIECES, "name"] == "Tarantino" and labelled.loc[PIECES, "example"] == "by Tarant«ino»,"


def test_no_scaffolding_short_names_and_sensible_scores(labelled):
    for label in labelled["label"]:
        assert "top tokens:" not in label and "ngrams:" not in label
    assert (labelled["name"].str.len() <= 60).all()
    assert labelled["score"].between(0, 1).all()
    clean, hedge, varied = (labelled.loc[f, "score"] for f in (PERIOD, HEDGE, VARIED))
    assert clean > hedge > varied and varied < 0.5


def test_auto_labels_delegates_and_keeps_the_stored_columns():
    ctx = make_contexts(CONTEXTS)
    auto = L.auto_labels(ctx, BACKGROUND, decode)
    assert {"feature_id", "label", "score"} <= set(auto.columns)
    pd.testing.assert_frame_equal(auto, T.readable_labels(ctx, BACKGROUND, decode))


def test_control_characters_read_as_such_not_as_an_invisible_name():
    """Debian fortunes bold words with backspaces ("_\bi_\bs"); a feature firing on "\b" was named by an invisible
    character."""
    unit = T.token_unit("\x08")
    assert (unit.key, unit.display, unit.kind) == ("control characters", "control characters", "formatting")
    assert T.token_unit("\x1b\x08").key == "control characters" and T.token_unit("a\x08").kind == "word"


def test_special_tokens_are_never_read_as_words():
    ctx = make_contexts({1: [([" the", " LOL", " film"], 1)] * 3})
    df = T.readable_labels(ctx, BACKGROUND, decode, skip_ids={ID[" LOL"]})
    assert df["name"].iloc[0] == "special token LOL" and df["kind"].iloc[0] == "formatting"


def test_evidence_marks_the_token_and_trims_the_context():
    rows = pd.DataFrame({"feature_id": [5, 5, 6], "rank": [1, 0, 0],
                         "before": ["a long preamble that goes on and on before\nthe <b>", "weak", "x"],
                         "token": [" certain", " some", " y"], "after": [" cases\n\nof things that follow later on", "", ""]})
    text = T.evidence_text(rows, feature_id=5)
    assert text == "weak «some»"  # rank 0 first
    shown = T.evidence(rows[rows["rank"] == 1], n=1, before_chars=20, after_chars=16)[0]
    assert shown == "… before ⏎ the <b> «certain» cases ⏎ ⏎ of …"  # HTML left as plain text; pages escape
    assert T.evidence_text(rows.iloc[:0]) == ""
    assert T.mark_context("end.", "\n", "Next") == "end.«⏎»Next"


def test_stored_labels_read_back():
    assert T.split_label('some / few — "in «some» cases"') == ("some / few", "in «some» cases")
    assert T.split_label("my hand label") == ("my hand label", None)
    assert T.label_kind('comma / sentence-final period — "a«,» b"') == "punctuation"
    assert T.label_kind("line break") == "formatting"
    assert T.label_kind('links (t.co URLs) — "«https»"') == "symbol"
    assert T.label_kind("comma / film") == "word"
    assert T.label_kind("after 'the' (film / plot)") == "mixed"
    assert not T.is_formatting("Python code")
    assert T.is_formatting({"label": "question mark"})


def test_config_is_validated():
    with pytest.raises(UserError):
        T.LabelTextConfig(min_coverage=0)
    with pytest.raises(UserError):
        T.LabelTextConfig(max_names=0)
    short = T.readable_labels(make_contexts({HEDGE: CONTEXTS[HEDGE]}), BACKGROUND, decode,
                              config=T.LabelTextConfig(with_example=False, max_names=2))
    assert short["label"].iloc[0] == short["name"].iloc[0] == "certain / some"  # the two most frequent


def test_no_contexts_no_labels():
    empty = L.ContextSet(feature_id=np.zeros(0, np.int64), rank=np.zeros(0, np.int64), doc_id=np.zeros(0, np.int64),
                         act=np.zeros(0, np.float32), token_id=np.zeros(0, np.int64), windows=[], centers=np.zeros(0, np.int64))
    df = T.readable_labels(empty, BACKGROUND, decode)
    assert df.empty and list(df.columns) == T.LABEL_COLUMNS


# -- features whose firing tokens vary, but whose contexts share a property --------------------------
PRONOUNS, NUMBER_WORDS, NAMES, CODE, QUOTED, AFTER_MODAL, CONTRACTIONS, ADVERBS, PIECES_OF_WORDS = range(20, 29)
SHARED = {
    PRONOUNS: [([" the", " film", w, " was"], 2) for w in [" I", " me", " my", " we", " us", " our", " my"]],
    NUMBER_WORDS: [([" in", w, " cases"], 1) for w in [" three", " seven", " twelve", " twenty", " ten", " three"]],
    NAMES: [([" film", " was", v, w, " and"], 3) for v, w in
            [(" said", " London"), (" met", " Obama"), (" visited", " Tokyo"), (" saw", " Berlin"), (" met", " Paris"),
             (" said", " Obama")]],
    CODE: [(["self", ".", "x", " =", " None", "(", ")", ":"], c) for c in [0, 2, 3, 4, 5, 1]],
    QUOTED: [([p, ' "', w, '"', n], 2) for p, w, n in zip([" It", " said", " and", " is", " of", " at"],
                                                                  [" dog", " red", " house", " cat", " story", " plot"],
                                                                  [" and", ",", " in", ".", " by", " to"])],
    AFTER_MODAL: [([" I", m, w, n], 2) for m, w, n in [(" can", " go", " the"), (" will", " see", " a"),
                                                       (" should", " eat", " in"), (" must", " run", " to"),
                                                       (" can", " sleep", "."), (" will", " go", " by")]],
    CONTRACTIONS: [([p, w, " good"], 1) for p, w in [(" you", "'re"), (" I", "'ve"), (" is", "n't"), (" film", "'s"),
                                                     (" they", "'ll"), (" I", "'m")]],
    ADVERBS: [([p, w, n], 1) for p, w, n in zip([" was", " and", " It", " the", " a", " of"],
                                                [" quickly", " slowly", " sadly", " happily", " loudly", " brightly"],
                                                [" good", ".", " in", " to", " by", ","])],
    PIECES_OF_WORDS: [(w, c) for w, c in [([" by", " Tar", "ant", "ino", ","], 1), ([" the", " Gre", "eng", "rass", "."], 2),
                                          ([" a", " Car", "men", " and"], 2), ([" is", " ner", "dy", " at"], 1),
                                          ([" of", " Car", "ant", " in"], 2), ([" to", " ner", "men", "."], 2)]],
}


@pytest.fixture(scope="module")
def shared() -> pd.DataFrame:
    return T.readable_labels(make_contexts(SHARED), BACKGROUND, decode).set_index("feature_id")


@pytest.mark.parametrize("feature, head", [
    (PRONOUNS, "first-person pronouns ("), (NUMBER_WORDS, "number words ("), (NAMES, "proper names ("),
    (CODE, "in code ("), (QUOTED, "inside quotations ("), (AFTER_MODAL, "after modal verbs ("),
    (CONTRACTIONS, "contractions ('re / 've / "), (ADVERBS, "-ly adverbs ("),
    (PIECES_OF_WORDS, "pieces of longer words ("),
])
def test_varied_firing_tokens_are_named_by_what_their_contexts_share(shared, feature, head):
    row = shared.loc[feature]
    assert row["name"].startswith(head), row["label"]
    assert not T.names_no_property(row["label"]) and row["score"] >= 0.8
    # the firing tokens alone are many different words: no word label could name the feature
    words = [T.token_unit(VOCAB[w[c]]).key for w, c in zip(*_windows(SHARED[feature]))]
    assert Counter(words).most_common(1)[0][1] / len(words) < 0.5
    assert ") (" not in row["name"]  # a class's own parenthesis (`contractions ('s / 're / n't)`) gives way to its words


def _windows(contexts: list[tuple[list[str], int]]) -> tuple[list[list[int]], list[int]]:
    return [toks(w) for w, _ in contexts], [c for _, c in contexts]


def test_stored_labels_of_shared_properties_read_back(shared):
    for f in (PRONOUNS, NUMBER_WORDS, NAMES):
        assert T.label_kind(shared.loc[f, "label"]) == "word" and not T.is_formatting(shared.loc[f, "label"])
    assert T.label_kind(shared.loc[CODE, "label"]) == "mixed"
    assert T.names_no_property('varied tokens: a / b — "x «a» y"') and not T.names_no_property("about food (cake)")


class FakeConcepts:
    """A concept namer that calls every context mentioning an animal `animals`, and sees what it is asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, contexts, weights):
        self.asked.extend(contexts)
        out = []
        for texts, w in zip(contexts, weights):
            hit = [any(a in t for a in ("dog", "cat", "house", "story", "plot")) for t in texts]
            out.append(("animals", hit) if np.dot(hit, w) >= 0.5 else None)
        return out


def test_a_concept_namer_names_only_the_features_nothing_else_names_and_comes_after_the_word_classes():
    animals = [([p, w, n], 1) for p, w, n in zip([" a", " in", " It", " was", " and", " good"],
                                                 [" dog", " cat", " house", " story", " red", " plot"],
                                                 [" of", " was", " and", " film", " It", " in"])]
    # varied words and neighbours, two tokens before an animal: only the contexts share something
    about = [([p, w, n, a], 1) for p, w, n, a in zip([" a", " in", " It", " was", " and", " good"],
                                                     [" red", " to", " Paris", " is", " good", " of"],
                                                     [" of", " was", " and", " film", " It", " in"],
                                                     [" dog", " cat", " house", " story", " the", " plot"])]
    ctx = make_contexts({VARIED: CONTEXTS[VARIED], 30: animals, 31: about, PRONOUNS: SHARED[PRONOUNS]})
    namer = FakeConcepts()
    off = T.readable_labels(ctx, BACKGROUND, decode, concepts=namer).set_index("feature_id")
    assert T.names_no_property(off.loc[31, "name"]) and not namer.asked  # off by default
    df = T.readable_labels(ctx, BACKGROUND, decode, config=T.LabelTextConfig(name_contexts=True), concepts=namer).set_index("feature_id")
    assert df.loc[31, "name"].startswith("about animals (") and "red" in df.loc[31, "name"]
    w = np.array([10 - 0.1 * r for r in range(6)])
    assert df.loc[31, "score"] == pytest.approx(w[[0, 1, 2, 3, 5]].sum() / w.sum())  # " the" is not an animal
    assert df.loc[31, "example"] == "a «red» of dog"
    assert df.loc[30, "name"].startswith("nouns (")  # what the firing words share comes before what the contexts do
    assert T.names_no_property(df.loc[VARIED, "name"])  # the namer found nothing: still varied
    assert df.loc[PRONOUNS, "name"].startswith("first-person pronouns")
    assert len(namer.asked) == 2 and "a red of dog" in namer.asked[0] + namer.asked[1]  # only the unnamed features asked
    without = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id")
    assert T.names_no_property(without.loc[31, "name"]) and without.loc[30, "name"] == df.loc[30, "name"]


def test_the_forms_of_one_word_count_as_that_word():
    forms = [([p, w, n], 1) for p, w, n in zip([" a", " in", " It", " was", " and", " good"],
                                               [" revealed", " reveal", " revealing", " reveals", " dog", " cat"],
                                               [" of", " was", " and", " film", " It", " in"])]
    row = T.readable_labels(make_contexts({40: forms}), BACKGROUND, decode).iloc[0]
    assert row["name"] == "reveal" and row["kind"] == "word"  # four forms of one word, each once
    assert T.is_form_of("carried", "carry") and T.is_form_of("honesty", "honest") and T.is_form_of("deeper", "deep")
    assert not T.is_form_of("they", "the") and not T.is_form_of("certain", "cert")


CARRYING = [([p, w, n], 1) for p, w, n in zip(
    [" I", " and", " It", " the", " was", " you", " to", " we", " in", " they"],
    [" brings", " carry", " fetch", " delivered", " brought", " gather", " catch", " lift", " remove", " distribute"],
    [" home", " in", ".", ",", " and", " the", " to", " dog", " It", " was"])]
# one word each from ten contexts of other features: four nouns (20% of the background's words are), no shared sense
RANDOM_GROUP = [([p, w, n], 1) for p, w, n in zip(
    [" I", " and", " It", " the", " was", " you", " to", " we", " in", " they"],
    [" dog", " red", " quickly", " said", " house", " good", " plot", " few", " film", " sleep"],
    [" home", " in", ".", ",", " and", " the", " to", " dog", " It", " was"])]


def test_verbs_of_one_sense_are_named_by_their_class_and_a_random_group_is_not():
    ctx = make_contexts({50: CARRYING, 51: RANDOM_GROUP})
    df = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id")
    assert df.loc[50, "name"].startswith("carrying and getting (") and "carry" in df.loc[50, "name"]
    assert df.loc[50, "score"] == pytest.approx(1.0) and df.loc[50, "kind"] == "word"
    assert T.names_no_property(df.loc[51, "name"])  # 4 nouns of 10 is chance at a 20% base rate
    # a looser rule (any class held by 40% of the contexts, at any odds) would name the random group
    loose = T.LabelTextConfig(word_groups=WordGroupConfig(min_lift=1.0, max_p=0.5))
    assert T.readable_labels(ctx, BACKGROUND, decode, config=loose).set_index("feature_id").loc[51, "name"].startswith(
        "nouns (")


class FakeWordConcepts(FakeConcepts):
    """A concept namer whose contexts name nothing and whose words always name `odd things`."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[list[str | None]] = []

    def __call__(self, contexts, weights):
        return [None] * len(contexts)

    def name_words(self, words, weights, min_share=None, max_p=None):
        self.words.extend(words)
        return [("odd things", [w is not None for w in ws]) for ws in words]


def test_the_firing_words_name_a_concept_last_and_only_for_features_nothing_else_names():
    ctx = make_contexts({VARIED: CONTEXTS[VARIED], 50: CARRYING, PRONOUNS: SHARED[PRONOUNS]})
    namer = FakeWordConcepts()
    df = T.readable_labels(ctx, BACKGROUND, decode, concepts=namer).set_index("feature_id")
    assert df.loc[VARIED, "name"].startswith("words about odd things (")
    assert df.loc[50, "name"].startswith("carrying and getting (")  # the word class came first
    # asked about VARIED only, and not about its function words ("to" and "is" lie near arbitrary concepts)
    assert namer.words == [["red", "dog", None, "paris", "cat", "house", "story", None]]


def test_a_feature_firing_on_varied_function_words_is_named_by_that():
    words = [" is", " a", " of", " and", " to", " in", " was", " some", " and", " is"]  # no one class holds 40%
    before, after = [" film", " good", " plot", " It", " movie"] * 2, [" story", " the", " good", " movie", " plot"] * 2
    grammar = [([b, w, a], 1) for b, w, a in zip(before, words, after)]
    content = [toks([" film", " good", " plot", " movie", " story", " the", " a", " film", " plot", " is"])] * 30
    df = T.readable_labels(make_contexts({VARIED: CONTEXTS[VARIED], 60: grammar}), content, decode).set_index("feature_id")
    assert df.loc[60, "name"].startswith("function words (")  # ten of ten, at a background rate of 30%
    common = T.readable_labels(make_contexts({VARIED: CONTEXTS[VARIED], 60: grammar}), BACKGROUND, decode)
    assert T.names_no_property(common.set_index("feature_id").loc[60, "name"])  # 65% of BACKGROUND: chance
    assert T.names_no_property(df.loc[VARIED, "name"])  # two function words of eight: still varied


def test_a_property_of_a_third_of_the_contexts_names_a_feature_only_far_above_its_rate_among_all_contexts():
    """Planted: 7 of feature 70's 20 contexts fire on -ly adverbs, its other 13 on varied words; 7 of feature 71's
    fire after 'the', which 12 other features always fire after. 35% is under the 40% a property needs, but
    adverbs are rare among all the contexts (4%) and 'after the' is not (80%): 70 is named, 71 stays varied,
    and without the step 70 was varied too."""
    def row(p: str, w: str, n: str) -> tuple[list[str], int]:
        return [p, w, n], 1
    others = [row(p, w, n) for p, w, n in zip([" dog", " It", " and", " good", " film", " movie", " plot", " cat", " It",
                                                " and", " good", " film", " dog"],
                                               [" red", " dog", " cat", " house", " story", " home", " eat", " run",
                                                " go", " see", " sleep", " many", " red"],
                                               [" of", " was", " and", " film", " It", " in", " at", ".", ",", " to",
                                                " by", " is", " good"])]
    adverbs = [row(p, w, n) for p, w, n in zip([" and", " It", " film", " good", " a", " plot", " movie"],
                                                [" quickly", " slowly", " sadly", " happily", " loudly", " brightly",
                                                 " quickly"], [" good", ".", " and", " It", ",", " is", " was"])]
    nouns = [" film", " plot", " dog", " cat", " house", " story", " movie", " director"]
    after_the = [row(" the", w, n) for w, n in zip([" director", " film", " plot", " movie", " director", " film", " plot"],
                                                  [" and", ".", ",", " It", " good", " and", "."])]
    filler = {100 + k: [row(" the", nouns[(k + j) % 8], " was") for j in range(10)] for k in range(12)}
    ctx = make_contexts({70: adverbs + others, 71: after_the + others, **filler})
    df = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id")
    assert df.loc[70, "name"].startswith("partly -ly adverbs (") and "quickly" in df.loc[70, "name"], df.loc[70, "label"]
    assert 0.35 <= df.loc[70, "score"] < 0.4  # the share of the activation it names (7 of 20, the strongest)
    assert "partly" not in label_words(df.loc[70, "label"])  # two partial labels do not fold findings by that word
    assert T.names_no_property(df.loc[71, "name"]), df.loc[71, "label"]
    without = T.readable_labels(ctx, BACKGROUND, decode, config=T.LabelTextConfig(rare_share=1.0))
    assert T.names_no_property(without.set_index("feature_id").loc[70, "name"])
    with pytest.raises(UserError):
        T.LabelTextConfig(rare_lift=0.5)


def test_what_the_sentence_around_holds_names_a_feature_that_fires_on_varied_words():
    """Planted: 8 of feature 80's 20 contexts sit in "why" questions and 8 of feature 81's after "not" in their
    sentence, on varied words with varied neighbours; no other feature's contexts hold either. 80 reads "in questions"
    and 81 "in clauses with negations (not)"; where every context is a question, 80 stays varied, and so did both
    before the step read the sentence."""
    words = [" red", " dog", " cat", " house", " story", " home", " eat", " run", " go", " see", " sleep", " many",
             " film", " plot", " movie", " director", " good", " quickly", " Paris", " London"]
    subjects = [" you", " they", " we", " I"]
    others = [([words[(j + 3) % 20], words[(j + 7) % 20], w], 2) for j, w in enumerate(words[8:])]
    asking = {80: [([" why", " do", subjects[j % 4], w], 3) for j, w in enumerate(words[:8])] + others,
              81: [([" It", " was", " not", [" a", " the", " good", " quickly"][j % 4], w], 4)
                   for j, w in enumerate(words[:8])] + others}
    filler = {100 + k: [([" the", words[(k + j) % 20], " was", "."], 1) for j in range(10)] for k in range(12)}
    df = T.readable_labels(make_contexts({**asking, **filler}), BACKGROUND, decode).set_index("feature_id")
    assert df.loc[80, "name"].startswith("in questions ("), df.loc[80, "label"]
    assert df.loc[81, "name"] == "in clauses with negations (not)", df.loc[81, "label"]
    assert "clauses" not in label_words(df.loc[81, "label"])  # two such labels fold findings only by their class
    asked = {100 + k: [([" why", " do", " you", words[(k + j) % 20]], 3) for j in range(10)] for k in range(12)}
    common = T.readable_labels(make_contexts({**asking, **asked}), BACKGROUND, decode).set_index("feature_id")
    assert T.names_no_property(common.loc[80, "name"]), common.loc[80, "label"]



def _third_of(planted: list[str]) -> list[tuple[list[str], int]]:
    """20 contexts: the `planted` firing words (7), then 13 varied words with varied neighbours."""
    varied = [" red", " dog", " cat", " house", " story", " home", " many", " Paris", " London", " Tokyo", " good",
              " three", " slowly"]
    before = [" and", " It", " a", " good", " in", " was", " to"]
    after = [" of", ".", " is", ",", " at", " the", " by", " It", " and", " in", " was"]
    return [([before[j % 7], w, after[j % 11]], 1) for j, w in enumerate(planted + varied)]


def test_one_firing_word_or_its_word_class_in_a_third_of_the_contexts_names_a_feature_far_above_its_rate():
    """Planted: 7 of feature 90's 20 contexts fire on " catch" and 7 of feature 91's on body parts (heart, legs, …),
    the rest on varied words; 7 of feature 92's fire on " film", on which 12 other features fire too. 35% is under
    the 40% a word (step 1) or a class (step 4) needs, but " catch" and body parts are rare among all the contexts:
    90 reads "partly catch", 91 "partly body parts (…)", 92 stays varied (film is common), and without step 6 all
    three were varied."""
    body = [" heart", " legs", " hand", " head", " arm", " foot", " eye"]
    nouns = [" film", " plot", " dog", " cat", " house", " story", " movie", " director"]
    filler = {100 + k: [([" the", nouns[(k + j) % 8], " was"], 1) for j in range(10)] for k in range(12)}
    ctx = make_contexts({90: _third_of([" catch"] * 7), 91: _third_of(body), 92: _third_of([" film"] * 7), **filler})
    df = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id")
    assert df.loc[90, "name"] == "partly catch", df.loc[90, "label"]
    assert df.loc[91, "name"].startswith("partly body parts (") and "heart" in df.loc[91, "name"], df.loc[91, "label"]
    assert 0.35 <= df.loc[91, "score"] < 0.4  # the strongest 7 of 20
    assert T.names_no_property(df.loc[92, "name"]), df.loc[92, "label"]
    without = T.readable_labels(ctx, BACKGROUND, decode, config=T.LabelTextConfig(rare_share=1.0)).set_index("feature_id")
    assert all(T.names_no_property(without.loc[f, "name"]) for f in (90, 91, 92))


class RareWordConcepts(FakeWordConcepts):
    """Names `sports` where the firing words include go or run, only at the share and chance step 6 asks."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[float | None, float | None, int]] = []

    def name_words(self, words, weights, min_share=None, max_p=None):
        self.asked.append((min_share, max_p, len(words)))
        if min_share is None:
            return [None] * len(words)
        return [("sports", [w in ("go", "run") for w in ws]) if "go" in ws else None for ws in words]


def test_a_concept_of_the_firing_words_of_a_third_of_the_contexts_names_what_nothing_else_names():
    """Step 6 asks the concept namer last, at `rare_share` and the stricter `rare_concept_max_p`, only about the
    features still varied (not 93, which a rare firing word names), and says `partly`."""
    namer = RareWordConcepts()
    sport = _third_of([" go", " run", " go", " run", " eat", " see", " sleep"])
    nouns = [" film", " plot", " dog", " cat", " house", " story", " movie", " director"]
    filler = {100 + k: [([" the", nouns[(k + j) % 8], " was"], 1) for j in range(10)] for k in range(12)}
    ctx = make_contexts({VARIED: CONTEXTS[VARIED], 93: _third_of([" catch"] * 7), 94: sport, **filler})
    df = T.readable_labels(ctx, BACKGROUND, decode, concepts=namer,
                           config=T.LabelTextConfig(rare_concept_max_p=1e-5)).set_index("feature_id")
    assert df.loc[94, "name"].startswith("partly words about sports (go / run"), df.loc[94, "label"]
    assert df.loc[93, "name"] == "partly catch" and T.names_no_property(df.loc[VARIED, "name"])
    assert namer.asked == [(None, None, 3), (0.25, 1e-5, 2)]  # step 5 about all three, step 6 about VARIED and 94


def _filler(n: int) -> dict[int, list[tuple[list[str], int]]]:
    """`n` features of 10 contexts each on common nouns, with the neighbours `_third_of`'s varied words have (so
    that those neighbours are no rare property)."""
    nouns = [" film", " plot", " dog", " cat", " house", " story", " movie", " director"]
    before = [" and", " It", " a", " good", " in", " was", " to"]
    after = [" of", ".", " is", ",", " at", " the", " by", " It", " and", " in", " was"]
    return {100 + k: [([before[(k + j) % 7], nouns[(k + j) % 8], after[(k + j) % 11]], 1) for j in range(10)]
            for k in range(n)}


def test_a_firing_word_of_the_strongest_contexts_names_a_feature_at_fewer_than_a_quarter_of_them():
    """Planted: 4 of feature 96's 17 contexts (24%, under `rare_share`) fire on " basketball", a word rare among all
    the contexts, and hold 38% of its activation: it reads "partly basketball". The same 4 as its weakest contexts (6% of
    the activation) leave it varied; so did the count of contexts alone, before."""
    filler = _filler(40)
    for strongest, planted_act in ((True, 10.0), (False, 1.0)):
        contexts = _third_of([" basketball"] * 4)
        ctx = make_contexts({96: contexts if strongest else contexts[4:] + contexts[:4], **filler})
        rows = np.flatnonzero(ctx.feature_id == 96)
        ctx.act[rows] = [planted_act] * 4 + [5.0] * 13 if strongest else [5.0] * 13 + [planted_act] * 4
        name = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id").loc[96, "name"]
        assert (name == "partly basketball") if strongest else T.names_no_property(name), name


SPORTS = [" basketball", " soccer", " hockey", " rugby", " volleyball", " surfing"]  # in Roget's `sports`, no GI class
VOCAB.extend(w for w in SPORTS + [" Obama"] if w not in ID)
ID.update({t: i for i, t in enumerate(VOCAB)})


def test_a_rogets_category_of_the_firing_words_names_a_feature_no_word_class_names():
    """Planted: 6 of feature 97's 20 contexts fire on six sports (basketball, soccer, …), which share no General
    Inquirer class but are all listed under Roget's `sports`; the rest on varied words. It reads "partly words about
    sports (…)"; the sports spread one per feature over six features name none of them."""
    filler = _filler(40)
    planted = _third_of(SPORTS)[:6] + _third_of([" red"])[1:]
    df = T.readable_labels(make_contexts({97: planted, **filler}), BACKGROUND, decode).set_index("feature_id")
    assert df.loc[97, "name"].startswith("partly words about sports (basketball / soccer"), df.loc[97, "label"]
    spread = {200 + j: [planted[j]] + planted[6:] for j in range(6)}
    df = T.readable_labels(make_contexts({**spread, **filler}), BACKGROUND, decode).set_index("feature_id")
    assert all(T.names_no_property(df.loc[200 + j, "name"]) for j in range(6)), df.loc[200:205, "name"].tolist()


FURNITURE = [" home", " table", " international", " cabinet", " period", " mission"]  # each under 8+ Roget categories
VOCAB.extend(w for w in FURNITURE if w not in ID)
ID.update({t: i for i, t in enumerate(VOCAB)})


def test_ambiguous_words_vouch_for_no_rogets_category():
    """Planted like the sports: 6 of 20 contexts fire on home / table / international / cabinet / period / mission, all
    listed under Roget's `furniture` but each under 8 to 40 categories, so some rare category fits them by chance: no
    `words about furniture`. Counting every word (`roget_max_senses` past the most any word has) names it."""
    filler = _filler(40)
    ctx = make_contexts({98: _third_of(FURNITURE)[:6] + _third_of([" red"])[1:], **filler})
    name = T.readable_labels(ctx, BACKGROUND, decode).set_index("feature_id").loc[98, "name"]
    assert "words about" not in name, name
    loose = T.LabelTextConfig(roget_max_senses=100)
    name = T.readable_labels(ctx, BACKGROUND, decode, config=loose).set_index("feature_id").loc[98, "name"]
    assert name.startswith("partly words about furniture ("), name


def test_names_do_not_vote_for_a_concept():
    """A capitalised word the lexicon does not know (Obama, Tokyo) reaches no concept namer: MiniLM placed such names
    near arbitrary concepts (`words about the clergy (Ritchie / founder / giants)`). Known words stay, capitalised
    or not (London)."""
    namer = FakeWordConcepts()
    words = [" red", " Obama", " dog", " Tokyo", " London", " cat", " house", " story"]
    ctx = make_contexts({VARIED: [([p, w, n], 1) for p, w, n in zip(CONTEXTS[VARIED][0][0] * 3, words,
                                                                         [" of", " was", " and", " film", " It", " in",
                                                                          " at", " the"])]})
    T.readable_labels(ctx, BACKGROUND, decode, concepts=namer)
    assert namer.words == [["red", None, "dog", None, "london", "cat", "house", "story"]]


class OneWordConcepts(FakeWordConcepts):
    """Names `sports` wherever a firing word is go, by the contexts that fire on go or run."""

    def name_words(self, words, weights, min_share=None, max_p=None):
        return [("sports", [w in ("go", "run") for w in ws]) if "go" in ws else None for ws in words]


def test_one_firing_word_is_no_concept():
    """A concept whose contexts all fire on one word names nothing (that word is the firing-word test's, at its own
    base rate): 3 of 20 contexts on " go" stay `varied tokens`, where two words (go, run) read `words about sports`."""
    one = _third_of([" go"] * 3)
    two = _third_of([" go", " run", " go"])
    df = T.readable_labels(make_contexts({95: one, 96: two, **_filler(12)}), BACKGROUND, decode,
                           concepts=OneWordConcepts()).set_index("feature_id")
    assert T.names_no_property(df.loc[95, "name"]), df.loc[95, "label"]
    assert "words about sports (go" in df.loc[96, "name"], df.loc[96, "label"]
