"""Advantage estimators for multi-reward group RL: GRPO, GRPO w/o std, and GDPO.

Every estimator is a small pure tensor function over a reward tensor of shape ``[B, G, K]``
(B prompts, G rollouts per prompt, K reward components) that returns advantages of shape ``[B, G]``.
Estimators are registered by name, so a config string picks one (``algorithm.method: gdpo``).

Conventions (the paper leaves these open; see docs/paper-notes.md §4 and §10):

* ``unbiased=True`` uses the sample std (divide by N-1) in every std, as the paper's worked numbers
  (±0.7071 for two rollouts with rewards 0 and 1) and all three official codes do.
* ``eps`` is added to the std, ``(x - mean) / (std + eps)``, in the group step and the batch step.
  Default 1e-6, the group step's eps of verl-GDPO and NeMo-RL (TRL uses 1e-4 in both steps; in the batch
  step verl uses ``(var + 1e-8)^-1/2`` and NeMo-RL no eps).
* GDPO gives exactly 0 to a group whose components cancel exactly (two equally weighted rewards with a
  constant sum, docs/paper-notes.md §1.5). The test runs on eps-free z-scores so neither float rounding nor
  the eps residue of components with different spreads reaches the batch step, which would scale it up.
* A group in which a quantity is constant gets exactly 0 for it. The test is exact equality of the
  group's values (max == min), not ``std < threshold``: this avoids the float residue that
  ``(x - mean) / (std + eps)`` leaves for constant non-representable rewards (docs/paper-notes.md §5.2).
  For GDPO the test is made per component, never on the sum (docs/paper-notes.md §5.6).
* A group of one rollout carries no signal and gets 0 (verl instead returns the raw reward).
* NaN marks a component that does not apply to a rollout. GRPO and GRPO w/o std count it as 0 in the
  weighted sum (TRL's convention). GDPO keeps it out of that component's group statistics and gives
  the rollout 0 for that component. A rollout whose every component is NaN is unscorable: GDPO keeps it
  out of the batch statistics and gives it advantage 0. NaN never reaches a result.
* All arithmetic runs in float64 and the result is cast back to the input dtype.

GDPO's batch step (``batch_norm``):

* ``"sequence"`` (default; the paper's Eq. 6, TRL, NeMo-RL): z-score over all scorable rollouts.
* ``"token"`` (verl-GDPO): every rollout weighted by its number of response tokens (``lengths``); the
  N-1 correction then counts tokens, as verl's ``masked_whiten`` does.
* ``"none"``: skip the batch step (the ablation of the paper's Appendix A).

The batch step is an affine map of the whole batch, so callers that shard a batch over ranks must
gather the rewards of the global batch first (the trainer does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "BATCH_NORMS",
    "compute_advantages",
    "group_normalize",
    "groups_with_signal",
    "is_constant",
    "register_advantage_estimator",
]

BATCH_NORMS = ("sequence", "token", "none")


class AdvantageEstimator(Protocol):
    def __call__(
        self,
        rewards: torch.Tensor,
        weights: torch.Tensor,
        *,
        eps: float,
        unbiased: bool,
        batch_norm: str,
        lengths: torch.Tensor | None,
    ) -> torch.Tensor: ...


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register an estimator under ``name`` so that ``compute_advantages(..., method=name)`` finds it."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return decorator


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _weighted_moments(
    x: torch.Tensor, weight: torch.Tensor, dim: int, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x`` along ``dim`` with non-negative ``weight`` (0 = left out).

    The N-1 correction subtracts one from the total weight, which for 0/1 weights is the sample std
    and for token-count weights is verl's token-level Bessel correction.
    """
    total = weight.sum(dim, keepdim=True)
    mean = (weight * x).sum(dim, keepdim=True) / total.clamp(min=1e-300)
    dev = torch.where(weight > 0, x - mean, torch.zeros_like(x))
    denom = (total - (1.0 if unbiased else 0.0)).clamp(min=1e-300)
    std = ((weight * dev * dev).sum(dim, keepdim=True) / denom).sqrt()
    return mean, std


