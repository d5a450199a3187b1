"""Feature steering: add SAE decoder directions to the residual stream while generating, and
measure the effect (how strongly the feature fires on the output, and the fluency cost).

Generation runs on the Hugging Face model (loaded once per reader from `reader.hf_dir`) with a
PyTorch hook on the decoder layer that owns the SAE's hook, a KV cache and a plain step loop;
when the reader has no HF folder, or the hook is not a residual hook, it runs on the reader's
HookedTransformer with a TransformerLens hook and its KV cache instead. Both give the same
residuals (see tests). Usable without any UI.
"""
from __future__ import annotations

import inspect
import logging
import math
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

import torch

from backend.models import ReaderModel, hook_layer

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

log = logging.getLogger(__name__)

Positions = Literal["all", "generated"]
Kind = Literal["steered", "unsteered"]
OnToken = Callable[[str, int, int, str], None]  # (kind, prompt_idx, sample_idx, text_so_far)


# --------------------------------------------------------------------------- configuration


@dataclass
class SteerConfig:
    """How to steer and sample.

    features: {feature_id: strength} used when `steer(..., features=None)`; a strength is in units
        of the feature's typical activation (see `feature_scale`).
    positions: "all" adds the vector at every position (prompt and generated); "generated" only at
        positions holding generated tokens, so the prompt's logits (and hence the first new token)
        are those of the unsteered model and steering acts from the second new token on.
    temperature: 0 means greedy. Sample i uses the RNG seed `seed + i` in both the unsteered and
        the steered run, so the two differ only through the steering.
    min_new_tokens: stop tokens are forbidden before this many new tokens (for benchmarks).
    chat_template: wrap each prompt as a user turn (instruct models with a chat template only).
    """

    features: dict[int, float] = field(default_factory=dict)
    positions: Positions = "all"
    n_samples: int = 2
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 48
    min_new_tokens: int = 0
    chat_template: bool = True
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.positions not in ("all", "generated"):
            raise ValueError(f"positions must be 'all' or 'generated', not {self.positions!r}")
        if self.n_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("n_samples and max_new_tokens must be at least 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")

    def seeds(self) -> list[int]:
        """RNG seed of each sample index (shared by the steered and unsteered runs)."""
        return [self.seed + i for i in range(self.n_samples)]


# --------------------------------------------------------------------------- strength units


@dataclass(frozen=True)
class FeatureScale:
    """What a steering strength means for one feature.

    The vector added to the residual is `raw_coef * direction`, where `direction` is the decoder row
    W_dec[f] (divided by its norm for SAEs that rescale activations by decoder norm), and
    `raw_coef = strength * unit`. `unit` is the feature's typical activation.
    """

    feature_id: int
    unit: float
    source: Literal["typical_acts", "residual_norm", "decoder_bias_norm", "unit_norm"]
    note: str
    direction_norm: float
    strength: float = 1.0

    @property
    def raw_coef(self) -> float:
        """Coefficient multiplying the decoder direction for this strength."""
        return self.strength * self.unit

    @property
    def vector_norm(self) -> float:
        """L2 norm of the vector added to the residual stream."""
        return abs(self.raw_coef) * self.direction_norm

    def with_strength(self, strength: float) -> FeatureScale:
        return FeatureScale(self.feature_id, self.unit, self.source, self.note, self.direction_norm, strength)


def decoder_direction(sae: Any, feature_id: int) -> torch.Tensor:
    """Residual-space vector that one unit of the feature's activation adds to the reconstruction."""
    w = sae.W_dec[int(feature_id)].detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        w = w / w.norm()
    return w


