"""Guided sampling: let a steered generation show the feature, choosing only among the model's own likely tokens.

On a 135M reader most SAE features describe what the model reads more than what it writes: pushing the residual
stream along a sparse feature's decoder direction, as far as the text stays fluent, rarely makes the model write
a token the feature fires on (docs/steering.md). Guided sampling closes that gap at the decoding step. At each
step, a steered row that has not yet shown every guided feature reads its `top_k` likeliest next tokens (after
temperature, top-p and the steering) at the SAE's hook, exactly as the unsteered model would read them there (the
layers up to the hook never see the steering vector). If the token it sampled fires a feature, it keeps it;
else, if some of the candidates do, it samples one of those in proportion to the model's probabilities (its
own RNG). Once each guided feature has fired in the row, the row samples freely. So a guided row differs from a
plainly steered one in at most one token per feature, a token the model itself ranked among its `top_k`, and
the perplexity measured under the unsteered model includes it. Every chosen position is recorded
(`Generation.guided`), so a reader sees which word was picked for the feature.

Pure selection here; `sampling.generate_rows` runs it, `HookedForward.candidate_residuals` reads the candidates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

_SEED_OFFSET = 7_919  # a guided row's draws among firing candidates come from seed + this, not its sampling RNG
Encode = Callable[[torch.Tensor], torch.Tensor]  # hook activations [n, d_model] -> guided features' activations [n, F]


@dataclass
class Guide:
    """What guides which rows: `encode` gives the guided features' SAE activations, `thresholds` ([F]) when each
    fires, `top_k` the candidates read per row and step, `rows` which rows are guided (the steered ones).
    `seeds[r]` seeds row r's own draws among firing candidates (None: greedy, the likeliest), apart from its
    sampling RNG, so a guided row samples the same tokens as an unguided one up to its first guided pick.
    `pending[r]` holds the features row r has not shown yet; `guided[r]` the output positions picked for them.
    `start`: the first step at which a pick may replace the row's own; before it a row only watches, so a feature
    the model writes by itself needs no pick."""

    encode: Encode
    thresholds: torch.Tensor
    top_k: int
    rows: list[bool]
    seeds: list[int] | None = None
    start: int = 0
    pending: list[torch.Tensor] = field(default_factory=list)
    guided: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.start < 0:
            raise ValueError("top_k must be at least 1 and start at least 0")
        n_features = int(self.thresholds.numel())
        self.pending = [torch.full((n_features,), bool(r)) for r in self.rows]
        self.guided = [[] for _ in self.rows]
        self._draws = (None if self.seeds is None
                       else [torch.Generator().manual_seed(s + _SEED_OFFSET) for s in self.seeds])

    def draw(self, row: int) -> float:
        """Row `row`'s next uniform draw in [0, 1) for a choice among firing candidates (0.0 when greedy)."""
        return 0.0 if self._draws is None else float(torch.rand((), generator=self._draws[row], dtype=torch.float64))

    def waiting(self, done: list[bool]) -> list[int]:
        """Rows still to guide this step."""
        return [r for r, p in enumerate(self.pending) if not done[r] and bool(p.any())]

    def choose(self, rows: list[int], probs: torch.Tensor, candidates: torch.Tensor, acts: torch.Tensor,
               picks: list[int], position: int) -> None:
        """Update `picks` in place for `rows`: probs and candidates [R, K] (the likeliest tokens and their
        probabilities), acts [R, K, F] their activations."""
        fires = (acts > self.thresholds.to(acts.device)) & (probs > 0)[..., None]
        for j, r in enumerate(rows):
            useful = (fires[j] & self.pending[r].to(fires.device)).any(-1)  # [K]: fires a feature still pending
            own = (candidates[j] == picks[r]).nonzero()
            if len(own) and bool(useful[own[0, 0]]):
                k = int(own[0, 0])  # the model's own pick shows the feature: keep it
            elif position >= self.start and bool(useful.any()):
                weights = probs[j].float() * useful
                k = int(torch.searchsorted(weights.cumsum(0), self.draw(r) * weights.sum(), right=True)
                        .clamp(max=len(weights) - 1))
                picks[r] = int(candidates[j, k])
                self.guided[r].append(position)
            else:
                continue
            self.pending[r] &= ~fires[j, k].cpu()
