"""Planted-property tests of backend.analysis.explain (synthetic sparse matrices) and one run through the
façade on a tiny-model workspace with numeric and date columns."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from backend.analysis.columns import ColumnError, read_column
from backend.analysis.explain import (
    ExplainConfig,
    ExplainError,
    explain_column,
    feature_effects,
    split_halves,
)
from backend.errors import UserError
from backend.export import export_frame

UP, DOWN, COPY, FLAT = 7, 13, 21, 30


def planted(n: int = 3000, F: int = 200, seed: int = 0, dense_signal: bool = False):
    """Random sparse background (2% density); feature UP raises a 1-5 star rating, DOWN lowers it, COPY fires
    on the same documents as UP, FLAT fires often and means nothing. Returns X, stars (strings), y."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, F, density=0.02, random_state=seed + 1, format="lil", dtype=np.float32)
    up, down, flat = rng.random(n) < 0.2, rng.random(n) < 0.2, rng.random(n) < 0.3
    X[np.flatnonzero(up), UP] = rng.uniform(0.5, 2.0, up.sum())
    X[np.flatnonzero(up), COPY] = 1.0
    X[np.flatnonzero(down), DOWN] = 1.5
    X[np.flatnonzero(flat), FLAT] = 1.0
    y = np.clip(np.round(3 + 1.2 * up - 1.2 * down + rng.normal(0, 0.8, n)), 1, 5)
    return X.tocsr(), pd.Series(y.astype(int).astype(str), dtype=object), y


def shuffled(values: pd.Series, seed: int = 1) -> pd.Series:
    return pd.Series(np.random.default_rng(seed).permutation(values.to_numpy()), dtype=object)


def test_feature_effects_match_scipy_welch():
    rng = np.random.default_rng(0)
    B = sp.csr_matrix((rng.random((300, 6)) < [0.1, 0.3, 0.5, 0.02, 0.9, 0.4]).astype(np.int32))
    y = rng.normal(size=300) + 0.8 * B[:, 1].toarray().ravel()
    eff = feature_effects(B, y)
    for f in range(6):
        on = B[:, f].toarray().ravel() > 0
        want = stats.ttest_ind(y[on], y[~on], equal_var=False)
        assert eff["t"][f, 0] == pytest.approx(want.statistic, rel=1e-6)
        assert eff["mean_on"][f, 0] == pytest.approx(y[on].mean())
        assert 2 * stats.t.sf(abs(eff["t"][f, 0]), eff["df"][f, 0]) == pytest.approx(want.pvalue, rel=1e-5)


def test_planted_concepts_explain_a_numeric_column_better_than_a_shuffled_control():
    X, stars, _ = planted()
    labels = {UP: "praise for the acting", DOWN: "complaints about the plot"}
    res = explain_column(X, stars, "stars", labels)
    higher, lower = res.summary(n_per_direction=1)
    assert (higher.direction, higher.lead, higher.label) == ("higher", UP, "praise for the acting")
    assert (lower.direction, lower.lead) == ("lower", DOWN)
    assert higher.q_value < 1e-6 and lower.q_value < 1e-6
    assert higher.mean_on > higher.mean_off + 0.7 and lower.mean_on < lower.mean_off - 0.7
    assert "Goes with higher stars: praise for the acting" in higher.sentence
    significant = {f for finding in res.findings if finding.significant for f in finding.feature_ids}
    assert FLAT not in significant
    control = explain_column(X, shuffled(stars), "stars", labels)
    assert res.metric == control.metric == "spearman"
    assert res.score > 0.45 and res.score > control.score + 0.35
    assert not any(f.significant for f in control.findings)


def test_features_firing_on_the_same_documents_fold_into_one_finding():
    X, stars, _ = planted()
    res = explain_column(X, stars, "stars")
    top = res.summary(n_per_direction=1)[0]
    assert set(top.feature_ids) == {UP, COPY}
    rows = res.table.set_index(["direction", "feature_id"])
    assert rows.loc[("higher", COPY), "finding"] == rows.loc[("higher", UP), "finding"] == 0