def feature_scale(
    sae: Any,
    feature_id: int,
    typical_acts: dict[int, float] | None = None,
    strength: float = 1.0,
    resid_norm: float | None = None,
) -> FeatureScale:
    """Unit of steering strength for a feature: strength 1.0 adds the decoder direction times the
    feature's typical activation (`typical_acts[f]`, e.g. its max or 99th-percentile activation in
    the workspace). Without it, fall back (and say so in `note`) to a norm-based estimate: strength
    1.0 adds a vector as long as a typical residual at the hook (`resid_norm`, when the caller
    measured it), else as long as the SAE's decoder bias (about the mean residual), else of norm 1.
    """
    f = int(feature_id)
    d_norm = float(decoder_direction(sae, f).float().norm())
    if d_norm <= 0:
        raise ValueError(f"Feature {f} has a zero decoder direction; it cannot steer.")
    extra = ""
    if getattr(sae.cfg, "normalize_activations", "none") not in (None, "none"):
        extra = f" (the SAE normalizes inputs with {sae.cfg.normalize_activations!r}; units are in its normalized space)"
    if typical_acts is not None and f in typical_acts and float(typical_acts[f]) > 0:
        unit = float(typical_acts[f])
        return FeatureScale(f, unit, "typical_acts", f"1.0 = the feature's typical activation ({unit:.4g}){extra}", d_norm, strength)
    if resid_norm is not None and resid_norm > 0:
        unit = float(resid_norm) / d_norm
        note = (f"no typical activation given: estimated so 1.0 adds a vector as long as the median residual "
                f"norm at the hook on the prompts ({resid_norm:.4g}){extra}")
        return FeatureScale(f, unit, "residual_norm", note, d_norm, strength)
    b_norm = float(sae.b_dec.detach().float().norm()) if getattr(sae, "b_dec", None) is not None else 0.0
    if b_norm > 1e-6:
        unit = b_norm / d_norm
        note = (f"no typical activation given: estimated from the SAE alone so 1.0 adds a vector as long as "
                f"its decoder bias ({b_norm:.4g}, about the mean residual){extra}")
        return FeatureScale(f, unit, "decoder_bias_norm", note, d_norm, strength)
    unit = 1.0 / d_norm
    note = f"no typical activation given and no scale in the SAE: 1.0 adds a unit-norm vector{extra}"
    return FeatureScale(f, unit, "unit_norm", note, d_norm, strength)


def steering_vector(sae: Any, scales: dict[int, FeatureScale]) -> torch.Tensor:
    """Sum over features of raw_coef * decoder direction, in float32 on the SAE's device."""
    vec = torch.zeros(sae.W_dec.shape[1], dtype=torch.float32, device=sae.W_dec.device)
    for f, sc in scales.items():
        vec += sc.raw_coef * decoder_direction(sae, f).float()
    return vec


# --------------------------------------------------------------------------- model access

_HF_MODELS: dict[int, Any] = {}
_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def hf_model(reader: ReaderModel) -> Any:
    """The reader's Hugging Face causal LM (loaded once per reader, on its device and dtype)."""
    key = id(reader)
    model = _HF_MODELS.get(key)
    if model is None:
        if reader.hf_dir is None:
            raise ValueError(f"Reader {reader.name!r} has no local Hugging Face folder.")
        from transformers import AutoModelForCausalLM

        dtype = getattr(reader.model.cfg, "dtype", torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(reader.hf_dir), dtype=dtype)
        model.to(reader.device).eval()
        _HF_MODELS[key] = model
        weakref.finalize(reader, _HF_MODELS.pop, key, None)
    return model


def _model_lock(obj: Any) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(obj), threading.Lock())


def _decoder_layers(hf: Any) -> Any:
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"Cannot find the decoder layers of {type(hf).__name__}")


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


@dataclass
class _HookState:
    """What the hook does on the next forward: add `vector` from absolute position `start` on
    (the forward's first token sits at absolute position `offset`), and/or capture the activation."""

    vector: torch.Tensor | None = None
    start: int = 0
    offset: int = 0
    capture: bool = False
    stop_after_capture: bool = False
    captured: torch.Tensor | None = None

    def apply(self, h: torch.Tensor) -> torch.Tensor | None:
        if self.capture:
            self.captured = h.detach()
            if self.stop_after_capture:
                raise _Stop
        v = self.vector
        if v is None:
            return None
        first = self.start - self.offset
        if first <= 0:
            return h + v
        if first >= h.shape[1]:
            return None
        return torch.cat([h[:, :first], h[:, first:] + v], dim=1)


