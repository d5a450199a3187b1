"""Speed benchmark of the analysis backend on synthetic SAE-like sparse data.

Data: per document ~300-700 active features out of 16,384, feature frequencies Zipfian
(sampled with replacement from a Zipf(1.05) distribution, duplicates merged). Data generation
is not timed. Timed: diff of two 50k-document corpora (with length control), clustering 20k
documents along 50 features (spectral + UMAP), NPMI over 50k documents; explaining a numeric column
and trends over dates on 100k documents x 8,192 features (~80-250 active: 1-3% density), each with
two planted concepts, whose recovery is printed beside the time.

Run: ``PYTHONPATH=. .venv/bin/python bench/analysis_speed.py [--scale 1.0] [--cases diff,cluster,npmi,explain,trend]``.
The last line is ``worst_ratio_to_target <max time/target>``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

N_FEATURES = 16_384


def make_corpus(n_docs: int, n_features: int = N_FEATURES, seed: int = 0, zipf_s: float = 1.05,
                active=(300, 700), length_bias: float = 0.0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Synthetic max-pooled activations (float32 CSR) and token lengths."""
    rng = np.random.default_rng(seed)
    ranks = np.random.default_rng(12345).permutation(n_features)  # same frequency profile for all corpora
    p = 1.0 / (ranks + 10.0) ** zipf_s
    p /= p.sum()
    m = rng.integers(active[0], active[1] + 1, size=n_docs)
    lengths = (m * (1.0 + length_bias) * rng.uniform(0.8, 1.25, size=n_docs)).astype(np.int64)
    reps = np.round(m * 1.15).astype(np.int64)  # duplicates collapse, so draw a little more
    cols = rng.choice(n_features, size=int(reps.sum()), p=p).astype(np.int32)
    rows = np.repeat(np.arange(n_docs, dtype=np.int32), reps)
    vals = rng.exponential(1.0, size=rows.size).astype(np.float32) + 0.01
    X = sp.csr_matrix((vals, (rows, cols)), shape=(n_docs, n_features))
    X.sum_duplicates()
    return X, lengths


def _timed(label: str, target: float, fn) -> float:
    t0 = time.perf_counter()
    info = fn()
    dt = time.perf_counter() - t0
    print(f"{label}: {dt:.2f} s (target {target:.0f} s, ratio {dt / target:.2f}) {info}", flush=True)
    return dt / target


def planted_columns(X: sp.csr_matrix, seed: int = 0) -> tuple[dict, "object", "object"]:
    """A numeric score raised by one mid-frequency feature and lowered by another, and dates (six years) over
    which a third feature's share rises. Returns the planted ids, the scores and the dates (as strings)."""
    import pandas as pd

    n = X.shape[0]
    rng = np.random.default_rng(seed)
    counts = np.bincount(X.indices, minlength=X.shape[1]) / n
    up, down, rise = np.flatnonzero((counts > 0.05) & (counts < 0.3))[:3]
    fires = {f: np.asarray((X[:, [f]] > 0).todense()).ravel() for f in (up, down, rise)}
    score = 3 + fires[up] - fires[down] + rng.normal(0, 1, n)
    # documents where `rise` fires get later dates: its share climbs over the years
    days = np.clip(rng.integers(0, 6 * 365, n) + np.where(fires[rise], 400, 0), 0, 6 * 365 - 1)
    dates = (np.datetime64("2019-01-01") + days.astype("timedelta64[D]")).astype(str)
    return ({"up": int(up), "down": int(down), "rise": int(rise)}, pd.Series(np.round(score, 2).astype(str)),
            pd.Series(dates))


def column_cases(n: int, cases: set[str]) -> list[float]:
    """`explain` (target 10 s) and `trend` (target 5 s) on n documents x 8,192 features, 1-3% density."""
    from backend.analysis.explain import explain_column
    from backend.analysis.trend import trend_result

    t0 = time.perf_counter()
    X, _ = make_corpus(n, n_features=8192, seed=4, active=(80, 250))
    planted, score, dates = planted_columns(X)
    print(f"generated column corpus: {X.shape} nnz/doc {X.nnz / n:.0f} density {X.nnz / n / 8192:.2%} planted {planted} "
          f"({time.perf_counter() - t0:.1f} s, untimed)")
    ratios = []

    def explain() -> str:
        res = explain_column(X, score, "score")
        top = {f.direction: f.lead for f in reversed(res.summary(n_per_direction=1))}
        return f"spearman={res.score:.3f} top_higher={top.get('higher')} top_lower={top.get('lower')}"

    def trend() -> str:
        res = trend_result(X, dates, "date")
        rising = [f.lead for f in res.findings if f.direction == "rising"][:1]
        return f"bins={len(res.bins)} top_rising={rising} findings={len(res.findings)}"

    if "explain" in cases:
        ratios.append(_timed(f"explain {n} docs x 8192 (numeric column)", 10.0, explain))
    if "trend" in cases:
        ratios.append(_timed(f"trend {n} docs x 8192 (dates, yearly bins)", 5.0, trend))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply document counts (for quick runs)")
    ap.add_argument("--cases", default="diff,cluster,npmi,explain,trend",
                    help="comma-separated cases to run (diff, cluster and npmi run together)")
    args = ap.parse_args()
    cases = set(args.cases.split(","))
    n_diff, n_clu, n_npmi = (int(v * args.scale) for v in (50_000, 20_000, 50_000))
    ratios = []
    if cases & {"explain", "trend"}:
        ratios += column_cases(int(100_000 * args.scale), cases)
    if not cases & {"diff", "cluster", "npmi"}:
        print(f"worst_ratio_to_target {max(ratios):.3f}")
        return

    from backend.analysis.cluster import cluster_documents, umap_2d
    from backend.analysis.correlate import npmi_pairs
    from backend.analysis.diff import diff_features

    t0 = time.perf_counter()
    XA, la = make_corpus(n_diff, seed=1)
    XB, lb = make_corpus(n_diff, seed=2, length_bias=0.2)
    print(f"generated diff corpora: {XA.shape} nnz/doc {XA.nnz / XA.shape[0]:.0f} ({time.perf_counter() - t0:.1f} s, untimed)")
    ratios.append(_timed(f"diff {n_diff}+{n_diff} docs x {N_FEATURES}", 2.0,
                         lambda: f"rows={len(diff_features(XA, XB, lengths_a=la, lengths_b=lb))}"))
    del XB

    XC = XA[:n_clu]
    counts = np.bincount(XC.indices, minlength=N_FEATURES)
    mid = np.flatnonzero((counts > 0.02 * n_clu) & (counts < 0.3 * n_clu))
    feats = np.random.default_rng(0).choice(mid, 50, replace=False)

    def clustering() -> str:
        res = cluster_documents(XC, feats, method="spectral", seed=0)
        t1 = time.perf_counter()
        xy = umap_2d(XC, feature_ids=feats, seed=0)
        return (f"k={res.n_clusters} patterns={res.n_unique_patterns} exact={res.exact} "
                f"umap={time.perf_counter() - t1:.1f}s shape={xy.shape}")

    ratios.append(_timed(f"cluster {n_clu} docs x 50 features + UMAP", 60.0, clustering))

    XN = XA[:n_npmi]
    ratios.append(_timed(f"npmi {n_npmi} docs x {N_FEATURES}", 30.0,
                         lambda: f"top={npmi_pairs(XN, min_count=5, top=100).iloc[0].to_dict()}"))
    print(f"worst_ratio_to_target {max(ratios):.3f}")


if __name__ == "__main__":
    main()