def is_constant(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """True where the valid entries of ``x`` along ``dim`` are all equal, or fewer than two (keepdim).

    This is the "group carries no signal" test, made by exact equality.
    """
    hi = torch.where(valid, x, torch.full_like(x, -torch.inf)).amax(dim, keepdim=True)
    lo = torch.where(valid, x, torch.full_like(x, torch.inf)).amin(dim, keepdim=True)
    few = valid.sum(dim, keepdim=True) < 2
    return (hi == lo) | few


SIGNAL_TESTS = ("any_component", "weighted_sum")


def groups_with_signal(
    rewards: torch.Tensor, weights: Sequence[float], test: str, *, unbiased: bool = True
) -> torch.Tensor:
    """``[B]`` True where a group of ``rewards [B, G, K]`` can teach something (DAPO's dynamic sampling).

    ``any_component`` (GDPO's view): GDPO's group step gives the group a non-zero advantage, i.e. some component
    with a non-zero weight varies and the weighted per-component z-scores do not cancel. Sums may tie: with three
    rewards (1,0,0),(0,1,0),(0,0,1),(1,0,0) carry signal (docs/paper-notes.md §1.5). With two equal-weight rewards
    a tied sum always cancels: (1,0) vs (0,1) carries none. ``weighted_sum`` (GRPO's view, DAPO's ``seq_reward``
    filter): the weighted sum varies. NaN ("does not apply") entries are treated as each method's advantages treat
    them: ``any_component`` leaves them out of their component, ``weighted_sum`` counts them 0 in the sum (so a
    rollout with every component NaN has sum 0, as in GRPO's advantage, and is not left out).
    """
    if test not in SIGNAL_TESTS:
        raise ValueError(f"unknown signal test {test!r}; known: {SIGNAL_TESTS}")
    w = torch.tensor(weights, dtype=torch.float64)
    if test == "weighted_sum":
        summed = (torch.nan_to_num(rewards.double()) * w).sum(-1)
        return ~is_constant(summed, torch.ones_like(summed, dtype=torch.bool), dim=1).squeeze(1)
    _, exact = _weighted_z_sums(rewards.double(), w, eps=0.0, unbiased=unbiased)
    return ~_cancelled(exact, w).squeeze(1)


def group_normalize(x: torch.Tensor, *, eps: float, unbiased: bool, scale: bool = True) -> torch.Tensor:
    """Normalise ``x`` of shape ``[B, G, K]`` within each group (dim 1), per column k.

    NaN entries are left out of the statistics and map to 0. A column that is constant within a
    group (or has fewer than two valid entries there) maps to exactly 0. With ``scale=False`` only
    the group mean is subtracted (GRPO w/o std).
    """
    centred, std, signal = _group_centre(x, unbiased=unbiased)
    normalised = centred / (std + eps) if scale else centred
    return torch.where(signal, normalised, torch.zeros_like(x))


def _group_centre(x: torch.Tensor, *, unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group and column of ``x [B, G, K]``: deviation from the mean, the std, and where there is signal
    (a valid entry of a column that is not constant in its group). NaN entries are left out."""
    valid = ~torch.isnan(x)
    filled = torch.where(valid, x, torch.zeros_like(x))
    mean, std = _weighted_moments(filled, valid.to(x.dtype), dim=1, unbiased=unbiased)
    signal = valid & ~is_constant(filled, valid, dim=1)
    return filled - mean, std, signal


def _batch_normalize(
    a: torch.Tensor,
    weight: torch.Tensor,
    *,
    eps: float,
    unbiased: bool,
) -> torch.Tensor:
    """Z-score ``a`` of shape ``[B, G]`` over the whole batch, each entry weighted by ``weight``."""
    flat_a, flat_w = a.reshape(-1), weight.reshape(-1)
    included = flat_w > 0
    if is_constant(flat_a, included, dim=0).item():
        return torch.zeros_like(a)
    mean, std = _weighted_moments(flat_a, flat_w, dim=0, unbiased=unbiased)
    out = torch.where(included, (flat_a - mean) / (std + eps), torch.zeros_like(flat_a))
    return out.reshape(a.shape)


# A group's weighted sum of eps-free z-scores whose spread is below this fraction of sum(|w|) is float
# rounding of components that cancel exactly (e.g. (1,0) vs (0,1)); z-scores are O(1), so real signal is far
# above.
_CANCELLED = 1e-9


def _weighted_z_sums(
    rewards: torch.Tensor, weights: torch.Tensor, *, eps: float, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """GDPO's group step, ``[B, G, K] -> [B, G]``: per-component group z-scores, weighted and summed, with
    ``std + eps`` and eps-free (for the cancellation test), from one computation of the group moments."""
    centred, std, signal = _group_centre(rewards, unbiased=unbiased)

    def weighted_sum(z: torch.Tensor) -> torch.Tensor:
        return (torch.where(signal, z, torch.zeros_like(z)) * weights).sum(-1)

    return weighted_sum(centred / (std + eps)), weighted_sum(centred / std)


def _cancelled(exact: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, 1]`` True where the eps-free weighted z-sums ``exact [B, G]`` of a group are equal up to rounding."""
    spread = exact.amax(1, keepdim=True) - exact.amin(1, keepdim=True)
    return spread <= _CANCELLED * weights.abs().sum()


def _gdpo_group_step(
    rewards: torch.Tensor, weights: torch.Tensor, *, eps: float, unbiased: bool
) -> torch.Tensor:
    """The weighted z-sum, with exactly 0 for groups whose components cancel.

    The cancellation test runs on eps-free z-scores: with ``std + eps``, two components that cancel exactly but
    spread differently (format 0/1 against correctness -3/+3) leave a residue of order eps, and the batch step
    would scale it up to O(1) advantages in a batch with no other signal.
    """
    summed, exact = _weighted_z_sums(rewards, weights, eps=eps, unbiased=unbiased)
    return torch.where(_cancelled(exact, weights), torch.zeros_like(summed), summed)


def _weighted_sum(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over components with NaN counted as 0: ``[B, G, K] -> [B, G]``."""
    filled = torch.where(torch.isnan(rewards), torch.zeros_like(rewards), rewards)
    return (filled * weights).sum(-1)


# --------------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------------


@register_advantage_estimator("grpo")
def grpo_advantages(rewards, weights, *, eps, unbiased, batch_norm, lengths):
    """GRPO (paper Eq. 1-2): weighted sum of components, then group z-score. No batch step."""
    total = _weighted_sum(rewards, weights).unsqueeze(-1)
    return group_normalize(total, eps=eps, unbiased=unbiased).squeeze(-1)


@register_advantage_estimator("grpo_no_std")
def grpo_no_std_advantages(rewards, weights, *, eps, unbiased, batch_norm, lengths):
    """GRPO w/o std (Dr. GRPO): weighted sum of components minus its group mean. No batch step."""
    total = _weighted_sum(rewards, weights).unsqueeze(-1)
    return group_normalize(total, eps=eps, unbiased=unbiased, scale=False).squeeze(-1)


@register_advantage_estimator("gdpo")
def gdpo_advantages(rewards, weights, *, eps, unbiased, batch_norm, lengths):
    """GDPO (paper Eq. 4-7): per-component group z-score, weighted sum, then the batch step."""
    summed = _gdpo_group_step(rewards, weights, eps=eps, unbiased=unbiased)
    if batch_norm == "none":
        return summed
    scorable = (~torch.isnan(rewards)).any(-1).to(rewards.dtype)
    weight = scorable if batch_norm == "sequence" else scorable * lengths
    return _batch_normalize(summed, weight, eps=eps, unbiased=unbiased)


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def _check_rewards(rewards: object) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor):
        raise ValueError(f"rewards must be a torch.Tensor of shape [B, G, K], got {type(rewards).__name__}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    if rewards.ndim != 3 or min(rewards.shape) < 1:
        raise ValueError(
            f"rewards must have shape [B, G, K] with every size >= 1, got {tuple(rewards.shape)}"
        )
    infinite = torch.isinf(rewards)
    if infinite.any():
        b, g, k = (int(i) for i in infinite.nonzero()[0])
        raise ValueError(
            f"rewards[{b}, {g}, {k}] is {rewards[b, g, k].item()}: rewards must be finite "
            "(use NaN for a component that does not apply)"
        )
    return rewards


def _check_weights(weights: Sequence[float] | torch.Tensor | None, num_rewards: int) -> list[float]:
    if weights is None:
        return [1.0] * num_rewards
    values = weights.tolist() if isinstance(weights, torch.Tensor) else list(weights)
    if len(values) != num_rewards:
        raise ValueError(
            f"weights has {len(values)} entries but rewards has {num_rewards} components (last dim)"
        )
    for i, w in enumerate(values):
        if (
            not isinstance(w, (int, float))
            or isinstance(w, bool)
            or not torch.isfinite(torch.tensor(float(w)))
        ):
            raise ValueError(f"weights[{i}] must be a finite number, got {w!r}")
    return [float(w) for w in values]


def _check_lengths(lengths: torch.Tensor | None, batch_norm: str, shape: torch.Size) -> torch.Tensor | None:
    if batch_norm != "token":
        return None
    if lengths is None:
        raise ValueError('batch_norm="token" needs lengths: a [B, G] tensor of response token counts')
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != tuple(shape[:2]):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be a tensor of shape {tuple(shape[:2])} (B, G), got {got}")
    if (lengths < 0).any() or torch.isnan(lengths.double()).any():
        raise ValueError("lengths must be non-negative token counts")
    return lengths


def compute_advantages(
    rewards: torch.Tensor,
    method: str,
    *,
    weights: Sequence[float] | torch.Tensor | None = None,
    eps: float = 1e-6,
    unbiased: bool = True,
    batch_norm: str = "sequence",
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantages ``[B, G]`` from per-component rewards ``[B, G, K]``.

    Args:
        rewards: float tensor ``[B, G, K]``; NaN marks a component that does not apply to a rollout.
        method: a registered estimator name: ``"grpo"``, ``"grpo_no_std"`` or ``"gdpo"``.
        weights: one weight per component (default all 1). GRPO weights the raw rewards; GDPO weights
            the group-normalised components (paper Eq. 7).
        eps: added to every std before dividing.
        unbiased: sample std (N-1) if True, population std (N) if False, in every std.
        batch_norm: GDPO's batch step: ``"sequence"``, ``"token"`` (needs ``lengths``) or ``"none"``.
            GRPO and GRPO w/o std have no batch step and ignore it.
        lengths: ``[B, G]`` response token counts, used only by ``batch_norm="token"``.

    Raises:
        ValueError: naming the argument at fault (shape, dtype, weights length, unknown method, ...).
    """
    if method not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage method {method!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    if batch_norm not in BATCH_NORMS:
        raise ValueError(f"unknown batch_norm {batch_norm!r}; known: {list(BATCH_NORMS)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards = _check_rewards(rewards)
    weight_values = _check_weights(weights, rewards.shape[-1])
    lengths = _check_lengths(lengths, batch_norm, rewards.shape)

    work = rewards.to(torch.float64)
    weight_tensor = torch.tensor(weight_values, dtype=torch.float64, device=rewards.device)
    length_tensor = None if lengths is None else lengths.to(device=rewards.device, dtype=torch.float64)
    advantages = ADVANTAGE_ESTIMATORS[method](
        work, weight_tensor, eps=eps, unbiased=unbiased, batch_norm=batch_norm, lengths=length_tensor
    )
    return advantages.to(rewards.dtype)