class _Engine:
    """Runs the reader with a steerable hook at `hook_name`, on the HF model when possible."""

    def __init__(self, reader: ReaderModel, hook_name: str, prefer_hf: bool = True) -> None:
        hook_layer(hook_name)  # validates the name
        self.reader, self.hook_name = reader, hook_name
        self.state = _HookState()
        site = hook_name.rsplit("hook_", 1)[1]
        use_hf = prefer_hf and reader.hf_dir is not None and site in ("resid_pre", "resid_post")
        self.hf = hf_model(reader) if use_hf else None
        self.backend = "hf" if self.hf is not None else "transformer_lens"
        self.device = reader.device
        if self.hf is not None:
            params = inspect.signature(self.hf.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
            self._site = site

    @property
    def dtype(self) -> torch.dtype:
        model = self.hf if self.hf is not None else self.reader.model
        return next(model.parameters()).dtype

    @contextmanager
    def hooked(self) -> Iterator[None]:
        """Install the hook (serialised per model: concurrent users would see each other's hooks)."""
        model = self.hf if self.hf is not None else self.reader.model
        with _model_lock(model):
            self.state = _HookState()
            if self.hf is not None:
                layer = _decoder_layers(self.hf)[hook_layer(self.hook_name)]
                if self._site == "resid_post":
                    handle = layer.register_forward_hook(self._post_hook)
                else:
                    handle = layer.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
                try:
                    yield
                finally:
                    handle.remove()
            else:
                with self.reader.model.hooks(fwd_hooks=[(self.hook_name, self._tl_hook)]):
                    yield

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

    def new_cache(self, batch: int) -> Any:
        if self.hf is not None:
            from transformers import DynamicCache

            return DynamicCache(config=self.hf.config)
        from transformer_lens import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(self.reader.model.cfg, self.device, batch)

    def logits(self, ids: torch.Tensor, cache: Any = None, keep: int = 0) -> torch.Tensor:
        """Logits of the last `keep` positions (all when 0); extends `cache` in place when given."""
        if self.hf is not None:
            kw = {self._cache_kw: cache, "use_cache": cache is not None}
            return self.hf(input_ids=ids, logits_to_keep=keep, **kw).logits
        out = self.reader.model(
            ids, return_type="logits", attention_mask=torch.ones_like(ids), past_kv_cache=cache
        )
        return out[:, -keep:] if keep else out

    def residuals(self, ids: torch.Tensor) -> torch.Tensor:
        """Unsteered activation at the hook, [batch, pos, d_model] (the forward stops there)."""
        self.state = _HookState(capture=True, stop_after_capture=True)
        try:
            self.logits(ids)
        except _Stop:
            pass
        resid = self.state.captured
        self.state = _HookState()
        assert resid is not None
        return resid


def _engine(reader: ReaderModel, sae: Any) -> _Engine:
    return _Engine(reader, sae.cfg.metadata.hook_name)


def hf_residuals(reader: ReaderModel, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """Activation at a TransformerLens hook name read from the HF model (or TL when no HF folder)."""
    engine = _Engine(reader, hook_name)
    with torch.inference_mode(), engine.hooked():
        return engine.residuals(tokens.to(engine.device))


def format_prompt(reader: ReaderModel, prompt: str, chat_template: bool = True) -> list[int]:
    """Token ids of a prompt: the reader's prefix token, then the prompt (as a user turn with the
    assistant's turn opened, for instruct models when `chat_template`)."""
    tok = reader.tokenizer
    text = prompt
    if chat_template and reader.is_chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    prefix = reader.prefix_ids()
    return ids if ids[: len(prefix)] == prefix else prefix + ids


def stop_token_ids(reader: ReaderModel) -> set[int]:
    """Token ids that end a generation."""
    ids: set[int] = set()
    eos = getattr(reader.tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    hf = _HF_MODELS.get(id(reader))
    gen_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(e) for e in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
    return ids


# --------------------------------------------------------------------------- generation


def _pick(logits: torch.Tensor, cfg: SteerConfig, gens: list[torch.Generator], forbid: list[int]) -> list[int]:
    logits = logits.float()
    if forbid:
        logits[:, forbid] = -math.inf
    if cfg.temperature <= 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        sp = sp * ((sp.cumsum(-1) - sp) < cfg.top_p)
        probs = torch.zeros_like(probs).scatter_(-1, si, sp)
    # Inverse-CDF draw with one uniform per row from that row's generator (torch.multinomial is
    # ~100x slower on a CPU for a 50k vocabulary).
    u = torch.stack([torch.rand((), generator=g, device=g.device, dtype=torch.float64) for g in gens])
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp_(max=probs.shape[-1] - 1).tolist()


@dataclass
class _Stream:
    """One batch of `n_samples` rows sharing a prompt and a steering vector."""

    vector: torch.Tensor | None
    seq: torch.Tensor
    cache: Any
    gens: list[torch.Generator]
    done: list[bool]
    out: list[list[int]]


def _generate(
    engine: _Engine,
    prompt_ids: list[int],
    vectors: list[torch.Tensor | None],
    cfg: SteerConfig,
    stop_ids: set[int],
    on_step: Callable[[int, int, list[int]], None] | None = None,
) -> list[list[list[int]]]:
    """Generate `cfg.n_samples` continuations per steering vector (None = unsteered), stepping the
    variants in lockstep. Returns [variant][sample] -> new token ids, stop token excluded."""
    n, dev = cfg.n_samples, engine.device
    start = len(prompt_ids) if cfg.positions == "generated" else 0
    forbid = sorted(stop_ids)
    streams = []
    for v in vectors:
        gens = []
        if cfg.temperature > 0:
            gens = [torch.Generator(device=dev).manual_seed(s) for s in cfg.seeds()]
        streams.append(
            _Stream(
                vector=None if v is None else v.to(dev, engine.dtype),
                seq=torch.tensor([prompt_ids] * n, dtype=torch.long, device=dev),
                cache=engine.new_cache(n) if cfg.use_cache else None,
                gens=gens,
                done=[False] * n,
                out=[[] for _ in range(n)],
            )
        )
    for step in range(cfg.max_new_tokens):
        for si, s in enumerate(streams):
            if all(s.done):
                continue
            fed = s.seq if (s.cache is None or step == 0) else s.seq[:, -1:]
            engine.state.vector, engine.state.start = s.vector, start
            engine.state.offset = s.seq.shape[1] - fed.shape[1]
            logits = engine.logits(fed, s.cache, keep=1)[:, -1]
            nxt = _pick(logits, cfg, s.gens, forbid if step < cfg.min_new_tokens else [])
            for r, t in enumerate(nxt):
                if s.done[r]:
                    continue
                if t in stop_ids:
                    s.done[r] = True
                else:
                    s.out[r].append(t)
                if on_step is not None:
                    on_step(si, r, s.out[r])
            s.seq = torch.cat([s.seq, torch.tensor(nxt, dtype=torch.long, device=dev)[:, None]], dim=1)
        if all(all(s.done) for s in streams):
            break
    engine.state = _HookState()
    return [s.out for s in streams]


# --------------------------------------------------------------------------- measures


@dataclass
class Generation:
    """One continuation with its measures under the unsteered model.

    token_ids / text: the new tokens, stop token excluded (these are the "output tokens").
    feature_mean / feature_max / feature_frac: the steered features' SAE activations re-read from
        the output tokens by the plain model (mean, max, fraction of positions > 0).
    nll: mean negative log-likelihood per output token under the unsteered model.
    """

    kind: str
    prompt_idx: int
    sample_idx: int
    seed: int
    text: str
    token_ids: list[int]
    stopped: bool
    feature_mean: dict[int, float]
    feature_max: dict[int, float]
    feature_frac: dict[int, float]
    nll: float
    feature_sum: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def perplexity(self) -> float:
        """Fluency cost: perplexity of the output tokens under the unsteered model."""
        return math.exp(self.nll) if self.n_tokens else math.nan


def _measure(
    engine: _Engine, sae: Any, prompt_ids: list[int], outputs: list[list[int]], feature_ids: list[int]
) -> list[dict[str, Any]]:
    """Re-read prompt+output with the unsteered model: per output, the features' activations over
    output positions and the output tokens' NLL."""
    nan = {f: math.nan for f in feature_ids}
    L = max((len(o) for o in outputs), default=0)
    if L == 0:
        return [dict(mean=dict(nan), max=dict(nan), frac=dict(nan), sum=dict(nan), nll=math.nan) for _ in outputs]
    P = len(prompt_ids)
    ids = torch.tensor([prompt_ids + o + [prompt_ids[-1]] * (L - len(o)) for o in outputs], device=engine.device)
    engine.state = _HookState(capture=True)
    logits = engine.logits(ids, keep=L + 1)[:, :L].float()  # position P-1+j predicts token P+j
    resid = engine.state.captured[:, P : P + L]
    engine.state = _HookState()
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, ids[:, P:, None]).squeeze(-1)  # [n, L]
    x = resid.reshape(-1, resid.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)
    acts = sae.encode(x).reshape(len(outputs), L, -1)[..., feature_ids].float().cpu()  # [n, L, F]
    nll = nll.cpu()
    res = []
    for i, o in enumerate(outputs):
        m = len(o)
        if m == 0:
            res.append(dict(mean=dict(nan), max=dict(nan), frac=dict(nan), sum=dict(nan), nll=math.nan))
            continue
        a = acts[i, :m]
        res.append(
            dict(
                mean={f: float(a[:, k].mean()) for k, f in enumerate(feature_ids)},
                max={f: float(a[:, k].max()) for k, f in enumerate(feature_ids)},
                frac={f: float((a[:, k] > 0).float().mean()) for k, f in enumerate(feature_ids)},
                sum={f: float(a[:, k].sum()) for k, f in enumerate(feature_ids)},
                nll=float(nll[i, :m].mean()),
            )
        )
    return res


def _median_resid_norm(engine: _Engine, prompt_ids: list[list[int]]) -> float:
    """Median residual norm at the hook over prompt positions (position 0, the sink, excluded)."""
    norms = []
    for ids in prompt_ids:
        r = engine.residuals(torch.tensor([ids], device=engine.device))[0, 1:]
        norms.append(r.float().norm(dim=-1).cpu())
    allnorms = torch.cat(norms) if norms else torch.zeros(0)
    return float(allnorms.median()) if allnorms.numel() else 0.0


def _scales(
    engine: _Engine,
    sae: Any,
    features: dict[int, float],
    typical_acts: dict[int, float] | None,
    prompt_ids: list[list[int]],
) -> dict[int, FeatureScale]:
    missing = [f for f in features if not (typical_acts and float(typical_acts.get(f, 0)) > 0)]
    resid_norm = _median_resid_norm(engine, prompt_ids) if missing else None
    return {int(f): feature_scale(sae, f, typical_acts, s, resid_norm) for f, s in features.items()}


# --------------------------------------------------------------------------- public entry points


@dataclass
class SteerResult:
    """Unsteered and steered continuations of each prompt, sample by sample, with their measures."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    features: dict[int, float]
    scales: dict[int, FeatureScale]
    config: SteerConfig
    hook_name: str
    device: str
    backend: str
    generations: list[Generation]
    seconds: float

    def get(self, kind: Kind, prompt_idx: int = 0, sample_idx: int = 0) -> Generation:
        for g in self.generations:
            if (g.kind, g.prompt_idx, g.sample_idx) == (kind, prompt_idx, sample_idx):
                return g
        raise KeyError((kind, prompt_idx, sample_idx))

    def frame(self) -> pd.DataFrame:
        """One row per generation: text, length, perplexity, and each feature's mean/max activation."""
        import pandas as pd

        rows = []
        for g in self.generations:
            row: dict[str, Any] = dict(
                kind=g.kind, prompt_idx=g.prompt_idx, sample_idx=g.sample_idx, seed=g.seed, text=g.text,
                n_tokens=g.n_tokens, stopped=g.stopped, perplexity=g.perplexity,
            )
            for f in self.features:
                row[f"act_mean_{f}"] = g.feature_mean.get(f, math.nan)
                row[f"act_max_{f}"] = g.feature_max.get(f, math.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Per kind (unsteered/steered): token-weighted mean activation of each feature, the max,
        and the pooled perplexity of the output tokens."""
        import pandas as pd

        rows = []
        for kind in ("unsteered", "steered"):
            gens = [g for g in self.generations if g.kind == kind]
            rows.append(dict(kind=kind, **_pool(gens, list(self.features))))
        return pd.DataFrame(rows).set_index("kind")


def _pool(gens: list[Generation], feature_ids: list[int]) -> dict[str, float]:
    """Token-pooled measures of a set of generations."""
    gens = [g for g in gens if g.n_tokens]
    n = sum(g.n_tokens for g in gens)
    out: dict[str, float] = {"n_tokens": float(n), "n_generations": float(len(gens))}
    for f in feature_ids:
        out[f"mean_act_{f}"] = sum(g.feature_sum[f] for g in gens) / n if n else math.nan
        out[f"max_act_{f}"] = max((g.feature_max[f] for g in gens), default=math.nan)
        out[f"frac_active_{f}"] = sum(g.feature_frac[f] * g.n_tokens for g in gens) / n if n else math.nan
    out["perplexity"] = math.exp(sum(g.nll * g.n_tokens for g in gens) / n) if n else math.nan
    return out


def _generations(
    reader: ReaderModel, kind: str, prompt_idx: int, outs: list[list[int]], measures: list[dict], cfg: SteerConfig,
    stopped: list[bool],
) -> list[Generation]:
    return [
        Generation(
            kind=kind, prompt_idx=prompt_idx, sample_idx=i, seed=cfg.seeds()[i],
            text=reader.tokenizer.decode(o, skip_special_tokens=True), token_ids=list(o), stopped=stopped[i],
            feature_mean=m["mean"], feature_max=m["max"], feature_frac=m["frac"], feature_sum=m["sum"], nll=m["nll"],
        )
        for i, (o, m) in enumerate(zip(outs, measures))
    ]


def _stopped(outs: list[list[int]], cfg: SteerConfig) -> list[bool]:
    return [len(o) < cfg.max_new_tokens for o in outs]


def _streamer(
    reader: ReaderModel, on_token: OnToken | None, kinds: list[Kind], prompt_idx: int
) -> Callable[[int, int, list[int]], None] | None:
    """Adapt `on_token` to the step loop's (variant, row, tokens) callback."""
    if on_token is None:
        return None

    def on_step(variant: int, row: int, toks: list[int]) -> None:
        on_token(kinds[variant], prompt_idx, row, reader.tokenizer.decode(toks, skip_special_tokens=True))

    return on_step


def steer(
    reader: ReaderModel,
    sae: Any,
    features: dict[int, float] | None,
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: dict[int, float] | None = None,
    on_token: OnToken | None = None,
) -> SteerResult:
    """Generate unsteered and steered continuations of each prompt (same seeds per sample), streaming
    text through `on_token(kind, prompt_idx, sample_idx, text_so_far)`, and measure both."""
    cfg = cfg or SteerConfig()
    features = {int(f): float(s) for f, s in (cfg.features if features is None else features).items()}
    if not features:
        raise ValueError("Choose at least one feature to steer.")
    for f in features:
        if not 0 <= f < sae.W_dec.shape[0]:
            raise ValueError(f"Feature {f} is out of range for an SAE with {sae.W_dec.shape[0]} features.")
    engine = _engine(reader, sae)
    stop_ids = stop_token_ids(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    kinds: list[Kind] = ["unsteered", "steered"]
    gens: list[Generation] = []
    t0 = time.time()
    with torch.inference_mode(), engine.hooked():
        scales = _scales(engine, sae, features, typical_acts, prompt_ids)
        vector = steering_vector(sae, scales)
        for j, ids in enumerate(prompt_ids):
            outs = _generate(engine, ids, [None, vector], cfg, stop_ids, _streamer(reader, on_token, kinds, j))
            for kind, o in zip(kinds, outs):
                gens += _generations(reader, kind, j, o, _measure(engine, sae, ids, o, list(features)), cfg, _stopped(o, cfg))
    return SteerResult(
        prompts=list(prompts), prompt_ids=prompt_ids, features=features, scales=scales, config=cfg,
        hook_name=engine.hook_name, device=str(engine.device), backend=engine.backend, generations=gens,
        seconds=time.time() - t0,
    )


def generate_steered(
    reader: ReaderModel,
    sae: Any,
    features: dict[int, float],
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: dict[int, float] | None = None,
) -> list[list[list[int]]]:
    """Steered generation only (no unsteered run, no measures): [prompt][sample] -> new token ids.
    An empty `features` gives plain generation through the same loop."""
    cfg = cfg or SteerConfig()
    engine = _engine(reader, sae)
    stop_ids = stop_token_ids(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    with torch.inference_mode(), engine.hooked():
        vector = steering_vector(sae, _scales(engine, sae, features, typical_acts, prompt_ids)) if features else None
        return [_generate(engine, ids, [vector], cfg, stop_ids)[0] for ids in prompt_ids]


def steered_logits(
    reader: ReaderModel,
    sae: Any,
    features: dict[int, float],
    token_ids: list[int],
    prompt_len: int | None = None,
    positions: Positions = "all",
    typical_acts: dict[int, float] | None = None,
) -> torch.Tensor:
    """Logits [pos, vocab] of one token sequence with the steering hook on (no cache). With
    positions="generated" only positions >= prompt_len are steered."""
    engine = _engine(reader, sae)
    prompt_len = len(token_ids) if prompt_len is None else prompt_len
    with torch.inference_mode(), engine.hooked():
        vector = None
        if features:
            vector = steering_vector(sae, _scales(engine, sae, features, typical_acts, [token_ids[:prompt_len]]))
            vector = vector.to(engine.device, engine.dtype)
        engine.state = _HookState(vector=vector, start=prompt_len if positions == "generated" else 0)
        out = engine.logits(torch.tensor([token_ids], device=engine.device))[0]
        engine.state = _HookState()
    return out


def logit_lens(reader: ReaderModel, sae: Any, feature_id: int, k: int = 10) -> list[tuple[int, str, float]]:
    """Tokens whose logits the feature's decoder direction raises most (after the final norm)."""
    m = reader.model
    with torch.inference_mode():
        d = decoder_direction(sae, feature_id).to(reader.device, m.W_U.dtype)
        scores = (m.ln_final(d[None, None]) @ m.W_U)[0, 0]
        top = scores.topk(k)
    return [(int(i), reader.tokenizer.decode([int(i)]), float(v)) for v, i in zip(top.values, top.indices)]


def strength_sweep(
    reader: ReaderModel,
    sae: Any,
    feature_id: int,
    strengths: list[float],
    prompts: list[str],
    cfg: SteerConfig | None = None,
    typical_acts: dict[int, float] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Steer one feature at each strength (few samples each) and pool the measures per strength:
    columns strength, raw_coef, mean_feature_act, max_feature_act, frac_active, perplexity,
    n_tokens, n_generations, example, unsteered_mean_feature_act, unsteered_perplexity.
    Strength 0 is the unsteered run (same seeds), computed once."""
    import pandas as pd

    cfg = cfg or SteerConfig(n_samples=2)
    f = int(feature_id)
    engine = _engine(reader, sae)
    stop_ids = stop_token_ids(reader)
    prompt_ids = [format_prompt(reader, p, cfg.chat_template) for p in prompts]
    nonzero = sorted({float(s) for s in strengths if s != 0})
    by_strength: dict[float, list[Generation]] = {s: [] for s in [0.0, *nonzero]}
    with torch.inference_mode(), engine.hooked():
        base = _scales(engine, sae, {f: 1.0}, typical_acts, prompt_ids)[f]
        vectors = [None] + [steering_vector(sae, {f: base.with_strength(s)}) for s in nonzero]
        for j, ids in enumerate(prompt_ids):
            outs = _generate(engine, ids, vectors, cfg, stop_ids)
            for s, o in zip(by_strength, outs):
                by_strength[s] += _generations(reader, str(s), j, o, _measure(engine, sae, ids, o, [f]), cfg, _stopped(o, cfg))
            if on_progress is not None:
                on_progress(j + 1, len(prompt_ids))
    baseline = _pool(by_strength[0.0], [f])
    rows = []
    for s in sorted({float(s) for s in strengths}):
        p = _pool(by_strength[s], [f])
        gens = by_strength[s]
        rows.append(dict(
            strength=s, raw_coef=base.with_strength(s).raw_coef, mean_feature_act=p[f"mean_act_{f}"],
            max_feature_act=p[f"max_act_{f}"], frac_active=p[f"frac_active_{f}"], perplexity=p["perplexity"],
            n_tokens=int(p["n_tokens"]), n_generations=len(gens), example=gens[0].text if gens else "",
            unsteered_mean_feature_act=baseline[f"mean_act_{f}"], unsteered_perplexity=baseline["perplexity"],
        ))
    df = pd.DataFrame(rows)
    df.attrs.update(feature_id=f, unit=base.unit, unit_source=base.source, unit_note=base.note)
    return df


def sweep_figure(df: pd.DataFrame) -> go.Figure:
    """Mean feature activation on the output (left axis) and perplexity (right axis, log) against
    strength, with the unsteered levels dashed: where the effect starts, and where text breaks."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = df["strength"]
    fig.add_trace(go.Scatter(x=x, y=df["mean_feature_act"], mode="lines+markers", name="feature activation (mean on output)"), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=df["perplexity"], mode="lines+markers", name="perplexity (unsteered model)"), secondary_y=True)
    if "unsteered_mean_feature_act" in df and len(df):
        fig.add_trace(go.Scatter(x=x, y=df["unsteered_mean_feature_act"], mode="lines", line=dict(dash="dash"),
                                 name="activation, unsteered", opacity=0.6), secondary_y=False)
        fig.add_trace(go.Scatter(x=x, y=df["unsteered_perplexity"], mode="lines", line=dict(dash="dot"),
                                 name="perplexity, unsteered", opacity=0.6), secondary_y=True)
    title = "Strength sweep"
    if "feature_id" in df.attrs:
        title += f" — feature {df.attrs['feature_id']} (1.0 = {df.attrs.get('unit', float('nan')):.3g}, {df.attrs.get('unit_source', '')})"
    fig.update_layout(title=title, hovermode="x unified", legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="strength (× typical activation)")
    fig.update_yaxes(title_text="mean feature activation on output", secondary_y=False)
    fig.update_yaxes(title_text="perplexity", type="log", secondary_y=True)
    return fig