def test_findings_are_tested_on_documents_they_were_not_chosen_on():
    """A feature that fires with high ratings only in the selection half is chosen there but fails the test."""
    X, stars, y = planted(seed=3)
    sel, test = split_halves(len(stars), 0.5, 0)
    X = X.tolil()
    lucky = sel[y[sel] >= 4][:200]
    X[lucky, 40] = 3.0
    res = explain_column(X.tocsr(), stars, "stars")
    row = res.table.set_index(["direction", "feature_id"]).loc[("higher", 40)]
    assert row["t_select"] > 10  # chosen: the strongest-looking feature on the selection half
    assert row["n_test"] < 60 and row["q_value"] > 0.05  # on the test half it fires only as background
    higher = [f for f in res.summary(n_per_direction=1) if f.direction == "higher"]
    assert higher[0].lead == UP  # significant findings come first


def test_a_finding_firing_in_a_handful_of_held_out_documents_is_not_called_significant():
    """Two or three held-out documents with the same extreme rating give Welch's test zero variance on one
    side; such a finding is reported, untested, instead of with a tiny q-value."""
    X, stars, y = planted(seed=4)
    sel, test = split_halves(len(stars), 0.5, 0)
    X = X.tocsc()
    X[:, 41] = 0.0  # no background firings
    X = X.tolil()
    X[sel[y[sel] == 1][:6], 41] = 2.0  # chosen on the selection half
    X[test[y[test] == 1][:3], 41] = 2.0  # three held-out documents, all rated 1
    res = explain_column(X.tocsr(), stars, "stars", config=ExplainConfig(min_docs=5))
    row = res.table.set_index(["direction", "feature_id"]).loc[("lower", 41)]
    assert row["n_test"] < 5 and row["p_value"] == 1.0 and row["q_value"] == 1.0


def test_a_finding_without_held_out_documents_says_so_and_stays_out_of_the_summary():
    """No held-out document carries it: its means are unknown, so it reads "too rare … to measure", never
    "mean nan", and the summary leaves it out."""
    X, stars, y = planted(seed=4)
    sel, test = split_halves(len(stars), 0.5, 0)
    X = X.tocsc()
    X[:, 41] = 0.0
    X = X.tolil()
    X[sel[y[sel] == 1][:8], 41] = 2.0  # chosen on the selection half only
    res = explain_column(X.tocsr(), stars, "stars", config=ExplainConfig(min_docs=5))
    (finding,) = [f for f in res.findings if 41 in f.feature_ids]
    assert not finding.measured and "nan" not in finding.sentence and "too rare" in finding.sentence
    assert all(f.measured for f in res.summary(n_per_direction=50)) and finding not in res.summary(n_per_direction=50)


def test_missing_and_unparseable_rows_are_counted_and_left_out():
    X, stars, _ = planted()
    stars = stars.copy()
    stars[:30] = None
    stars[30:40] = ""
    stars[40:45] = "five"
    stars[45:47] = "n/a"
    res = explain_column(X, stars, "stars")
    assert (res.n_missing, res.n_unparseable, res.n_used) == (40, 7, len(stars) - 47)
    assert any("40 have no value" in m and "7 have a value that is not a number" in m and "'five'" in m
               for m in res.messages)
    assert res.doc_ids.min() == 47
    assert all(d >= 47 for f in res.findings for d in f.examples)


def test_a_categorical_column_is_explained_value_by_value():
    X, _, y = planted()
    label = pd.Series(np.where(y >= 4, "fresh", np.where(y <= 2, "rotten", "plot")), dtype=object)
    res = explain_column(X, label, "label", {UP: "praise"})
    assert res.kind == "categorical" and res.task == "multiclass" and res.metric == "auc"
    assert set(res.directions) == {"fresh", "rotten", "plot"}
    by_value = {f.direction: f for f in reversed(res.findings) if f.significant}
    assert by_value["fresh"].lead == UP and by_value["rotten"].lead == DOWN
    assert "Goes with label = fresh: praise" in by_value["fresh"].sentence
    control = explain_column(X, shuffled(label), "label")
    assert res.score > 0.65 and res.score > control.score + 0.15
    assert abs(control.score - 0.5) < 0.08


def test_baseline_scores_the_same_model_on_dense_vectors():
    X, stars, y = planted()
    rng = np.random.default_rng(5)
    informative = np.column_stack([y + rng.normal(0, 0.5, y.size), rng.normal(size=(y.size, 7))])
    res = explain_column(X, stars, "stars", dense=informative)
    assert res.baseline is not None and res.baseline > res.score  # the dense vectors carry y itself
    noise = explain_column(X, stars, "stars", dense=rng.normal(size=(y.size, 8)))
    assert abs(noise.baseline) < 0.1
    none = explain_column(X, stars, "stars", baseline_note="No MiniLM baseline: not asked for.")
    assert none.baseline is None and none.baseline_note in none.messages


