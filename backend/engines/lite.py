"""What an embedding worker loads: the Hugging Face model cut after the hook's layer and the SAE's encoder.

A Ray actor only runs the pure batch function, which reads residuals through the HF forward (backend.runtime)
and encodes them with the SAE. Building the TransformerLens model (`models.load_reader`) and importing
sae_lens (which imports TransformerLens) took ~20 s of each actor's ~22 s setup on 2 busy cores; here an
actor loads the tokenizer and the HF weights up to the hook's layer, and a TopK SAE's encoder straight from
its safetensors file. Rows are the same as the local engine's (tests/test_ray_engine.py): the same HF forward
in the same dtype, and `sparse_encode`'s own TopK arithmetic. Anything else (a model known only to
TransformerLens, a hook that is not a residual, another SAE architecture) falls back to the full loaders.

The Ray engine's actor (`EmbedActor`) and its shard writer live here too, so a worker imports this module
(torch, and transformers when it loads the model) rather than backend.engines.ray_engine, whose driver side
imports DuckDB, pandas and SciPy (~1 s more of each worker's start on 2 busy cores).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from backend.activations import EmbedConfig, SparseRows, sae_embed_texts
from backend.encode_dtype import encode_dtype, low_precision_pre_acts
from backend.models import BUILTIN_MODELS, ReaderModel, hook_layer, load_reader, prepare_builtin
from backend.runtime import decoder_layers, hook_site, resolve_dtype, runtime_for
from backend.saes import load_sae


@dataclass
class TopKEncoder:
    """A TopK SAE's encoder (W_enc, b_enc, b_dec, k), enough for `activations.sparse_encode`."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    k: int
    apply_b_dec_to_input: bool

    @property
    def cfg(self) -> SimpleNamespace:
        return SimpleNamespace(d_sae=int(self.W_enc.shape[1]), d_in=int(self.W_enc.shape[0]), k=self.k)

    def sparse_encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, feature, value) of the non-zero activations: sae_lens's TopK encode, term for term."""
        if encode_dtype(x.dtype, self.W_enc.dtype) != self.W_enc.dtype:  # bf16 forward: bf16 encode, as local
            pre = low_precision_pre_acts(self, x, self.W_enc, self.b_enc, self.b_dec, self.apply_b_dec_to_input)
        else:
            x = x.to(self.W_enc.dtype)
            pre = (x - self.b_dec * self.apply_b_dec_to_input) @ self.W_enc + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        vals = vals.relu()
        rows = torch.arange(len(x), device=x.device).unsqueeze(1).expand_as(idx)
        keep = vals > 0
        return rows[keep], idx[keep], vals[keep].float()


def load_topk_encoder(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TopKEncoder | None:
    """The encoder of a SAELens TopK folder, or None when the SAE needs sae_lens (another architecture,
    normalised or reshaped inputs, rescaling by decoder norms)."""
    folder = Path(folder)
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not (cfg_path.is_file() and weights.is_file()):
        return None
    cfg = json.loads(cfg_path.read_text())
    plain = (cfg.get("architecture") == "topk" and cfg.get("normalize_activations", "none") == "none"
             and cfg.get("reshape_activations", "none") == "none" and not cfg.get("rescale_acts_by_decoder_norm"))
    if not plain:
        return None
    from safetensors.torch import load_file

    state = load_file(str(weights), device="cpu")
    if not {"W_enc", "b_enc", "b_dec"} <= set(state):
        return None
    return TopKEncoder(*(state[n].to(device=device, dtype=dtype) for n in ("W_enc", "b_enc", "b_dec")),
                       k=int(cfg["k"]), apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)))


def load_embedding_sae(source: str, device: str = "cpu") -> Any:
    """The SAE's TopK encoder when it has the plain form, else the sae_lens SAE (`saes.load_sae`)."""
    encoder = load_topk_encoder(source, device) if Path(source).is_dir() else None
    if encoder is not None:
        return encoder
    return load_sae(source, device=device)


