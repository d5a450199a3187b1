"""Word classes of firing words: the shipped General Inquirer lexicon and the chance test that guards a class label."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from backend import word_groups as G
from backend import word_lexicon as X
from backend.errors import UserError


def test_the_shipped_lexicon_is_built_from_the_general_inquirer_and_reads_inflected_forms(tmp_path):
    lex = X.load_lexicon()
    assert len(lex) > 8000
    rebuilt = tmp_path / "lexicon.tsv"
    assert X.write_lexicon(rebuilt) == len(lex)
    assert X.load_lexicon(rebuilt) == lex  # data/word_lexicon.tsv is what the builder writes
    assert X.lookup("carry") == ("verb", ("Fetch", "Strong"))
    for form in ("carried", "carries", "carrying", "brings", "brought", "held"):
        assert X.lookup(form)[0] == "verb", form
    assert X.lookup("honestly")[0] == "adv" and X.lookup("honest")[0] == "adj"
    assert X.lookup("film")[0] == "noun"  # the commonest sense, not the rare verb
    assert X.lookup("the") is None and X.lookup("xqzt") is None  # function words are other rules' job


def test_a_class_names_a_group_only_far_above_its_base_rate():
    base = {"nouns": 0.3, "verbs": 0.15, "words of strength": 0.1}
    nouns, others = ["dog", "house", "plot", "film", "story"], ["quickly", "red", None, "good"]
    chance = (nouns * 2)[:9] + (others * 3)[:11]  # 9 nouns of 20: 45%, at a 30% base rate
    assert G.shared_class(chance, base) is None
    name, hit = G.shared_class(nouns * 3 + others[:1] * 5, base)  # 15 of 20
    assert name == "nouns" and sum(hit) == 15
    carrying = ["brings", "carry", "fetch", "delivered", "brought", "gather", "catch", "lift", None, "red"]
    name, hit = G.shared_class(carrying, base)
    assert name == "carrying and getting" and hit == [True] * 8 + [False, False]
    # the same group at a base rate of 60% for that class: chance
    assert G.shared_class(carrying, {**base, "carrying and getting": 0.6, "verbs": 0.6}) is None
    with pytest.raises(UserError):
        G.WordGroupConfig(max_p=0)


def test_base_rates_take_the_highest_of_the_large_pools_and_the_background():
    cfg = G.WordGroupConfig(min_pool=4)
    rates = G.base_rates([["dog", "cat", None, "red"], ["dog"]], Counter({"dog": 1, "the": 9}), cfg)
    assert rates["nouns"] == pytest.approx(0.5) and rates["animals"] == pytest.approx(0.5)  # the small pool is left out
    assert G.base_rates([], Counter({"dog": 1, "the": 3}), cfg)["nouns"] == pytest.approx(0.25)


def test_binomial_tail():
    assert G.binomial_tail(0, 5, 0.3) == pytest.approx(1.0)
    assert G.binomial_tail(5, 5, 0.3) == pytest.approx(0.3**5)
    brute = sum(math.comb(20, k) * 0.2**k * 0.8 ** (20 - k) for k in range(8, 21))
    assert G.binomial_tail(8, 20, 0.2) == pytest.approx(brute) and np.isfinite(brute)


def test_function_words_are_one_class_for_the_firing_word_only_far_above_their_base_rate():
    assert G.word_classes("of") == () and G.word_classes("of", True) == (G.FUNCTION_WORDS,)
    assert G.word_classes("carry", True) == G.word_classes("carry") != ()
    assert G.is_function_word("though") and G.is_function_word("may") and not G.is_function_word("fire")
    assert not G.is_function_word("five") and not G.is_function_word(None)
    grammar = ["is", "a", "of", "and", "the", "to", "in", "with"] * 2
    base = {G.FUNCTION_WORDS: 0.45}
    assert G.shared_class(grammar, base, function_words=True)[0] == G.FUNCTION_WORDS
    assert G.shared_class(grammar, base) is None  # not a class unless asked for
    assert G.shared_class(grammar[:5] + ["red", "quickly", None, "good", "dog"], base, function_words=True) is None
