"""Feature browser backend: statistics, top documents, logit lens, NPMI, metadata breakdown."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backend import features as F
from backend import labels as L


@pytest.fixture()
def ws(tiny_workspace, tiny_docs):
    tiny_workspace.add_corpus("t", tiny_docs, "text")
    tiny_workspace.embed("t")
    return tiny_workspace


def plant(ws, corpus: str, feature: int, docs: dict[int, float], positions: dict[int, int] | None = None) -> None:
    """Make `feature` fire exactly on `docs` (doc_id -> max_act) in doc_features."""
    cid = ws.store.corpus_id(corpus)
    df = pd.DataFrame({"doc_id": list(docs), "max_act": list(docs.values())})
    df["argmax_pos"] = [(positions or {}).get(d, 1) for d in df["doc_id"]]
    rows = df.assign(feature_id=feature, n_active=1, sum_act=df["max_act"])
    ws.store.replace_rows("doc_features", rows, where={"corpus_id": cid, "feature_id": feature}, fixed={"corpus_id": cid})


def rebuild(ws, corpus: str = "t") -> int:
    cid = ws.store.corpus_id(corpus)
    F.build_feature_tables(ws.store, cid, ws.d_sae)
    return cid


def test_stats_match_latents(ws):
    X = ws.latents("t").tocsc()
    n_docs = X.shape[0]
    table = F.feature_table(ws, "t", hide_dead=False, sort_by="feature_id", descending=False)
    assert table["feature_id"].tolist() == list(range(ws.d_sae))
    for f in range(ws.d_sae):
        col = X[:, f].data
        st = F.feature_stats(ws, "t", f)
        assert st["n_docs_active"] == len(col)
        assert st["density"] == pytest.approx(len(col) / n_docs)
        hist = F.feature_histogram(ws, "t", f)
        assert int(hist["count"].sum()) == len(col)
        if len(col):
            assert st["max_act"] == pytest.approx(col.max(), rel=1e-5)
            assert st["mean_act"] == pytest.approx(col.mean(), rel=1e-5)
            assert st["p99_act"] == pytest.approx(np.quantile(col, 0.99), rel=1e-5)
            assert st["p50_act"] == pytest.approx(np.median(col), rel=1e-5)
            assert hist["hi"].max() == pytest.approx(col.max(), rel=1e-5)
            # every activation falls in its bin
            for v in col:
                b = hist[(hist["lo"] <= v + 1e-7) & (v <= hist["hi"] + 1e-7)]
                assert len(b) >= 1
        else:
            assert st["max_act"] is None and hist.empty
    alive = F.feature_table(ws, "t")
    assert set(alive["feature_id"]) == set(np.flatnonzero(np.diff(X.indptr) > 0))
    assert alive["density"].is_monotonic_decreasing


def test_feature_table_filters_and_sort(ws):
    t = F.feature_table(ws, "t", min_density=0.2, max_density=0.6, sort_by="max_act", descending=False)
    assert ((t["density"] >= 0.2) & (t["density"] <= 0.6)).all()
    assert t["max_act"].is_monotonic_increasing
    assert t["label"].notna().all() and t["top_tokens"].notna().all()
    assert len(F.feature_table(ws, "t", limit=3, offset=2)) == 3
    with pytest.raises(ValueError):
        F.feature_table(ws, "t", sort_by="label; DROP TABLE documents")


def test_top_documents_and_quantiles(ws):
    X = ws.latents("t").tocsc()
    f = int(np.argmax(np.diff(X.indptr)))  # the densest feature
    col = X[:, f].toarray().ravel()
    expect = [d for d in np.argsort(-col, kind="stable") if col[d] > 0][:5]
    top = F.top_documents(ws, "t", f, 5)
    assert top["doc_id"].tolist() == expect
    assert top["text"].tolist() == ws.documents("t", expect)["text"].tolist()
    assert top["max_act"].to_numpy() == pytest.approx(col[expect], rel=1e-6)
    q = F.quantile_samples(ws, "t", f, per_bucket=2)
    assert q["bucket"].iloc[0] == "75-100%" and q["bucket"].iloc[-1] == "0-25%"
    assert q["max_act"].is_monotonic_decreasing
    n_act = int((col > 0).sum())
    lows = q[q["bucket"] == "0-25%"]["max_act"]
    assert (lows <= np.quantile(col[col > 0], 0.25) + 1e-6).all() or n_act < 4


def test_detail_page(ws):
    f = int(F.feature_table(ws, "t", limit=1)["feature_id"][0])
    d = F.feature_detail(ws, "t", f, n_docs=3)
    assert d.feature_id == f and d.label == L.labels(ws, "t")[f]
    assert len(d.top_documents) == 3 and d.stats["n_docs_active"] > 0
    assert len(d.promoted) == 10 and len(d.suppressed) == 10
    assert d.promoted[0][1] >= d.promoted[-1][1] and d.suppressed[0][1] <= d.suppressed[-1][1]
    assert not d.top_tokens.empty and not d.contexts.empty
    with pytest.raises(ValueError):
        F.feature_detail(ws, "t", ws.d_sae)


def test_logit_lens_matches_torch(ws):
    model = ws.reader.model
    w_dec = ws.sae.W_dec.detach().float()
    w = model.ln_final.w.detach().float() if hasattr(model.ln_final, "w") else torch.ones(w_dec.shape[1])
    for f in (0, 17, 63):
        logits = (w_dec[f] * w) @ model.W_U.detach().float()
        promoted, suppressed = F.logit_lens(ws, f, k=5)
        top = logits.topk(5)
        bottom = (-logits).topk(5)
        assert [v for _, v in promoted] == pytest.approx(top.values.tolist(), rel=1e-5)
        assert [t for t, _ in promoted] == [ws.reader.tokenizer.decode([i]) for i in top.indices.tolist()]
        assert [v for _, v in suppressed] == pytest.approx((-bottom.values).tolist(), rel=1e-5)
        assert [t for t, _ in suppressed] == [ws.reader.tokenizer.decode([i]) for i in bottom.indices.tolist()]


def test_npmi_puts_planted_cofiring_feature_first(ws):
    a, b, c = 60, 61, 62
    plant(ws, "t", a, {d: 1.0 + d for d in range(6)})
    plant(ws, "t", b, {d: 2.0 for d in range(6)})  # always together with a
    plant(ws, "t", c, {0: 1.0, 6: 1.0, 7: 1.0, 8: 1.0, 9: 1.0, 10: 1.0})
    rebuild(ws)
    corr = F.correlated_features(ws, "t", a, top=64, min_count=1)
    assert corr["feature_id"].iloc[0] == b and corr["npmi"].iloc[0] == pytest.approx(1.0)
    # hand computation for (a, c): p_ab = 1/12, p_a = p_c = 6/12
    p_ab, p_a, p_c = 1 / 12, 6 / 12, 6 / 12
    expect = np.log(p_ab / (p_a * p_c)) / -np.log(p_ab)
    row = corr[corr["feature_id"] == c]
    assert row["npmi"].iloc[0] == pytest.approx(expect) and row["n_cooc"].iloc[0] == 1
    # against every other feature: the same formula from the latents matrix
    X = (ws.latents("t").toarray() > 0)
    for _, r in corr.iterrows():
        fb = int(r["feature_id"])
        n_ab = int((X[:, a] & X[:, fb]).sum())
        pab, pa, pb = n_ab / 12, X[:, a].mean(), X[:, fb].mean()
        ref = 1.0 if pab == 1 else np.log(pab / (pa * pb)) / -np.log(pab)
        assert r["npmi"] == pytest.approx(ref) and r["n_cooc"] == n_ab


def test_npmi_sampling_keeps_the_planted_partner(ws, tiny_docs):
    big = pd.concat([tiny_docs] * 20, ignore_index=True)  # 240 documents
    ws.add_corpus("big", big, "text")
    ws.embed("big")
    plant(ws, "big", 60, {d: 1.0 + (d % 7) for d in range(0, 240, 2)})
    plant(ws, "big", 61, {d: 1.0 for d in range(0, 240, 2)})
    rebuild(ws, "big")
    full = F.correlated_features(ws, "big", 60, top=5)
    sampled = F.correlated_features(ws, "big", 60, top=5, max_docs=30)
    assert full["feature_id"].iloc[0] == 61 and sampled["feature_id"].iloc[0] == 61
    assert sampled["n_cooc"].iloc[0] == 120


def test_metadata_breakdown_lift(ws):
    # labels: code = docs 3, 9, 10; fresh = 0, 6, 8, 11
    plant(ws, "t", 60, {3: 1.0, 9: 1.0, 10: 1.0, 0: 1.0})
    rebuild(ws)
    df = F.metadata_breakdown(ws, "t", 60, "label").set_index("value")
    assert df.loc["code", "n_active"] == 3 and df.loc["code", "n_all"] == 3
    assert df.loc["code", "lift"] == pytest.approx((3 / 4) / (3 / 12))
    assert df.loc["fresh", "lift"] == pytest.approx((1 / 4) / (4 / 12))
    assert df.loc["rotten", "n_active"] == 0 and df.loc["rotten", "lift"] == 0
    assert df.index[0] == "code"
    with pytest.raises(ValueError):
        F.metadata_breakdown(ws, "t", 60, "nope")


def test_features_of_text_matches_embed_text(ws):
    text = "python code with a function"
    res = F.features_of_text(ws, text, top=5)
    ref = ws.embed_text(text)
    best = sorted(ref.items(), key=lambda kv: -kv[1])[:5]
    assert res.features["feature_id"].tolist() == [f for f, _ in best]
    assert res.features["max_act"].to_numpy() == pytest.approx([v for _, v in best], rel=1e-5)
    assert res.acts.shape == (len(res.tokens), len(best))
    assert res.acts.max(axis=0) == pytest.approx([v for _, v in best], rel=1e-5)
    assert res.features["label"].notna().all()


def test_delete_corpus_removes_feature_rows(ws):
    cid = ws.store.corpus_id("t")
    ws.delete_corpus("t")
    for table in ("feature_docs", "feature_stats", "feature_hist", "feature_top_tokens", "feature_contexts", "feature_labels"):
        assert ws.store.query_one(f"SELECT count(*) FROM {table} WHERE corpus_id = ?", [cid])[0] == 0


def test_specificity_order_puts_a_concept_before_near_constant_features(ws):
    cid = ws.store.corpus_id("t")
    n = ws.corpus("t").n_docs
    plant(ws, "t", 3, {d: 1.0 for d in range(n)})  # fires everywhere: near-constant
    plant(ws, "t", 4, {0: 2.0, 2: 1.5, 5: 1.0})  # a specific concept
    rebuild(ws)
    L.write_labels(ws.store, pd.DataFrame({"feature_id": [3, 4], "label": ["comma", "war / crime"], "score": [0.9, 0.9]}),
                   source="auto", corpus_id=cid)
    by_density = F.feature_table(ws, "t", sort_by="density")["feature_id"].tolist()
    by_specificity = F.feature_table(ws, "t", sort_by="specificity")["feature_id"].tolist()
    assert by_density.index(3) < by_density.index(4)
    assert by_specificity.index(4) < by_specificity.index(3)
    shown = F.feature_table(ws, "t", sort_by="specificity", max_density=F.NEAR_CONSTANT_DENSITY)["feature_id"].tolist()
    assert 3 not in shown and 4 in shown


def test_feature_table_hides_near_constant_features_on_request(ws):
    n = ws.corpus("t").n_docs
    plant(ws, "t", 3, {d: 1.0 for d in range(n)})  # fires everywhere
    half = int(np.ceil(F.NEAR_CONSTANT_DENSITY * n))
    plant(ws, "t", 5, {d: 1.0 for d in range(half)})  # exactly at the threshold: near-constant
    plant(ws, "t", 4, {d: 1.0 for d in range(half - 1)})  # just below it
    rebuild(ws)
    everything = F.feature_table(ws, "t")  # the default keeps old callers' table
    assert {3, 4, 5} <= set(everything["feature_id"])
    shown = F.feature_table(ws, "t", hide_near_constant=True)
    assert 3 not in set(shown["feature_id"]) and 5 not in set(shown["feature_id"]) and 4 in set(shown["feature_id"])
    assert (shown["density"] < F.NEAR_CONSTANT_DENSITY).all()
    assert set(everything["feature_id"]) - set(shown["feature_id"]) == set(
        everything.loc[everything["density"] >= F.NEAR_CONSTANT_DENSITY, "feature_id"])
    loose = F.feature_table(ws, "t", hide_near_constant=True, near_constant_density=1.0)
    assert 5 in set(loose["feature_id"]) and 3 not in set(loose["feature_id"])
