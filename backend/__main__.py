"""Command line: `python -m backend <command>` (prepare, train-sae, create, add, embed, show, export)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backend import config


def _tqdm_progress(desc: str):
    from tqdm import tqdm

    bar: dict = {}

    def cb(p) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=p.docs_total, initial=0, desc=desc, unit="doc")
        b = bar["bar"]
        b.n = p.docs_done
        b.set_postfix_str(f"{p.tokens_per_s:,.0f} tok/s")
        b.refresh()
        if p.status != "running":
            b.close()

    return cb


def cmd_prepare(args: argparse.Namespace) -> int:
    from backend.demo import ensure_default_workspace
    from backend.models import prepare_builtin

    print(f"Model cache: {prepare_builtin(args.model)}")
    if not args.model_only:
        ws = ensure_default_workspace(_tqdm_progress("Embedding the demo corpus"))
        print(json.dumps(ws.summary(), indent=1, default=str))
        ws.close()
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    from backend.builtin_data import training_texts
    from backend.corpora import read_corpus, guess_text_column
    from backend.models import load_reader
    from backend.saes import save_fp16
    from backend.training import TrainConfig, to_sae_lens, collect_activations, train_topk
    from tqdm import tqdm

    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, n_tokens=args.n_tokens, epochs=args.epochs, seed=args.seed,
                      formatting=args.formatting)
    out = Path(args.out) if args.out else config.DEFAULT_SAE_DIR
    if args.corpus:
        df = read_corpus(args.corpus)
        texts = df[args.text_column or guess_text_column(df)].astype(str).tolist()
    else:
        texts = training_texts(args.seed)
    reader = load_reader(args.model, device=args.device)
    bars: dict = {}

    def progress(done: int, total: int, msg: str) -> None:
        key = "acts" if msg == "activations" else "train"
        if key not in bars:
            bars[key] = tqdm(total=total, desc="activations (tokens)" if key == "acts" else "training (steps)")
        bars[key].n = done
        bars[key].set_postfix_str(msg if key == "train" else "")
        bars[key].refresh()

    acts = collect_activations(reader, args.hook, texts, cfg, progress)
    sae, scale, report = train_topk(acts, cfg, progress)
    for b in bars.values():
        b.close()
    final = to_sae_lens(sae, scale, reader.name, args.hook, cfg.formatting, report, cfg)
    if args.fp16:
        save_fp16(final, out)
    else:
        final.save_model(out)
    from dataclasses import asdict

    (out / "training_report.json").write_text(json.dumps({"report": asdict(report), "recipe": asdict(cfg)}, indent=1))
    print(json.dumps(asdict(report), indent=1))
    return 0


def _open(path: str):
    from backend.workspace import Workspace

    return Workspace.open(path)


def cmd_create(args: argparse.Namespace) -> int:
    from backend.workspace import Workspace, WorkspaceSpec

    ws = Workspace.create(args.workspace, WorkspaceSpec(model=args.model, sae=args.sae, formatting=args.formatting,
                                                        max_tokens=args.max_tokens))
    print(json.dumps(ws.summary(), indent=1, default=str))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from backend.corpora import ReadOptions

    ws = _open(args.workspace)
    ws.add_corpus(args.name, args.file, text_column=args.text_column, file_name=Path(args.file).name,
                  options=ReadOptions(txt_mode=args.txt_mode))
    print(f"Added corpus {args.name!r} ({ws.store.corpus(args.name).n_docs} documents).")
    if not args.no_embed:
        ws.embed(args.name, progress=_tqdm_progress(f"Embedding {args.name}"))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    ws = _open(args.workspace)
    state = ws.embed(args.name, progress=_tqdm_progress(f"Embedding {args.name}"))
    return 0 if state.status == "done" else 1


def cmd_show(args: argparse.Namespace) -> int:
    ws = _open(args.workspace)
    print(json.dumps(ws.summary(), indent=1, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from backend.export import write_export

    ws = _open(args.workspace)
    docs = ws.documents(args.name)
    if args.feature:
        X = ws.latents(args.name)
        for f in args.feature:
            docs[f"f{f}"] = X[:, f].toarray().ravel()[docs["doc_id"].to_numpy()]
        if args.only_active:
            docs = docs[(docs[[f"f{f}" for f in args.feature]] > 0).any(axis=1)]
    write_export(docs, Path(args.out))
    print(f"Wrote {len(docs)} documents to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from backend.training import TrainConfig

    p = argparse.ArgumentParser(prog="python -m backend", description="SAE embeddings of text corpora, offline.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="cache the default model and build the default workspace (demo corpus)")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--model-only", action="store_true")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("train-sae", help="train a TopK SAE on a model's hook activations (SAELens format)")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--hook", default=config.DEFAULT_HOOK)
    s.add_argument("--out", help="output folder (default: the default SAE folder)")
    s.add_argument("--corpus", help="a corpus file; default: the offline training mix")
    s.add_argument("--text-column")
    recipe = TrainConfig()
    s.add_argument("--d-sae", type=int, default=recipe.d_sae)
    s.add_argument("--k", type=int, default=recipe.k)
    s.add_argument("--n-tokens", type=int, default=recipe.n_tokens)
    s.add_argument("--epochs", type=int, default=recipe.epochs)
    s.add_argument("--seed", type=int, default=recipe.seed)
    s.add_argument("--formatting", choices=["raw", "chat"], default="raw")
    s.add_argument("--fp16", action="store_true", help="save fp16 weights (the shipped default SAE)")
    s.add_argument("--device")
    s.set_defaults(fn=cmd_train_sae)

    s = sub.add_parser("create", help="create a workspace for a model and an SAE")
    s.add_argument("workspace")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--sae", default=str(config.DEFAULT_SAE_DIR))
    s.add_argument("--formatting", choices=["raw", "chat"])
    s.add_argument("--max-tokens", type=int, default=512)
    s.set_defaults(fn=cmd_create)

    s = sub.add_parser("add", help="add a corpus file (csv, tsv, jsonl, parquet, txt) and embed it")
    s.add_argument("workspace")
    s.add_argument("name")
    s.add_argument("file")
    s.add_argument("--text-column")
    s.add_argument("--txt-mode", choices=["line", "paragraph"], default="line")
    s.add_argument("--no-embed", action="store_true")
    s.set_defaults(fn=cmd_add)

    s = sub.add_parser("embed", help="embed (or resume embedding) a corpus")
    s.add_argument("workspace")
    s.add_argument("name")
    s.set_defaults(fn=cmd_embed)

    s = sub.add_parser("show", help="summarise a workspace")
    s.add_argument("workspace")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("export", help="export a corpus's documents (csv, jsonl, parquet by extension)")
    s.add_argument("workspace")
    s.add_argument("name")
    s.add_argument("out")
    s.add_argument("--feature", type=int, action="append", help="add this feature's activation column (repeatable)")
    s.add_argument("--only-active", action="store_true", help="keep documents where a chosen feature fires")
    s.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from backend.corpora import CorpusError
    from backend.models import ModelNotAvailable
    from backend.saes import SAEError
    from backend.store import StoreError

    try:
        return args.fn(args)
    except (CorpusError, StoreError, SAEError, ModelNotAvailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
