"""Tests of backend.analysis.retrieve with planted documents."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from backend.analysis.retrieve import Condition, dense_retrieve, retrieve, retrieve_by_vector


def corpus(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, F = 300, 20
    dense = np.where(rng.random((n, F)) < 0.1, rng.uniform(0.05, 0.3, (n, F)), 0.0)
    dense[:, 1:3] = 0.0
    dense[:, 1] = np.where(rng.random(n) < 0.1, 0.2, 0.0)  # weak background for feature 1
    for r in (10, 20, 30):  # planted: features 1 and 2 both strong
        dense[r, 1], dense[r, 2] = 4.0 + r / 100, 2.0
    for r in (40, 50):  # only feature 1
        dense[r, 1] = 5.0
    return sp.csr_matrix(dense)


def test_and_returns_planted_documents_only():
    X = corpus()
    t = retrieve(X, [Condition(1), Condition(2)], mode="and")
    assert list(t["row"]) == [30, 20, 10]  # higher feature-1 activation first
    assert (t["n_matched"] == 2).all()
    # score = sum of activation / column max (feature 1 max is 5.0, feature 2 max is 2.0)
    assert t.iloc[0]["score"] == pytest.approx(4.3 / 5.0 + 1.0)


def test_or_ranks_by_number_matched_then_score_and_min_act_filters():
    X = corpus()
    t = retrieve(X, [Condition(1), Condition(2)], mode="or", top=10)
    assert set(t["row"].head(3)) == {10, 20, 30}
    assert list(t["row"].iloc[3:5]) == [40, 50]
    assert list(t["n_matched"].head(5)) == [2, 2, 2, 1, 1]
    strong = retrieve(X, [Condition(1, min_act=1.0)], mode="or", top=50)
    assert set(strong["row"]) == {10, 20, 30, 40, 50}
    assert retrieve(X, [Condition(1, min_act=10.0)], mode="and").empty
    assert retrieve(X, [], mode="and").empty


def test_retrieve_by_vector_prefers_planted_documents():
    X = corpus()
    t = retrieve_by_vector(X, {1: 1.0, 2: 1.0}, top=5)
    assert set(t["row"].head(3)) == {10, 20, 30}
    assert (t["n_overlap"].head(3) == 2).all()
    row = X[10].toarray().ravel()
    q = np.zeros(X.shape[1])
    q[[1, 2]] = 1.0
    expected = row @ q / (np.linalg.norm(row) * np.linalg.norm(q))
    assert t.set_index("row").loc[10, "score"] == pytest.approx(expected)
    assert retrieve_by_vector(X, {}).empty


def test_dense_retrieve_cosine():
    rng = np.random.default_rng(1)
    D = rng.normal(size=(100, 16))
    q = D[42] * 3.0
    t = dense_retrieve(q, D, top=3)
    assert t.iloc[0]["row"] == 42 and t.iloc[0]["score"] == pytest.approx(1.0)
    assert len(t) == 3 and (np.diff(t["score"]) <= 0).all()
