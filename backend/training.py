"""Train a TopK SAE on a reader model's hook activations; save it in SAELens format.

Position 0 and outlier-norm tokens are skipped; the report is measured on held-out tokens."""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from backend import config
from backend.errors import UserError
from backend.models import ReaderModel
from backend.runtime import residuals

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
FP16_SAFE_MAX = 60_000.0  # activations stored in fp16 below this magnitude (fp16 overflows at 65,504)


class TrainingError(UserError):
    """A training run refused before it starts (for instance: it would overwrite an SAE)."""


def holds_sae(folder: Path) -> bool:
    return (Path(folder) / "cfg.json").exists() or (Path(folder) / "sae_weights.safetensors").exists()


def new_output_dir(model_name: str, hook_name: str, root: Path | None = None) -> Path:
    """A folder no SAE lives in yet: `<root>/<model>-<hook>-<date-time>` (root: data/sae/trained)."""
    root = Path(root) if root is not None else config.DATA_DIR / "sae" / "trained"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{Path(model_name).name}-{hook_name}".lower()).strip("-")
    base = root / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 2
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    return folder


def output_dir(out: str | Path | None, model_name: str, hook_name: str, overwrite: bool = False,
               root: Path | None = None) -> Path:
    """Where a training run saves its SAE, decided before any work is done.

    No `out`: a new folder (never the shipped default SAE). An `out` that already holds an SAE is refused
    unless `overwrite`: retraining must not swap the weights under the workspaces built on them."""
    if out is None:
        if overwrite:
            raise TrainingError("--overwrite needs --out: name the SAE folder to replace.")
        return new_output_dir(model_name, hook_name, root)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise TrainingError(f"{folder} is a file, not a folder.")
    if holds_sae(folder) and not overwrite:
        shipped = " (the shipped default SAE)" if folder.resolve() == config.DEFAULT_SAE_DIR.resolve() else ""
        raise TrainingError(
            f"{folder} already holds an SAE{shipped}; workspaces built on it would silently change. "
            "Choose another --out, leave --out off for a new folder, or pass --overwrite to replace it."
        )
    return folder


@dataclass
class TrainConfig:
    """Recipe of a TopK SAE; everything that decides the result is here."""

    d_sae: int = 8192
    k: int = 48
    n_tokens: int = 700_000
    max_doc_tokens: int = 256
    batch_tokens: int = 4096
    epochs: int = 5
    batch_size: int = 1024
    lr: float = 1e-3
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 200_000
    holdout_frac: float = 0.05
    outlier_factor: float = 10.0
    seed: int = 0
    formatting: str = "raw"


@dataclass
class TrainReport:
    fve: float
    l0: float
    dead_frac: float
    n_train_tokens: int
    n_holdout_tokens: int
    seconds: float


def collect_activations(
    reader: ReaderModel,
    hook_name: str,
    texts: list[str],
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    cache_dir: Path | None = None,
) -> torch.Tensor:
    """Residuals at the hook for counted tokens (no position 0, no template, no outliers), fp16 on CPU.

    With cache_dir, each block of texts is saved as it completes, so an interrupted run resumes."""
    chunks: list[torch.Tensor] = []
    total = 0
    block = 512
    # sort texts by length within blocks, then batch by a token budget so batches carry little padding
    ordered = [t for s in range(0, len(texts), block) for t in sorted(texts[s : s + block], key=len)]
    pad = reader.tokenizer.pad_token_id or 0
    for start in range(0, len(ordered), block):
        if total >= cfg.n_tokens:
            break
        cached = Path(cache_dir) / f"block{start:08d}.pt" if cache_dir is not None else None
        if cached is not None and cached.exists():
            chunks.append(torch.load(cached, weights_only=True))
            total += len(chunks[-1])
            continue
        n_before = len(chunks)
        docs = reader.encode_documents(ordered[start : start + block], cfg.formatting, cfg.max_doc_tokens)  # type: ignore[arg-type]
        batches: list[list] = [[]]
        for d in docs:
            width = max([len(d.ids)] + [len(e.ids) for e in batches[-1]])
            if batches[-1] and width * (len(batches[-1]) + 1) > cfg.batch_tokens:
                batches.append([])
            batches[-1].append(d)
        for batch in batches:
            if total >= cfg.n_tokens:
                break
            total += _collect_batch(reader, hook_name, batch, pad, cfg, chunks)
            if progress:
                progress(min(total, cfg.n_tokens), cfg.n_tokens, "activations")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            block_acts = torch.cat(chunks[n_before:]) if len(chunks) > n_before else torch.zeros(0, reader.d_model, dtype=torch.float16)
            chunks[n_before:] = [block_acts]
            torch.save(block_acts, cached)
    if not chunks:
        raise ValueError("No tokens collected: the corpus is empty.")
    return torch.cat(chunks)[: cfg.n_tokens]


