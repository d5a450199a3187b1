"""Reader models: loading one (a built-in model from its fp32 cache, a local HF folder or a TransformerLens
name), hooking with TransformerLens names, document formatting (raw or chat) with the mask of positions that
count in pooling, and a model's dimensions from its config alone. The built-in models' registry, package
install and GGUF assembly are backend.builtin_models."""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

# The built-in models' registry and their one-time setup live in backend.builtin_models; these names stay
# importable from here.
from backend.builtin_models import (BUILTIN_MODELS, BuiltinModel, ModelNotAvailable, Notify,  # noqa: F401
                                    _find_gguf, cached_hf_dir, install_model_packages, model_status, prepare_builtin)
from backend.config import DEFAULT_MODEL, pick_device
from backend.dtypes import resolve_dtype  # "auto": bf16 on CUDA, the measured CPU default elsewhere

log = logging.getLogger(__name__)

Formatting = Literal["raw", "chat"]
HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)$")


def hook_layer(hook_name: str) -> int:
    """Layer index of a TransformerLens residual/block hook name; raise on anything else."""
    m = HOOK_RE.match(hook_name)
    if not m:
        raise ValueError(
            f"Unsupported hook {hook_name!r}: expected blocks.<L>.hook_resid_pre/resid_mid/resid_post/mlp_out/attn_out"
        )
    return int(m.group(1))


def stop_layer(hook_name: str) -> int:
    """`stop_at_layer` value that still runs the block owning the hook (resid_pre fires inside block L)."""
    return hook_layer(hook_name) + 1


@dataclass
class EncodedDoc:
    """Token ids of one formatted document and which positions count in pooling."""

    ids: list[int]
    count_mask: list[bool]
    truncated: bool = False

    @property
    def n_counted(self) -> int:
        return int(sum(self.count_mask))


@dataclass
class ReaderModel:
    """A HookedTransformer with its tokenizer and formatting rules."""

    name: str
    model: Any  # transformer_lens.HookedTransformer
    tokenizer: Any
    is_chat: bool
    prefix_token: str | None
    source: str
    hf_dir: Path | None = None
    _chat_parts: tuple[str, str] | None = field(default=None, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # hooks are model state

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    def prefix_ids(self) -> list[int]:
        if self.prefix_token is not None:
            return [int(self.tokenizer.convert_tokens_to_ids(self.prefix_token))]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [int(bos)] if bos is not None else []

    def chat_parts(self) -> tuple[str, str]:
        """Template text before and after an assistant turn's content."""
        if self._chat_parts is None:
            sentinel = "\u2063SAEDASH_CONTENT\u2063"
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "assistant", "content": sentinel}], tokenize=False
            )
            before, _, after = rendered.partition(sentinel)
            self._chat_parts = (before, after)
        return self._chat_parts

    def encode_documents(
        self, texts: list[str], formatting: Formatting = "raw", max_tokens: int = 512
    ) -> list[EncodedDoc]:
        """Tokenize documents; position 0 and template tokens never count in pooling."""
        if formatting == "chat" and getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"Model {self.name!r} has no chat template; use formatting='raw'.")
        content = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if formatting == "chat":
            before, after = self.chat_parts()
            pre = self.prefix_ids() + self.tokenizer(before, add_special_tokens=False)["input_ids"]
            post = self.tokenizer(after, add_special_tokens=False)["input_ids"]
        else:
            pre, post = self.prefix_ids(), []
        if not pre:
            raise ValueError("A document needs a first token to drop; this tokenizer gives none.")
        budget = max(1, max_tokens - len(pre) - len(post))
        out = []
        for ids in content:
            truncated = len(ids) > budget
            ids = list(ids[:budget])
            out.append(
                EncodedDoc(
                    ids=pre + ids + post,
                    count_mask=[False] * len(pre) + [True] * len(ids) + [False] * len(post),
                    truncated=truncated,
                )
            )
        return out

    def token_strings(self, ids: list[int]) -> list[str]:
        """Readable text of each token (for highlighting)."""
        return [self.tokenizer.decode([i]) for i in ids]


