"""How to steer and sample: one validated configuration shared by steering runs and sweeps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from backend.errors import UserError

Positions = Literal["all", "generated"]
Kind = Literal["steered", "unsteered"]


class SteeringError(UserError):
    """A steering request the user can fix (no feature, a feature out of range, a bad setting)."""


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
    fire_threshold: a feature "fires" in a generation when its max activation over the output tokens
        is above this, the rule corpus documents follow (`latents(pooling="binary", threshold=...)`).
    perplexity_warning_factor: warn when the steered perplexity passes this multiple of the unsteered one.
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
    fire_threshold: float = 0.0
    perplexity_warning_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.positions not in ("all", "generated"):
            raise SteeringError(f"positions must be 'all' or 'generated', not {self.positions!r}")
        if self.n_samples < 1 or self.max_new_tokens < 1:
            raise SteeringError("n_samples and max_new_tokens must be at least 1")
        if not 0.0 < self.top_p <= 1.0:
            raise SteeringError("top_p must be in (0, 1]")
        if self.temperature < 0:
            raise SteeringError("temperature must be >= 0")
        if self.fire_threshold < 0:
            raise SteeringError("fire_threshold must be >= 0")
        if self.perplexity_warning_factor <= 1:
            raise SteeringError("perplexity_warning_factor must be above 1")

    def seeds(self) -> list[int]:
        """RNG seed of each sample index (shared by the steered and unsteered runs)."""
        return [self.seed + i for i in range(self.n_samples)]