def _collect_batch(reader: ReaderModel, hook_name: str, docs: list, pad: int, cfg: TrainConfig, chunks: list) -> int:
    width = max(len(d.ids) for d in docs)
    ids = torch.tensor([d.ids + [pad] * (width - len(d.ids)) for d in docs], device=reader.device)
    mask = torch.tensor([d.count_mask + [False] * (width - len(d.ids)) for d in docs], device=reader.device)
    x = residuals(reader, ids, hook_name)[mask].float()
    norms = x.norm(dim=-1)
    keep = norms < cfg.outlier_factor * norms.median()
    x = x[keep]
    # fp16 halves the memory, but Gemma 3's residual components pass its range (~95,000 in blocks 8-15)
    fits_fp16 = not len(x) or float(x.abs().max()) < FP16_SAFE_MAX
    chunks.append(x.to("cpu", torch.float16 if fits_fp16 else torch.float32))  # torch.cat promotes mixed chunks
    return int(keep.sum())


class TopKTrainer(torch.nn.Module):
    """Plain TopK SAE (Gao et al. 2024) with the AuxK loss for dead latents."""

    def __init__(self, d_in: int, d_sae: int, k: int, b_dec_init: torch.Tensor):
        super().__init__()
        w = torch.randn(d_sae, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w.clone())
        self.W_enc = torch.nn.Parameter(w.t().clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(b_dec_init.clone())
        self.k = k

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        vals, idx = pre.topk(self.k, dim=-1)
        vals = vals.relu()
        # a dense [batch, d_sae] code times W_dec: ~1.8x faster on CPU than gathering k decoder rows per token
        code = torch.zeros_like(pre).scatter(1, idx, vals)
        recon = code @ self.W_dec + self.b_dec
        return recon, idx, pre

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def evaluate(sae: TopKTrainer, x: torch.Tensor, batch: int = 4096) -> tuple[float, float, torch.Tensor]:
    """(FVE, mean L0, per-latent fire counts) on x."""
    mean = x.float().mean(0)
    err = tot = 0.0
    l0 = 0.0
    fires = torch.zeros(sae.W_dec.shape[0])
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].float()
        recon, idx, pre = sae(xb)
        err += float(((xb - recon) ** 2).sum())
        tot += float(((xb - mean) ** 2).sum())
        active = pre.gather(1, idx) > 0
        l0 += float(active.sum())
        fires.index_add_(0, idx[active], torch.ones(int(active.sum())))
    return 1.0 - err / tot, l0 / len(x), fires


EpochFn = Callable[[int, "TopKTrainer", float, float], None]  # (epoch, sae, scale, held-out FVE)