def _tl_official_config(tl_config_name: str, hf_config: Any) -> dict[str, Any]:
    """TransformerLens's built-in config for a model name (read offline), checked against the folder's config."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    cfg_dict = convert_hf_model_config(tl_config_name)
    text_config = getattr(hf_config, "text_config", hf_config)
    expected = {"d_model": text_config.hidden_size, "n_layers": text_config.num_hidden_layers,
                "d_vocab": text_config.vocab_size, "n_heads": text_config.num_attention_heads}
    wrong = {key: (cfg_dict.get(key), value) for key, value in expected.items() if cfg_dict.get(key) != value}
    if wrong:
        raise ModelNotAvailable(f"TransformerLens config {tl_config_name!r} does not match the model: {wrong}")
    return cfg_dict


def _build_hooked(
    hf_dir: Path, device: str, dtype: torch.dtype, tl_config_name: str | None = None
) -> tuple[Any, Any]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if tl_config_name is not None:
        cfg_dict = _tl_official_config(tl_config_name, hf.config)
    else:
        # TransformerLens guesses the architecture from the path text ("llama", "gemma", ...) before reading
        # config.json; a neutral link name makes it read the folder's own config.
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "reader"
            link.symlink_to(Path(hf_dir).resolve(), target_is_directory=True)
            cfg_dict = convert_hf_model_config(str(link))
    cfg_dict.update(device=device, dtype=dtype, tokenizer_prepends_bos=False, default_prepend_bos=False)
    cfg_dict.pop("tokenizer_name", None)
    cfg = HookedTransformerConfig(**{k: v for k, v in cfg_dict.items() if k in HookedTransformerConfig.__dataclass_fields__})
    state = get_pretrained_state_dict(str(hf_dir), cfg, hf_model=hf, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.to(device)
    model.eval()
    del hf
    return model, tok


def load_reader(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str = "auto",
    from_pretrained_kwargs: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    notify: Notify | None = None,
) -> ReaderModel:
    """Load a reader model: a built-in offline model, a local HF folder, or a TransformerLens name.

    `notify` hears the one-time setup of a built-in model (package install, dequantizing); without it,
    the `model_status` listener around the call, else stderr."""
    device = pick_device(device)
    tdtype = resolve_dtype(dtype, device)
    t0 = time.time()
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        hf_dir = prepare_builtin(name, cache_dir, notify=notify)
        model, tok = _build_hooked(hf_dir, device, tdtype, spec.tl_config_name)
        reader = ReaderModel(name, model, tok, spec.is_chat, spec.prefix_token, "builtin", hf_dir)
    elif Path(name).is_dir() and (Path(name) / "config.json").exists():
        hf_dir = Path(name)
        model, tok = _build_hooked(hf_dir, device, tdtype)
        is_chat = getattr(tok, "chat_template", None) is not None
        reader = ReaderModel(str(hf_dir), model, tok, is_chat, None, "hf_dir", hf_dir)
    else:
        try:
            from transformer_lens import HookedTransformer

            model = HookedTransformer.from_pretrained_no_processing(
                name, device=device, dtype=tdtype, **(from_pretrained_kwargs or {})
            )
        except Exception as exc:  # noqa: BLE001 - report any loader failure clearly
            raise ModelNotAvailable(
                f"Could not load model {name!r} offline: not a built-in model ({sorted(BUILTIN_MODELS)}), "
                f"not a local Hugging Face folder, and TransformerLens could not load it ({exc})."
            ) from exc
        model.eval()
        tok = model.tokenizer
        reader = ReaderModel(name, model, tok, getattr(tok, "chat_template", None) is not None, None, "transformer_lens")
    log.info("Loaded %s on %s in %.1fs", name, device, time.time() - t0)
    return reader


# -- model dimensions from configs alone (checked at workspace creation, no weights loaded) -------------
@dataclass(frozen=True)
class ModelDims:
    """How many blocks a reader model has and how wide its residual stream is."""

    n_layers: int
    d_model: int


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar key/values of a GGUF file's header (arrays such as the vocabulary are skipped).

    Reads only the header, stopping once the architecture's block count and width are known: the gguf
    package's reader indexes every tensor first, which takes seconds."""
    import struct

    found: dict[str, Any] = {}
    with open(path, "rb") as fh:

        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = fh.read(size)
            if len(data) < size:
                raise ValueError(f"{path} ends inside its GGUF header")
            return struct.unpack(fmt, data)[0]

        def read_string() -> str:
            return fh.read(read("<Q")).decode("utf-8", errors="replace")

        def skip_or_read(value_type: int) -> Any:
            if value_type in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[value_type])
            if value_type == _GGUF_STRING:
                return read_string()
            if value_type == _GGUF_ARRAY:
                item_type, n_items = read("<I"), read("<Q")
                if item_type in _GGUF_SCALARS:
                    fh.seek(n_items * struct.calcsize(_GGUF_SCALARS[item_type]), os.SEEK_CUR)
                else:
                    for _ in range(n_items):
                        skip_or_read(item_type)
                return None
            raise ValueError(f"{path}: unknown GGUF value type {value_type}")

        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        if read("<I") < 2:
            raise ValueError(f"{path} uses GGUF version 1, which is not supported")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key = read_string()
            value = skip_or_read(read("<I"))
            if value is not None:
                found[key] = value
            arch = found.get("general.architecture")
            if arch and f"{arch}.block_count" in found and f"{arch}.embedding_length" in found:
                break
    return found


