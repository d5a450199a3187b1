"""A labelled corpus outside the other benches, read through the notebook API: Debian fortunes of ten topics.

Up to 60 fortunes (40 to 400 characters) of each of computers, food, love, politics, science, sports, law,
medicine, pets and education (`builtin_data.fortunes`, the Debian `fortunes` package; 575 documents), in one
corpus with a `topic` column; default model + SAE. Then, as a user would:

- `ws.diff(corpus, column="topic", value_a=t)` for each topic against the rest, summaries of 5 findings a side:
  how many findings share a label word, or a form of one, with an earlier finding of their side (one concept
  split over findings), how many name no shared property (`varied tokens`), how many name a concept of the
  contexts (`about …`);
- `ws.retrieve(corpus, query, top=30, mode=…)` for one plain query per topic ("pets, cats and dogs"): P@30 of
  the SAE, MiniLM and hybrid rankings;
- `ws.cluster_dense(corpus, k=10)`: ARI against the topics, and each cluster's `about` with its commonest topic.

    python bench/fortune_topics.py [--workspace /tmp/fortune_topics.duckdb]

The workspace is built once (about 90 s of embedding on 2 cores) and reused; then about a minute. Last line:
`summaries dup=<n> varied=<n> about=<n> | p30 sae=<x> dense=<y> hybrid=<z> | ari=<a>`."""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from backend.analysis.cluster import agreement  # noqa: E402
from backend.analysis.label_reading import base_forms, label_words, names_nothing  # noqa: E402
from backend.builtin_data import fortunes  # noqa: E402
from backend.workspace import Workspace, WorkspaceSpec  # noqa: E402

QUERIES = {"computers": "computers and programming", "food": "food and cooking", "love": "love and romance",
           "politics": "politics and government", "science": "science and scientists", "sports": "sports and games",
           "law": "law and lawyers", "medicine": "doctors and medicine", "pets": "pets, cats and dogs",
           "education": "school and education"}


def corpus(per_topic: int = 60, seed: int = 0) -> pd.DataFrame:
    rows = [(c, t) for c, t in fortunes(max_chars=400) if c in QUERIES and 40 <= len(t) <= 400]
    random.Random(seed).shuffle(rows)
    kept, count = [], dict.fromkeys(QUERIES, 0)
    for c, t in rows:
        if count[c] < per_topic:
            kept.append((c, t))
            count[c] += 1
    return pd.DataFrame(kept, columns=["topic", "text"])


def workspace(path: Path) -> Workspace:
    ws = Workspace.open_or_create(path, WorkspaceSpec())
    if not ws.has_corpus("fortunes"):
        df = corpus()
        if df.empty:
            raise SystemExit("The Debian fortunes package is not installed (apt-get install fortunes).")
        ws.add_corpus("fortunes", df, "text")
    if ws.corpus("fortunes").status != "ready":
        ws.embed("fortunes")
    return ws


def summaries(ws: Workspace) -> tuple[int, int, int]:
    """(findings sharing a word or its form with an earlier one of their side, varied, about) over the diffs."""
    dup = varied = about = 0
    for topic in QUERIES:
        found = ws.diff("fortunes", column="topic", value_a=topic).summary(n_per_side=5)
        print(f"{topic} vs the rest:")
        for side in "ab":
            mine = [f for f in found if f.side == side]
            words = [label_words(f.label) for f in mine]
            base = base_forms(set().union(*words)) if words else {}
            words = [{base[w] for w in ws_} for ws_ in words]
            for i, f in enumerate(mine):
                dup += any(words[i] & words[j] for j in range(i))
                varied += names_nothing(f.label)
                about += f.label.startswith("about ") and not f.label.startswith("about /")
                print(f"  [{side}] {f.sentence[:150]}")
    return dup, varied, about


def retrieval(ws: Workspace) -> dict[str, float]:
    topic = ws.metadata("fortunes", "topic")
    out = {}
    for mode in ("sae", "dense", "hybrid"):
        p = [float(np.mean([topic.loc[d] == t for d in ws.retrieve("fortunes", q, top=30, mode=mode)["doc_id"]]))
             for t, q in QUERIES.items()]
        out[mode] = float(np.mean(p))
        print(f"P@30 {mode}: {out[mode]:.3f}  " + " ".join(f"{t}={x:.2f}" for t, x in zip(QUERIES, p)))
    return out


def clusters(ws: Workspace) -> float:
    topic = ws.metadata("fortunes", "topic").to_numpy().astype(str)
    reading = ws.cluster_dense("fortunes", k=len(QUERIES))
    for row in reading.clusters.itertuples(index=False):
        inside = pd.Series(topic[reading.labels == row.cluster]).value_counts()
        print(f"cluster {row.cluster} ({row.size}, {inside.iloc[0]} {inside.index[0]}): {row.about}")
    return float(agreement(reading.labels, topic)["ari"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("/tmp/fortune_topics.duckdb"))
    args = ap.parse_args()
    ws = workspace(args.workspace)
    dup, varied, about = summaries(ws)
    p = retrieval(ws)
    ari = clusters(ws)
    ws.close()
    print(f"summaries dup={dup} varied={varied} about={about} | p30 sae={p['sae']:.3f} dense={p['dense']:.3f} "
          f"hybrid={p['hybrid']:.3f} | ari={ari:.3f}")


if __name__ == "__main__":
    main()
