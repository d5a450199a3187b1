"""Tests of backend.analysis.retrieve with planted documents."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from backend.analysis.retrieve import (
    Condition,
    dense_retrieve,
    inverse_document_frequency,
    query_weights,
    rank_by_query,
    retrieve,
    retrieve_by_vector,
)
from backend.errors import UserError


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
    t = retrieve_by_vector(X, {1: 1.0, 2: 1.0}, top=5, weighting="none")  # plain cosine
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


def rare_concept_corpus(seed: int, n: int = 1000, n_common: int = 5, n_relevant: int = 40):
    """Planted: features 0..n_common-1 fire in ~95% of documents (punctuation-like), 40 noise features
    in 10% each, and the rare topical feature 10 only in the ``n_relevant`` relevant documents."""
    rng = np.random.default_rng(seed)
    F = 60
    dense = np.zeros((n, F))
    dense[:, :n_common] = np.where(rng.random((n, n_common)) < 0.95, rng.uniform(0.5, 1.5, (n, n_common)), 0.0)
    noise = np.arange(20, F)
    dense[:, noise] = np.where(rng.random((n, noise.size)) < 0.1, rng.uniform(0.5, 1.5, (n, noise.size)), 0.0)
    relevant = rng.choice(n, n_relevant, replace=False)
    dense[relevant, 10] = rng.uniform(0.5, 1.5, n_relevant)
    query = {f: 1.0 for f in range(n_common)} | {10: 1.0}
    return sp.csr_matrix(dense), relevant, query


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_idf_recovers_a_rare_concept_that_plain_cosine_misses(seed):
    X, relevant, query = rare_concept_corpus(seed)
    with_idf = rank_by_query(X, query, top=20)  # idf is the default
    plain = rank_by_query(X, query, top=20, weighting="none")
    p_idf = np.isin(with_idf.table["row"], relevant).mean()
    p_plain = np.isin(plain.table["row"], relevant).mean()
    assert p_idf >= 0.9, p_idf
    assert p_plain <= 0.4, p_plain
    assert with_idf.weighting == "idf" and plain.weighting == "none"
    # the shown weights: the rare feature leads the idf query, and plain cosine weighs everything by 1
    assert int(with_idf.weights["feature_id"].iloc[0]) == 10
    assert (plain.weights["idf"] == 1.0).all()
    assert list(retrieve_by_vector(X, query, top=20)["row"]) == list(with_idf.table["row"])


def test_idf_scores_equal_the_explicit_tf_idf_cosine():
    X = corpus()
    query = {1: 0.5, 2: 2.0, 7: 1.0}
    n = X.shape[0]
    df = (X.toarray() > 0).sum(0)
    idf = np.log((n + 1) / (df + 1)) + 1
    np.testing.assert_allclose(inverse_document_frequency(X), idf)
    q = np.zeros(X.shape[1])
    q[list(query)] = list(query.values())
    qw, D = q * idf, X.toarray() * idf
    expected = D @ qw / np.maximum(np.linalg.norm(D, axis=1) * np.linalg.norm(qw), 1e-12)
    res = rank_by_query(X, query, top=n)
    np.testing.assert_allclose(res.table["score"], expected[res.table["row"]])
    shared = (X.toarray()[:, list(query)] > 0).any(1)
    assert set(res.table["row"]) == set(np.flatnonzero(shared))
    assert (np.diff(res.table["score"]) <= 1e-12).all()
    w = query_weights(X, query).set_index("feature_id")
    assert list(w.columns) == ["query_act", "doc_freq", "idf", "weight"]
    for f, act in query.items():
        assert w.loc[f, "doc_freq"] == df[f] and w.loc[f, "idf"] == pytest.approx(idf[f])
        assert w.loc[f, "weight"] == pytest.approx(act * idf[f])


def test_weighting_and_feature_ids_are_checked():
    X = corpus()
    with pytest.raises(UserError, match="weighting"):
        rank_by_query(X, {1: 1.0}, weighting="bm25")
    with pytest.raises(UserError, match="outside"):
        rank_by_query(X, {99: 1.0})
    empty = rank_by_query(X, {})
    assert empty.table.empty and empty.weights.empty
