"""The reader's model runtime: the one owner of its Hugging Face model, its lock, the forward that stops at
the hook's layer, and the steering hook.

Every forward in the backend goes through here (embedding, token highlighting, SAE training, steering), so
residuals are read one way and one lock (`reader.lock`) serialises the hooks, which are model state.

The Hugging Face model is loaded once per reader, lazily, from `reader.hf_dir` in the reader's dtype. A
residual hook (`hook_resid_pre`/`hook_resid_post`) becomes a PyTorch hook on the decoder layer that owns it;
to read residuals the hook raises `StopForward`, so no later layer (and no unembedding) runs. TransformerLens
stays the fallback where its hook points are needed: readers with no HF folder, and the
resid_mid/attn_out/mlp_out hooks. Both paths give the same residuals (tests/test_runtime.py).
"""
from __future__ import annotations

import inspect
import os
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal

import torch

# The dtype policy lives beside the model loader (backend.dtypes); its names stay importable from here.
from backend.dtypes import (CUDA_DEFAULT_DTYPE, DTYPE_CHOICES, DTYPES, cpu_has_native_bf16,  # noqa: F401
                            resolve_dtype, resolve_dtype_name)
from backend.models import ReaderModel, hook_layer, stop_layer

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Backend = Literal["hf", "transformer_lens"]

