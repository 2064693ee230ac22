"""Composing named reward functions into the ``[B, G, K]`` reward tensor.

A task defines its rewards as :class:`RewardComponent` objects: a name, a function that scores one
rollout, a weight, and optionally a condition (the paper's Eq. 8). :class:`RewardSet` scores a whole
batch and returns a :class:`ScoredBatch` that keeps the raw components, so every consumer (advantages,
dynamic sampling, logging) sees the per-component values, never only their sum.

Conditioned reward (paper Eq. 8): ``r~_k = r_k if r_l >= t else 0``. The condition always reads the
*raw* value of component ``l`` (before any conditioning of ``l`` itself). Missing values: if ``r_k`` is
NaN (does not apply) it stays NaN; if ``r_l`` is NaN the condition is not met and ``r~_k = 0``.

A reward function returns a float, or ``None``/NaN for "does not apply to this rollout". Any other
value (an infinity, a string) or an exception is an error that names the component and the rollout.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RewardComponent", "RewardError", "RewardSet", "ScoredBatch", "condition_reward"]

Rollout = Mapping[str, Any]
RewardFn = Callable[[Rollout], "float | None"]


class RewardError(ValueError):
    """A reward function failed or returned an invalid value for a specific rollout."""


def condition_reward(reward: torch.Tensor, condition: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 8: keep ``reward`` where ``condition >= threshold``, else 0; NaN rewards stay NaN."""
    met = condition >= threshold  # NaN compares False: a missing condition is not met
    gated = torch.where(met, reward, torch.zeros_like(reward))
    return torch.where(torch.isnan(reward), reward, gated)


@dataclass(frozen=True)
class RewardComponent:
    """One named reward component.

    Attributes:
        name: unique component name, used in logs and configs (e.g. ``"format"``, ``"correctness"``).
        fn: scores one rollout (a mapping with at least ``completion``; tasks add ``num_tokens``,
            ground truth fields, ...). Returns a float, or None for "does not apply".
        weight: the component's weight (GRPO: on the raw reward; GDPO: on its normalised advantage).
        condition_on: name of another component ``l``; when set, this component pays only where
            ``r_l >= threshold`` (paper Eq. 8).
        threshold: the threshold ``t`` of the condition.
    """

    name: str
    fn: RewardFn
    weight: float = 1.0
    condition_on: str | None = None
    threshold: float = 1.0


@dataclass(frozen=True)
class ScoredBatch:
    """Rewards of a batch of groups.

    Attributes:
        raw: ``[B, G, K]`` values returned by the reward functions (NaN = does not apply).
        rewards: ``[B, G, K]`` after conditioning; this is what the advantage estimators see.
        names: the K component names, in tensor order.
        weights: the K weights, in tensor order.
    """

    raw: torch.Tensor
    rewards: torch.Tensor
    names: tuple[str, ...]
    weights: tuple[float, ...]

    def weighted_sum(self) -> torch.Tensor:
        """``[B, G]`` weighted sum of the (conditioned) rewards, NaN counted as 0."""
        filled = torch.nan_to_num(self.rewards, nan=0.0)
        return (filled * torch.tensor(self.weights, dtype=filled.dtype)).sum(-1)


class RewardSet:
    """An ordered set of reward components that scores batches of rollouts."""

    def __init__(self, components: Sequence[RewardComponent]):
        if not components:
            raise ValueError("a RewardSet needs at least one component")
        names = [c.name for c in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate reward component names: {duplicates}")
        for c in components:
            if not math.isfinite(c.weight):
                raise ValueError(f"reward component {c.name!r}: weight must be finite, got {c.weight}")
            if c.condition_on is not None:
                if c.condition_on == c.name:
                    raise ValueError(f"reward component {c.name!r} cannot be conditioned on itself")
                if c.condition_on not in names:
                    raise ValueError(
                        f"reward component {c.name!r} is conditioned on unknown component "
                        f"{c.condition_on!r}; known: {names}"
                    )
        self.components = tuple(components)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(c.weight) for c in self.components)

    def with_weights(self, weights: Mapping[str, float]) -> RewardSet:
        """A copy with some weights replaced, by component name (unknown names are an error)."""
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise ValueError(f"weights for unknown reward components {unknown}; known: {list(self.names)}")
        return RewardSet(
            [
                RewardComponent(
                    c.name, c.fn, float(weights.get(c.name, c.weight)), c.condition_on, c.threshold
                )
                for c in self.components
            ]
        )

    def score(self, groups: Sequence[Sequence[Rollout]]) -> ScoredBatch:
        """Score ``B`` groups of ``G`` rollouts each into a :class:`ScoredBatch`."""
        sizes = {len(g) for g in groups}
        if not groups or len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"groups must be a non-empty list of equal-size non-empty groups, got sizes {sorted(sizes)}"
            )
        raw = torch.tensor(
            [
                [[self._score_one(c, r, b, g) for c in self.components] for g, r in enumerate(group)]
                for b, group in enumerate(groups)
            ],
            dtype=torch.float32,
        )
        return ScoredBatch(raw=raw, rewards=self.condition(raw), names=self.names, weights=self.weights)

    def condition(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply every component's Eq. 8 condition to raw rewards ``[B, G, K]``."""
        out = raw.clone()
        index = {name: k for k, name in enumerate(self.names)}
        for k, c in enumerate(self.components):
            if c.condition_on is not None:
                out[..., k] = condition_reward(raw[..., k], raw[..., index[c.condition_on]], c.threshold)
        return out

    @staticmethod
    def _score_one(component: RewardComponent, rollout: Rollout, b: int, g: int) -> float:
        where = f"reward component {component.name!r} on rollout {g} of prompt {b}"
        try:
            value = component.fn(rollout)
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(f"{where} returned {value!r}; expected a float or None")
        if math.isinf(value):
            raise RewardError(f"{where} returned {value}; rewards must be finite (None = does not apply)")
        return float(value)
