"""Planted-property tests of backend.analysis.trend (synthetic sparse matrices) and ws.trend on a tiny-model
workspace with a date column."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.analysis.columns import read_column
from backend.analysis.trend import (
    TrendConfig,
    TrendError,
    cochran_armitage,
    make_bins,
    trend_result,
    wilson_interval,
)
from backend.errors import UserError

RISE, RISE_COPY, FALL, FLAT = 5, 6, 11, 9


def planted(n: int = 4000, F: int = 200, seed: int = 0):
    """Dates over five years; RISE fires in 2% of the first documents up to 32% of the last (RISE_COPY on
    most of the same documents), FALL the other way round, FLAT in 15% throughout; a 3% random background."""
    rng = np.random.default_rng(seed)
    days = rng.integers(0, 5 * 365, n)
    frac = days / days.max()
    X = sp.random(n, F, density=0.03, random_state=seed + 1, format="lil", dtype=np.float32)
    rise, fall, flat = rng.random(n) < 0.02 + 0.3 * frac, rng.random(n) < 0.3 - 0.25 * frac, rng.random(n) < 0.15
    X[np.flatnonzero(rise), RISE] = rng.uniform(0.5, 3.0, rise.sum())
    X[np.flatnonzero(rise & (rng.random(n) < 0.8)), RISE_COPY] = 1.0
    X[np.flatnonzero(fall), FALL] = 1.0
    X[np.flatnonzero(flat), FLAT] = 1.0
    dates = np.datetime64("2018-01-01") + days.astype("timedelta64[D]")
    return X.tocsr(), pd.Series(dates.astype(str), dtype=object), frac


def test_a_rising_concept_leads_the_rising_trends_and_a_flat_one_does_not():
    X, dates, _ = planted()
    res = trend_result(X, dates, "date", {RISE: "remote work"})
    assert res.kind == "date" and res.bin_mode == "year" and list(res.bins["bin"]) == [str(y) for y in range(2018, 2023)]
    rising = [f for f in res.findings if f.direction == "rising"]
    falling = [f for f in res.findings if f.direction == "falling"]
    assert rising[0].lead == RISE and set(rising[0].feature_ids) == {RISE, RISE_COPY}
    assert rising[0].label == "remote work" and rising[0].q_value < 1e-10
    # the yearly bins' centres span 80% of the range: 0.3 x 0.8
    assert rising[0].change == pytest.approx(0.24, abs=0.05) and rising[0].peak_bin == "2022"
    assert rising[0].sentence.startswith("Rising: remote work — ") and "in 2018 →" in rising[0].sentence
    assert falling[0].lead == FALL and falling[0].change < -0.15 and falling[0].peak_bin == "2018"
    flat = res.features.set_index("feature_id").loc[FLAT]
    assert flat["q_value"] > 0.05 and abs(flat["change"]) < 0.05
    assert FLAT not in {f for finding in res.findings if finding.significant for f in finding.feature_ids}


def test_examples_come_from_the_bin_where_a_finding_peaks():
    X, dates, _ = planted()
    res = trend_result(X, dates, "date")
    top = res.summary(n_per_direction=1)[0]
    years = pd.to_datetime(dates).dt.year.to_numpy()
    assert top.examples and all(str(years[d]) == top.peak_bin for d in top.examples)
    assert all(X[d, top.lead] > 0 for d in top.examples)


def test_table_holds_each_series_per_bin_with_wilson_intervals_and_pinned_features():
    X, dates, _ = planted()
    res = trend_result(X, dates, "date", features=[FLAT, RISE])
    pinned = res.table[res.table["series"] == f"feature {FLAT}"]
    years = pd.to_datetime(dates).dt.year.to_numpy()
    fires = X[:, FLAT].toarray().ravel() > 0
    for row in pinned.itertuples():
        in_bin = years == int(row.bin)
        assert row.n_docs == in_bin.sum() and row.n_fires == (fires & in_bin).sum()
        assert row.share == pytest.approx(row.n_fires / row.n_docs)
        assert row.ci_low < row.share < row.ci_high
    assert set(res.table["finding"]) >= {-1, 0}
    assert res.pinned == (RISE, FLAT)


def test_cochran_armitage_and_wilson_by_hand():
    counts = np.array([[1.0], [4.0], [9.0]])
    n = np.array([10.0, 10.0, 10.0])
    res = cochran_armitage(counts, n, np.array([0.0, 1.0, 2.0]))
    p = 14 / 30
    T = sum(t * (c - 10 * p) for t, c in zip([0, 0.5, 1], [1, 4, 9]))
    var = p * (1 - p) * (10 * (0 + 0.25 + 1) - (10 * 1.5) ** 2 / 30)
    assert res["z"][0] == pytest.approx(T / np.sqrt(var))
    assert res["change"][0] == pytest.approx(0.8)  # the least-squares line goes from 0.07 to 0.87
    lo, hi = wilson_interval(np.array([5]), np.array([10]))
    assert (lo[0], hi[0]) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_bins_are_chosen_by_span_and_can_be_asked_for():
    cfg = TrendConfig()
    short = read_column(pd.Series([f"2024-0{m}-0{d}" for m in range(1, 7) for d in range(1, 4)]), "d")
    assert make_bins(short, None, cfg).mode == "month"
    numbers = read_column(pd.Series(np.linspace(0, 1, 200).astype(str)), "x")
    assert make_bins(numbers, None, cfg).mode == "quantile" and len(make_bins(numbers, None, cfg).table) == 10
    assert len(make_bins(numbers, 4, cfg).table) == 4
    years = read_column(pd.Series(["2019", "2020", "2021"] * 5), "year")
    assert make_bins(years, None, cfg).mode == "value" and make_bins(years, "year", cfg).mode == "year"
    for bad in ("week", 1, 10_000):
        with pytest.raises(TrendError):
            make_bins(numbers, bad, cfg)
    with pytest.raises(TrendError):
        make_bins(numbers, "month", cfg)


def test_missing_and_unparseable_dates_are_counted_and_left_out():
    X, dates, _ = planted()
    dates = dates.copy()
    dates[:25] = None
    dates[25:28] = "last tuesday"
    res = trend_result(X, dates, "date")
    assert (res.n_missing, res.n_unparseable, res.n_used) == (25, 3, len(dates) - 28)
    assert any("'last tuesday'" in m and "25 have no value" in m for m in res.messages)
    assert res.bins["n_docs"].sum() == res.n_used
    assert all(d >= 28 for f in res.findings for d in f.examples)


def test_documents_behind_a_finding_in_one_bin():
    X, dates, _ = planted()
    res = trend_result(X, dates, "date")
    top = res.summary(n_per_direction=1)[0]
    last = len(res.bins) - 1
    docs = res.documents(0, bin=last)
    assert set(docs["bin"]) == {res.bins["bin"].iloc[last]}
    years = pd.to_datetime(dates).dt.year.to_numpy()
    fires = (X[:, list(top.feature_ids)] > 0).toarray().any(axis=1)
    assert sorted(docs["doc_id"]) == sorted(np.flatnonzero(fires & (years == int(res.bins["bin"].iloc[last]))))
    assert list(res.to_frame()["finding"]) == list(range(len(res.findings)))
    with pytest.raises(UserError, match="There is no finding -1"):
        res.documents(-1)  # it picked the last finding


def test_a_column_that_is_not_ordered_is_refused():
    X, _, _ = planted(n=300)
    with pytest.raises(TrendError):
        trend_result(X, pd.Series(["fresh", "rotten", "plot"] * 100), "label")
    with pytest.raises(TrendError):
        trend_result(X, pd.Series(["2020-01-01"] * 300), "date")  # one bin only
    with pytest.raises(TrendError):
        trend_result(X, pd.Series(np.arange(300).astype(str)), "x", features=[10_000])


@pytest.fixture(scope="module")
def dated_workspace(tmp_path_factory, tiny_reader, tiny_sae, tiny_sae_dir):
    """A tiny-model workspace whose documents mention "python" more often in later years."""
    from backend.workspace import Workspace, WorkspaceSpec

    rng = np.random.default_rng(1)
    words = "the movie film plot story actor great good bad music ending".split()
    years = np.repeat(np.arange(2018, 2023), 12)
    texts = [" ".join(rng.choice(words, 6)) + (" python code function" if rng.random() < (y - 2017) / 6 else "")
             for y in years]
    dates = [f"{y}-0{1 + i % 9}-10" if i % 15 else "unknown" for i, y in enumerate(years)]
    path = tmp_path_factory.mktemp("dated_ws") / "dated.duckdb"
    ws = Workspace.create(path, WorkspaceSpec(model=tiny_reader.name, sae=str(tiny_sae_dir), presence_threshold=0.0),
                          device="cpu", reader=tiny_reader, sae=tiny_sae)
    ws.add_corpus("d", pd.DataFrame({"text": texts, "date": dates}), "text")
    ws.embed("d")
    yield ws
    ws.close()


def test_workspace_trend_is_the_pure_function_on_the_workspace_data(dated_workspace):
    ws = dated_workspace
    res = ws.trend("d", "date", features=[0, 1], min_docs=2)
    want = trend_result(ws.latents("d", "max"), ws.metadata("d", "date"), "date", ws.labels("d"), features=[0, 1],
                        config=TrendConfig(min_docs=2))
    assert res.bin_mode == "year" and res.n_unparseable == 4 and res.n_used == 56
    assert [f.feature_ids for f in res.findings] == [f.feature_ids for f in want.findings]
    pd.testing.assert_frame_equal(res.table, want.table)
    assert set(res.table[res.table["finding"] == -1]["feature_id"]) == {0, 1}


def test_variants_that_also_fire_early_do_not_dilute_a_rising_finding():
    """Planted: eight variants named like RISE fire on its documents and each on its own 4% of the first
    half's documents. Folded in, they made the rise read flatter (the union's share in the first year
    grew); they stay out now and the finding's first-year share is RISE's own."""
    X, dates, frac = planted()
    X = X.tolil()
    early = np.flatnonzero(frac < 0.5)
    rise_rows = X[:, RISE].nonzero()[0]
    variants = list(range(40, 48))
    for k, f in enumerate(variants):
        X[rise_rows, f] = 1.0
        X[early[k::25], f] = 1.0  # a distinct 4% of the first half each
    X = X.tocsr()
    labels = {RISE: "remote work", **{f: "remote / work" for f in variants}}
    old = trend_result(X, dates, "date", labels, bins="year", config=TrendConfig(max_dilution=1.0))
    res = trend_result(X, dates, "date", labels, bins="year")
    before = next(f for f in old.findings if RISE in f.feature_ids)
    after = next(f for f in res.findings if RISE in f.feature_ids)
    assert set(variants) & set(before.feature_ids) and not set(variants) & set(after.feature_ids)
    first_year = (dates.str[:4] == "2018").to_numpy()
    own = float((X[first_year][:, RISE] > 0).mean())
    assert after.shares[0] == pytest.approx(own, abs=0.02) and before.shares[0] > own + 0.1
    assert after.change > before.change
    with pytest.raises(TrendError):
        TrendConfig(max_dilution=-0.1)


def test_a_finding_whose_lead_names_nothing_reads_its_member_that_names_something():
    """Planted: RISE leads the rising finding with RISE_COPY folded in; RISE's label names nothing,
    RISE_COPY's names the concept: the finding reads RISE_COPY's label (it read RISE's), its lead stays RISE."""
    X, dates, _ = planted()
    labels = {RISE: 'varied tokens: so / it / now — "«so»"', RISE_COPY: "remote work / home office"}
    rising = next(f for f in trend_result(X, dates, "date", labels).findings if f.direction == "rising")
    assert rising.lead == RISE and RISE_COPY in rising.feature_ids
    assert rising.label == "remote work / home office" and rising.named_by == RISE_COPY
    assert rising.feature_labels[rising.feature_ids.index(RISE_COPY)] == labels[RISE_COPY]