def model_kwargs_of(source: str, sae: Any) -> dict:
    """The SAE's recorded model-loading arguments (SAELens `model_from_pretrained_kwargs`), from its cfg.json
    when it was loaded as a bare encoder."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    if meta is not None:
        return dict(getattr(meta, "model_from_pretrained_kwargs", None) or {})
    cfg_path = Path(source) / "cfg.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    return dict((cfg.get("metadata") or {}).get("model_from_pretrained_kwargs") or {})


def load_truncated_reader(name: str, hook: str, device: str = "cpu", dtype: str = "auto",
                          from_pretrained_kwargs: dict | None = None) -> ReaderModel:
    """A reader whose model is the HF causal LM with the layers after the hook's removed (no TransformerLens),
    for a built-in model or a local HF folder and a residual hook; other readers load in full."""
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        hf_dir, prefix, is_chat = prepare_builtin(name), spec.prefix_token, spec.is_chat
    elif Path(name).is_dir() and (Path(name) / "config.json").exists():
        hf_dir, prefix, is_chat = Path(name), None, None
    else:
        hf_dir = None
    if hf_dir is None or hook_site(hook) not in ("resid_pre", "resid_post"):  # what the HF forward reads
        return load_reader(name, device=device, dtype=dtype, from_pretrained_kwargs=from_pretrained_kwargs)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tdtype = resolve_dtype(dtype, device)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=tdtype)
    layers = decoder_layers(hf)
    del layers[hook_layer(hook) + 1:]  # never run: the forward stops at the hook
    hf = hf.to(device).eval()
    conf = hf.config
    hf.cfg = SimpleNamespace(  # what ReaderModel and the token budget read from a TransformerLens config
        d_model=int(conf.hidden_size), n_layers=int(conf.num_hidden_layers), dtype=tdtype,
        d_mlp=int(getattr(conf, "intermediate_size", 4 * conf.hidden_size)), n_heads=int(conf.num_attention_heads))
    if is_chat is None:
        is_chat = getattr(tok, "chat_template", None) is not None
    reader = ReaderModel(name if name in BUILTIN_MODELS else str(hf_dir), hf, tok, is_chat, prefix, "hf_truncated",
                         hf_dir)
    runtime_for(reader).adopt_hf(hf)
    return reader


# -- the Ray engine's actor (backend.engines.ray_engine): here, so a worker imports no DuckDB, pandas or SciPy --
SHARD_SUFFIX = ".parquet"


def write_shard(folder: Path, doc_ids: np.ndarray, rows: SparseRows) -> str:
    """Write a batch's rows (doc_id = the corpus's doc id), documents in doc-id order, atomically; returns the
    shard's file name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    doc_ids = np.asarray(doc_ids, np.int64)
    order = np.argsort(doc_ids, kind="stable")  # the batch's documents come longest first (the export's order)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    doc = rank[np.asarray(rows.doc, np.int64)]
    pick = np.lexsort((np.asarray(rows.feature), doc))
    doc_ids = doc_ids[order]
    table = pa.table({
        "doc_id": pa.array(doc_ids[doc[pick]].astype(np.int32)),
        "feature_id": pa.array(np.asarray(rows.feature, np.int32)[pick]),
        "max_act": pa.array(np.asarray(rows.max_act, np.float32)[pick]),
        "argmax_pos": pa.array(np.asarray(rows.argmax_pos, np.int32)[pick]),
        "n_active": pa.array(np.asarray(rows.n_active, np.int32)[pick]),
        "sum_act": pa.array(np.asarray(rows.sum_act, np.float32)[pick]),
    })
    docs = {"doc_ids": doc_ids.tolist(), "n_tokens": np.asarray(rows.n_tokens)[order].tolist(),
            "truncated": np.asarray(rows.truncated, bool)[order].tolist()}
    table = table.replace_schema_metadata({"saedash_docs": json.dumps(docs)})
    name = f"shard-{int(doc_ids[0]) if len(doc_ids) else 0:010d}-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}"
    tmp = Path(folder) / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, Path(folder) / name)
    return name


class EmbedActor:
    """A Ray Data actor: holds the reader model and the SAE; maps the pure batch function over batches.

    Each item names one row group of an exported input file (one batch of documents): the actor reads it,
    embeds it, writes the rows as a shard and returns the shard's name, its documents and tokens, and the
    seconds the batch took (embedding and writing). Documents in `skip` (held in shards a killed run left)
    are left out."""

    def __init__(self, model: str, sae_source: str, hook: str, embed_cfg: dict, dtype: str, threads: int,
                 shard_dir: str, device: str | None = None, skip: frozenset[int] = frozenset()) -> None:
        torch.set_num_threads(int(threads))
        # the HF model up to the hook's layer and the SAE's encoder: no TransformerLens, no sae_lens
        self.sae = load_embedding_sae(sae_source, device=device or "cpu")
        self.reader = load_truncated_reader(model, hook, device=device or "cpu", dtype=dtype,
                                            from_pretrained_kwargs=model_kwargs_of(sae_source, self.sae))
        self.hook = hook
        self.cfg = EmbedConfig(**embed_cfg)
        self.folder = Path(shard_dir)
        self.skip = skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        names, n_docs, n_tokens, seconds = [], [], [], []
        for path, group in zip(batch["path"], batch["row_group"]):
            table = pq.ParquetFile(str(path)).read_row_group(int(group), columns=["doc_id", "text"])
            doc_ids = np.asarray(table.column("doc_id").to_numpy(), np.int64)
            texts = table.column("text").to_pylist()
            keep = [i for i, d in enumerate(doc_ids) if int(d) not in self.skip]
            if not keep:
                continue
            doc_ids, texts = doc_ids[keep], [texts[i] for i in keep]
            t0 = time.perf_counter()
            rows = sae_embed_texts(self.reader, self.sae, self.hook, texts, self.cfg)
            names.append(write_shard(self.folder, doc_ids, rows))
            seconds.append(time.perf_counter() - t0)
            n_docs.append(len(doc_ids))
            n_tokens.append(int(np.asarray(rows.n_tokens).sum()))
        return {"shard": np.array(names, dtype=object), "n_docs": np.array(n_docs, np.int64),
                "n_tokens": np.array(n_tokens, np.int64), "seconds": np.array(seconds, np.float64)}
