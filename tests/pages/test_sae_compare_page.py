"""The Compare SAEs page (pages/sae_compare.py) under AppTest: workspace B's SAE is a feature permutation of
A's, so for a feature of A the page must show its twin first, by decoder cosine and by co-firing."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from tests.pages.conftest import assert_no_errors
from tests.test_sae_compare import twin_workspaces

PERM_SEED = 5


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_reader, tiny_sae):
    """Pristine files a.duckdb (the tiny SAE) and b.duckdb (its permutation), corpus 'c' in both, and the
    permutation's inverse (A's feature f is B's twin_of[f])."""
    from tests.conftest import TINY_DOCS

    words = TINY_DOCS["text"].str.split().explode().unique().tolist()
    rng = np.random.default_rng(0)
    texts = TINY_DOCS["text"].tolist() + [" ".join(rng.choice(words, size=int(rng.integers(3, 12)))) for _ in range(120)]
    perm = np.random.default_rng(PERM_SEED).permutation(tiny_sae.cfg.d_sae)
    folder = tmp_path_factory.mktemp("twins")
    ws_a, ws_b = twin_workspaces(folder, tiny_reader, tiny_sae, perm, pd.DataFrame({"text": texts}))
    X = ws_a.latents("c").tocsc()
    labels_a = ws_a.labels("c")
    ws_a.close()
    ws_b.close()
    doc_sets = [tuple(X[:, f].nonzero()[0]) for f in range(X.shape[1])]
    unique = [f for f in range(X.shape[1]) if doc_sets[f] and doc_sets.count(doc_sets[f]) == 1]
    return folder, np.argsort(perm), unique, labels_a


@pytest.fixture()
def ws_folder(twins, tmp_path, monkeypatch):
    folder = tmp_path / "workspaces"
    folder.mkdir()
    for name in ("a", "b"):
        shutil.copy(twins[0] / f"{name}.duckdb", folder / f"{name}.duckdb")
    monkeypatch.setenv("SAEDASH_WORKSPACES", str(folder))
    return folder


def first_rows(at) -> list[int]:
    return [int(df.value["feature_id"].iloc[0]) for df in at.dataframe]


def test_the_twin_comes_first_by_both_measures(page, ws_folder, twins):
    _, twin_of, unique, _ = twins
    assert unique, "the corpus gives some feature a document set of its own"
    feature = unique[len(unique) // 2]
    at = page("sae_compare", ws_folder / "a.duckdb").run()
    assert_no_errors(at)
    assert at.selectbox(key="cmp_a").value == "a" and at.selectbox(key="cmp_b").value == "b"
    assert at.selectbox(key="cmp_corpus").value == "c"  # the corpus both workspaces hold
    at.number_input(key="cmp_feature").set_value(feature).run()
    assert_no_errors(at)
    assert len(at.dataframe) == 2
    by_decoder, by_cofiring = (df.value for df in at.dataframe)
    assert first_rows(at) == [twin_of[feature], twin_of[feature]]
    assert by_decoder["cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5) and by_decoder["cosine"].iloc[1] < 0.99
    assert by_cofiring["jaccard"].iloc[0] == pytest.approx(1.0) and by_cofiring["jaccard"].iloc[1] < 1.0
    assert by_cofiring["example"].iloc[0]  # one example document each
    assert any(f"Feature {feature} of A" in h.value for h in at.subheader)

    other = unique[0] if unique[0] != feature else unique[-1]  # another feature: its own twin
    at.number_input(key="cmp_feature").set_value(other).run()
    assert first_rows(at) == [twin_of[other], twin_of[other]]

    at.selectbox(key="cmp_corpus").set_value("__none__").run()  # decoder cosine needs no corpus
    assert_no_errors(at)
    assert len(at.dataframe) == 1 and first_rows(at) == [twin_of[other]]
    assert any("Pick a corpus" in i.value for i in at.info)


def test_a_feature_found_by_its_label(page, ws_folder, twins):
    _, twin_of, unique, labels_a = twins
    feature = next(f for f in unique if labels_a.get(f))
    needle = labels_a[feature].split(" ")[0]
    at = page("sae_compare", ws_folder / "a.duckdb").run()
    at.text_input(key="cmp_search").input(needle).run()
    matches = at.selectbox(key="cmp_match")
    assert f"{feature}: {labels_a[feature]}" in matches.options
    assert all(needle.lower() in option.split(": ", 1)[1].lower() for option in matches.options)
    matches.set_value(feature).run()
    assert_no_errors(at)
    assert first_rows(at) == [twin_of[feature], twin_of[feature]]


def test_workspaces_on_different_models_are_refused(page, ws_folder):
    from backend.workspace import Workspace

    ws = Workspace.open(ws_folder / "b.duckdb")
    ws.store.set_meta(model="gemma-3-270m")
    ws.close()
    at = page("sae_compare", ws_folder / "a.duckdb").run()
    assert not at.exception and not at.dataframe
    assert any("read different models" in e.value for e in at.error)


def test_one_workspace_is_not_enough(page, ws_folder):
    (ws_folder / "b.duckdb").unlink()
    at = page("sae_compare", ws_folder / "a.duckdb").run()
    assert_no_errors(at)
    assert any("needs two workspaces" in i.value for i in at.info) and not at.dataframe
