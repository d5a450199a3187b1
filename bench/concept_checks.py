"""Do retrieval and clustering follow the concept? Planted checks on offline labelled text, default model + SAE.

1. Text-query retrieval. Debian fortunes files and chatterbot-corpus files are categories; each category's
   query is 3-5 example phrases (one text, as typed into the Retrieval page). Precision@50 of the SAE
   ranking with IDF weighting (``rank_by_query``'s default, "after") and without ("before"), beside MiniLM
   cosine. The phrases were written before any run and are not tuned.
2. Hedge clustering. 400 generated sentences, half hedged with one of 15 hedge words ("may", "perhaps",
   "it seems that", ...), half plain or with a certainty booster. Hedge features are picked from five
   example phrases, as a user picks the features highlighted on the hedge word: all of them, or only
   those that do not also fire on the same phrase said plainly ("contrastive"); the strongest 15 or 30.
   k=2: pattern clustering ("before"), concept clustering ("after"), concept clustering with the picks
   given as one family, and MiniLM k-means, as ARI against hedged/certain.

    python bench/concept_checks.py [--threads 2] [--per-class 150]

At most ~1,500 documents; about 7 minutes on 2 busy CPU cores (most of it embedding). Last line: `mean_p50 idf=<x> none=<y> minilm=<z>
hedge_ari concepts=<a> patterns=<b>` (hedge ARIs averaged over the four picks)."""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from backend import builtin_data  # noqa: E402

# -- retrieval queries: a few example phrases per category, joined as one query text ------------------
FORTUNE_QUERIES = {
    "food": ["a delicious dinner", "cooking in the kitchen", "eating bread, cheese and fruit", "hungry for lunch"],
    "sports": ["the team won the game", "a baseball player hit the ball", "football fans in the stadium",
               "the coach of the golf team"],
    "law": ["the judge in the courtroom", "a lawyer and his client", "breaking the law", "the jury found him guilty"],
    "education": ["students in the classroom", "the teacher gave us homework", "studying for the final exam",
                  "a college degree"],
    "love": ["falling in love", "a kiss from my sweetheart", "romance and passion", "a broken heart"],
    "computers": ["the computer crashed", "a bug in the software", "programmers writing code",
                  "the operating system and the disk"],
}
CHATTERBOT_QUERIES = {
    "tech_support": ["my printer is not working", "how do I reset my password", "the wifi keeps disconnecting",
                     "restart your computer"],
    "trivia": ["who was the first president", "what is the capital of France", "which planet is the largest"],
    "coding": ["what is a programming language", "how do I write a function in Python", "compile the source code"],
    "ai": ["are you a robot", "artificial intelligence", "do you have feelings as a chatbot",
           "a machine that can think"],
}

# -- hedge corpus: 15 hedge words in three sentence shapes, certain sentences plain or boosted ----------
SUBJECTS = ["the committee", "the new drug", "the engineers", "the storm", "our team", "the company", "the witness",
            "the software update", "the city council", "the researchers", "the old bridge", "the market",
            "the students", "the vaccine", "the manager"]
VERBS = [("approved the plan", "approve the plan"), ("caused the delay", "cause the delay"),
         ("improved the results", "improve the results"), ("reduced the cost", "reduce the cost"),
         ("changed the schedule", "change the schedule"), ("damaged the roof", "damage the roof"),
         ("helped the patients", "help the patients"), ("ignored the warning", "ignore the warning"),
         ("increased the price", "increase the price"), ("finished the project", "finish the project"),
         ("missed the deadline", "miss the deadline"), ("won the contract", "win the contract"),
         ("lost the data", "lose the data"), ("solved the problem", "solve the problem"),
         ("closed the office", "close the office")]
WHEN = ["", " last week", " on Monday", " after the meeting", " this year", " in the end", " yesterday",
        " during the summer"]
