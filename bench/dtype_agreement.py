"""Is bf16 exact enough to embed with? fp32 vs bf16 residuals of the default model at the shipped SAE's hook.

On held-out demo documents (demo documents the SAE's training run did not reach), through the runtime's
stop-at-layer forward in each dtype:
- the SAE's FVE on fp32 residuals and on bf16 residuals (outlier-norm tokens skipped, as in training), and
  the FVE of the bf16 reconstruction measured against the fp32 residual;
- per document, the Jaccard overlap of the max-pooled feature sets (features with max activation > 0), each
  dtype's set encoded as the pipeline encodes it (bf16 residuals in bf16: backend.encode_dtype);
- forward tokens/s of each dtype.
bf16 counts as exact enough when the mean Jaccard is >= 0.9 and the FVE drop <= 0.01; whether it is also
faster depends on the CPU having native bf16 instructions. backend.runtime.resolve_dtype_name("auto", "cpu")
records the outcome (bf16 on CPUs with native bf16, float32 elsewhere).

    python bench/dtype_agreement.py [--docs 300] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TRAIN_TOKENS = 700_000  # the shipped SAE's recipe (data/sae/*/training_report.json)
OUTLIER_FACTOR = 10.0
MIN_JACCARD, MAX_FVE_DROP = 0.9, 0.01


def held_out_texts(reader, n_docs: int, max_doc_tokens: int = 256) -> list[str]:
    """Demo documents past the prefix of the training mix that the SAE's 700k training tokens used (+20%)."""
    from backend.builtin_data import demo_corpus, training_texts

    mix = training_texts()
    seen, tokens = set(), 0
    lengths = [len(ids[:max_doc_tokens]) for ids in reader.tokenizer(mix, add_special_tokens=False)["input_ids"]]
    for text, n in zip(mix, lengths):
        if tokens > 1.2 * TRAIN_TOKENS:
            break
        seen.add(text)
        tokens += n
    demo = [t for t in demo_corpus(3000, seed=0)["text"] if t not in seen]
    return demo[:n_docs]


class Tally:
    """Running sums for the FVE of reconstructions against a target."""

    def __init__(self) -> None:
        self.err = self.sq = 0.0
        self.sum: torch.Tensor | None = None
        self.n = 0

    def add(self, target: torch.Tensor, recon: torch.Tensor) -> None:
        self.err += float(((target - recon) ** 2).sum())
        self.sq += float((target**2).sum())
        self.sum = target.sum(0) if self.sum is None else self.sum + target.sum(0)
        self.n += len(target)

    def fve(self) -> float:
        assert self.sum is not None
        total = self.sq - float((self.sum**2).sum()) / self.n  # sum ||x - mean||^2
        return 1.0 - self.err / total


