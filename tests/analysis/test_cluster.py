"""Tests of backend.analysis.cluster on planted clusters."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from backend.analysis import cluster as cl
from backend.errors import UserError


def planted(n_per: int = 200, k: int = 3, seed: int = 0, n_empty: int = 30):
    """k clusters; cluster c fires features 5c..5c+4 with p=0.7, other chosen ones with p=0.05.

    Returns X (n x 40, chosen features are 0..5k-1, the rest is noise), truth, chosen ids.
    """
    rng = np.random.default_rng(seed)
    F = 40
    truth = np.repeat(np.arange(k), n_per)
    p = np.full((truth.size, F), 0.05)
    for c in range(k):
        p[truth == c, 5 * c : 5 * c + 5] = 0.7
    p[:, 5 * k :] = 0.3  # unchosen features: irrelevant
    fire = rng.random(p.shape) < p
    dense = np.where(fire, rng.uniform(0.1, 2.0, p.shape), 0.0)
    empty = np.zeros((n_empty, F))
    empty[:, 5 * k :] = dense[:n_empty, 5 * k :]  # active only on unchosen features
    X = sp.csr_matrix(np.r_[dense, empty])
    return X, np.r_[truth, np.full(n_empty, -1)], list(range(5 * k))


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
def test_planted_clusters_recovered(method):
    X, truth, chosen = planted()
    res = cl.cluster_documents(X, chosen, method=method, n_clusters=3, seed=0)
    empty = truth == -1
    assert (res.labels[empty] == cl.NONE_LABEL).all()
    assert res.n_empty >= empty.sum()
    ok = res.labels >= 0
    assert cl.agreement(res.labels[ok & ~empty], truth[ok & ~empty])["ari"] >= 0.9
    assert res.n_clusters == 3
    assert res.silhouette > 0.1
    sizes = np.bincount(res.labels[ok])
    assert (np.diff(sizes) <= 0).all()  # labels ordered by size


def test_spectral_suggests_k_and_knn_path_agrees(monkeypatch):
    X, truth, chosen = planted(seed=1)
    res = cl.cluster_documents(X, chosen, method="spectral", seed=0)
    assert res.suggested_k == 3 and res.n_clusters == 3 and res.exact
    assert cl.suggest_k(X, chosen) == 3
    monkeypatch.setattr(cl, "DENSE_PATTERN_MAX", 10)  # force the sparse kNN affinity
    res2 = cl.cluster_documents(X, chosen, method="spectral", n_clusters=3, seed=0)
    assert not res2.exact
    m = truth >= 0
    assert cl.agreement(res2.labels[m], truth[m])["ari"] >= 0.9


def test_duplicate_patterns_match_explicit_spectral_on_all_documents():
    """The pattern reduction is exact: same eigenvalues as the n x n normalized Jaccard affinity."""
    X, _, chosen = planted(n_per=30, n_empty=0, seed=2)
    B = (X[:, chosen] > 0).toarray().astype(float)
    inter = B @ B.T
    sz = B.sum(1)
    keep = sz > 0
    B, inter, sz = B[keep], inter[np.ix_(keep, keep)], sz[keep]
    W = inter / (sz[:, None] + sz[None, :] - inter)
    d = W.sum(1)
    full = np.sort(np.linalg.eigvalsh(W / np.sqrt(d[:, None] * d[None, :])))[::-1][:5]
    res = cl.cluster_documents(X, chosen, method="spectral", n_clusters=3)
    np.testing.assert_allclose(res.eigenvalues[:5], full, atol=1e-8)


def test_no_active_documents_and_single_pattern():
    X = sp.csr_matrix(np.zeros((5, 4)))
    res = cl.cluster_documents(X, [0, 1])
    assert (res.labels == cl.NONE_LABEL).all() and res.n_clusters == 0
    X = sp.csr_matrix(np.array([[1.0, 0], [1.0, 0], [0, 0]]))
    res = cl.cluster_documents(X, [0, 1])
    assert list(res.labels) == [0, 0, cl.NONE_LABEL]


def test_hdbscan_runs_and_finds_planted_groups():
    X, truth, chosen = planted(seed=3)
    res = cl.cluster_documents(X, chosen, method="hdbscan", seed=0)
    assert res.labels.shape == truth.shape
    assert (res.labels[truth == -1] == cl.NONE_LABEL).all()
    m = (res.labels >= 0) & (truth >= 0)
    assert m.sum() > 0.5 * (truth >= 0).sum()
    assert cl.agreement(res.labels[m], truth[m])["ari"] >= 0.8


def test_describe_clusters_finds_defining_features():
    X, truth, chosen = planted(seed=4)
    lab = np.where(truth >= 0, truth, -1)
    d = cl.describe_clusters(X, lab, top=5)
    for c in range(3):
        top = d[d["cluster"] == c]
        assert set(top["feature_id"]) == set(range(5 * c, 5 * c + 5))
        assert (top["in_share"] > top["out_share"]).all()
        assert (top["rank"].to_numpy() == np.arange(1, 6)).all()
    d2 = cl.describe_clusters(X, lab, feature_ids=[0, 1, 20], top=2)
    assert set(d2["feature_id"]) <= {0, 1, 20}
    row = d2[(d2["cluster"] == 0) & (d2["feature_id"] == 0)].iloc[0]
    inside = (X[lab == 0][:, 0] > 0).toarray().mean()
    assert row["in_share"] == pytest.approx(inside)


def test_dense_cluster_and_agreement():
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:3] * 5
    truth = np.repeat(np.arange(3), 40)
    E = centers[truth] + rng.normal(scale=0.3, size=(truth.size, 8))
    for method in ["kmeans", "agglomerative", "spectral"]:
        assert cl.agreement(cl.dense_cluster(E, 3, method), truth)["ari"] == pytest.approx(1.0)
    a = cl.agreement(np.r_[np.zeros(60), np.ones(60)], truth)
    assert 0 < a["ari"] < 1 and 0 < a["nmi"] < 1


def test_umap_2d_tiny_without_umap():
    X = sp.csr_matrix(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0], [0, 0]]))
    xy = cl.umap_2d(X)
    assert xy.shape == (5, 2) and np.isfinite(xy).all()
    assert np.linalg.norm(xy[0] - xy[1]) < 0.2  # duplicates jittered, not moved apart


@pytest.mark.slow
def test_umap_2d_separates_planted_clusters():
    X, truth, chosen = planted(n_per=60, n_empty=5)
    xy = cl.umap_2d(X, feature_ids=chosen, seed=0)
    assert xy.shape == (X.shape[0], 2) and np.isfinite(xy).all()
    m = truth >= 0
    from sklearn.metrics import silhouette_score

    assert silhouette_score(xy[m], truth[m]) > 0.3


# -- along concepts ---------------------------------------------------------------------------
def hedge_corpus(seed: int = 0, n: int = 600, n_hedge: int = 30, n_generic: int = 4):
    """Planted: half the documents hedge, each with ONE of 30 hedge-word features (0..29), so the hedge
    features fire on different documents; 4 generic features (30..33, like sentence-final punctuation)
    fire in 80% of all documents; 40 unchosen noise features. Returns X, truth (1 = hedged), chosen ids."""
    rng = np.random.default_rng(seed)
    F = 80
    hedged = np.zeros(n, bool)
    hedged[rng.choice(n, n // 2, replace=False)] = True
    dense = np.zeros((n, F))
    rows = np.flatnonzero(hedged)
    dense[rows, rng.integers(0, n_hedge, rows.size)] = rng.uniform(0.5, 2.0, rows.size)
    generic = np.arange(n_hedge, n_hedge + n_generic)
    dense[:, generic] = np.where(rng.random((n, n_generic)) < 0.8, rng.uniform(0.5, 2.0, (n, n_generic)), 0.0)
    noise = np.arange(40, F)
    dense[:, noise] = np.where(rng.random((n, noise.size)) < 0.1, rng.uniform(0.5, 2.0, (n, noise.size)), 0.0)
    return sp.csr_matrix(dense), hedged.astype(int), list(range(n_hedge + n_generic))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concept_clustering_separates_a_planted_concept_family(seed):
    X, truth, chosen = hedge_corpus(seed)
    concepts = cl.cluster_along(X, chosen, k=2, method="concepts")
    patterns = cl.cluster_along(X, chosen, k=2, method="spectral")
    assert cl.agreement(concepts.labels, truth)["ari"] >= 0.9
    assert cl.agreement(patterns.labels, truth)["ari"] < 0.2  # grouped by which hedge word, not whether
    # the two groups: carries a hedge concept (cluster 0) vs the explicit "none" group
    assert concepts.n_clusters == 1 and set(concepts.labels) == {0, cl.NONE_LABEL}
    assert (concepts.labels[truth == 0] == cl.NONE_LABEL).all() and (concepts.labels[truth == 1] == 0).all()
    # the generic features co-fire, fold into one concept, and are set aside as background
    generic = [c for c in concepts.concepts if set(c.feature_ids) & {30, 31, 32, 33}]
    assert len(generic) == 1 and set(generic[0].feature_ids) == {30, 31, 32, 33} and generic[0].background
    assert all(len(c.feature_ids) == 1 and not c.background for c in concepts.concepts if c not in generic)


def test_cluster_descriptions_and_the_explicit_none_group_in_both_methods():
    X, truth, chosen = hedge_corpus(0)
    res = cl.cluster_along(X, chosen, k=2, describe_top=3)
    table = res.clusters.set_index("cluster")
    assert list(res.clusters["cluster"]) == [0, cl.NONE_LABEL]
    assert table.loc[cl.NONE_LABEL, "name"] == "none of the chosen concepts"
    assert table.loc[cl.NONE_LABEL, "size"] == res.n_none == (truth == 0).sum()
    assert table.loc[0, "share"] == pytest.approx(truth.mean())
    d0 = res.descriptions[res.descriptions["cluster"] == 0]
    assert list(d0["rank"]) == [1, 2, 3] and (d0["out_share"] == 0).all() and (d0["in_share"] > 0).all()
    lead = int(d0["lead_feature"].iloc[0])
    inside = (X[truth == 1][:, lead] > 0).toarray().mean()
    assert d0["in_share"].iloc[0] == pytest.approx(inside) and lead < 30
    assert set(table.loc[0, "top_features"]) == set(d0["lead_feature"])
    assert (res.descriptions["cluster_size"] == res.descriptions["cluster"].map(table["size"])).all()
    # pattern clustering keeps its k (clusters of carriers) and also names its none group
    Xp, truth_p, chosen_p = planted(seed=4)
    pat = cl.cluster_along(Xp, chosen_p, k=3, method="spectral")
    assert pat.n_clusters == 3 and pat.n_none == (truth_p == -1).sum()
    assert cl.cluster_name(cl.NONE_LABEL) in set(pat.clusters["name"])
    assert list(pat.labels) == list(cl.cluster_documents(Xp, chosen_p, n_clusters=3).labels)
    assert list(pat.rows(cl.NONE_LABEL)) == list(np.flatnonzero(truth_p == -1))


def test_co_firing_copies_fold_and_explicit_groups_stay_whole():
    rng = np.random.default_rng(0)
    n = 400
    dense = np.zeros((n, 10))
    carriers = rng.random(n) < 0.3
    for f in (0, 1, 2):  # three copies of one concept: same documents, a few misses
        dense[:, f] = np.where(carriers & (rng.random(n) < 0.95), 1.0, 0.0)
    dense[:, 3] = np.where(rng.random(n) < 0.3, 1.0, 0.0)  # independent of the copies
    dense[:, 4] = np.where(rng.random(n) < 0.3, 1.0, 0.0)
    X = sp.csr_matrix(dense)
    from backend.analysis.concepts import ConceptConfig, concept_presence, fold_concepts

    concepts = fold_concepts(X, [0, 1, 2, 3, 4])
    assert sorted(sorted(c.feature_ids) for c in concepts) == [[0, 1, 2], [3], [4]]
    copies = next(c for c in concepts if c.n_features == 3)
    P = concept_presence(X, concepts).toarray()
    np.testing.assert_array_equal(P[:, copies.concept_id], (dense[:, :3] > 0).any(1))
    assert copies.n_docs == int((dense[:, :3] > 0).any(1).sum())
    # features that never co-fire (3, 4) fold only when the user gives them as one concept
    grouped = fold_concepts(X, [0, 1, 2], groups=[[3, 4]])
    family = next(c for c in grouped if c.explicit)
    assert set(family.feature_ids) == {3, 4} and len(grouped) == 2
    # an explicit family is never background, even when most documents carry it
    wide = fold_concepts(X, [0], groups=[[3, 4]], config=ConceptConfig(max_share=0.2))
    assert not next(c for c in wide if c.explicit).background
    assert next(c for c in wide if not c.explicit).background  # 0 fires in ~29% > 20%
    with pytest.raises(ValueError, match="more than one"):
        fold_concepts(X, [0], groups=[[3, 4], [4]])


def test_folding_does_not_chain_specific_features_into_a_ubiquitous_one():
    """A (fires in 95% of documents) overlaps B (60%) with Jaccard ~0.6, B overlaps its subset C (45%)
    with ~0.75, but A and C only ~0.45: average linkage would merge all three; complete linkage keeps
    C out of A's concept."""
    rng = np.random.default_rng(0)
    n = 2000
    a = rng.random(n) < 0.95
    b = rng.random(n) < 0.6
    c = b & (rng.random(n) < 0.75)
    X = sp.csr_matrix(np.c_[a, b, c].astype(float))
    from backend.analysis.concepts import feature_jaccard, fold_concepts

    J = feature_jaccard(X)
    assert J[1, 2] > 0.7 and J[0, 1] > 0.55 and J[0, 2] < 0.5 and (J[0, 1] + J[0, 2]) / 2 > 0.5
    concepts = fold_concepts(X, [0, 1, 2])
    assert sorted(sorted(k.feature_ids) for k in concepts) == [[0], [1, 2]]


