"""The "auto" strength: the largest strength whose fluency cost stays acceptable, found by a short search.

The cost of a strength is the median perplexity of its steered generations (read by the unsteered model, as
`measures` reads every output) divided by the median perplexity of the unsteered generations of the same
prompts and seeds. The search first probes a doubling grid in one batched generation (the bracket), then
narrows the bracket between the last strength within the bound and the first one past it with a few more
batched probes (each splits the bracket in four). The cost grows with the strength but each probe is
noisy (a few short generations), so the bracket is read from a monotone (isotonic) fit of the log ratios
over every probe so far, not from the first probe past the bound: one unlucky probe at a small strength no
longer stops the search there."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from backend.steering.config import SteeringError

# probe(strengths) -> the perplexity ratio (median steered / median unsteered) of each, in one batched run
Probe = Callable[[list[float]], list[float]]

DEFAULT_BOUND = 1.5
DEFAULT_GRID = (0.03125, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)  # x the residual norm: past 1 any feature breaks the text


@dataclass
class AutoStrength:
    """The strength "auto" chose, and the probes it saw (strength -> perplexity ratio)."""

    strength: float
    bound: float
    probes: dict[float, float] = field(default_factory=dict)
    note: str = ""
    fires: dict[float, float] = field(default_factory=dict)  # strength -> share of probe generations where it fired

    @property
    def fire_share(self) -> float:
        """Share of the probe generations at the chosen strength where the feature(s) fired (NaN if unknown)."""
        return self.fires.get(self.strength, math.nan)

    @property
    def ratio(self) -> float:
        """The perplexity ratio measured at the chosen strength (1.0 at strength 0)."""
        return self.probes.get(self.strength, 1.0 if self.strength == 0 else math.nan)


@dataclass(frozen=True)
class AutoConfig:
    """How "auto" searches: the perplexity bound, the first grid, the narrowing rounds, and the probe
    generations (few prompts and samples, short, exactly `probe_tokens` tokens each)."""

    bound: float = DEFAULT_BOUND
    grid: tuple[float, ...] = DEFAULT_GRID
    rounds: int = 2
    probe_tokens: int = 16
    max_prompts: int = 4
    max_samples: int = 2

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bound) and self.bound > 1):
            raise SteeringError("The auto strength's perplexity bound must be a number above 1.")
        if not self.grid or any(not (math.isfinite(s) and s > 0) for s in self.grid):
            raise SteeringError("The auto strength's grid must hold positive numbers.")
        if self.rounds < 0 or self.probe_tokens < 1 or self.max_prompts < 1 or self.max_samples < 1:
            raise SteeringError("rounds must be >= 0; probe_tokens, max_prompts and max_samples >= 1.")


_WORST = math.log(1e6)  # the log ratio a NaN or infinite probe counts as (it never passes)


def monotone_fit(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def _bracket(probes: dict[float, float], bound: float) -> tuple[float, float | None]:
    """(largest probed strength whose monotone-fitted ratio is within `bound`, or 0; the next probed strength
    above it, or None when every fitted ratio is within)."""
    order = sorted(probes)
    logs = [math.log(r) if math.isfinite(r) and r > 0 else _WORST for r in (probes[s] for s in order)]
    fitted = monotone_fit(logs)
    passing = [k for k, v in enumerate(fitted) if v <= math.log(bound)]
    if not passing:
        return 0.0, order[0] if order else None
    k = passing[-1]
    return order[k], (order[k + 1] if k + 1 < len(order) else None)


def search_strength(probe: Probe, config: AutoConfig | None = None) -> AutoStrength:
    """The largest strength whose perplexity ratio stays within `config.bound`, by bracket then bisection
    (1 + `rounds` calls of `probe`, each with several strengths)."""
    cfg = config or AutoConfig()
    probes: dict[float, float] = {}

    def run(strengths: Sequence[float]) -> None:
        todo = [float(s) for s in strengths if float(s) not in probes]
        for s, ratio in zip(todo, probe(todo)):
            probes[s] = float(ratio)

    run(sorted(cfg.grid))
    lo, hi = _bracket(probes, cfg.bound)
    for _ in range(cfg.rounds):
        if hi is None:
            break
        run([lo + (hi - lo) * k / 4 for k in (1, 2, 3)])
        lo, hi = _bracket(probes, cfg.bound)
    return AutoStrength(strength=lo, bound=cfg.bound, probes=probes, note=_note(lo, hi, cfg))


def _note(lo: float, hi: float | None, cfg: AutoConfig) -> str:
    if hi is None:
        return (f"auto: even the largest strength probed ({lo:g}) kept the median perplexity within "
                f"{cfg.bound:g}x of unsteered; chose it")
    if lo == 0:
        return (f"auto: every strength probed (down to {hi:g}) pushed the median perplexity past {cfg.bound:g}x "
                f"of unsteered; chose 0 (no steering)")
    return (f"auto: chose {lo:.3g}, the largest strength probed whose median perplexity stays within "
            f"{cfg.bound:g}x of unsteered (the next probe, {hi:.3g}, passed it)")


def with_fires(found: AutoStrength, fires: dict[float, float]) -> AutoStrength:
    """`found` with the probes' fire shares, and a note that says how often the feature fired at the chosen
    strength: within the fluency bound some features never show up in the text (they describe what the model
    reads more than what it writes), and a user should see that rather than a silent failure."""
    found.fires = dict(fires)
    share, base = found.fire_share, fires.get(0.0, math.nan)
    if math.isfinite(share):
        found.note += (f"; in the probes the feature fired in {share:.0%} of the generations at that strength "
                       f"({base:.0%} unsteered)")
    return found
