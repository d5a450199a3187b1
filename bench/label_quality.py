"""How many offline labels name no shared property ("varied tokens: a / b / c"), before and after.

Builds (or reuses) a small workspace with the default model + SAE: 200 documents of the demo corpus
(`builtin_data.demo_corpus`) and 200 lines of chatterbot-corpus conversations (100 human questions, 100 bot
answers; `builtin_data.chatterbot`). Then labels every feature that fires, twice from the same contexts:
"before" with backend/label_text.py as of git revision --before (default: the commit before this bench), "after"
with today's code (token classes, shared context words and MiniLM concept names). Prints, per corpus, the
share of labels that name no shared property, and how many of the top 10 findings of the human-vs-bot diff do.

    python bench/label_quality.py [--workspace /tmp/label_quality.duckdb] [--before afc3122] [--threads 2]

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

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from backend import builtin_data  # noqa: E402
from backend import feature_precompute as fp  # noqa: E402
from backend import labels as labels_mod  # noqa: E402
from backend.concept_names import minilm_namer  # noqa: E402
from backend.label_text import names_no_property, readable_labels  # noqa: E402
from backend.workspace import Workspace, WorkspaceSpec  # noqa: E402


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
    ws = Workspace.open_or_create(path, WorkspaceSpec())
    corpora = {"demo": lambda: builtin_data.demo_corpus(n_docs, seed=0)[["text", "label"]], "chat": lambda: chat_lines(n_docs)}
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


def label_corpus(ws: Workspace, name: str, old) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(before, after) label frames of every feature that fires in the corpus, from the same contexts."""
    cid = ws.corpus(name).corpus_id
    decode = labels_mod.make_decoder(ws.reader.tokenizer)
    skip = set(getattr(ws.reader.tokenizer, "all_special_ids", []) or [])
    ctx = fp.collect_contexts(ws, cid)
    background = fp.background_token_ids(ws, cid)
    before = old.readable_labels(ctx, background, decode, skip_ids=skip)
    t0 = time.time()
    after = readable_labels(ctx, background, decode, skip_ids=skip, concepts=minilm_namer())
    print(f"{name}: labelled {len(after)} features in {time.time() - t0:.0f} s", flush=True)
    return before, after


def diff_top10(ws: Workspace, labels: dict[int, str]) -> tuple[int, list[str]]:
    """(how many of the human-vs-bot diff's top 10 findings name no property, their labels)."""
    res = ws.diff("chat", column="speaker", value_a="human", value_b="bot")
    top = res.summary(n_per_side=5)[:10]
    names = [labels.get(f.lead, f"feature {f.lead}") for f in top]
    return sum(names_no_property(n) for n in names), names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", default=str(Path(tempfile.gettempdir()) / "label_quality.duckdb"))
    ap.add_argument("--before", default="afc3122", help="git revision of the baseline label_text.py")
    ap.add_argument("--docs", type=int, default=200, help="documents per corpus (two corpora)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--show", type=int, default=0, help="print this many 'after' labels of formerly varied features")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ws = build(Path(args.workspace), args.docs)
    old = old_label_text(args.before)
    shares, tops = {"before": [], "after": []}, {}
    for name in ("demo", "chat"):
        before, after = label_corpus(ws, name, old)
        for key, df in (("before", before), ("after", after)):
            n_bad = int(df["name"].map(names_no_property).sum())
            shares[key].append((n_bad, len(df)))
            print(f"{name} {key}: {n_bad} of {len(df)} labels name no shared property ({100 * n_bad / len(df):.1f}%)")
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
    print(f"varied before={pct['before']:.1f}% after={pct['after']:.1f}% diff_top10 before={tops['before']} "
          f"after={tops['after']}")


if __name__ == "__main__":
    main()
