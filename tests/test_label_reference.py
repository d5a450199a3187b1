"""Reference words: a feature's own words in other text name the few of its weak contexts that fire on them."""
from __future__ import annotations

import gzip
import re
import shutil

import numpy as np
import pytest

from backend import config
from backend import label_reference as R
from backend import label_text as T
from backend.errors import UserError
from backend.sae_reference import build_reference_words
from backend.saes import weights_sha256
from tests.test_label_text import BACKGROUND, _filler, _third_of, decode, make_contexts

SHA = "0123456789abcdef"


def _planted(planted: list[str]) -> dict[int, list[tuple[list[str], int]]]:
    """Feature 98: 20 contexts, the `planted` firing words as its weakest; 40 filler features on common nouns."""
    contexts = _third_of(planted)
    return {98: contexts[len(planted):] + contexts[: len(planted)], **_filler(40)}


def _labels(features, reference):
    ctx = make_contexts(features)
    ctx.act[np.flatnonzero(ctx.feature_id == 98)[13:]] = 1.0  # the planted contexts are its weakest
    return T.readable_labels(ctx, BACKGROUND, decode, reference=reference).set_index("feature_id")


def test_contexts_on_the_features_words_in_other_text_name_it_and_nothing_else_does():
    """Planted: 3 of feature 98's 16 contexts, its weakest (under a tenth of its activation), fire on " heart", a word
    rare among all the contexts; the rest on varied words. With `heart` among its reference words it reads `partly its
    words in other text (heart)`; without a reference, or with another feature's words, it stays varied."""
    features = _planted([" heart"] * 3)
    named = _labels(features, {98: ("heart", "love")}).loc[98]
    assert named["name"] == "partly its words in other text (heart)", named["label"]
    assert 0.0 < named["score"] < 0.1 and "«heart»" in named["label"]
    for reference in (None, {}, {98: ("dog", "love")}, {99: ("heart",)}):
        assert T.names_no_property(_labels(features, reference).loc[98, "name"]), reference


def test_a_word_common_among_all_contexts_names_nothing_and_forms_of_the_word_count():
    """" film" fires in an eighth of the filler's contexts, so three of feature 98's contexts on it are no evidence;
    " revealed" and " reveals" are forms of the reference word `reveal`."""
    assert T.names_no_property(_labels(_planted([" film"] * 3), {98: ("film",)}).loc[98, "name"])
    forms = _labels(_planted([" revealed", " reveals", " revealed"]), {98: ("reveal",)}).loc[98, "name"]
    assert forms.startswith("partly its words in other text (revealed"), forms
    one = _labels(_planted([" heart"]), {98: ("heart",)}).loc[98, "name"]  # one context is no shared property
    assert T.names_no_property(one), one


def test_reference_words_keep_each_features_strongest_words_and_read_back(tmp_path):
    firing = {7: [("main", 4.0), ("master", 3.0), (None, 2.0), ("side", 0.5), ("main", 0.5)], 8: [(None, 1.0)]}
    ref = R.from_firing_words(firing, SHA + "ffff", 10, "ten documents", R.ReferenceConfig(min_share=0.2, max_words=2))
    assert ref.words == {7: ("main", "master")} and ref.sae_sha256 == SHA
    assert ref.shares[7] == (0.45, 0.3)
    back = R.read(R.write(tmp_path / R.FILE_NAME, ref))
    assert back == ref and back.matches(SHA + "0" * 48) and not back.matches("f" * 16) and not back.matches(None)
    assert R.find(SHA, [tmp_path / "missing", tmp_path]) == ref
    assert R.find("f" * 16, [tmp_path]) is None  # another SAE's words name nothing


def test_a_damaged_file_is_refused_clearly_and_skipped_when_searched(tmp_path):
    bad = tmp_path / R.FILE_NAME
    bad.write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a reference-words file"):
        R.read(bad)
    assert R.find(SHA, [tmp_path]) is None
    with gzip.open(bad, "wt") as fh:
        fh.write(f"# sae_sha256={SHA} docs=3 source=x\n7\tmain\n")
    with pytest.raises(UserError, match="line 2"):
        R.read(bad)
    with pytest.raises(UserError):
        R.ReferenceConfig(min_share=0)
    with pytest.raises(UserError):
        R.ReferenceWords("not hex", 1, "x")


def test_the_shipped_saes_reference_words_were_read_with_their_weights():
    """Each shipped SAE's file matches its weights (a retrained SAE needs `python -m backend reference-words`), and
    the labeller finds it for a workspace of that SAE whose recorded folder is gone."""
    lexical = config.SHIPPED_SAES["lexical"]
    assert (lexical.folder / R.FILE_NAME).is_file()
    for sae in config.shipped_saes():
        path = sae.folder / R.FILE_NAME
        if path.is_file():
            ref = R.read(path)
            assert ref.matches(weights_sha256(sae.folder)), sae.key
            assert len(ref.words) > 0.5 * 8192 and all(len(w) <= 5 for w in ref.words.values())
    assert R.for_sae("/gone", weights_sha256(lexical.folder)[:16]) == R.read(lexical.folder / R.FILE_NAME)
    assert R.for_sae("/gone", "f" * 16) is None and R.for_sae("release:id", None) is None


def test_the_command_writes_the_words_an_sae_fires_on_in_the_reference_text_and_labelling_finds_them(
        tmp_path, tiny_model_dir, tiny_sae_dir, tiny_docs):
    """`build_reference_words` (what `python -m backend reference-words` runs) embeds the text with the SAE and keeps,
    per feature, words of the text; a workspace of that SAE then finds the file beside its weights."""
    sae = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, sae)
    path = build_reference_words(sae, model=str(tiny_model_dir), texts=tiny_docs.assign(source="tiny"))
    ref = R.read(path)
    assert path == sae / R.FILE_NAME and ref.matches(weights_sha256(sae)) and ref.n_docs == len(tiny_docs)
    assert ref.source == f"{len(tiny_docs)} offline documents (tiny)"
    text_words = {w.lower() for t in tiny_docs["text"] for w in re.findall(r"[A-Za-z]+", t)}
    assert ref.words and all(set(words) <= text_words for words in ref.words.values())
    assert all(min(s) >= 0.1 and list(s) == sorted(s, reverse=True) for s in ref.shares.values())
    assert R.for_sae(str(sae), weights_sha256(sae)[:16]) == ref
