"""Hybrid retrieval and dense clusters read through SAE features, measured on offline corpora.

Builds (once, reused on later runs) a workspace with the default model + SAE holding two corpora:

- ``topics``: Debian fortunes, 6 categories x 50 short fortunes (food, sports, law, education, love,
  computers). Each category's query is the 3-5 example phrases of bench/concept_checks.py, joined.
- ``properties``: 300 short single-sentence fortunes from every file; 40 rewritten as hedged ("Perhaps …",
  "It seems that …"), 40 as questions ("Is it true that …?"), 40 in capitals, 40 with a link appended;
  140 left plain. The property is planted on sentences of every topic, so the topic says nothing about it.
  Queries are one sentence with the property (written before any run, not tuned).
- ``hedges``: bench/concept_checks.py's generated sentences (200: half hedged with one of 15 hedge words, half
  plain or boosted), queried with the same hedged sentence.

Then P@50 (precision in the top min(50, relevant documents)) of ``ws.retrieve(..., mode=m)`` for
m = sae, dense, hybrid on every query, and the MiniLM k-means clusters of ``topics`` described by their
over- and under-represented SAE features (``ws.cluster_dense`` + its description).

    PYTHONPATH=. python bench/hybrid_retrieval.py [--workspace /tmp/hybrid_bench.duckdb] [--threads 2]
        [--fortunes-dir DIR]   # where the fortunes files are, when the `fortunes` package is not installed

800 documents: the build took 880 s on this shared 2-core machine (load ~15) and is reused afterwards; a
measurement run took 425 s (every ws.retrieve call reads its query with the model again: 5 calls per query).
Last line: ``p50 topical sae=<a> dense=<b> hybrid=<c> property sae=<d> dense=<e> hybrid=<f>``."""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from backend import builtin_data  # noqa: E402
from bench.concept_checks import FORTUNE_QUERIES  # noqa: E402

TOPIC_QUERIES = FORTUNE_QUERIES  # the same phrases as bench/concept_checks.py
PROPERTY_QUERIES = {
    "hedged": "Perhaps it might be so, but it seems that nobody is quite sure.",
    "question": "Is it true that this is how things are?",
    "capitals": "THIS WHOLE SENTENCE IS WRITTEN IN CAPITAL LETTERS.",
    "link": "Read the rest at https://www.example.com/articles/story.html",
}
HEDGES = ["Perhaps", "Maybe", "Possibly", "It seems that", "I think", "Apparently", "It may be that", "Probably"]
QUESTIONS = ["Is it true that", "Do you think that", "Would you agree that", "Is it really so that"]
SITES = ["example.com", "news.example.org", "blog.example.net", "www.example.co.uk"]
PER_PROPERTY, N_PLAIN, PER_TOPIC = 40, 140, 50


def topic_corpus(seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for cat, text in builtin_data.fortunes(max_chars=400):
        if cat in TOPIC_QUERIES:
            by_cat.setdefault(cat, []).append(text)
    rows = [(cat, t) for cat in sorted(by_cat) for t in rng.sample(by_cat[cat], min(PER_TOPIC, len(by_cat[cat])))]
    return pd.DataFrame(rows, columns=["truth", "text"])


def _lower_first(text: str) -> str:
    return text if text[:2].isupper() else text[0].lower() + text[1:]


def plant(prop: str, text: str, rng: random.Random) -> str:
    """The sentence rewritten to carry one property."""
    body = text.rstrip(".!")
    if prop == "hedged":
        return f"{rng.choice(HEDGES)} {_lower_first(body)}."
    if prop == "question":
        return f"{rng.choice(QUESTIONS)} {_lower_first(body)}?"
    if prop == "capitals":
        return text.upper()
    slug = "-".join(re.findall(r"[a-z]+", body.lower())[:4]) or "page"
    return f"{text} More at https://{rng.choice(SITES)}/{slug}.html"


def property_corpus(seed: int = 0) -> pd.DataFrame:
    """Single sentences of every fortunes file, some rewritten to carry one property each (truth: which)."""
    rng = random.Random(seed)
    pool = sorted({t for _, t in builtin_data.fortunes(max_chars=160)
                   if "\n" not in t and t.endswith(".") and t.count(".") == 1 and not re.search(r"[?!\"]|http", t)})
    texts = rng.sample(pool, len(PROPERTY_QUERIES) * PER_PROPERTY + N_PLAIN)
    truth = [p for p in PROPERTY_QUERIES for _ in range(PER_PROPERTY)] + ["plain"] * N_PLAIN
    rows = [(y, t if y == "plain" else plant(y, t, rng)) for y, t in zip(truth, texts)]
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["truth", "text"])


def hedge_frame(n: int = 200) -> pd.DataFrame:
    from concept_checks import hedge_corpus  # bench/ is on the path when this file runs as a script

    texts, hedged = hedge_corpus(n=n)
    return pd.DataFrame({"truth": np.where(hedged == 1, "hedged", "certain"), "text": texts})


def build(path: Path, progress: bool = True):
    """The workspace with both corpora embedded and their MiniLM vectors stored (reused when present)."""
    from backend import doc_embeddings
    from backend.workspace import Workspace, WorkspaceSpec

    ws = Workspace.open_or_create(str(path), WorkspaceSpec())
    for name, frame in (("topics", topic_corpus()), ("properties", property_corpus()), ("hedges", hedge_frame())):
        if not ws.has_corpus(name):
            ws.add_corpus(name, frame, text_column="text")
        if ws.corpus(name).status != "ready":
            t = time.time()
            ws.embed(name, progress=(lambda p: None))
            print(f"embedded {name}: {ws.corpus(name).n_docs} docs in {time.time() - t:.0f}s", flush=True)
        doc_embeddings.doc_vectors(ws, ws.corpus(name))
    return ws


