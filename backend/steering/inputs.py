"""What steering needs from a workspace corpus: each feature's activation levels (the strength units) and
its top contexts (what the concept similarity compares outputs with). Read through the feature queries,
so the page and `steer_in_workspace` (the notebook call) get the same figures."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from backend.context import WorkspaceContext
from backend.feature_queries import feature_contexts, feature_stats
from backend.steering.auto import AutoConfig
from backend.steering.config import SteerConfig, Strength
from backend.steering.runs import OnProgress, OnToken, SteerResult, steer, strength_sweep
from backend.steering.units import DEFAULT_UNIT, ActivationLevels, UnitKind, typical_units

if TYPE_CHECKING:
    import pandas as pd

    from backend.store import Corpus


def activation_levels(ws: WorkspaceContext, corpus: Corpus | str | int, feature_ids: list[int]) -> dict[int, ActivationLevels]:
    """{feature_id: its p99 and max activation over the corpus's documents} (None where not finalized)."""
    handle = ws.corpus(corpus)
    levels = {}
    for f in feature_ids:
        stats = feature_stats(ws, handle, int(f))
        levels[int(f)] = ActivationLevels(p99_act=stats.get("p99_act"), max_act=stats.get("max_act"))
    return levels


def concept_texts(ws: WorkspaceContext, corpus: Corpus | str | int, feature_ids: list[int], n_contexts: int = 5) -> dict[int, list[str]]:
    """{feature_id: its top contexts as plain text} (features without contexts are left out)."""
    handle = ws.corpus(corpus)
    out = {}
    for f in feature_ids:
        ctx = feature_contexts(ws, handle, int(f)).head(n_contexts)
        texts = [f"{b}{t}{a}".strip() for b, t, a in zip(ctx["before"], ctx["token"], ctx["after"])]
        if any(texts):
            out[int(f)] = [t for t in texts if t]
    return out


def _typical(ws: WorkspaceContext, corpus: Corpus | str | int | None, feature_ids: list[int], unit: UnitKind) -> dict[int, float] | None:
    """Typical activations for the activation units; None for the residual unit (measured on the prompts)."""
    typical_units({}, unit)  # validates the unit name
    if unit == "residual" or corpus is None:
        return None
    return typical_units(activation_levels(ws, corpus, feature_ids), unit)


def steer_in_workspace(
    ws: WorkspaceContext,
    prompts: list[str],
    strengths: Mapping[int, Strength],
    config: SteerConfig | None = None,
    corpus: Corpus | str | int | None = None,
    unit: UnitKind = DEFAULT_UNIT,
    on_token: OnToken | None = None,
    auto: AutoConfig | None = None,
) -> SteerResult:
    """Steer the workspace's reader with {feature_id: strength or "auto"}. Strengths are in `unit`: "residual"
    (default: 1.0 adds a vector as long as the median residual at the hook, the same push for every feature)
    or the feature's typical activation in `corpus` ("p99_act", "max_act"). With a corpus the outputs are
    compared with the features' top contexts there. What `Workspace.steer` calls."""
    feature_ids = [int(f) for f in strengths]
    typical = _typical(ws, corpus, feature_ids, unit)
    contexts = concept_texts(ws, corpus, feature_ids) if corpus is not None else None
    return steer(ws.reader, ws.sae, dict(strengths), prompts, config, typical_acts=typical, on_token=on_token,
                 concept_texts=contexts, auto=auto)


def sweep_in_workspace(
    ws: WorkspaceContext,
    feature_id: int,
    strengths: list[float],
    prompts: list[str],
    config: SteerConfig | None = None,
    corpus: Corpus | str | int | None = None,
    unit: UnitKind = DEFAULT_UNIT,
    on_progress: OnProgress | None = None,
) -> pd.DataFrame:
    """`strength_sweep` of one feature in `unit` with the corpus's top contexts (as `steer_in_workspace`)."""
    typical = _typical(ws, corpus, [int(feature_id)], unit)
    contexts = concept_texts(ws, corpus, [int(feature_id)]).get(int(feature_id)) if corpus is not None else None
    return strength_sweep(ws.reader, ws.sae, int(feature_id), list(strengths), list(prompts), config, typical_acts=typical,
                          on_progress=on_progress, concept_texts=contexts)
