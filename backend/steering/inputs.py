"""What steering needs from a workspace corpus: each feature's activation levels (the strength units) and
its top contexts (what the concept similarity compares outputs with). Read through the feature queries,
so the page and `steer_in_workspace` (the notebook call) get the same figures."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from backend.feature_queries import feature_contexts, feature_stats
from backend.steering.config import SteerConfig
from backend.steering.runs import OnProgress, OnToken, SteerResult, steer, strength_sweep
from backend.steering.units import ActivationLevels, UnitKind, typical_units

if TYPE_CHECKING:
    import pandas as pd

    from backend.context import WorkspaceContext
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


def steer_in_workspace(
    ws: WorkspaceContext,
    prompts: list[str],
    strengths: Mapping[int, float],
    config: SteerConfig | None = None,
    corpus: Corpus | str | int | None = None,
    unit: UnitKind = "p99_act",
    on_token: OnToken | None = None,
) -> SteerResult:
    """Steer the workspace's reader with {feature_id: strength}: strengths in units of each feature's
    typical activation in `corpus` (its p99 or max; without a corpus, a residual-norm unit), and the
    outputs compared with the features' top contexts there. What `Workspace.steer` calls."""
    feature_ids = [int(f) for f in strengths]
    typical, contexts = None, None
    if corpus is not None:
        typical = typical_units(activation_levels(ws, corpus, feature_ids), unit)
        contexts = concept_texts(ws, corpus, feature_ids)
    return steer(ws.reader, ws.sae, dict(strengths), list(prompts), config, typical_acts=typical, on_token=on_token,
                 concept_texts=contexts)


def sweep_in_workspace(
    ws: WorkspaceContext,
    feature_id: int,
    strengths: list[float],
    prompts: list[str],
    config: SteerConfig | None = None,
    corpus: Corpus | str | int | None = None,
    unit: UnitKind = "p99_act",
    on_progress: OnProgress | None = None,
) -> pd.DataFrame:
    """`strength_sweep` of one feature with the corpus's units and top contexts (as `steer_in_workspace`)."""
    typical, contexts = None, None
    if corpus is not None:
        typical = typical_units(activation_levels(ws, corpus, [int(feature_id)]), unit)
        contexts = concept_texts(ws, corpus, [int(feature_id)]).get(int(feature_id))
    return strength_sweep(ws.reader, ws.sae, int(feature_id), list(strengths), list(prompts), config, typical_acts=typical,
                          on_progress=on_progress, concept_texts=contexts)
