"""The pure embedding step: texts in, sparse per-(document, feature) rows out.

The forward runs on the reader's runtime (backend.runtime): the Hugging Face model, stopping at the hook's
layer. No I/O and no state beyond the loaded model, so a distributed engine can map it over batches unchanged."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from backend.encode_dtype import encode_dtype, low_precision_pre_acts
from backend.models import EncodedDoc, ReaderModel
from backend.runtime import runtime_for

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass(frozen=True)
class EmbedConfig:
    """How documents become SAE embeddings."""

    formatting: Literal["raw", "chat"] = "raw"
    max_tokens: int = 512
    batch_tokens: int = 4096  # padded tokens per forward on CPU (fastest on 2 cores); CUDA: `batch_tokens_for`
    encode_chunk: int = 512  # tokens per SAE encode: the dense pre-activations (512 x d_sae) stay in cache


@dataclass
class SparseRows:
    """Per-(document, active feature) pooling statistics for one batch.

    `doc` indexes the batch's documents; positions count from the formatted document's start."""

    doc: np.ndarray  # int32
    feature: np.ndarray  # int32
    max_act: np.ndarray  # float32
    argmax_pos: np.ndarray  # int32
    n_active: np.ndarray  # int32, tokens where the feature fired
    sum_act: np.ndarray  # float32, for mean and sum pooling
    n_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # counted tokens per document
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.doc)


def sparse_encode(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode rows of x; return (row, feature, value) of the non-zero activations.

    TopK SAEs skip building the dense activation matrix; other architectures go through `sae.encode`. An
    encoder with its own `sparse_encode` (a worker's, backend.engines.lite) encodes itself, without sae_lens."""
    own = getattr(sae, "sparse_encode", None)
    if own is not None:
        return own(x)
    from sae_lens import TopKSAE

    if isinstance(sae, TopKSAE) and not sae.cfg.rescale_acts_by_decoder_norm:
        if encode_dtype(x.dtype, sae.W_enc.dtype) != sae.W_enc.dtype and _plain_input(sae):
            # a bf16 forward: encode in bf16 (no fp32 copy of the residuals), as the Ray workers do
            pre = low_precision_pre_acts(sae, x, sae.W_enc, sae.b_enc, sae.b_dec, sae.cfg.apply_b_dec_to_input)
        else:
            pre = sae.process_sae_in(x.to(sae.W_enc.dtype)) @ sae.W_enc + sae.b_enc
        vals, idx = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        vals = vals.relu()
        rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(idx)
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep].float()
    acts = sae.encode(x.to(sae.W_enc.dtype))
    rows, feats = acts.nonzero(as_tuple=True)
    return rows, feats, acts[rows, feats].float()


def _plain_input(sae: SAE) -> bool:
    """Whether the SAE's input processing is only `x - b_dec` (no normalisation, reshaping or hooks)."""
    cfg = sae.cfg
    return (getattr(cfg, "normalize_activations", "none") == "none"
            and getattr(cfg, "reshape_activations", "none") == "none" and not sae.hook_sae_input._forward_hooks)


def pool_sparse(
    tok_doc: torch.Tensor, tok_pos: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor, d_sae: int
) -> tuple[torch.Tensor, ...]:
    """Group token-level activations by (document, feature): max, argmax position, count, sum."""
    key = tok_doc.long() * d_sae + feats.long()
    uniq, inv = torch.unique(key, return_inverse=True)
    n = len(uniq)
    mx = torch.full((n,), float("-inf"), device=vals.device).scatter_reduce(0, inv, vals, "amax")
    cnt = torch.zeros(n, dtype=torch.long, device=vals.device).scatter_add_(0, inv, torch.ones_like(inv))
    sm = torch.zeros(n, device=vals.device).scatter_add_(0, inv, vals)
    big = torch.iinfo(torch.long).max
    at_max = vals >= mx[inv]
    pos = torch.where(at_max, tok_pos.long(), torch.full_like(tok_pos.long(), big))
    argpos = torch.full((n,), big, dtype=torch.long, device=vals.device).scatter_reduce(0, inv, pos, "amin")
    return uniq // d_sae, uniq % d_sae, mx, argpos, cnt, sm