def _dims_from_hf_config(cfg: dict[str, Any]) -> ModelDims | None:
    """(layers, width) from a Hugging Face config.json dict; multimodal configs keep them in text_config."""
    for part in (cfg, cfg.get("text_config") or {}):
        n_layers = next((part[k] for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                         if isinstance(part.get(k), int)), None)
        d_model = next((part[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(part.get(k), int)), None)
        if n_layers and d_model:
            return ModelDims(int(n_layers), int(d_model))
    return None


def _dims_from_config_file(path: Path) -> ModelDims | None:
    try:
        return _dims_from_hf_config(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None


def _dims_from_transformer_lens(name: str) -> ModelDims | None:
    """TransformerLens's config for a model name; None when it cannot be read offline."""
    try:
        from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_official_model_name

        cfg = convert_hf_model_config(get_official_model_name(name))
        return ModelDims(int(cfg["n_layers"]), int(cfg["d_model"]))
    except Exception:  # noqa: BLE001 - unknown name, no network, no cache: the dims stay unknown
        return None


def model_dims(name: str, cache_dir: Path | None = None) -> ModelDims | None:
    """Blocks and residual width of a reader model, read from its config without loading weights.

    Built-in models: the cached HF folder's config.json, else the GGUF header, else TransformerLens's config.
    Local HF folders: their config.json. Other names: TransformerLens's config when it is readable offline.
    None means "unknown here"; loading the model later still checks."""
    spec = BUILTIN_MODELS.get(name)
    if spec is not None:
        dims = _dims_from_config_file(cached_hf_dir(name, cache_dir) / "config.json")
        if dims is not None:
            return dims
        try:
            meta = read_gguf_metadata(_find_gguf(spec))
            arch = meta.get("general.architecture")
            return ModelDims(int(meta[f"{arch}.block_count"]), int(meta[f"{arch}.embedding_length"]))
        except (ModelNotAvailable, OSError, ValueError, KeyError):
            pass
        tl_name = getattr(spec, "tl_config_name", None) or spec.official_name
        return _dims_from_transformer_lens(tl_name)
    path = Path(name)
    if path.is_dir():
        return _dims_from_config_file(path / "config.json")
    return _dims_from_transformer_lens(name)
