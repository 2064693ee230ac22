"""Diagnostics of advantage collapse: the paper's Figure 3 counts and per-step training metrics.

``count_distinct_advantage_groups`` answers the paper's Figure 3 question: with G rollouts and n
binary rewards, how many distinct advantage patterns can a group take? It enumerates every multiset
of G binary reward vectors (a group up to the order of its rollouts), computes each group's
advantages with :func:`gdpo.advantages.compute_advantages` (before GDPO's batch step, which is one
affine map per batch and so cannot change the count), sorts them, and counts distinct sorted vectors.

Both the advantage vector and its sorted form are invariant to permuting rollouts (rows) and, for
every method here, to permuting reward components (columns). The set of patterns is therefore the
same whether one enumerates multisets of rows or multisets of columns; we enumerate whichever is
smaller (rows for G=16, n=2: 969 groups; columns for G=4, n=8: 490,314 groups).
"""

from __future__ import annotations

import itertools
import math

import torch

from gdpo.advantages import compute_advantages, is_constant

__all__ = [
    "advantage_diagnostics",
    "count_distinct_advantage_groups",
    "enumerate_binary_groups",
    "num_binary_groups",
]

# Advantages are compared after rounding to this resolution (the paper's counts are identical at 1e-6).
_ROUND = 1e-9
_CHUNK = 65_536


def _binary_vectors(length: int) -> torch.Tensor:
    """All 2**length binary vectors of the given length, as a float64 tensor [2**length, length]."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=length)), dtype=torch.float64)


def num_binary_groups(num_rollouts: int, num_rewards: int) -> int:
    """Number of groups up to permutation: min of the row-multiset and column-multiset counts."""
    by_rows = math.comb(2**num_rewards + num_rollouts - 1, num_rollouts)
    by_cols = math.comb(2**num_rollouts + num_rewards - 1, num_rewards)
    return min(by_rows, by_cols)


def enumerate_binary_groups(num_rollouts: int, num_rewards: int, by: str | None = None):
    """Yield chunks ``[M, G, n]`` covering every group of binary rewards up to permutation.

    ``by="rows"`` enumerates multisets of G reward vectors, ``by="columns"`` multisets of n reward
    columns; the default picks the smaller of the two.
    """
    by_rows = math.comb(2**num_rewards + num_rollouts - 1, num_rollouts)
    by_cols = math.comb(2**num_rollouts + num_rewards - 1, num_rewards)
    by = by or ("rows" if by_rows <= by_cols else "columns")
    if by == "rows":
        types, size, transpose = _binary_vectors(num_rewards), num_rollouts, False
    elif by == "columns":
        types, size, transpose = _binary_vectors(num_rollouts), num_rewards, True
    else:
        raise ValueError(f'by must be "rows", "columns" or None, got {by!r}')
    combos = itertools.combinations_with_replacement(range(len(types)), size)
    while chunk := list(itertools.islice(combos, _CHUNK)):
        groups = types[torch.tensor(chunk)]  # [M, size, len]
        yield groups.transpose(1, 2) if transpose else groups


def count_distinct_advantage_groups(
    num_rollouts: int, num_rewards: int, method: str, *, unbiased: bool = True, by: str | None = None
) -> int:
    """Count the distinct advantage patterns of G=num_rollouts rollouts with n=num_rewards binary rewards.

    Reproduces the paper's Figure 3 (every value in docs/paper-notes.md §3). Zero-variance rewards (and,
    for GRPO, a zero-variance sum) give zero advantages, as in every official implementation.
    """
    if num_rollouts < 1 or num_rewards < 1:
        raise ValueError(f"need num_rollouts >= 1 and num_rewards >= 1, got {num_rollouts}, {num_rewards}")
    seen: set[bytes] = set()
    for groups in enumerate_binary_groups(num_rollouts, num_rewards, by):
        # eps=0: the count is a property of the exact formulas; with eps > 0, 0.5/(0.7071+eps) and
        # 1/(1.4142+eps) differ by ~5e-7 and would count as two patterns. Zero-variance groups are
        # caught by exact equality, so eps=0 never divides by zero.
        adv = compute_advantages(groups, method, eps=0.0, unbiased=unbiased, batch_norm="none")
        keys = torch.round(adv.sort(dim=1).values / _ROUND).to(torch.int64)
        keys = torch.unique(keys, dim=0)
        seen.update(row.numpy().tobytes() for row in keys)
    return len(seen)


def advantage_diagnostics(
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    names: list[str] | None = None,
    *,
    weights: list[float] | None = None,
    resolution: float = 1e-6,
) -> dict[str, float]:
    """Per-step metrics of the reward signal and the advantages, for the training log.

    Args:
        rewards: ``[B, G, K]`` per-component rewards (NaN = does not apply).
        advantages: ``[B, G]`` advantages computed from them.
        names: component names (default ``r0, r1, ...``).
        weights: component weights for the summed reward (default all 1).
        resolution: advantages closer than this count as one value.

    Returns a flat dict: for each component ``reward/<name>/{mean,std,min,max}`` and
    ``reward/<name>/zero_std_frac`` (share of groups in which that component is constant among its
    valid rollouts, i.e. carries no signal); ``reward/sum/zero_std_frac`` for the weighted sum (the
    quantity GRPO sees); ``adv/{mean,std,min,max}``, ``adv/distinct_values`` and ``adv/zero_frac``.
    """
    b, g, k = rewards.shape
    if advantages.shape != (b, g):
        raise ValueError(f"advantages must have shape {(b, g)}, got {tuple(advantages.shape)}")
    names = names or [f"r{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"names has {len(names)} entries but rewards has {k} components")
    r = rewards.detach().to(torch.float64).cpu()
    a = advantages.detach().to(torch.float64).cpu()
    valid = ~torch.isnan(r)
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        values = r[..., i][valid[..., i]]
        if values.numel():
            out[f"reward/{name}/mean"] = values.mean().item()
            out[f"reward/{name}/std"] = values.std(correction=0).item()
            out[f"reward/{name}/min"] = values.min().item()
            out[f"reward/{name}/max"] = values.max().item()
        out[f"reward/{name}/zero_std_frac"] = _zero_std_fraction(r[..., i], valid[..., i])
    w = torch.tensor(weights if weights is not None else [1.0] * k, dtype=torch.float64)
    total = (torch.where(valid, r, torch.zeros_like(r)) * w).sum(-1)
    out["reward/sum/zero_std_frac"] = _zero_std_fraction(total, torch.ones_like(total, dtype=torch.bool))
    out["adv/mean"] = a.mean().item()
    out["adv/std"] = a.std(correction=0).item()
    out["adv/min"] = a.min().item()
    out["adv/max"] = a.max().item()
    out["adv/distinct_values"] = float(torch.unique(torch.round(a / resolution)).numel())
    out["adv/zero_frac"] = (a == 0).double().mean().item()
    return out


def _zero_std_fraction(x: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of groups (rows of ``x [B, G]``) whose valid entries are all equal or fewer than two."""
    return is_constant(x, valid, dim=1).double().mean().item()
