"""Tests of backend.analysis.diff on synthetic corpora with planted differences."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from backend.analysis.diff import (
    bh_adjust,
    diff_features,
    example_documents,
    length_summary,
    split_by_column,
    summarize_diff,
    two_proportion_z,
)


def bernoulli_csr(probs: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Sparse activations: entry fires with the given probability (array n x F), value in (0.1, 1]."""
    fire = rng.random(probs.shape) < probs
    vals = np.where(fire, rng.uniform(0.1, 1.0, probs.shape), 0.0)
    return sp.csr_matrix(vals.astype(np.float32))


def test_planted_difference_ranks_first_and_null_feature_is_not_significant():
    rng = np.random.default_rng(0)
    n, F = 2000, 100
    pa = np.full((n, F), 0.1)
    pb = np.full((n, F), 0.1)
    pa[:, 7] = 0.3  # planted: more in A
    XA, XB = bernoulli_csr(pa, rng), bernoulli_csr(pb, rng)
    t = diff_features(XA, XB)
    assert t.iloc[0]["feature_id"] == 7
    assert t.iloc[0]["rank"] == 1
    assert t.iloc[0]["q_value"] < 0.01
    assert t.iloc[0]["abs_diff"] == pytest.approx(0.2, abs=0.03)
    assert t.iloc[0]["log2_ratio"] > 1.2
    row11 = t.set_index("feature_id").loc[11]
    assert row11["q_value"] >= 0.05
    assert (np.diff(np.abs(t["abs_diff"].to_numpy())) <= 1e-12).all()  # ranked by effect size


def test_shares_rel_diff_and_coverage_filter():
    XA = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=float))
    XB = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]], dtype=float))
    t = diff_features(XA, XB).set_index("feature_id")
    assert set(t.index) == {0, 1}  # feature 2 never fires: untestable
    assert t.loc[0, "share_a"] == 0.75 and t.loc[0, "share_b"] == 0.5
    assert t.loc[0, "abs_diff"] == pytest.approx(0.25)
    assert t.loc[0, "rel_diff"] == pytest.approx(0.25 / 0.75)
    assert t.loc[0, "log2_ratio"] == pytest.approx(np.log2((3.5 / 5) / (1.5 / 3)))
    t2 = diff_features(XA, XB, min_share=0.6)
    assert list(t2["feature_id"]) == [0]