def precision_at(doc_ids, truth: np.ndarray, category: str, k: int = 50) -> float:
    n = min(k, int((truth == category).sum()))
    return float((truth[np.asarray(list(doc_ids)[:n], np.int64)] == category).sum() / n)


MODES = ("sae", "dense", "hybrid")
CONTROLS = ("zscore", "rrf")  # other fusions, as controls


def retrieval_rows(ws, corpus: str, queries: dict[str, str]) -> list[tuple]:
    truth = ws.metadata(corpus, "truth").to_numpy().astype(str)
    rows = []
    for cat, query in queries.items():
        p = [precision_at(ws.retrieve(corpus, query, top=50, mode=m)["doc_id"], truth, cat) for m in MODES]
        p += [precision_at(ws.retrieve(corpus, query, top=50, mode="hybrid", fusion=f)["doc_id"], truth, cat)
              for f in CONTROLS]
        rows.append((corpus, cat, int((truth == cat).sum()), *p))
    return rows


def print_why(ws, corpus: str, query: str, n: int = 3) -> None:
    hits = ws.retrieve(corpus, query, top=n, mode="hybrid")
    texts = ws.documents(corpus, hits["doc_id"].tolist()).set_index("doc_id")["text"]
    print(f"\nhybrid hits for {query!r} on {corpus}, with the query features that make each relevant:")
    for h in hits.itertuples(index=False):
        print(f"  doc {h.doc_id} (sae #{h.sae_rank}, dense #{h.dense_rank}): {texts[h.doc_id][:80]!r}\n    why: {h.why}")


def print_retrieval(rows: list[tuple]) -> None:
    print(f"{'corpus':<11} {'query':<10} {'docs':>5} " + " ".join(f"{m:>7}" for m in MODES + CONTROLS))
    for corpus, cat, n, *p in rows:
        print(f"{corpus:<11} {cat:<10} {n:>5} " + " ".join(f"{x:>7.2f}" for x in p))


def print_clusters(ws, k: int) -> float:
    from backend.analysis.cluster import agreement

    res = ws.cluster_dense("topics", k=k)
    truth = ws.metadata("topics", "truth").to_numpy().astype(str)
    ari = agreement(res.labels, truth)["ari"]
    print(f"\nMiniLM k-means, k={k}, on topics: ARI {ari:.2f} against the fortunes files; each cluster read through "
          "SAE features (over: more common inside, under: rarer inside; z of the log-odds ratio)")
    texts = ws.documents("topics")["text"].to_numpy()
    for row in res.clusters.itertuples(index=False):
        in_cluster = truth[res.labels == row.cluster]
        top_truth = pd.Series(in_cluster).value_counts()
        print(f"\ncluster {row.cluster}: {row.size} docs, mostly {top_truth.index[0]} ({top_truth.iloc[0]}/{row.size})")
        feats = res.features[res.features["cluster"] == row.cluster]
        for f in feats.itertuples(index=False):
            print(f"  {f.side:<5} f{f.feature_id:<5} in {f.in_share:.2f} rest {f.out_share:.2f} z {f.z:+.1f}  "
                  f"{(f.label or '')[:60]}")
        for d in res.documents[res.documents["cluster"] == row.cluster].itertuples(index=False):
            print(f"  typical doc {d.doc_id}: {texts[d.doc_id][:90]!r}")
    return ari


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default="/tmp/hybrid_bench.duckdb")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--fortunes-dir", default=None,
                        help="Debian fortunes files when not installed (e.g. a `dpkg -x` of the fortunes .deb)")
    args = parser.parse_args(argv)
    if args.fortunes_dir:
        builtin_data.FORTUNES_DIR = Path(args.fortunes_dir)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    ws = build(Path(args.workspace))
    print(f"workspace ready in {time.time() - t0:.0f}s", flush=True)
    if args.build_only:
        return 0
    topical = retrieval_rows(ws, "topics", {c: "\n".join(q) for c, q in TOPIC_QUERIES.items()})
    props = retrieval_rows(ws, "properties", PROPERTY_QUERIES)
    props += retrieval_rows(ws, "hedges", {"hedged": PROPERTY_QUERIES["hedged"]})
    print("\nText-query retrieval, precision@50 (ws.retrieve(corpus, query, top=50, mode=…))")
    print_retrieval(topical + props)
    mt, mp = (np.mean([r[3:] for r in rows], axis=0) for rows in (topical, props))
    print("mean topical  " + " ".join(f"{m}={x:.2f}" for m, x in zip(MODES + CONTROLS, mt)))
    print("mean property " + " ".join(f"{m}={x:.2f}" for m, x in zip(MODES + CONTROLS, mp)))
    print("(hybrid: adaptive fusion, the default; zscore, rrf: hybrid with fusion=… as controls)")
    print_why(ws, "properties", PROPERTY_QUERIES["hedged"])
    print_why(ws, "topics", "\n".join(TOPIC_QUERIES["food"]))
    print_clusters(ws, k=len(TOPIC_QUERIES))
    print(f"\ntotal {time.time() - t0:.0f}s")
    print("p50 topical " + " ".join(f"{m}={x:.3f}" for m, x in zip(MODES, mt))
          + " property " + " ".join(f"{m}={x:.3f}" for m, x in zip(MODES, mp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