def test_documents_behind_a_finding_and_export_neutralise_formulas():
    X, stars, _ = planted()
    res = explain_column(X, stars, "stars", {UP: "=HYPERLINK(\"x\")"})
    top = res.summary(n_per_direction=1)[0]
    docs = res.documents(0)
    fires = np.flatnonzero((X[:, list(top.feature_ids)] > 0).toarray().any(axis=1))
    assert sorted(docs["doc_id"]) == sorted(fires)
    assert docs["lead_activation"].is_monotonic_decreasing
    for bad in (-1, len(res.findings)):  # -1 picked the last finding, past the end raised an IndexError
        with pytest.raises(UserError, match=f"There is no finding {bad}: this result has {len(res.findings)}"):
            res.documents(bad)
    csv = export_frame(res.to_frame(), "csv").decode()
    assert "'=HYPERLINK" in csv and "\n=HYPERLINK" not in csv


def test_a_date_column_is_explained_as_later_and_earlier():
    X, _, y = planted()
    dates = pd.Series((np.datetime64("2020-01-01") + (y * 100).astype("timedelta64[D]")).astype(str), dtype=object)
    res = explain_column(X, dates, "date")
    later = [f for f in res.summary(n_per_direction=1) if f.direction == "later"]
    assert res.kind == "date" and res.directions == ("later", "earlier") and later[0].lead == UP
    assert later[0].significant  # the ranks are tested on their own scale, not swamped by seconds since 1970
    assert re.search(r"Goes with later date: feature 7 — mean 202\d-\d\d-\d\d where it fires vs 202\d-", later[0].sentence)


def test_bad_options_and_columns_are_refused():
    X, stars, _ = planted(n=400)
    with pytest.raises(ExplainError):
        ExplainConfig(test_size=0.99)
    with pytest.raises(ExplainError):
        explain_column(X, pd.Series(["3"] * 400), "stars")
    with pytest.raises(ExplainError):
        explain_column(X, stars[:10], "stars")
    with pytest.raises(ExplainError):
        explain_column(X, pd.Series([None] * 400, dtype=object), "stars")


def test_read_column_kinds():
    col = read_column(pd.Series(["2021-03-01", "2022-01-05", None, "soon"] + ["2023-07-09"] * 20), "date")
    assert col.kind == "date" and (col.n_missing, col.n_unparseable) == (1, 1)
    num = read_column(pd.Series(["1,234", "5", "7.5"] + ["2"] * 10), "votes", allowed=("numeric", "categorical"))
    assert num.kind == "numeric" and num.values[0] == 1234.0
    cat = read_column(pd.Series(["fresh", "rotten", "3"] * 5), "label")
    assert cat.kind == "categorical" and cat.n_unparseable == 0
    # a kind no value reads as says so (it said "every used document has the same value" further on)
    with pytest.raises(ColumnError, match="No value of 'speaker' reads as numeric \\(values such as 'TRUMP', 'CLINTON'\\)"):
        read_column(pd.Series(["TRUMP", "CLINTON"] * 5), "speaker", kind="numeric")


# -- through the façade ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def columns_workspace(tmp_path_factory, tiny_reader, tiny_sae, tiny_sae_dir):
    """A tiny-model workspace whose corpus has a numeric column (`votes`, with gaps) and a date column."""
    from backend.workspace import Workspace, WorkspaceSpec

    rng = np.random.default_rng(0)
    words = "the movie film plot story actor great good bad terrible boring funny love hate music ending".split()
    texts = [" ".join(rng.choice(words, 8)) for _ in range(60)]
    votes = [str(len(t)) if i % 10 else None for i, t in enumerate(texts)]
    votes[5] = "many"
    dates = [f"20{18 + i % 5}-0{1 + i % 9}-15" for i in range(60)]
    path = tmp_path_factory.mktemp("columns_ws") / "columns.duckdb"
    ws = Workspace.create(path, WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0),
                          device="cpu", reader=tiny_reader, sae=tiny_sae)
    ws.add_corpus("c", pd.DataFrame({"text": texts, "votes": votes, "date": dates}), "text")
    ws.embed("c")
    yield ws
    ws.close()