def test_bh_matches_hand_computed_example():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> p*m/rank = 0.04, 0.06, 0.0533, 0.2 -> running min from the top
    expected = np.array([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    np.testing.assert_allclose(bh_adjust(p), expected)
    rng = np.random.default_rng(1)
    p = rng.random(50) ** 3
    np.testing.assert_allclose(bh_adjust(p), stats.false_discovery_control(p))


def test_z_test_equals_uncorrected_chi_square_and_fisher_for_small_counts():
    z, p = two_proportion_z(np.array([30]), 100, np.array([18]), 120)
    chi2, p_chi, _, _ = stats.chi2_contingency([[30, 70], [18, 102]], correction=False)
    assert z[0] ** 2 == pytest.approx(chi2)
    assert p[0] == pytest.approx(p_chi)
    # tiny counts go through the exact test
    XA = sp.csr_matrix(np.r_[np.ones((4, 1)), np.zeros((96, 1))])
    XB = sp.csr_matrix(np.r_[np.ones((1, 1)), np.zeros((99, 1))])
    t = diff_features(XA, XB)
    assert t.loc[0, "p_method"] == "fisher"
    assert t.loc[0, "p_value"] == pytest.approx(stats.fisher_exact([[4, 96], [1, 99]]).pvalue)


def _length_confounded_corpora(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, F = 3000, 30
    la = rng.integers(50, 400, n)
    lb = rng.integers(150, 700, n)  # B documents are longer

    def probs(lengths: np.ndarray, true_rate: float) -> np.ndarray:
        p = np.full((lengths.size, F), 0.1)
        p[:, 0] = lengths / 800.0  # fires more in long documents, nothing else
        p[:, 1] = true_rate  # a real difference, independent of length
        return p

    return bernoulli_csr(probs(la, 0.3), rng), bernoulli_csr(probs(lb, 0.1), rng), la, lb


def test_length_only_difference_is_flagged_confounded_and_true_difference_is_not():
    XA, XB, la, lb = _length_confounded_corpora()
    t = diff_features(XA, XB, lengths_a=la, lengths_b=lb).set_index("feature_id")
    length_feat, true_feat = t.loc[0], t.loc[1]
    assert length_feat["q_value"] < 0.05  # the raw test sees a difference ...
    assert bool(length_feat["length_confounded"])  # ... which length explains
    assert abs(length_feat["adj_diff"]) < 0.5 * abs(length_feat["abs_diff"])
    assert not bool(true_feat["length_confounded"])
    assert true_feat["cmh_q"] < 0.01
    assert true_feat["adj_diff"] == pytest.approx(0.2, abs=0.04)
    assert true_feat["cmh_odds_ratio"] > 2.5
    assert not t["length_confounded"].drop(index=[0]).any()


def test_cmh_odds_ratio_matches_loop_formula():
    XA, XB, la, lb = _length_confounded_corpora(seed=3)
    t = diff_features(XA, XB, lengths_a=la, lengths_b=lb, length_bins=3).set_index("feature_id")
    pooled = np.r_[la, lb]
    edges = np.quantile(pooled, [1 / 3, 2 / 3])
    sa, sb = np.searchsorted(edges, la, side="right"), np.searchsorted(edges, lb, side="right")
    fa = (XA[:, 1] > 0).toarray().ravel()
    fb = (XB[:, 1] > 0).toarray().ravel()
    num = den = 0.0
    for s in range(3):
        a, b = fa[sa == s].sum(), (~fa[sa == s]).sum()
        c, d = fb[sb == s].sum(), (~fb[sb == s]).sum()
        tot = a + b + c + d
        num += a * d / tot
        den += b * c / tot
    assert t.loc[1, "cmh_odds_ratio"] == pytest.approx(num / den)


def test_length_summary_and_split_by_column():
    s = length_summary(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40, 50]))
    assert s["a"]["mean"] == 2.5 and s["b"]["median"] == 30 and s["b"]["n"] == 5
    assert s["mannwhitney_p"] < 0.05
    X = sp.csr_matrix(np.arange(12, dtype=float).reshape(6, 2))
    meta = pd.DataFrame({"src": ["a", "b", "a", "c", None, "b"]}, index=[10, 11, 12, 13, 14, 15])
    XA, XB, ia, ib = split_by_column(X, meta, "src", "a")
    assert list(ia) == [0, 2] and list(ib) == [1, 3, 4, 5]
    assert (XA.toarray() == X.toarray()[[0, 2]]).all()
    _, XB2, _, ib2 = split_by_column(X, meta, "src", "a", "b")
    assert list(ib2) == [1, 5] and XB2.shape == (2, 2)
    _, _, ia3, _ = split_by_column(X, meta, "src", ["a", "c"])
    assert list(ia3) == [0, 2, 3]


def test_split_by_column_matches_values_a_workspace_reads_back_as_text():
    """A workspace keeps metadata as text: a user's 1 or True (their DataFrame's own values) must still
    find the documents stored as "1", "1.0" or "True"; before, value_a=1 found no document at all."""
    X = sp.csr_matrix(np.ones((6, 2)))
    meta = pd.DataFrame({"label": ["1", "0", "1.0", None, "True", "x"]})
    assert list(split_by_column(X, meta, "label", 1)[2]) == [0, 2]
    assert list(split_by_column(X, meta, "label", 1, 0)[3]) == [1]
    assert list(split_by_column(X, meta, "label", True)[2]) == [4]
    assert list(split_by_column(X, meta, "label", "x")[2]) == [5]
    assert list(split_by_column(X, meta, "label", [0.0, "x"])[2]) == [1, 5]
    assert list(split_by_column(X, meta, "label", 2)[2]) == []


def test_summarize_diff_folds_redundant_labels():
    fids = list(range(12))
    labels = {i: lab for i, lab in enumerate(
        ["References to cats", "cat references", "Mentions of cats", "cats", "text about cats",
         "Python code", "python code snippets", "Python programming code",
         "French words", "words in French", "French language text", "legal contracts"])}
    diffs = [0.30, 0.29, 0.28, 0.27, 0.26, -0.25, -0.24, -0.23, 0.20, 0.19, 0.18, -0.10]
    table = pd.DataFrame({"feature_id": fids, "abs_diff": diffs, "rank": np.arange(1, 13)})
    groups = summarize_diff(table, labels, top=30, n_groups=8)
    by_first = {g["feature_ids"][0]: g for g in groups}
    assert set(by_first[0]["feature_ids"]) == {0, 1, 2, 3, 4}
    assert by_first[0]["direction"] == "more in A"
    assert by_first[0]["mean_abs_diff"] == pytest.approx(np.mean(diffs[:5]))
    assert "cat" in by_first[0]["keywords"]
    assert set(by_first[5]["feature_ids"]) == {5, 6, 7} and by_first[5]["direction"] == "more in B"
    assert set(by_first[8]["feature_ids"]) == {8, 9, 10}
    assert len(groups) == 4
    assert groups[0]["feature_ids"][0] == 0  # largest total effect first
    assert len(summarize_diff(table, labels, n_groups=2)) == 2


def test_example_documents_strongest_first():
    X = sp.csr_matrix(np.array([[0.0, 0.2], [0.0, 0.9], [0.0, 0.0], [0.0, 0.5]]))
    assert list(example_documents(X, 1, n=5)) == [1, 3, 0]
    assert list(example_documents(X, 1, n=2)) == [1, 3]
    assert list(example_documents(X, 0)) == []