def plan_batches(docs: list[EncodedDoc], batch_tokens: int) -> list[list[int]]:
    """Group documents (shortest first) so each padded batch holds at most batch_tokens tokens."""
    order = sorted(range(len(docs)), key=lambda i: len(docs[i].ids))
    batches: list[list[int]] = [[]]
    for i in order:
        width = len(docs[i].ids)  # sorted ascending: the newest is the widest
        if batches[-1] and width * (len(batches[-1]) + 1) > batch_tokens:
            batches.append([])
        batches[-1].append(i)
    return [b for b in batches if b]


def pad_batch(docs: list[EncodedDoc], batch: list[int], pad: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and the count mask (padding never counts; causal attention ignores it)."""
    width = max(len(docs[i].ids) for i in batch)
    ids = torch.tensor([docs[i].ids + [pad] * (width - len(docs[i].ids)) for i in batch], device=device)
    mask = torch.tensor([docs[i].count_mask + [False] * (width - len(docs[i].ids)) for i in batch], device=device)
    return ids, mask


# -- the token budget on CUDA: what free GPU memory holds -----------------------------------------------
GPU_MEMORY_FRACTION = 0.5  # of the free memory: headroom for the allocator's fragmentation and other processes
MAX_GPU_BATCH_TOKENS = 1 << 18  # past this a forward is no faster per token, and one batch's rows stay small


@dataclass(frozen=True)
class ForwardDims:
    """The widths that set a forward's memory per token."""

    d_model: int
    d_mlp: int
    n_heads: int


def forward_dims(reader: ReaderModel) -> ForwardDims:
    cfg = reader.model.cfg
    return ForwardDims(int(cfg.d_model), int(getattr(cfg, "d_mlp", None) or 4 * cfg.d_model), int(cfg.n_heads))


def token_bytes(dims: ForwardDims, dtype_bytes: int, max_tokens: int) -> int:
    """Bytes one padded token costs in a forward that stops at the hook (inference mode keeps only the block
    being run alive): the residual, its normed copy, q/k/v, the attention output and the captured hook value
    (8 x d_model), the gated MLP's three intermediate vectors (3 x d_mlp) and a row of attention scores per head
    (n_heads x max_tokens, when the kernel materialises them), in the forward's dtype; plus the residual gathered
    for the SAE in fp32 (4 x d_model)."""
    return dtype_bytes * (8 * dims.d_model + 3 * dims.d_mlp + dims.n_heads * max_tokens) + 4 * dims.d_model


def sae_encode_bytes(d_sae: int, encode_chunk: int) -> int:
    """The SAE encode's working set, the same for any batch: `encode_chunk` rows of fp32 pre-activations
    (d_sae wide) and the top-k's copy of them."""
    return 2 * 4 * d_sae * encode_chunk


def gpu_batch_tokens(free_bytes: int, dims: ForwardDims, dtype_bytes: int, max_tokens: int, d_sae: int,
                     encode_chunk: int, fraction: float = GPU_MEMORY_FRACTION) -> int:
    """Padded tokens per forward that fit in `fraction` of the free GPU memory:
    (fraction x free - sae_encode_bytes) / token_bytes, at least one whole document (max_tokens) and at most
    MAX_GPU_BATCH_TOKENS."""
    usable = free_bytes * fraction - sae_encode_bytes(d_sae, encode_chunk)
    tokens = int(usable // token_bytes(dims, dtype_bytes, max_tokens)) if usable > 0 else 0
    return max(max_tokens, min(tokens, MAX_GPU_BATCH_TOKENS))


def batch_tokens_for(reader: ReaderModel, sae: SAE, cfg: EmbedConfig, device: torch.device | str | None = None) -> int:
    """The token budget of one forward: `cfg.batch_tokens` on CPU; on CUDA, sized from the free GPU memory
    now (`torch.cuda.mem_get_info`) by `gpu_batch_tokens`, in the forward's dtype."""
    device = torch.device(device if device is not None else reader.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return cfg.batch_tokens
    free, _total = torch.cuda.mem_get_info(device)
    dtype_bytes = runtime_for(reader).dtype.itemsize
    return gpu_batch_tokens(int(free), forward_dims(reader), dtype_bytes, cfg.max_tokens, int(sae.cfg.d_sae),
                            cfg.encode_chunk)


def embed_encoded(reader: ReaderModel, sae: SAE, hook_name: str, docs: list[EncodedDoc], cfg: EmbedConfig) -> SparseRows:
    """Embed already-tokenized documents (one padded forward per token budget, stopping at the hook's layer)."""
    d_sae = int(sae.cfg.d_sae)
    pad = reader.tokenizer.pad_token_id or 0
    runtime = runtime_for(reader)
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        for batch in plan_batches(docs, batch_tokens_for(reader, sae, cfg)):
            ids, mask = pad_batch(docs, batch, pad, reader.device)
            x = runtime.residuals(ids, hook_name)
            b_idx, p_idx = mask.nonzero(as_tuple=True)
            x = x[b_idx, p_idx]
            doc_of = torch.tensor(batch, device=reader.device)[b_idx]
            for s in range(0, len(x), cfg.encode_chunk):
                rows, feats, vals = sparse_encode(sae, x[s : s + cfg.encode_chunk])
                if len(rows):
                    parts.append(pool_sparse(doc_of[s:][rows], p_idx[s:][rows], feats, vals, d_sae))
    n_tokens = np.array([d.n_counted for d in docs], np.int32)
    truncated = np.array([d.truncated for d in docs], bool)
    if not parts:
        e = np.zeros(0, np.int32)
        return SparseRows(e, e, e.astype(np.float32), e, e, e.astype(np.float32), n_tokens, truncated)
    # Chunks may split one document: merge partial statistics of the same (doc, feature).
    doc, feat, mx, pos, cnt, sm = (torch.cat(t) for t in zip(*parts))
    if len(parts) > 1:
        doc, feat, mx, pos, cnt, sm = _merge(doc, feat, mx, pos, cnt, sm, d_sae)
    return SparseRows(
        doc.cpu().numpy().astype(np.int32),
        feat.cpu().numpy().astype(np.int32),
        mx.cpu().numpy().astype(np.float32),
        pos.cpu().numpy().astype(np.int32),
        cnt.cpu().numpy().astype(np.int32),
        sm.cpu().numpy().astype(np.float32),
        n_tokens,
        truncated,
    )


def _merge(doc, feat, mx, pos, cnt, sm, d_sae: int):
    key = doc * d_sae + feat
    uniq, inv = torch.unique(key, return_inverse=True)
    n = len(uniq)
    m = torch.full((n,), float("-inf"), device=mx.device).scatter_reduce(0, inv, mx, "amax")
    c = torch.zeros(n, dtype=torch.long, device=mx.device).scatter_add_(0, inv, cnt)
    s = torch.zeros(n, device=mx.device).scatter_add_(0, inv, sm)
    big = torch.iinfo(torch.long).max
    p = torch.where(mx >= m[inv], pos, torch.full_like(pos, big))
    p = torch.full((n,), big, dtype=torch.long, device=mx.device).scatter_reduce(0, inv, p, "amin")
    return uniq // d_sae, uniq % d_sae, m, p, c, s


def sae_embed_texts(reader: ReaderModel, sae: SAE, hook_name: str, texts: list[str], cfg: EmbedConfig) -> SparseRows:
    """The pure batch function: texts in, sparse SAE rows out (MiniLM sentence vectors are
    backend.search.sentence_embed)."""
    docs = reader.encode_documents(list(texts), cfg.formatting, cfg.max_tokens)
    return embed_encoded(reader, sae, hook_name, docs, cfg)


def embed_texts(reader: ReaderModel, sae: SAE, hook_name: str, texts: list[str], cfg: EmbedConfig) -> SparseRows:
    """Deprecated name of `sae_embed_texts`."""
    warnings.warn("backend.activations.embed_texts is now sae_embed_texts", DeprecationWarning, stacklevel=2)
    return sae_embed_texts(reader, sae, hook_name, texts, cfg)


def token_activations(
    reader: ReaderModel, sae: SAE, hook_name: str, text: str, cfg: EmbedConfig, features: list[int] | None = None
) -> tuple[list[str], np.ndarray, list[bool]]:
    """Token strings of one document, its activations [n_tokens, len(features) or d_sae], and the count mask."""
    doc = reader.encode_documents([text], cfg.formatting, cfg.max_tokens)[0]
    with torch.inference_mode():
        x = runtime_for(reader).residuals(torch.tensor([doc.ids], device=reader.device), hook_name)[0]
        rows, feats, vals = sparse_encode(sae, x)
        dense = torch.zeros(len(doc.ids), int(sae.cfg.d_sae), device=x.device)
        dense[rows, feats] = vals
        mask = torch.tensor(doc.count_mask, device=x.device)
        dense[~mask] = 0.0  # position 0 and template tokens never count
        if features is not None:
            dense = dense[:, torch.tensor(features, dtype=torch.long, device=x.device)]
    return reader.token_strings(doc.ids), dense.cpu().numpy(), doc.count_mask
