"""Tests of backend.analysis.correlate (NPMI) with a planted co-occurring pair."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.analysis import correlate as co


def corpus(n: int = 3000, F: int = 60, seed: int = 0):
    """Independent features (rates 0.02-0.2) except 17, which copies 3 (90% agreement)."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 0.2, F)
    fire = rng.random((n, F)) < rates
    flip = rng.random(n) < 0.02
    fire[:, 17] = fire[:, 3] ^ flip
    vals = np.where(fire, rng.uniform(0.1, 1.0, (n, F)), 0.0)
    return sp.csr_matrix(vals), fire


def brute_npmi(fire: np.ndarray, a: int, b: int) -> float:
    n = fire.shape[0]
    pa, pb, pab = fire[:, a].mean(), fire[:, b].mean(), (fire[:, a] & fire[:, b]).mean()
    return float(np.log(pab / (pa * pb)) / -np.log(pab))


def test_planted_pair_tops_npmi_list_and_values_are_exact():
    X, fire = corpus()
    t = co.npmi_pairs(X, min_count=5, top=20)
    assert (t.iloc[0]["feature_a"], t.iloc[0]["feature_b"]) == (3, 17)
    assert t.iloc[0]["npmi"] > 0.8
    assert t.iloc[0]["count_ab"] == (fire[:, 3] & fire[:, 17]).sum()
    for _, r in t.head(5).iterrows():
        assert r["npmi"] == pytest.approx(brute_npmi(fire, int(r["feature_a"]), int(r["feature_b"])))
    assert (np.diff(t["npmi"].to_numpy()) <= 1e-12).all()
    assert (t["feature_a"] < t["feature_b"]).all()


def test_numba_and_scipy_engines_agree_and_blocks_do_not_matter():
    X, _ = corpus(n=800, F=40, seed=1)
    a = co.npmi_pairs(X, min_count=3, top=30, engine="scipy", block=7)
    if co.HAVE_NUMBA:  # bitsets for all, some (rate >= 0.1) or no features, several blocks
        for share in (0.0, 0.1, 2.0):
            b = co.npmi_pairs(X, min_count=3, top=30, engine="numba", block=13, n_jobs=2, dense_share=share)
            pd.testing.assert_frame_equal(a, b, check_dtype=False)
    c = co.npmi_pairs(X, min_count=3, top=30, engine="scipy", block=1000)
    pd.testing.assert_frame_equal(a, c, check_dtype=False)


def test_top_pairs_are_the_true_top_by_brute_force():
    X, fire = corpus(n=500, F=25, seed=2)
    t = co.npmi_pairs(X, min_count=5, top=10)
    n = fire.shape[0]
    scores = []
    for i in range(25):
        for j in range(i + 1, 25):
            cab = (fire[:, i] & fire[:, j]).sum()
            if fire[:, i].sum() >= 5 and fire[:, j].sum() >= 5 and cab >= 5:
                scores.append(brute_npmi(fire, i, j))
    np.testing.assert_allclose(t["npmi"].to_numpy(), np.sort(scores)[::-1][:10])
    assert n == 500


def test_independent_features_near_zero_and_npmi_with_finds_partner():
    X, fire = corpus()
    vals = co.npmi_for_pairs(X, [(5, 6), (10, 40), (3, 17)])
    assert abs(vals[0]) < 0.06 and abs(vals[1]) < 0.06
    assert vals[2] == pytest.approx(brute_npmi(fire, 3, 17))
    w = co.npmi_with(X, 3, top=5)
    assert w.iloc[0]["feature_id"] == 17
    assert 3 not in set(w["feature_id"])
    assert w.iloc[0]["npmi"] == pytest.approx(vals[2])
    assert w.iloc[1]["npmi"] < w.iloc[0]["npmi"] - 0.5  # the rest is chance co-occurrence


def test_exclude_same_label_hides_redundant_pair():
    X, _ = corpus()
    t = co.npmi_pairs(X, min_count=5, top=5, exclude_same_label={3: "Cats!", 17: "cats", 4: "dogs"})
    assert not ((t["feature_a"] == 3) & (t["feature_b"] == 17)).any()
    assert len(t) == 5


def test_feature_vs_metadata_finds_category_feature():
    rng = np.random.default_rng(4)
    n, F = 2000, 30
    cat = rng.choice(["news", "code", "chat"], n)
    fire = rng.random((n, F)) < 0.1
    fire[cat == "code", 9] = rng.random((cat == "code").sum()) < 0.8
    X = sp.csr_matrix(fire.astype(float))
    t = co.feature_vs_metadata(X, pd.Series(cat, index=np.arange(n) + 100), top=3)
    code = t[t["category"] == "code"]
    assert code.iloc[0]["feature_id"] == 9 and code.iloc[0]["npmi"] > 0.3
    assert code.iloc[0]["share_in_category"] == pytest.approx(fire[cat == "code", 9].mean())
    assert set(t["category"]) == {"news", "code", "chat"}
    assert 9 not in set(t[t["category"] == "news"].head(1)["feature_id"])
