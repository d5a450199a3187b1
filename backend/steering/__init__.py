"""Feature steering: add SAE decoder directions to the residual stream while generating, and measure
the effect (does the feature fire on the output, max-pooled as documents are, and how strongly; does the
text follow the concept) and its fluency cost. Usable without any UI.

Modules by job: `config` (SteerConfig, input checks), `units` (what a strength means), `auto` (the "auto"
strength's search), `sampling` (one batched step loop with a KV cache and left padding), `measures` (what a run did), `runs` (the entry points), `inputs` (what a workspace corpus
gives a run). Forwards, the lock and the hook belong to the reader's runtime (backend.runtime)."""
from __future__ import annotations

import warnings
from typing import Any

from backend.runtime import residuals, runtime_for
from backend.steering.auto import AutoConfig, AutoStrength, search_strength
from backend.steering.config import (
    AUTO, GUIDE_TOP_K, MAX_ABS_STRENGTH, MAX_GENERATIONS, MAX_NEW_TOKENS, MAX_SAMPLES, Kind, Positions, SteerConfig,
    SteeringError, Strength, check_prompts, check_strengths,
)
from backend.steering.inputs import activation_levels, concept_texts, steer_in_workspace, sweep_in_workspace
from backend.steering.measures import (
    Generation, OutputMeasures, concept_similarities, measure_outputs, perplexity_warning, pool_generations,
)
from backend.steering.runs import (
    OnProgress, OnToken, SteerResult, direction_top_logits, generate_steered, marked_text, steer, steered_logits,
    strength_sweep,
)
from backend.steering.sampling import format_prompt, generate, generate_batch, pick_tokens, stop_token_ids
from backend.steering.units import (
    DEFAULT_UNIT, UNIT_KINDS, ActivationLevels, FeatureScale, UnitKind, decoder_direction, feature_scale, resolve_scales,
    steering_vector, typical_units,
)

__all__ = [
    "AUTO", "AutoConfig", "AutoStrength", "DEFAULT_UNIT", "GUIDE_TOP_K", "MAX_ABS_STRENGTH", "MAX_GENERATIONS", "MAX_NEW_TOKENS",
    "MAX_SAMPLES", "Strength", "check_prompts", "check_strengths", "generate_batch", "search_strength",
    "UNIT_KINDS", "ActivationLevels", "FeatureScale", "Generation", "Kind", "OnProgress", "OnToken", "OutputMeasures", "Positions",
    "SteerConfig", "SteerResult", "SteeringError", "UnitKind", "activation_levels", "concept_similarities",
    "concept_texts", "decoder_direction", "direction_top_logits", "feature_scale", "format_prompt", "generate",
    "generate_steered", "marked_text", "measure_outputs", "perplexity_warning", "pick_tokens", "pool_generations", "resolve_scales",
    "steer", "steer_in_workspace", "steered_logits", "steering_vector", "stop_token_ids", "strength_sweep",
    "sweep_in_workspace", "typical_units",
]


def _hf_model(reader: Any) -> Any:
    return runtime_for(reader).hf


def _hf_residuals(reader: Any, tokens: Any, hook_name: str) -> Any:
    return residuals(reader, tokens, hook_name)


_RENAMED = {
    "logit_lens": ("backend.steering.direction_top_logits (backend.features.logit_lens is the logit lens)",
                   direction_top_logits),
    "hf_model": ("backend.runtime.runtime_for(reader).hf", _hf_model),
    "hf_residuals": ("backend.runtime.residuals", _hf_residuals),
}


def __getattr__(name: str) -> Any:
    """Deprecated names: warn and forward. `sweep_figure` moved to the pages (pages.charts)."""
    if name in _RENAMED:
        new, target = _RENAMED[name]
        warnings.warn(f"backend.steering.{name} is now {new}", DeprecationWarning, stacklevel=2)
        return target
    if name == "sweep_figure":
        raise AttributeError("backend.steering.sweep_figure moved to pages.charts.sweep_figure (figures live in pages)")
    raise AttributeError(f"module 'backend.steering' has no attribute {name!r}")