def pooled_sets(sae, x: torch.Tensor, doc_of: torch.Tensor) -> dict[int, set[int]]:
    """{document: features whose max activation over its counted tokens is > 0}."""
    from backend.activations import sparse_encode

    rows, feats, _ = sparse_encode(sae, x)
    out: dict[int, set[int]] = {}
    for d, f in zip(doc_of[rows].tolist(), feats.tolist()):
        out.setdefault(d, set()).add(f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from backend.activations import pad_batch, plan_batches
    from backend.config import DEFAULT_HOOK, DEFAULT_SAE_DIR
    from backend.models import load_reader
    from backend.runtime import ModelRuntime, cpu_has_native_bf16, resolve_dtype_name, runtime_for
    from backend.saes import load_sae

    reader = load_reader(device="cpu", dtype="float32")
    sae = load_sae(DEFAULT_SAE_DIR, device="cpu")
    texts = held_out_texts(reader, args.docs)
    runtimes = {"fp32": runtime_for(reader), "bf16": ModelRuntime(reader, dtype=torch.bfloat16)}
    docs = reader.encode_documents(texts, "raw", 512)
    print(f"{len(docs)} held-out demo documents, {sum(d.n_counted for d in docs):,} counted tokens; "
          f"torch threads {torch.get_num_threads()}; hook {DEFAULT_HOOK}")
    for runtime in runtimes.values():  # load and warm up
        runtime.residuals(torch.tensor([docs[0].ids]), DEFAULT_HOOK)

    tallies = {"fp32": Tally(), "bf16": Tally(), "bf16_vs_fp32": Tally()}
    sets: dict[str, dict[int, set[int]]] = {"fp32": {}, "bf16": {}}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    rel_diff = []
    pad = reader.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for batch in plan_batches(docs, args.batch_tokens):
            ids, mask = pad_batch(docs, batch, pad, "cpu")
            doc_of = torch.tensor(batch)[mask.nonzero(as_tuple=True)[0]]
            resid = {}
            for name, runtime in runtimes.items():
                t0 = time.perf_counter()
                x = runtime.residuals(ids, DEFAULT_HOOK)[mask]
                seconds[name] += time.perf_counter() - t0
                sets[name].update(pooled_sets(sae, x, doc_of))  # as the pipeline encodes: bf16 residuals in bf16
                resid[name] = x.float()
            norms = resid["fp32"].norm(dim=-1)
            keep = norms < OUTLIER_FACTOR * norms.median()
            recon = {name: sae.decode(sae.encode(x[keep])) for name, x in resid.items()}
            tallies["fp32"].add(resid["fp32"][keep], recon["fp32"])
            tallies["bf16"].add(resid["bf16"][keep], recon["bf16"])
            tallies["bf16_vs_fp32"].add(resid["fp32"][keep], recon["bf16"])
            rel_diff.append(float((resid["bf16"][keep] - resid["fp32"][keep]).norm() / resid["fp32"][keep].norm()))

    jaccard = np.array([len(sets["fp32"].get(i, set()) & sets["bf16"].get(i, set())) /
                        max(1, len(sets["fp32"].get(i, set()) | sets["bf16"].get(i, set()))) for i in range(len(docs))])
    n_tokens = sum(d.n_counted for d in docs)
    fve = {k: t.fve() for k, t in tallies.items()}
    drop = fve["fp32"] - min(fve["bf16"], fve["bf16_vs_fp32"])
    print(f"forward tokens/s: fp32 {n_tokens / seconds['fp32']:,.0f}, bf16 {n_tokens / seconds['bf16']:,.0f}")
    print(f"relative residual difference bf16 vs fp32: {np.mean(rel_diff):.4f} (mean over batches)")
    print(f"FVE: fp32 {fve['fp32']:.4f}, bf16 {fve['bf16']:.4f}, bf16 reconstruction vs fp32 residual "
          f"{fve['bf16_vs_fp32']:.4f} (drop {drop:+.4f})")
    print(f"features per document: fp32 {np.mean([len(s) for s in sets['fp32'].values()]):.0f}, "
          f"bf16 {np.mean([len(s) for s in sets['bf16'].values()]):.0f}")
    print(f"Jaccard of max-pooled feature sets per document: mean {jaccard.mean():.4f}, median "
          f"{np.median(jaccard):.4f}, p10 {np.percentile(jaccard, 10):.4f}, min {jaccard.min():.4f}")
    exact = jaccard.mean() >= MIN_JACCARD and drop <= MAX_FVE_DROP
    print(f"bf16 exact enough: {exact} (needs mean Jaccard >= {MIN_JACCARD} and FVE drop <= {MAX_FVE_DROP}); "
          f"native bf16 on this CPU: {cpu_has_native_bf16()}; bf16 forward {seconds['fp32'] / seconds['bf16']:.2f}x "
          f"the speed of fp32")
    print(f"decision: dtype 'auto' on this CPU = {resolve_dtype_name('auto', 'cpu')}")
    print(f"fve_drop {drop:.4f} jaccard_mean {jaccard.mean():.4f}")


if __name__ == "__main__":
    main()