def test_one_explicit_family_gives_carries_vs_not_for_any_k():
    X, truth, chosen = hedge_corpus(1, n_generic=0)
    family = cl.cluster_along(X, [], k=3, groups=[chosen])
    assert len(family.concepts) == 1 and family.n_clusters == 1  # one pattern: k is capped
    assert cl.agreement(family.labels, truth)["ari"] == pytest.approx(1.0)
    assert family.suggested_k == 2
    folded = cl.cluster_along(X, chosen, k=3)  # the same features folded by co-firing: 30 concepts
    assert len(folded.concepts) == 30 and folded.n_clusters == 2
    with pytest.raises(ValueError, match="method"):
        cl.cluster_along(X, chosen, method="ward")
    with pytest.raises(ValueError, match="at least 2"):
        cl.cluster_along(X, chosen, k=1)


# -- any clustering read through SAE features --------------------------------------------------------
def reading_corpus(seed: int = 0):
    """300 documents in 3 groups of 100. Planted: feature 10 fires in 80% of group 0 and 5% elsewhere
    (over-represented); feature 11 in 60% of groups 0 and 2 and never in group 1 (under-represented there);
    feature 0 in 95% of documents, a little more in group 2 (near-constant); feature 12 only in two documents,
    both of group 2 (too rare); features 20..39 noise at 20%."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), 100)
    p = np.zeros((300, 40))
    p[:, 10] = np.where(truth == 0, 0.8, 0.05)
    p[:, 11] = np.where(truth == 1, 0.0, 0.6)
    p[:, 0] = np.where(truth == 2, 1.0, 0.93)
    p[:, 20:] = 0.2
    fire = rng.random(p.shape) < p
    fire[:, 12] = False
    fire[[250, 260], 12] = True
    return sp.csr_matrix(np.where(fire, rng.uniform(0.5, 2.0, p.shape), 0.0)), truth


def test_distinctive_features_finds_planted_over_and_under_and_skips_constant_and_rare():
    X, truth = reading_corpus()
    out = cl.distinctive_features(X, truth, top=3)
    assert list(out.columns) == cl.READING_COLUMNS
    over0 = out[(out["cluster"] == 0) & (out["side"] == "over")]
    assert int(over0["feature_id"].iloc[0]) == 10 and over0["in_share"].iloc[0] > 0.6 > 0.2 > over0["out_share"].iloc[0]
    under1 = out[(out["cluster"] == 1) & (out["side"] == "under")]
    # group 1 lacks feature 11 entirely and has feature 10 at 5% against 42% elsewhere
    assert set(under1["feature_id"].head(2)) == {10, 11}
    assert under1.set_index("feature_id").loc[11, "n_in"] == 0 and (under1["z"].head(2) < -3).all()
    assert (out.loc[out["side"] == "over", "z"] > 0).all() and (out.loc[out["side"] == "under", "z"] < 0).all()
    assert not set(out["feature_id"]) & {0, 12}  # near-constant and too rare
    # controls: without the filters both would describe group 2 (feature 12 has the largest lift there)
    loose = cl.distinctive_features(X, truth, top=40, min_support=1, max_share=1.0)
    over2 = loose[(loose["cluster"] == 2) & (loose["side"] == "over")].set_index("feature_id")
    assert {0, 12} <= set(over2.index) and over2.loc[12, "lift"] > over2.loc[0, "lift"]
    # exact statistics for one row
    row = over0.iloc[0]
    n_in = int((X[truth == 0][:, 10] > 0).sum())
    n_out = int((X[truth != 0][:, 10] > 0).sum())
    a, b, c, d = n_in + 0.5, 100 - n_in + 0.5, n_out + 0.5, 200 - n_out + 0.5
    assert row["n_in"] == n_in and row["log_odds"] == pytest.approx(np.log(a * d / (b * c)))
    assert row["z"] == pytest.approx(np.log(a * d / (b * c)) / np.sqrt(1 / a + 1 / b + 1 / c + 1 / d))
    with pytest.raises(UserError):
        cl.distinctive_features(X, truth, max_share=0.0)


def test_typical_documents_are_nearest_the_centre():
    rng = np.random.default_rng(1)
    centres = np.eye(3, 8) * 5
    truth = np.repeat(np.arange(3), 30)
    V = centres[truth] + rng.normal(size=(90, 8))
    V[[7, 45]] = centres[[0, 1]]  # exactly at their group's centre direction
    out = cl.typical_documents(V, truth, n=2)
    assert list(out.columns) == ["cluster", "rank", "row", "similarity"]
    assert out[out["cluster"] == 0]["row"].iloc[0] == 7 and out[out["cluster"] == 1]["row"].iloc[0] == 45
    assert (out.groupby("cluster")["similarity"].apply(lambda s: s.is_monotonic_decreasing)).all()
    X, labels = reading_corpus()
    sparse = cl.typical_documents(X, labels, n=3)  # presence vectors of a sparse SAE matrix
    assert len(sparse) == 9 and all(labels[r] == c for r, c in zip(sparse["row"], sparse["cluster"]))
    with pytest.raises(UserError):
        cl.typical_documents(V, truth[:10])


def test_dense_clusters_read_through_their_planted_features():
    """MiniLM-like vectors make the groups; each group is read through the SAE feature planted in it."""
    rng = np.random.default_rng(2)
    truth = np.repeat(np.arange(3), [120, 90, 60])
    V = np.eye(3, 16)[truth] * 3 + rng.normal(scale=0.5, size=(270, 16))
    fire = rng.random((270, 30)) < 0.15
    for g in range(3):
        fire[:, g] = np.where(truth == g, rng.random(270) < 0.9, rng.random(270) < 0.03)
    X = sp.csr_matrix(fire.astype(float))
    res = cl.cluster_dense_read(X, V, k=3, feature_labels={0: "zero", 1: "one", 2: "two"})
    assert cl.agreement(res.labels, truth)["ari"] == pytest.approx(1.0)
    assert list(res.clusters["size"]) == [120, 90, 60]  # ordered by size: cluster c is group c
    assert [t[0] for t in res.clusters["over"]] == [0, 1, 2]
    first = res.features[(res.features["side"] == "over") & (res.features["rank"] == 1)]
    assert list(first["label"]) == ["zero", "one", "two"]
    assert list(res.clusters["about"]) == ["zero", "one", "two"]  # what each cluster is about, by name
    assert all(truth[r] == c for r, c in zip(res.documents["row"], res.documents["cluster"]))
    # any labels, e.g. a concept clustering's with its none group, read the same way
    given = np.where(truth == 2, cl.NONE_LABEL, truth)
    read = cl.read_clusters(X, given)
    assert list(read.clusters["cluster"]) == [0, 1, cl.NONE_LABEL] and read.clusters["name"].iloc[2] == "none of the chosen concepts"
    with pytest.raises(UserError):
        cl.cluster_dense_read(X, V, k=1)
    with pytest.raises(UserError, match=f"k={X.shape[0]} clusters need more than {X.shape[0]} documents"):
        cl.cluster_dense_read(X, V, k=X.shape[0])


def test_named_groups_are_read_like_numbered_clusters():
    """A category column (strings, some missing) as the clustering: groups named by their values, numbered by
    size, missing values the none group; each group read through the feature planted in it."""
    rng = np.random.default_rng(3)
    names = np.array(["rotten", "fresh", None], dtype=object)[np.repeat([0, 1, 2], [50, 80, 20])]
    fire = rng.random((150, 12)) < 0.1
    fire[:, 0] = np.where(names == "fresh", rng.random(150) < 0.9, rng.random(150) < 0.03)
    fire[:, 1] = np.where(names == "rotten", rng.random(150) < 0.9, rng.random(150) < 0.03)
    read = cl.read_clusters(sp.csr_matrix(fire.astype(float)), list(names))
    assert list(read.clusters["name"]) == ["fresh", "rotten", "none"]
    assert list(read.clusters["cluster"]) == [0, 1, -1] and list(read.clusters["size"]) == [80, 50, 20]
    assert [t[0] for t in read.clusters["over"][:2]] == [0, 1]
    assert np.array_equal(read.labels, np.select([names == "fresh", names == "rotten"], [0, 1], -1))
    same = cl.read_clusters(sp.csr_matrix(fire.astype(float)), np.select([names == "fresh", names == "rotten"], [0, 1], -1))
    assert same.features.equals(read.features)  # the same groups as numbers: the same reading
    assert list(cl.read_clusters(sp.csr_matrix(fire.astype(float)), [2.0] * 75 + [5.0] * 75).clusters["cluster"]) == [2, 5]


def test_workspace_cluster_dense_and_describe(tiny_workspace_file, tmp_path, tiny_reader, tiny_sae):
    import shutil

    from backend import doc_embeddings
    from backend.workspace import Workspace

    shutil.copy(tiny_workspace_file, tmp_path / "ws.duckdb")
    ws = Workspace.open(tmp_path / "ws.duckdb", device="cpu", reader=tiny_reader, sae=tiny_sae)
    try:
        res = ws.cluster_dense("t", k=3, min_support=2)
        X, V = ws.latents("t", "max"), doc_embeddings.doc_vectors(ws, ws.corpus("t"))
        want = cl.cluster_dense_read(X, V, 3, feature_labels=ws.labels("t"), min_support=2)
        assert np.array_equal(res.labels, want.labels) and res.features.equals(want.features)
        assert res.documents.equals(want.documents.rename(columns={"row": "doc_id"})) and res.method == "minilm-kmeans"
        concepts = ws.cluster("t", [int(f) for f in np.argsort(-np.bincount(X.indices, minlength=X.shape[1]))[1:4]])
        read = ws.describe_clusters("t", concepts.labels, min_support=2)
        assert read.features.equals(cl.read_clusters(X, concepts.labels, None, ws.labels("t"), min_support=2).features)
        assert set(read.clusters["cluster"]) == set(concepts.labels)
        with pytest.raises(UserError):
            ws.describe_clusters("t", concepts.labels, typical="umap")
    finally:
        ws.close()


def test_about_names_the_distinct_concepts_of_a_groups_features():
    labels = ['computer / programs — "a «computer»"', "sentence-final period", "to", 'programming / programmer',
              "varied tokens: a / b / c", 'Unix / C — "moral «Unix»"', "court / judges", "jury"]
    assert cl.about_names(labels) == "computer / programs · Unix / C · court / judges"  # programming: same concept
    assert cl.about_names(labels, n=1) == "computer / programs"
    assert cl.about_names(["sentence-final period", "line break", "", "varied tokens: a / b"]) == \
        "sentence-final period · line break · varied tokens: a / b"  # nothing else: formatting it is
    assert cl.about_names([]) == ""
