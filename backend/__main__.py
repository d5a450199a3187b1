"""Command line: `python -m backend <command>` (prepare, train-sae, reference-words, saes, create, add, embed, show,
export).

Every problem a user can fix is a `UserError`: `main` prints its message and exits 2, in one place, with no
traceback. Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from backend import config
from backend.builtin_data import training_texts
from backend.corpora import DEFAULT_WINDOW_CHARS, ReadOptions, validate_corpus_name
from backend.demo import ensure_default_workspace
from backend.engines.ray_engine import RayConfig
from backend.errors import UserError
from backend.export import check_feature_ids, export_format, write_export
from backend.models import load_reader, prepare_builtin
from backend.sae_reference import build_reference_words
from backend.saes import resolve_sae_source, sae_name, save_fp16
from backend.store import WorkspaceLocked
from backend.store.handoff import open_when_free
from backend.streaming import prepare_documents, read_corpus
from backend.training import TrainConfig, collect_activations, output_dir, to_sae_lens, train_topk
from backend.workspace import Workspace, WorkspaceSpec


def _tqdm_progress(desc: str):
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


def _tqdm_steps():
    """A finishing-step callback (step, fraction of it): one bar per step after the embedding."""
    bars: dict = {}

    def cb(step: str, fraction: float) -> None:
        if step == "done":
            return
        if step not in bars:
            for earlier in bars.values():
                earlier.close()
            bars[step] = tqdm(total=100, desc=step, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        bar = bars[step]
        bar.n = round(100 * min(1.0, max(0.0, fraction)))
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    return cb


def cmd_prepare(args: argparse.Namespace) -> int:
    print(f"Model cache: {prepare_builtin(args.model)}")
    if not args.model_only:
        ws = ensure_default_workspace(_tqdm_progress("Embedding the demo corpus"), step_progress=_tqdm_steps())
        print(json.dumps(ws.summary(), indent=1, default=str))
        ws.close()
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    if args.layer is not None:
        args.hook = f"blocks.{args.layer}.hook_resid_post"
    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, n_tokens=args.n_tokens, epochs=args.epochs, seed=args.seed,
                      formatting=args.formatting)
    out = output_dir(args.out, args.model, args.hook, overwrite=args.overwrite)  # refused before any work
    print(f"The SAE will be saved in {out}", file=sys.stderr)
    if args.corpus:
        df, column = prepare_documents(read_corpus(args.corpus), args.text_column)
        texts = df[column].tolist()
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
    (out / "training_report.json").write_text(json.dumps({"report": asdict(report), "recipe": asdict(cfg)}, indent=1))
    print(json.dumps(asdict(report), indent=1))
    print(f"Saved the SAE in {out}; use it with: python -m backend create WS.duckdb --sae {out}", file=sys.stderr)
    return 0


def cmd_reference_words(args: argparse.Namespace) -> int:
    sae = resolve_sae_source(args.sae)
    if ":" in sae and not Path(sae).exists():
        raise UserError("Reference words are written into an SAE folder; download the SAE to a folder first.")
    path = build_reference_words(sae, model=args.model, out=args.out, progress=_tqdm_progress("reference text"))
    print(f"Wrote {path}; labels made from now on name a feature's words in other text (docs/labels.md).",
          file=sys.stderr)
    return 0


def _open(path: str) -> Workspace:
    """The workspace; a dashboard holding it is asked to hand it over (backend.store.handoff), for up to a minute."""
    return open_when_free(lambda: Workspace.open(path), path, WorkspaceLocked,
                          on_wait=lambda msg: print(msg.split(" (")[0] + "…", file=sys.stderr))


def cmd_saes(args: argparse.Namespace) -> int:
    """The shipped SAEs: key, what each suits, its held-out figures (read from its training report)."""
    for entry in config.SHIPPED_SAES.values():
        where = entry.folder.relative_to(config.REPO_ROOT) if entry.folder.is_relative_to(config.REPO_ROOT) else entry.folder
        state = entry.quality() if entry.present else "missing from this checkout"
        print(f"{entry.key}\t{entry.model} {entry.hook}\t{state}\n    {entry.suits}\n    {where}")
    print("Use one with: python -m backend create WS.duckdb --sae KEY (or a SAELens folder, or release:sae_id)")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    sae = resolve_sae_source(args.sae)  # a shipped key, a folder or release:sae_id; refused before any file is made
    ws = Workspace.create(args.workspace, WorkspaceSpec(model=args.model, sae=sae, formatting=args.formatting,
                                                        max_tokens=args.max_tokens))
    print(json.dumps(ws.summary(), indent=1, default=str))
    print(f"Created {args.workspace} with SAE {sae_name(sae)} on {ws.settings.model} ({ws.settings.hook}).", file=sys.stderr)
    ws.close()
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    name = validate_corpus_name(args.name)
    options = ReadOptions(txt_mode=args.txt_mode, split_long=args.split_long, window_chars=args.window_chars,
                          skip_empty=args.skip_empty)
    ws = _open(args.workspace)
    ws.add_corpus(name, args.file, text_column=args.text_column, file_name=Path(args.file).name, options=options)
    corpus = ws.corpus(name)
    windows = ", after splitting long ones into windows" if args.split_long else ""
    print(f"Added corpus {name!r} ({corpus.n_docs:,} documents{windows}).")
    if not args.no_embed:
        ws.embed(name, progress=_tqdm_progress(f"Embedding {name}"))
        _report_truncated(ws, name)
    return 0


def _report_truncated(ws: Workspace, name: str) -> None:
    """Say how many documents the reader model saw only in part (the embedding silently cut them before)."""
    corpus = ws.corpus(name)
    if corpus.n_truncated:
        print(f"{corpus.n_truncated:,} of {corpus.n_docs:,} documents were longer than the reading window "
              f"({ws.embed_config.max_tokens} tokens) and were read only up to it; add the file again with "
              "--split-long to read them whole, in windows.", file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> int:
    ray_cfg = None
    if args.engine == "ray":
        given = {"workers": args.workers} if args.workers is not None else {}
        ray_cfg = RayConfig(address=args.address, gpus_per_worker=args.gpus_per_worker,
                            threads_per_worker=args.threads_per_worker, **given)
    elif args.address or args.workers is not None or args.gpus_per_worker:
        raise UserError("--address, --workers and --gpus-per-worker go with --engine ray.")
    ws = _open(args.workspace)
    state = ws.embed(args.name, progress=_tqdm_progress(f"Embedding {args.name}"), engine=args.engine, ray=ray_cfg)
    _report_truncated(ws, args.name)
    return 0 if state.status == "done" else 1


def cmd_show(args: argparse.Namespace) -> int:
    ws = _open(args.workspace)
    print(json.dumps(ws.summary(), indent=1, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    fmt = export_format(args.out)  # refused before the workspace is read
    if args.only_active and not args.feature:
        raise UserError("--only-active needs at least one --feature.")
    ws = _open(args.workspace)
    features = check_feature_ids(args.feature or [], ws.d_sae)
    docs = ws.documents(args.name)
    if features:
        X = ws.latents(args.name)
        for f in features:
            docs[f"f{f}"] = X[:, f].toarray().ravel()[docs["doc_id"].to_numpy()]
        if args.only_active:
            docs = docs[(docs[[f"f{f}" for f in features]] > 0).any(axis=1)]
    write_export(docs, Path(args.out), fmt)
    print(f"Wrote {len(docs)} documents to {args.out}")
    return 0


def _add_prepare(sub) -> None:
    s = sub.add_parser("prepare", help="cache the default model and build the default workspace (demo corpus)")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--model-only", action="store_true")
    s.set_defaults(fn=cmd_prepare)


def _add_train_sae(sub) -> None:
    s = sub.add_parser("train-sae", help="train a TopK SAE on a model's hook activations (SAELens format)")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--hook", default=config.DEFAULT_HOOK)
    where.add_argument("--layer", type=int, help="shortcut for --hook blocks.LAYER.hook_resid_post")
    s.add_argument("--out", help="output folder (default: a new folder under data/sae/trained/)")
    s.add_argument("--overwrite", action="store_true", help="replace the SAE already in --out (e.g. the shipped one)")
    s.add_argument("--corpus", help="a corpus file; default: the offline training mix")
    s.add_argument("--text-column")
    recipe = TrainConfig()
    for name in ("d_sae", "k", "n_tokens", "epochs", "seed"):  # the recipe's defaults
        s.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(recipe, name))
    s.add_argument("--formatting", choices=["raw", "chat"], default="raw")
    s.add_argument("--fp16", action="store_true", help="save fp16 weights (the shipped default SAE)")
    s.add_argument("--device")
    s.set_defaults(fn=cmd_train_sae)


def _add_reference_words(sub) -> None:
    s = sub.add_parser("reference-words", help="embed the offline reference text with an SAE and keep each feature's "
                       "commonest firing words beside it (the labeller names weak features by them)")
    s.add_argument("--sae", default=next(iter(config.SHIPPED_SAES)), help="a shipped SAE key or a SAELens folder")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--out", help="output file (default: reference_words.tsv.gz in the SAE folder)")
    s.set_defaults(fn=cmd_reference_words)


def _add_create(sub) -> None:
    s = sub.add_parser("create", help="create a workspace for a model and an SAE")
    s.add_argument("workspace")
    s.add_argument("--model", default=config.DEFAULT_MODEL)
    s.add_argument("--sae", default=next(iter(config.SHIPPED_SAES)),
                   help=f"a shipped SAE ({', '.join(config.SHIPPED_SAES)}; see `saes`), a SAELens folder, or release:sae_id")
    s.add_argument("--formatting", choices=["raw", "chat"])
    s.add_argument("--max-tokens", type=int, default=512)
    s.set_defaults(fn=cmd_create)


def _add_add(sub) -> None:
    s = sub.add_parser("add", help="add a corpus file (csv, tsv, jsonl, parquet, txt; streamed in chunks, so any "
                                      "size) and embed it")
    s.add_argument("workspace")
    s.add_argument("name")
    s.add_argument("file")
    s.add_argument("--text-column")
    s.add_argument("--txt-mode", choices=["line", "paragraph"], default="line")
    s.add_argument("--split-long", action="store_true",
                   help="split documents longer than --window-chars into windows (source_doc, char_offset columns)")
    s.add_argument("--window-chars", type=int, default=DEFAULT_WINDOW_CHARS)
    s.add_argument("--skip-empty", action="store_true",
                   help="drop rows with no text instead of refusing the file (source_row column: each row's place)")
    s.add_argument("--no-embed", action="store_true")
    s.set_defaults(fn=cmd_add)


def _add_embed(sub) -> None:
    s = sub.add_parser("embed", help="embed (or resume embedding) a corpus")
    s.add_argument("workspace")
    s.add_argument("name")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: Ray Data actors on this machine or a cluster (resumable the same way)")
    s.add_argument("--address", help="Ray cluster address (auto, ray://HOST:10001); default: a local Ray")
    s.add_argument("--workers", type=int, help="Ray actors, each holding the model and the SAE (default 2)")
    s.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor (a fraction shares one)")
    s.add_argument("--threads-per-worker", type=int, default=1, help="CPU threads per Ray actor")
    s.set_defaults(fn=cmd_embed)


def _add_export(sub) -> None:
    s = sub.add_parser("export", help="export a corpus's documents (csv, jsonl, parquet by extension)")
    s.add_argument("workspace")
    s.add_argument("name")
    s.add_argument("out")
    s.add_argument("--feature", type=int, action="append", help="add this feature's activation column (repeatable)")
    s.add_argument("--only-active", action="store_true", help="keep documents where a chosen feature fires")
    s.set_defaults(fn=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one small function per command that takes options, two commands without any."""
    p = argparse.ArgumentParser(prog="python -m backend", description="SAE embeddings of text corpora, offline.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train_sae(sub)
    _add_reference_words(sub)
    sub.add_parser("saes", help="list the shipped SAEs, what each suits and their held-out FVE").set_defaults(fn=cmd_saes)
    _add_create(sub)
    _add_add(sub)
    _add_embed(sub)
    show = sub.add_parser("show", help="summarise a workspace")
    show.add_argument("workspace")
    show.set_defaults(fn=cmd_show)
    _add_export(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.fn(args)
    except UserError as exc:  # the one place: every problem a user can fix, whatever module found it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; an embedding resumes with: python -m backend embed WORKSPACE NAME", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