HEDGE_MODAL = ["may", "might", "could"]  # S may <base>
HEDGE_FRONT = ["Perhaps", "Possibly", "Maybe", "Apparently", "Presumably", "Arguably"]  # Perhaps s <past>
HEDGE_MID = ["probably", "likely", "seemingly"]  # S probably <past>
HEDGE_CLAUSE = ["It seems that", "I think", "Some say"]  # It seems that s <past>
BOOSTERS_MID = ["definitely", "certainly"]
BOOSTERS_FRONT = ["Clearly,", "In fact,"]
# Example phrases a user might write (5 of the 15 corpus hedge words, other contexts), hedge word in brackets,
# each with the same phrase stated plainly: "contrastive" picks keep features that do not fire on the plain one.
HEDGE_EXAMPLES = [("It [may] rain tomorrow.", "It will rain tomorrow."),
                  ("[Perhaps] she forgot the keys.", "She forgot the keys."),
                  ("The answer is [possibly] wrong.", "The answer is wrong."),
                  ("He [might] be late.", "He will be late."),
                  ("They [probably] left early.", "They left early.")]
N_PICKED = (15, 30)  # how many of the strongest picked features are chosen (the issue's user chose 30)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def hedge_corpus(n: int = 400, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """n sentences, the first half hedged (one hedge word each, evenly spread), shuffled; truth 1 = hedged."""
    rng = random.Random(seed)
    hedges = [("modal", h) for h in HEDGE_MODAL] + [("front", h) for h in HEDGE_FRONT] + \
        [("mid", h) for h in HEDGE_MID] + [("clause", h) for h in HEDGE_CLAUSE]
    out: list[tuple[str, int]] = []
    for i in range(n // 2):
        subj, (past, base), when = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(WHEN)
        shape, word = hedges[i % len(hedges)]
        text = {"modal": f"{_cap(subj)} {word} {base}{when}.", "front": f"{word} {subj} {past}{when}.",
                "mid": f"{_cap(subj)} {word} {past}{when}.", "clause": f"{word} {subj} {past}{when}."}[shape]
        out.append((text, 1))
    for i in range(n - n // 2):
        subj, (past, base), when = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(WHEN)
        shape = i % 6
        if shape < 3:
            text = f"{_cap(subj)} {past}{when}."
        elif shape == 3:
            text = f"{_cap(subj)} {rng.choice(BOOSTERS_MID)} {past}{when}."
        elif shape == 4:
            text = f"{rng.choice(BOOSTERS_FRONT)} {subj} {past}{when}."
        else:
            text = f"{_cap(subj)} will {base}{when}."
        out.append((text, 0))
    rng.shuffle(out)
    return [t for t, _ in out], np.array([y for _, y in out])


@dataclass
class LabelledCorpus:
    name: str
    texts: list[str]
    labels: np.ndarray  # category index per text
    categories: list[str]
    queries: dict[str, list[str]]


def labelled(pairs: list[tuple[str, str]], queries: dict[str, list[str]], per_class: int, name: str,
             max_chars: int, seed: int = 0) -> LabelledCorpus | None:
    rng = random.Random(seed)
    by_cat: dict[str, list[str]] = {}
    for cat, text in pairs:
        if cat in queries and len(text) <= max_chars:
            by_cat.setdefault(cat, []).append(text)
    cats = sorted(c for c in by_cat if len(by_cat[c]) >= 50)
    if len(cats) < 2:
        return None
    texts, labels = [], []
    for i, cat in enumerate(cats):
        chosen = rng.sample(by_cat[cat], min(per_class, len(by_cat[cat])))
        texts += chosen
        labels += [i] * len(chosen)
    return LabelledCorpus(name, texts, np.array(labels), cats, {c: queries[c] for c in cats})


# -- embeddings -----------------------------------------------------------------------------------------
class SAEReader:
    """The default reader model + SAE, texts in, max-pooled CSR out (the workspace's pipeline)."""

    def __init__(self) -> None:
        from backend.activations import EmbedConfig
        from backend.config import DEFAULT_SAE_DIR
        from backend.models import load_reader
        from backend.saes import load_sae, sae_info

        self.sae = load_sae(DEFAULT_SAE_DIR, device="cpu")
        self.hook = sae_info(self.sae, DEFAULT_SAE_DIR).hook_name
        self.reader = load_reader(device="cpu")
        self.cfg = EmbedConfig(max_tokens=128)
        self.d_sae = int(self.sae.cfg.d_sae)

    def embed(self, texts: list[str]) -> sp.csr_matrix:
        from backend.activations import sae_embed_texts

        rows = sae_embed_texts(self.reader, self.sae, self.hook, texts, self.cfg)
        return sp.csr_matrix((rows.max_act, (rows.doc, rows.feature)), shape=(len(texts), self.d_sae))

    def features_on_marked_word(self, example: str) -> dict[int, float]:
        """Features firing on the [bracketed] word of an example phrase: {feature: max activation there}."""
        from backend.activations import token_activations

        match = re.search(r"\[(.+?)\]", example)
        if match is None:
            raise ValueError(f"mark the word in {example!r} with [brackets]")
        text = example.replace("[", "").replace("]", "")
        start, end = match.start(), match.end() - 2
        offsets = self.reader.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        _, acts, _ = token_activations(self.reader, self.sae, self.hook, text, self.cfg)
        prefix = len(self.reader.prefix_ids())
        rows = [prefix + i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        at_word = acts[rows].max(axis=0)
        return {int(f): float(at_word[f]) for f in np.flatnonzero(at_word > 0)}


def minilm(texts: list[str]) -> np.ndarray:
    from backend.search import sentence_embed

    return sentence_embed(texts)


# -- checks ---------------------------------------------------------------------------------------------
def precision_at(rows: np.ndarray, labels: np.ndarray, category: int, k: int = 50) -> float:
    """Share of the top min(k, category size) rows in the category (missing rows count as misses)."""
    n = min(k, int((labels == category).sum()))
    return float((labels[np.asarray(rows[:n], np.int64)] == category).sum() / n)


def retrieval_rows(corpus: LabelledCorpus, X: sp.csr_matrix, E: np.ndarray, sae: SAEReader) -> list[tuple]:
    from backend.analysis.retrieve import dense_retrieve, rank_by_query

    out = []
    for ci, cat in enumerate(corpus.categories):
        query = "\n".join(corpus.queries[cat])
        q = sae.embed([query])
        qf = dict(zip(q.indices.tolist(), q.data.tolist()))
        p = {w: precision_at(rank_by_query(X, qf, top=50, weighting=w).table["row"].to_numpy(), corpus.labels, ci)
             for w in ("none", "idf")}
        dense = dense_retrieve(minilm([query])[0], E, top=50)["row"].to_numpy()
        out.append((corpus.name, cat, int((corpus.labels == ci).sum()), p["none"], p["idf"],
                    precision_at(dense, corpus.labels, ci)))
    return out


def pick_hedge_features(sae: SAEReader) -> dict[str, list[int]]:
    """Features picked from the example phrases, strongest (summed activation on the hedge word) first:
    "on the hedge word" = every feature firing on the marked word; "contrastive" = those of them that
    fire nowhere in the plain counterpart phrase."""
    on_word: dict[int, float] = {}
    contrastive: dict[int, float] = {}
    for hedged, plain in HEDGE_EXAMPLES:
        in_plain = set(sae.embed([plain]).indices.tolist())
        for f, a in sae.features_on_marked_word(hedged).items():
            on_word[f] = on_word.get(f, 0.0) + a
            if f not in in_plain:
                contrastive[f] = contrastive.get(f, 0.0) + a
    return {name: sorted(scores, key=lambda f: (-scores[f], f))
            for name, scores in (("on the hedge word", on_word), ("contrastive", contrastive))}


def hedge_rows(sae: SAEReader, seed: int) -> tuple[list[tuple], float, int]:
    """(rows: selection, n, ARI patterns, ARI concepts, ARI one family, none (concepts), MiniLM ARI, n docs)."""
    from backend.analysis.cluster import agreement, cluster_along, dense_cluster

    texts, truth = hedge_corpus(seed=seed)
    X = sae.embed(texts)
    rows = []
    for selection, ranked in pick_hedge_features(sae).items():
        for n in N_PICKED:
            chosen = ranked[:n]
            patterns = cluster_along(X, chosen, k=2, method="spectral")
            concepts = cluster_along(X, chosen, k=2, method="concepts")
            family = cluster_along(X, [], k=2, method="concepts", groups=[chosen])
            rows.append((selection, len(chosen), *(agreement(r.labels, truth)["ari"] for r in (patterns, concepts, family)),
                         concepts.n_none, len(concepts.concepts), sum(c.background for c in concepts.concepts)))
    dense = agreement(dense_cluster(minilm(texts), 2), truth)["ari"]
    return rows, dense, len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=150, help="fortunes documents per category")
    parser.add_argument("--chatterbot-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    corpora = [c for c in (
        labelled(builtin_data.fortunes(), FORTUNE_QUERIES, args.per_class, "fortunes", 400, args.seed),
        labelled(builtin_data.chatterbot(), CHATTERBOT_QUERIES, args.chatterbot_per_class, "chatterbot", 400, args.seed),
    ) if c is not None]
    sae = SAEReader()
    print(f"loaded model + SAE in {time.time() - t0:.0f}s; corpora: "
          + ", ".join(f"{c.name} {len(c.texts)} docs in {len(c.categories)} categories" for c in corpora), flush=True)

    ret = []
    for corpus in corpora:
        t = time.time()
        X = sae.embed(corpus.texts)
        E = minilm(corpus.texts)
        ret += retrieval_rows(corpus, X, E, sae)
        print(f"{corpus.name}: embedded and queried in {time.time() - t:.0f}s", flush=True)
    print("\nText-query retrieval, precision@50 (queries: 3-5 example phrases per category)")
    print(f"{'corpus':<11} {'category':<13} {'docs':>5} {'SAE none':>9} {'SAE idf':>8} {'MiniLM':>7}")
    for corpus, cat, n, p_none, p_idf, p_dense in ret:
        print(f"{corpus:<11} {cat:<13} {n:>5} {p_none:>9.2f} {p_idf:>8.2f} {p_dense:>7.2f}")
    mean = np.mean([r[3:] for r in ret], axis=0) if ret else np.full(3, np.nan)
    print(f"{'mean':<11} {'':<13} {'':>5} {mean[0]:>9.2f} {mean[1]:>8.2f} {mean[2]:>7.2f}")

    t = time.time()
    hedge, dense_ari, n_docs = hedge_rows(sae, args.seed)
    print(f"\nHedge clustering, k=2, ARI against hedged/certain: {n_docs} sentences (half hedged, 15 hedge words); "
          f"features picked on {len(HEDGE_EXAMPLES)} example phrases ({time.time() - t:.0f}s)")
    print(f"{'picked features':<18} {'n':>3} {'patterns':>9} {'concepts':>9} {'one family':>11} {'none':>5} "
          f"{'concepts':>9} {'background':>11}")
    for selection, n, a_pat, a_con, a_fam, n_none, n_concepts, n_bg in hedge:
        print(f"{selection:<18} {n:>3} {a_pat:>9.2f} {a_con:>9.2f} {a_fam:>11.2f} {n_none:>5} {n_concepts:>9} {n_bg:>11}")
    print(f"MiniLM k-means (k=2): ARI {dense_ari:.2f}")
    print(f"\ntotal {time.time() - t0:.0f}s")
    print(f"mean_p50 idf={mean[1]:.3f} none={mean[0]:.3f} minilm={mean[2]:.3f} "
          f"hedge_ari concepts={np.mean([r[3] for r in hedge]):.3f} patterns={np.mean([r[2] for r in hedge]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
