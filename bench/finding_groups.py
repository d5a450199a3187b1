"""Does one concept fill one finding? Planted diffs on the demo corpus, default model + SAE.

Movie-review snippets (``builtin_data.demo_corpus``) are split by words: "comedy" documents mention one of
funny / comedy / laugh* / hilarious / humour / joke / comic (and no hedge word), "hedge" documents one of
some / certain / few / several / perhaps / maybe / somewhat (and no comedy word), "none" neither; 120 of
each. Two diffs by that column (comedy vs none, hedge vs none) are read into findings twice: "before"
folds features by Jaccard of their document sets only (the grouping up to round 1: ``fold_by_label=False,
containment_threshold=None``), "after" with this round's defaults (also shared label words and
containment). For the top-10 findings of side A it prints how many findings share a label word with an
earlier one (duplicates) and how many distinct concepts the ten show (findings linked by shared label words
count once), and the findings themselves; then the decoder cosine between each folded finding's lead and
its other members (would decoder cosine, which the workspace diff does not pass, have found them?).

    python bench/finding_groups.py [--per-class 120] [--workspace /tmp/finding_groups.duckdb]

The workspace is built once (about 9 minutes of embedding on 2 busy shared cores) and reused; then ~1 minute."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

import numpy as np  # noqa: E402

from backend.analysis.findings import DiffResult, Finding, concept_keys, decoder_cosine  # noqa: E402
from backend.builtin_data import demo_corpus  # noqa: E402
from backend.config import DEFAULT_SAE_DIR  # noqa: E402
from backend.workspace import Workspace, WorkspaceSpec  # noqa: E402

COMEDY = r"\b(?:funny|comedy|comedies|laugh\w*|hilarious|humou?r|jokes?|comic)\b"
HEDGE = r"\b(?:some|certain|few|several|perhaps|maybe|somewhat)\b"
BEFORE = {"fold_by_label": False, "containment_threshold": None}


def planted_corpus(per_class: int) -> pd.DataFrame:
    """``per_class`` documents each of comedy / hedge / none, by the words they contain."""
    df = demo_corpus(3000, seed=0)
    comedy = df["text"].str.contains(COMEDY, case=False)
    hedge = df["text"].str.contains(HEDGE, case=False)
    df["plant"] = "none"
    df.loc[comedy & ~hedge, "plant"] = "comedy"
    df.loc[hedge & ~comedy, "plant"] = "hedge"
    df = df[~(comedy & hedge)]
    parts = [df[df["plant"] == p].head(per_class) for p in ("comedy", "hedge", "none")]
    return pd.concat(parts).sample(frac=1.0, random_state=0)[["text", "plant"]].reset_index(drop=True)


def workspace(path: Path, per_class: int) -> Workspace:
    if path.exists():
        return Workspace.open(path, device="cpu")
    ws = Workspace.create(path, WorkspaceSpec(sae=str(DEFAULT_SAE_DIR)), device="cpu")
    ws.add_corpus("planted", planted_corpus(per_class), "text")
    ws.embed("planted")
    return ws


def concept_counts(findings: list[Finding]) -> tuple[int, int]:
    """(distinct concepts, duplicates): findings linked by a shared label word (or, for labels without one
    such as "the", the same name) count as one concept; a duplicate shares one with an earlier finding."""
    words = [concept_keys(f.label) for f in findings]
    parent = list(range(len(findings)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    duplicates = 0
    for j in range(len(findings)):
        linked = [i for i in range(j) if words[i] & words[j]]
        duplicates += bool(linked)
        for i in linked:
            parent[root(i)] = root(j)
    return len({root(i) for i in range(len(findings))}), duplicates


def decoder_cosines(res: DiffResult, decoder: np.ndarray) -> np.ndarray:
    """Decoder cosine between each multi-feature finding's lead and its other members."""
    return np.concatenate([decoder_cosine(decoder, np.array(f.feature_ids))[0, 1:] for f in res.findings
                           if f.n_features > 1] or [np.zeros(0)])


def report(ws: Workspace, plant: str, n_top: int = 10) -> DiffResult:
    for name, options in (("before", BEFORE), ("after", {})):
        res = ws.diff("planted", column="plant", value_a=plant, value_b="none", **options)
        top = [f for f in res.summary(n_per_side=n_top) if f.side == "a"]
        concepts, duplicates = concept_counts(top)
        print(f"{plant} vs none, {name}: top-{len(top)} findings of A: {concepts} distinct concepts, "
              f"{duplicates} duplicates (findings sharing a label word with an earlier one)")
        for f in top:
            print(f"    {f.share_a:4.0%} vs {f.share_b:4.0%}  {f.n_features:2d} features  {f.label[:90]}")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/finding_groups.duckdb"))
    args = parser.parse_args()
    ws = workspace(args.workspace, args.per_class)
    decoder = ws.sae.W_dec.detach().float().cpu().numpy()
    for plant in ("comedy", "hedge"):
        cos = decoder_cosines(report(ws, plant), decoder)
        print(f"{plant}: decoder cosine between a finding's lead and its other members (after): median "
              f"{np.median(cos):.2f}, max {cos.max():.2f}; >= 0.9 (the decoder rule's threshold): {(cos >= 0.9).sum()} "
              f"of {cos.size}")


if __name__ == "__main__":
    main()