_RESIDUAL_SITES = ("resid_pre", "resid_post")
# Models whose decoder `logits_from_hook` calls layer by layer (one causal mask, one rotary embedding for all
# layers, `model.norm`, `lm_head`); checked against the full forward in tests/test_steering_capture.py.
_FROM_HOOK_MODEL_TYPES = frozenset({"llama"})


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass at the hook (later layers never run)."""


def decoder_layers(hf: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (block L owns TransformerLens's blocks.L hooks)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"Cannot find the decoder layers of {type(hf).__name__}")


def hook_site(hook_name: str) -> str:
    """The site of a hook name ("resid_post", "mlp_out", ...), validating the name."""
    hook_layer(hook_name)
    return hook_name.rsplit("hook_", 1)[1]


@dataclass
class HookState:
    """What the hook does on the next forward: add `vector` from absolute position `start` on (the
    forward's first token sits at absolute position `offset`), and/or capture the activation and stop."""

    vector: torch.Tensor | None = None
    start: int = 0
    offset: int = 0
    capture: bool = False
    stop_after_capture: bool = False
    captured: torch.Tensor | None = None

    def apply(self, h: torch.Tensor) -> torch.Tensor | None:
        """The new activation, or None to leave it unchanged."""
        if self.capture:
            self.captured = h.detach()
            if self.stop_after_capture:
                raise StopForward
        v = self.vector
        if v is None:
            return None
        first = self.start - self.offset
        if first <= 0:
            return h + v
        if first >= h.shape[1]:
            return None
        return torch.cat([h[:, :first], h[:, first:] + v], dim=1)


class HookedForward:
    """Forwards with the steerable hook installed at one hook name; made by `ModelRuntime.hooked` and
    used while its lock is held. `state` says what the hook does on the next forward."""

    def __init__(self, runtime: ModelRuntime, hook_name: str, use_hf: bool) -> None:
        self.runtime, self.hook_name = runtime, hook_name
        self.hf = runtime.hf if use_hf else None
        self.backend: Backend = "hf" if use_hf else "transformer_lens"
        self.state = HookState()
        if self.hf is not None:
            params = inspect.signature(self.hf.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dtype(self) -> torch.dtype:
        model = self.hf if self.hf is not None else self.runtime.reader.model
        return next(model.parameters()).dtype

    def reset(self) -> None:
        self.state = HookState()

    def steer_with(self, vector: torch.Tensor | None, start: int = 0, offset: int = 0, capture: bool = False) -> None:
        """Add `vector` on the next forwards from absolute position `start` (first fed token at `offset`).
        With `capture`, `state.captured` keeps the hook's activation from BEFORE the vector is added: the layers
        up to the hook never see the steering, so that is the unsteered model's activation for every row."""
        vec = None if vector is None else vector.to(self.device, self.dtype)
        self.state = HookState(vector=vec, start=start, offset=offset, capture=capture)

    def new_cache(self, batch: int) -> Any:
        """An empty KV cache for `batch` rows."""
        if self.hf is not None:
            from transformers import DynamicCache

            return DynamicCache(config=self.hf.config)
        from transformer_lens import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(self.runtime.reader.model.cfg, self.device, batch)

    def logits(self, ids: torch.Tensor, cache: Any = None, keep: int = 0, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the last `keep` positions (all when 0); extends `cache` in place when given.
        `attention_mask` (over cached + fed tokens) and `position_ids` serve left-padded batches (HF model only)."""
        if self.hf is not None:
            kw = {self._cache_kw: cache, "use_cache": cache is not None}
            if attention_mask is not None:
                kw.update(attention_mask=attention_mask, position_ids=position_ids)
            return self.hf(input_ids=ids, logits_to_keep=keep, **kw).logits
        if attention_mask is not None:
            raise ValueError("Left-padded batches need the Hugging Face model.")
        out = self.runtime.reader.model(ids, return_type="logits", attention_mask=torch.ones_like(ids), past_kv_cache=cache)
        return out[:, -keep:] if keep else out

    def unsteered_logits_and_residuals(self, ids: torch.Tensor, keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last `keep` positions and the hook's activation [batch, pos, d_model] of one
        unsteered forward (how steering's measures re-read an output)."""
        self.state = HookState(capture=True)
        try:
            logits = self.logits(ids, keep=keep)
            resid = self.state.captured
        finally:
            self.reset()
        assert resid is not None
        return logits, resid

    def residuals(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  position_ids: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        """Unsteered activation at the hook, [batch, pos, d_model]; the forward stops there.
        `attention_mask`/`position_ids` serve left-padded batches and `cache` extends a KV cache (HF model only;
        the layers after the hook's are left out of that cache)."""
        self.state = HookState(capture=True, stop_after_capture=True)
        try:
            if self.hf is not None:
                kw = {} if attention_mask is None else dict(attention_mask=attention_mask, position_ids=position_ids)
                self.hf(input_ids=ids, use_cache=cache is not None, **{self._cache_kw: cache}, **kw)
            elif attention_mask is not None or cache is not None:
                raise ValueError("Left-padded or cached residual reads need the Hugging Face model.")
            else:
                self.runtime.reader.model(ids, stop_at_layer=stop_layer(self.hook_name), return_type=None)
        except StopForward:
            pass
        resid = self.state.captured
        self.reset()
        if resid is None:
            raise RuntimeError(f"The forward never reached {self.hook_name}.")
        return resid

    def candidate_residuals(self, cache: Any, rows: list[int], tokens: torch.Tensor,
                            attention_mask: torch.Tensor | None = None,
                            position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Unsteered activation at the hook [R, K, d_model] of each candidate next token `tokens` [R, K] of each of
        `rows`, given the row's prefix in the KV `cache` (left untouched; guided sampling, HF model only): one forward
        over a copy of those rows' cached layers up to the hook, which stops there. The K candidates of a row sit
        side by side at the same position, each seeing the prefix and itself (a 4D mask), so the prefix is copied
        once per row, not per candidate. `attention_mask`/`position_ids`: the batch's so far (None: no padding)."""
        if self.hf is None or cache is None:
            raise ValueError("Reading candidate tokens needs the Hugging Face model and a KV cache.")
        kept = cache.layers[: hook_layer(self.hook_name) + 1]
        if len({layer.keys.shape[-2] for layer in kept}) > 1:  # a sliding-window layer holds fewer: one per candidate
            return self._candidate_residuals_one_by_one(kept, rows, tokens, attention_mask, position_ids)
        (n_rows, k), width = tokens.shape, kept[0].keys.shape[-2]
        idx = torch.tensor(rows, device=self.device)
        seen = (attention_mask[idx].bool() if attention_mask is not None
                else torch.ones(n_rows, width, dtype=torch.bool, device=self.device))
        allowed = torch.cat([seen[:, None, :].expand(n_rows, k, width),
                             torch.eye(k, dtype=torch.bool, device=self.device).expand(n_rows, k, k)], dim=-1)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        if position_ids is not None:
            nxt = position_ids[idx][:, -1] + 1
        else:
            nxt = torch.full((n_rows,), width, device=self.device)
        return self.residuals(tokens.to(self.device), mask[:, None], nxt[:, None].expand(n_rows, k),
                              self._rows_cache(kept, idx))

    def _candidate_residuals_one_by_one(self, kept: list[Any], rows: list[int], tokens: torch.Tensor,
                                        attention_mask: torch.Tensor | None,
                                        position_ids: torch.Tensor | None) -> torch.Tensor:
        """`candidate_residuals` with the prefix copied once per candidate (each a row of its own, one token)."""
        k = tokens.shape[1]
        idx = torch.tensor(rows, device=self.device).repeat_interleave(k)
        mask = pos = None
        if attention_mask is not None:
            mask = torch.cat([attention_mask[idx], attention_mask.new_ones(len(idx), 1)], dim=1)
            pos = position_ids[idx][:, -1:] + 1
        resid = self.residuals(tokens.reshape(-1, 1).to(self.device), mask, pos, self._rows_cache(kept, idx))
        return resid[:, -1].reshape(len(rows), k, -1)

    def _rows_cache(self, kept: list[Any], idx: torch.Tensor) -> Any:
        """A new KV cache holding rows `idx` of the cached layers `kept`; with the model's config its layers take the
        model's types (Gemma's sliding-window ones among them)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(layer.keys[idx], layer.values[idx]) for layer in kept], config=self.hf.config)

    @property
    def runs_from_hook(self) -> bool:
        """Whether `logits_from_hook` can finish a forward from the hook's activation (HF Llama models)."""
        return self.hf is not None and getattr(self.hf.config, "model_type", None) in _FROM_HOOK_MODEL_TYPES

    def logits_from_hook(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         position_ids: torch.Tensor | None = None, keep: int = 0) -> torch.Tensor:
        """Logits of the last `keep` positions (all when 0) from the activation at the hook [batch, pos, d_model]:
        only the layers after the hook (from the hook's own layer for resid_pre), the final norm and the
        unembedding run, unsteered, with the same causal + padding mask and rotary positions as a full forward.
        Given the activation an unsteered forward had at the hook, it gives that forward's logits for about
        (layers after the hook) / (layers) of its cost (how a steered output's perplexity is measured)."""
        if not self.runs_from_hook:
            raise ValueError(f"Finishing a forward from the hook needs a Hugging Face model of type "
                             f"{', '.join(sorted(_FROM_HOOK_MODEL_TYPES))}.")
        from transformers.masking_utils import create_causal_mask

        base, h = self.hf.model, resid.to(self.device, self.dtype)
        if position_ids is None:
            position_ids = torch.arange(h.shape[1], device=h.device)[None].expand(h.shape[0], -1)
        mask = create_causal_mask(config=base.config, inputs_embeds=h, attention_mask=attention_mask, cache=None,
                                  position_ids=position_ids)
        rotary = base.rotary_emb(h, position_ids=position_ids)
        first = hook_layer(self.hook_name) + (hook_site(self.hook_name) == "resid_post")
        self.reset()  # the hook of a resid_pre site sits on the first layer run here: leave h as it is
        for layer in decoder_layers(self.hf)[first:]:
            h = layer(h, attention_mask=mask, position_ids=position_ids, position_embeddings=rotary, use_cache=False)
        return self.hf.lm_head(base.norm(h[:, -keep:] if keep else h))

    # -- the hooks -------------------------------------------------------------------
    def _post_hook(self, module: Any, args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        new = self.state.apply(h)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> Any:
        if args:
            new = self.state.apply(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = self.state.apply(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    def _tl_hook(self, act: torch.Tensor, hook: Any) -> torch.Tensor | None:
        return self.state.apply(act)

    @contextmanager
    def installed(self) -> Iterator[HookedForward]:
        if self.hf is None:
            with self.runtime.reader.model.hooks(fwd_hooks=[(self.hook_name, self._tl_hook)]):
                yield self
            return
        layer = decoder_layers(self.hf)[hook_layer(self.hook_name)]
        if hook_site(self.hook_name) == "resid_post":
            handle = layer.register_forward_hook(self._post_hook)
        else:
            handle = layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self.reset()


class ModelRuntime:
    """The reader's forward passes: its HF model (loaded once, in `dtype`), the lock and the hooks.

    `dtype` defaults to the reader's own (the workspace's dtype setting, see `resolve_dtype`)."""

    def __init__(self, reader: ReaderModel, dtype: torch.dtype | None = None) -> None:
        self._reader = weakref.ref(reader)  # the reader owns its runtime, not the other way round
        self.dtype = dtype if dtype is not None else getattr(reader.model.cfg, "dtype", torch.float32)
        self._hf: PreTrainedModel | None = None
        self._load_lock = threading.Lock()

    @property
    def reader(self) -> ReaderModel:
        reader = self._reader()
        if reader is None:
            raise RuntimeError("This runtime's reader model has been released.")
        return reader

    @property
    def lock(self) -> threading.RLock:
        """The one model lock: hooks are model state, so forwards with different hooks must not overlap."""
        return self.reader.lock

    @property
    def device(self) -> torch.device:
        return self.reader.device

    @property
    def has_hf(self) -> bool:
        return self.reader.hf_dir is not None

    @property
    def hf(self) -> PreTrainedModel:
        """The reader's Hugging Face causal LM (loaded on first use)."""
        with self._load_lock:
            if self._hf is None:
                if self.reader.hf_dir is None:
                    raise ValueError(f"Reader {self.reader.name!r} has no local Hugging Face folder.")
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(str(self.reader.hf_dir), dtype=self.dtype)
                self._hf = model.to(self.device).eval()
            return self._hf

    def adopt_hf(self, model: PreTrainedModel) -> None:
        """Serve forwards with an HF model already loaded in this runtime's dtype (an embedding worker's,
        cut after the hook's layer: backend.engines.lite) instead of loading `reader.hf_dir` again."""
        with self._load_lock:
            self._hf = model.eval()

    def loaded_hf(self) -> PreTrainedModel | None:
        """The HF model when it is already loaded (never loads it)."""
        return self._hf

    def backend_for(self, hook_name: str, prefer_hf: bool = True) -> Backend:
        """Which model serves forwards at this hook."""
        use_hf = prefer_hf and self.has_hf and hook_site(hook_name) in _RESIDUAL_SITES
        return "hf" if use_hf else "transformer_lens"

    @contextmanager
    def hooked(self, hook_name: str, prefer_hf: bool = True) -> Iterator[HookedForward]:
        """Hold the lock and install the steerable hook at `hook_name` for the block's forwards."""
        forward = HookedForward(self, hook_name, self.backend_for(hook_name, prefer_hf) == "hf")
        with self.lock, forward.installed():
            yield forward

    def residuals(self, ids: torch.Tensor, hook_name: str) -> torch.Tensor:
        """Activation at the hook [batch, pos, d_model] in the runtime's dtype; the forward stops there.

        Right padding needs no attention mask: attention is causal, so padding never reaches earlier tokens.
        Position 0 is returned like any other; callers drop it through their count masks."""
        with torch.inference_mode(), self.hooked(hook_name) as forward:
            return forward.residuals(ids.to(self.device))

    def stop_token_ids(self) -> set[int]:
        """Token ids that end a generation: the tokenizer's EOS and the model's generation config's."""
        ids: set[int] = set()
        eos = getattr(self.reader.tokenizer, "eos_token_id", None)
        if eos is not None:
            ids.add(int(eos))
        gen_eos = getattr(getattr(self._hf, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            ids.update(int(e) for e in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
        return ids


_RUNTIMES: dict[int, ModelRuntime] = {}
_RUNTIMES_GUARD = threading.Lock()


def runtime_for(reader: ReaderModel) -> ModelRuntime:
    """The reader's runtime (one per reader object, released with it)."""
    key = id(reader)
    with _RUNTIMES_GUARD:
        runtime = _RUNTIMES.get(key)
        if runtime is None or runtime._reader() is not reader:
            runtime = _RUNTIMES[key] = ModelRuntime(reader)
            weakref.finalize(reader, _RUNTIMES.pop, key, None)
        return runtime


def residuals(reader: ReaderModel, ids: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activation at a TransformerLens hook name, read by the reader's runtime (stops at the hook)."""
    return runtime_for(reader).residuals(ids, hook_name)