def test_workspace_explain_is_the_pure_function_on_the_workspace_data(columns_workspace):
    ws = columns_workspace
    seen = []
    res = ws.explain("c", "votes", baseline=False, min_docs=3, progress=lambda f, m: seen.append(f))
    want = explain_column(ws.latents("c", "max"), ws.metadata("c", "votes"), "votes", ws.labels("c"),
                          config=ExplainConfig(min_docs=3))
    assert (res.n_missing, res.n_unparseable, res.n_used) == (6, 1, 53)
    assert res.baseline is None and any("not asked for" in m for m in res.messages)
    assert [f.feature_ids for f in res.findings] == [f.feature_ids for f in want.findings]
    assert res.score == pytest.approx(want.score)
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_workspace_explain_with_the_minilm_baseline(columns_workspace):
    ws = columns_workspace
    stored_only = ws.explain("c", "votes", baseline="stored", min_docs=3)  # no vectors stored yet: a note, no error
    assert stored_only.baseline is None and "not all computed" in stored_only.baseline_note
    seen = []
    res = ws.explain("c", "votes", min_docs=3, progress=lambda f, m: seen.append(m))
    assert res.baseline is not None and np.isfinite(res.baseline) and res.baseline_note is None
    assert res.baseline_model.n_inputs == 384
    assert any(m.startswith("MiniLM document vectors") for m in seen)
    again = ws.explain("c", "votes", baseline="stored", min_docs=3)  # now stored: the same baseline
    assert again.baseline == pytest.approx(res.baseline)
    with pytest.raises(UserError):
        ws.explain("c", "votes", baseline="sometimes")


def test_a_categorical_explain_gives_the_same_scores_whatever_numpy_global_state():
    """liblinear shuffles with numpy's global generator unless seeded: the scores must not depend on it."""
    X, _, y = planted()
    label = pd.Series(np.where(y >= 4, "fresh", np.where(y <= 2, "rotten", "plot")), dtype=object)
    scores = []
    for seed in (1, 2, 3):
        np.random.seed(seed)
        scores.append(explain_column(X, label, "label").score)
    assert scores[0] == scores[1] == scores[2]


def test_variants_that_also_fire_on_low_ratings_do_not_dilute_a_finding():
    """Planted: eight variants named like UP fire on its documents and each on its own 4% of the low-rated
    ones. Folded in, they pulled the finding's mean rating where it fires down; they stay out now."""
    X, stars, y = planted()
    X = X.tolil()
    low = np.flatnonzero(y <= 2)
    up_rows = X[:, UP].nonzero()[0]
    variants = list(range(50, 58))
    for k, f in enumerate(variants):
        X[up_rows, f] = 1.0
        X[low[k::25], f] = 1.0
    X = X.tocsr()
    labels = {UP: "excellent", **{f: "excellent / great" for f in variants}}
    old = explain_column(X, stars, "stars", labels, config=ExplainConfig(max_dilution=1.0))
    res = explain_column(X, stars, "stars", labels)
    before = next(f for f in old.findings if UP in f.feature_ids)
    after = next(f for f in res.findings if UP in f.feature_ids)
    assert set(variants) & set(before.feature_ids) and not set(variants) & set(after.feature_ids)
    assert after.effect > before.effect and after.mean_on > before.mean_on
    with pytest.raises(ExplainError):
        ExplainConfig(max_dilution=2.0)


def test_a_finding_whose_lead_names_nothing_reads_its_member_that_names_something():
    """Planted: UP leads the 'higher' finding and COPY fires on the same documents; UP's label names nothing
    (`varied tokens`), COPY's names the concept. The finding reads COPY's label (it read UP's), its lead stays UP."""
    X, stars, _ = planted()
    labels = {UP: 'varied tokens: so / it / great — "«so» good"', COPY: "praise for the acting"}
    higher = explain_column(X, stars, "stars", labels).summary(n_per_direction=1)[0]
    assert (higher.lead, higher.feature_ids[:2]) == (UP, (UP, COPY))
    assert higher.label == "praise for the acting" and higher.named_by == COPY  # what the page asks an LLM to label
    assert higher.feature_labels[:2] == (labels[UP], labels[COPY])