def train_topk(
    acts: torch.Tensor, cfg: TrainConfig, progress: ProgressFn | None = None, on_epoch: EpochFn | None = None
) -> tuple[TopKTrainer, float, TrainReport]:
    """Train on acts (rows shuffled with the seed); returns the SAE on the scaled space, the scale, the report."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    perm = torch.randperm(len(acts), generator=gen)
    n_hold = max(1, int(len(acts) * cfg.holdout_frac))
    hold, train = acts[perm[:n_hold]], acts[perm[n_hold:]]
    scale = math.sqrt(acts.shape[1]) / float(train[:50_000].float().norm(dim=-1).mean())
    sae = TopKTrainer(acts.shape[1], cfg.d_sae, cfg.k, train[:50_000].float().mean(0) * scale)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(train) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    last_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    step = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        for s in range(steps_per_epoch):
            xb = train[order[s * cfg.batch_size : (s + 1) * cfg.batch_size]].float() * scale
            recon, idx, pre = sae(xb)
            e = xb - recon
            loss = (e**2).sum(-1).mean() / (xb - xb.mean(0)).pow(2).sum(-1).mean()
            last_fired += cfg.batch_size
            last_fired[idx.flatten().unique()] = 0
            dead = last_fired > cfg.dead_after_tokens
            if dead.any() and cfg.aux_coef > 0:
                k_aux = min(cfg.aux_k, int(dead.sum()))
                aux_pre = pre.masked_fill(~dead, float("-inf"))
                a_vals, a_idx = aux_pre.topk(k_aux, dim=-1)
                e_hat = (a_vals.relu().unsqueeze(-1) * sae.W_dec[a_idx]).sum(1)
                aux = ((e.detach() - e_hat) ** 2).sum(-1).mean() / (e.detach() ** 2).sum(-1).mean().clamp_min(1e-8)
                loss = loss + cfg.aux_coef * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # lr: linear decay over the last 20% of steps
            frac = step / max(1, total_steps)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (1 - frac) / 0.2)
            opt.step()
            sae.normalize_decoder()
            step += 1
            if progress and step % 50 == 0:
                progress(step, total_steps, f"epoch {epoch + 1}/{cfg.epochs} loss {float(loss):.4f}")
        fve, l0, fires = evaluate(sae, hold.float() * scale)
        log.info("epoch %d held-out FVE %.4f L0 %.1f dead %.4f", epoch + 1, fve, l0, float((fires == 0).float().mean()))
        if on_epoch is not None:
            on_epoch(epoch + 1, sae, scale, fve)
    fve, l0, fires = evaluate(sae, hold.float() * scale)
    # dead = never fires on train sample + held-out
    _, _, fires_train = evaluate(sae, train[:200_000].float() * scale)
    dead_frac = float(((fires + fires_train) == 0).float().mean())
    report = TrainReport(fve, l0, dead_frac, len(train), n_hold, time.time() - t0)
    return sae, scale, report


def to_sae_lens(
    sae: TopKTrainer,
    scale: float,
    model_name: str,
    hook_name: str,
    formatting: str,
    report: TrainReport | None,
    recipe: TrainConfig | None,
    dtype: str = "float32",
):
    """Fold the input scale into the weights and build a sae_lens TopKSAE that takes raw residuals."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae, d_in = sae.W_dec.shape
    meta = SAEMetadata(
        model_name=model_name,
        hook_name=hook_name,
        prepend_bos=True,
        context_size=recipe.max_doc_tokens if recipe else None,
        model_from_pretrained_kwargs={},
        saedash_formatting=formatting,
        saedash_report=asdict(report) if report else None,
        saedash_recipe=asdict(recipe) if recipe else None,
    )
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=sae.k, dtype="float32", device="cpu", metadata=meta)
    out = TopKSAE(cfg)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc.detach() * scale)
        out.b_enc.copy_(sae.b_enc.detach())
        out.W_dec.copy_(sae.W_dec.detach() / scale)
        out.b_dec.copy_(sae.b_dec.detach() / scale)
    if dtype != "float32":
        out = out.to(getattr(torch, dtype))
        out.cfg.dtype = dtype
    return out


def train_sae_for_model(
    reader: ReaderModel,
    hook_name: str,
    texts: list[str],
    out_dir: Path,
    cfg: TrainConfig,
    save_dtype: str = "float32",
    progress: ProgressFn | None = None,
    acts_cache: Path | None = None,
    overwrite: bool = False,
) -> TrainReport:
    """One command's worth: collect activations (resumable through acts_cache), train, save in SAELens format.

    An out_dir that already holds an SAE is refused unless `overwrite` (checked before any work)."""
    out_dir = output_dir(out_dir, reader.name, hook_name, overwrite)
    acts = collect_activations(reader, hook_name, texts, cfg, progress, cache_dir=acts_cache)
    sae, scale, report = train_topk(acts, cfg, progress)
    out = to_sae_lens(sae, scale, reader.name, hook_name, cfg.formatting, report, cfg, dtype=save_dtype)
    out.save_model(out_dir)
    (Path(out_dir) / "training_report.json").write_text(json.dumps({"report": asdict(report), "recipe": asdict(cfg)}, indent=2))
    return report
