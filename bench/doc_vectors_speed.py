"""How fast a corpus gets its MiniLM document vectors (the dense and hybrid rankings' first call, MiniLM k-means).

Stores N Debian fortunes (every file, up to 400 characters, shuffled: short and long texts mixed as in a real
corpus) in a fresh workspace, without embedding them through the SAE (the vectors need only the texts), and times:

- ``doc_vectors``: `backend.doc_embeddings.doc_vectors`, what `ws.retrieve(mode="dense"|"hybrid")` and
  `ws.cluster_dense` run on their first call (batches stored as they go, so an interrupted pass resumes);
- ``baseline``: one `search.sentence_embed` call over all the texts, which sorts all of them by length (the
  fastest plain way: nothing stored, no resume);
- ``doc order``: batches of 64 in doc_id order, what `doc_vectors` did before it sorted each chunk by length.

    PYTHONPATH=. python bench/doc_vectors_speed.py [--docs 3000] [--threads 2]

Last line: ``doc_vectors <s> s baseline <s> s ratio <baseline / doc_vectors> doc_order <s> s``."""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from backend import builtin_data, doc_embeddings, search
    from backend.workspace import Workspace, WorkspaceSpec

    torch.set_num_threads(args.threads)
    pairs = builtin_data.fortunes(max_chars=400)
    if not pairs:
        sys.exit("The Debian fortunes are not installed (apt-get install fortunes).")
    random.Random(1).shuffle(pairs)
    texts = [t for _, t in pairs[: args.docs]]
    search.load_model()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.create(Path(tmp) / "bench.duckdb", WorkspaceSpec())
        ws.add_corpus("fortunes", pd.DataFrame({"text": texts}), "text")
        t0 = time.perf_counter()
        ours = doc_embeddings.doc_vectors(ws, ws.corpus("fortunes"))
        t_ours = time.perf_counter() - t0
        ws.close()
    t0 = time.perf_counter()
    base = search.sentence_embed(texts)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, len(texts), 64):
        search.sentence_embed(texts[s:s + 64])
    t_order = time.perf_counter() - t0
    print(f"{len(texts)} documents, {args.threads} threads; max |doc_vectors - baseline| = "
          f"{float(np.abs(ours - base).max()):.1e}")
    print(f"doc_vectors {t_ours:.1f} s baseline {t_base:.1f} s ratio {t_base / t_ours:.2f} doc_order {t_order:.1f} s")


if __name__ == "__main__":
    main()
