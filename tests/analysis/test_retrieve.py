"""Tests of backend.analysis.retrieve with planted documents."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from backend.analysis.retrieve import (
    Condition,
    cosine_scores,
    dense_retrieve,
    explain_hits,
    fuse_scores,
    hybrid_ranking,
    log_scaled,
    query_scores,
    tail_excess,
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


@pytest.mark.parametrize("top", [-1, 0, 2.5, True, "5"])
def test_top_must_be_a_whole_number_of_at_least_one(top):
    """Every ranking refuses such a `top` with a message: before, -1 sliced off the last document and 2.5 raised a
    TypeError from inside numpy."""
    X, scores = corpus(), np.linspace(0, 1, 300)
    calls = [lambda: rank_by_query(X, {1: 1.0}, top=top), lambda: dense_retrieve(np.ones(3), np.ones((5, 3)), top=top),
             lambda: fuse_scores({"a": scores, "b": scores[::-1]}, top=top),
             lambda: retrieve(X, [Condition(1)], top=top)]
    for call in calls:
        with pytest.raises(UserError, match="top is how many documents"):
            call()
    assert len(rank_by_query(X, {1: 1.0}, top=np.int64(2)).table) == 2


# -- hybrid: SAE + dense fused ------------------------------------------------------------------
def two_signals(seed: int, n: int = 1000, n_rel: int = 40):
    """Planted: a topical query that only the dense ranker separates (the SAE scores are noise) and a
    property query that only the SAE ranker separates (dense noise), like MiniLM on a topic vs SAE
    features on hedging. Returns {query: (sae scores, dense scores, relevant rows)}."""
    rng = np.random.default_rng(seed)
    topical, prop = rng.choice(n, (2, n_rel), replace=False)

    def signal(relevant):
        s = rng.normal(0.10, 0.03, n)
        s[relevant] += rng.uniform(0.08, 0.2, n_rel)
        return s

    def noise():
        return rng.normal(0.10, 0.03, n)

    return {"topical": (noise(), signal(topical), topical), "property": (signal(prop), noise(), prop)}


def precision(rows, relevant) -> float:
    return float(np.isin(np.asarray(rows)[: len(relevant)], relevant).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_fusion_finds_what_either_signal_finds(seed):
    """Each query is led by the ranker that separates its documents; neither ranker alone finds both,
    and the fusions that weigh every ranker alike (reciprocal rank, plain z-scores) are weaker controls."""
    for name, (sae, dense, relevant) in two_signals(seed).items():
        alone = {"sae": sae, "dense": dense}
        p = {k: precision(np.argsort(-v, kind="stable"), relevant) for k, v in alone.items()}
        p_fused = precision(fuse_scores(alone, top=40)["row"], relevant)
        assert p_fused >= max(p.values()) - 0.05 and p_fused >= 0.85, (name, p_fused, p)
        assert min(p.values()) <= 0.2, (name, p)  # the other ranker alone misses them
        for control in ("rrf", "zscore"):
            p_control = precision(fuse_scores(alone, top=40, fusion=control)["row"], relevant)
            assert p_control < p_fused - 0.1, (name, control, p_control, p_fused)


def test_adaptive_fusion_keeps_both_when_both_separate():
    """Two informative rankers finding different halves of the relevant set: both halves come back."""
    rng = np.random.default_rng(5)
    n = 1000
    rel = rng.choice(n, 40, replace=False)
    a, b = rng.normal(0.1, 0.03, n), rng.normal(0.1, 0.03, n)
    a[rel[:20]] += 0.2
    b[rel[20:]] += 0.2
    top = fuse_scores({"sae": a, "dense": b}, top=40)["row"].to_numpy()
    assert np.isin(rel[:20], top).mean() >= 0.9 and np.isin(rel[20:], top).mean() >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_long_tailed_ranker_that_is_noise_does_not_lead_once_log_scaled(seed):
    """SAE-like scores: non-negative, most documents near 0 and a long right tail (log-normal). As noise for a
    topical query their tail looked like a separated group and outweighed the informative dense ranker; read
    on a log scale they weigh nothing, and when their far tail is the relevant set they still lead."""
    rng = np.random.default_rng(seed)
    n, rel = 600, np.arange(60)
    dense_topic = rng.normal(0.2, 0.05, n)
    dense_topic[rel] += 0.1
    sae_noise = rng.lognormal(-3.0, 0.9, n)
    old = precision(fuse_scores({"sae": sae_noise, "dense": dense_topic}, top=60)["row"], rel)
    new = precision(fuse_scores({"sae": sae_noise, "dense": dense_topic}, top=60, log_scale=("sae",))["row"], rel)
    dense_alone = precision(np.argsort(-dense_topic, kind="stable"), rel)
    assert new >= dense_alone - 0.1 and new > old + 0.25, (old, new, dense_alone)
    sae_property = rng.lognormal(-3.0, 0.9, n)
    sae_property[rel] *= np.exp(4.0)
    dense_noise = rng.normal(0.2, 0.05, n)
    fused = fuse_scores({"sae": sae_property, "dense": dense_noise}, top=60, log_scale=("sae",))["row"]
    assert precision(fused, rel) >= 0.9
    assert np.array_equal(log_scaled(np.array([-0.1, 0.5])), [-0.1, 0.5])  # not a non-negative score: unchanged
    assert np.all(np.isfinite(log_scaled(np.array([0.0, 0.0, 0.2]))))


def test_tail_excess_is_near_zero_for_noise_and_large_for_a_separated_group():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=2000)
    assert tail_excess(noise) < 0.3
    planted = noise.copy()
    planted[:50] += 5.0
    assert tail_excess(planted) > 2.0  # ~5 + N(0, 1) against the ~2.3 of the top 50 of 2000 normals


def test_fuse_scores_columns_ranks_and_exact_values():
    sae = np.array([0.1, 0.9, 0.5, 0.5])
    dense = np.array([0.8, 0.2, 0.4, 0.0])
    out = fuse_scores({"sae": sae, "dense": dense}, top=4, fusion="zscore")
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    want = z(sae) + z(dense)
    assert list(out["row"]) == list(np.lexsort((np.arange(4), -want)))
    np.testing.assert_allclose(out["score"], want[out["row"]])
    assert list(out.columns) == ["row", "score", "sae_rank", "sae_score", "dense_rank", "dense_score"]
    ranks = out.set_index("row")
    assert ranks.loc[1, "sae_rank"] == 1 and ranks.loc[2, "sae_rank"] == 2 and ranks.loc[3, "sae_rank"] == 3  # tie: lower row
    assert ranks.loc[0, "dense_rank"] == 1 and ranks.loc[3, "dense_rank"] == 4
    rrf = fuse_scores({"sae": sae, "dense": dense}, top=2, fusion="rrf", rrf_k=1)
    r_sae, r_dense = np.array([4, 1, 2, 3]), np.array([1, 3, 2, 4])
    want_rrf = 1 / (1 + r_sae) + 1 / (1 + r_dense)
    assert list(rrf["row"]) == list(np.lexsort((np.arange(4), -want_rrf)))[:2]
    np.testing.assert_allclose(rrf["score"], want_rrf[rrf["row"]])
    for fusion in ("adaptive", "zscore"):  # a constant ranker adds nothing
        flat = fuse_scores({"sae": np.ones(4), "dense": dense}, top=4, fusion=fusion)
        assert list(flat["row"]) == list(np.argsort(-dense, kind="stable"))
    with pytest.raises(UserError, match="fusion"):
        fuse_scores({"sae": sae}, fusion="max")
    with pytest.raises(UserError, match="same documents"):
        fuse_scores({"sae": sae, "dense": dense[:3]})


def test_explain_hits_lists_the_query_features_present_by_their_share_of_the_score():
    X = sp.csr_matrix(np.array([[2.0, 0.5, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0]]))
    query = {0: 1.0, 1: 2.0, 2: 0.5}
    weights = query_weights(X, query)
    out = explain_hits(X, weights, [0, 1, 2])
    idf = inverse_document_frequency(X)
    terms0 = {f: X[0, f] * idf[f] * query[f] * idf[f] for f in (0, 1)}
    assert out.loc[0, "feature_ids"] == tuple(sorted(terms0, key=lambda f: -terms0[f]))
    total = sum(terms0.values())
    np.testing.assert_allclose(out.loc[0, "shares"], [terms0[f] / total for f in out.loc[0, "feature_ids"]])
    assert out.loc[1, "feature_ids"] == (2,) and out.loc[1, "shares"] == pytest.approx((1.0,))
    assert out.loc[2, "feature_ids"] == () and out.loc[2, "n_shared"] == 0  # feature 3 is not a query feature
    assert list(out["n_shared"]) == [2, 1, 0]
    # the shares explain the SAE score: dot products of the idf-weighted vectors
    _, scores, _ = query_scores(X, query)
    q = np.zeros(4)
    q[list(query)] = [query[f] * idf[f] for f in query]
    d0 = X[0].toarray().ravel() * idf
    assert scores[0] == pytest.approx(d0 @ q / (np.linalg.norm(d0) * np.linalg.norm(q)))
    assert total == pytest.approx(d0 @ q)


def test_query_scores_and_cosine_scores_agree_with_the_rankings():
    X = corpus()
    query = {1: 0.5, 2: 2.0, 7: 1.0}
    _, scores, overlap = query_scores(X, query)
    ranked = rank_by_query(X, query, top=X.shape[0]).table
    np.testing.assert_allclose(scores[ranked["row"]], ranked["score"])
    assert set(np.flatnonzero(overlap > 0)) == set(ranked["row"])
    rng = np.random.default_rng(3)
    D, q = rng.normal(size=(50, 8)), rng.normal(size=8)
    dense = dense_retrieve(q, D, top=50)
    np.testing.assert_allclose(cosine_scores(q, D)[dense["row"]], dense["score"])


def test_hybrid_ranking_explains_each_hit_with_labels():
    X = corpus()
    query = {1: 1.0, 2: 1.0}
    weights, sae, _ = query_scores(X, query)
    dense = np.zeros(X.shape[0])
    dense[[40, 50]] = 1.0  # dense likes two documents that carry only feature 1
    out = hybrid_ranking(X, weights, sae, dense, labels={1: "first", 2: "second"}, top=8, fusion="rrf")
    assert set(out["row"]) >= {10, 20, 30, 40, 50}
    assert list(out.columns) == ["row", "score", "sae_rank", "dense_rank", "sae_score", "dense_score", "features", "why"]
    row10 = out.set_index("row").loc[10]
    assert set(row10["features"]) == {1, 2} and "first (" in row10["why"] and "second (" in row10["why"]
    assert out.set_index("row").loc[40, "features"] == (1,)
    assert out.set_index("row").loc[40, "why"] == "first (100%)"


# -- the façade: ws.retrieve(..., mode=…) -----------------------------------------------------
@pytest.fixture()
def tiny_ws(tiny_workspace_file, tmp_path, tiny_reader, tiny_sae):
    import shutil

    from backend.workspace import Workspace

    shutil.copy(tiny_workspace_file, tmp_path / "ws.duckdb")
    ws = Workspace.open(tmp_path / "ws.duckdb", device="cpu", reader=tiny_reader, sae=tiny_sae)
    yield ws
    ws.close()


def test_workspace_retrieve_modes(tiny_ws):
    from backend import doc_embeddings

    query = "i love this movie"
    default = tiny_ws.retrieve("t", query, top=6)
    assert default.equals(tiny_ws.retrieve("t", query, top=6, mode="sae"))  # today's call, unchanged
    assert list(default.columns) == ["doc_id", "score", "n_overlap"]
    assert tiny_ws.retrieve("t", query, top=6, mode="dense").equals(tiny_ws.retrieve_dense("t", query, top=6))
    hybrid = tiny_ws.retrieve("t", query, top=6, mode="hybrid")
    assert list(hybrid.columns) == ["doc_id", "score", "sae_rank", "dense_rank", "sae_score", "dense_score",
                                    "features", "why"]
    X = tiny_ws.latents("t", "max")
    weights, sae, _ = query_scores(X, tiny_ws.embed_text(query))
    dense = cosine_scores(doc_embeddings.embed_query(query), doc_embeddings.doc_vectors(tiny_ws, tiny_ws.corpus("t")))
    want = fuse_scores({"sae": sae, "dense": dense}, top=6, log_scale=("sae",))
    assert list(hybrid["doc_id"]) == list(want["row"]) and np.allclose(hybrid["score"], want["score"])
    assert int(hybrid["dense_rank"].iloc[0]) <= 2 or int(hybrid["sae_rank"].iloc[0]) <= 2
    query_fids = set(weights["feature_id"])
    for doc_id, fids in zip(hybrid["doc_id"], hybrid["features"]):
        present = set(X[int(doc_id)].indices)
        assert set(fids) <= query_fids & present and len(fids) == min(3, len(query_fids & present))
    from backend.label_text import split_label

    labels = tiny_ws.labels("t")
    first = hybrid["features"].iloc[0]
    assert all((split_label(labels[f])[0] if f in labels else f"feature {f}") in hybrid["why"].iloc[0] for f in first)
    with pytest.raises(UserError, match="mode"):
        tiny_ws.retrieve("t", query, mode="bm25")
