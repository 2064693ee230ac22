"""The paper's Figure 3 counts and the per-step diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from gdpo.advantages import compute_advantages
from gdpo.diagnostics import (
    advantage_diagnostics,
    count_distinct_advantage_groups,
    enumerate_binary_groups,
    num_binary_groups,
)

# docs/paper-notes.md §3, both panels, every value (plotted ones read from the figure, the rest enumerated).
FIG3_ROLLOUTS = {  # two binary rewards, G = 2..16
    "grpo": [2, 4, 7, 11, 16, 22, 29, 37, 46, 56, 67, 79, 92, 106, 121],
    "grpo_no_std": [3, 6, 10, 15, 21, 28, 36, 45, 55, 66, 78, 91, 105, 120, 136],
    "gdpo": [3, 6, 14, 26, 38, 59, 81, 109, 145, 186, 230, 288, 350, 419, 497],
}
FIG3_REWARDS = {  # G = 4, n = 2..8 binary rewards
    "grpo": [7, 14, 23, 41, 56, 89, 119],
    "grpo_no_std": [10, 20, 35, 56, 84, 120, 165],
    "gdpo": [14, 45, 127, 318, 722, 1507, 2929],
}


@pytest.mark.parametrize("method", FIG3_ROLLOUTS)
def test_figure3_left_panel_two_rewards(method):
    assert [count_distinct_advantage_groups(g, 2, method) for g in range(2, 17)] == FIG3_ROLLOUTS[method]


@pytest.mark.parametrize("method", FIG3_REWARDS)
def test_figure3_right_panel_four_rollouts(method):
    assert [count_distinct_advantage_groups(4, n, method) for n in range(2, 9)] == FIG3_REWARDS[method]


def test_two_reward_closed_forms():
    for g in range(2, 13):
        assert count_distinct_advantage_groups(g, 2, "grpo") == 1 + g * (g - 1) // 2
        assert count_distinct_advantage_groups(g, 2, "grpo_no_std") == g * (g + 1) // 2


@pytest.mark.parametrize("method", FIG3_ROLLOUTS)
def test_std_estimator_does_not_change_counts(method):
    for g, n in [(3, 2), (6, 2), (9, 2), (4, 3), (4, 4), (5, 3)]:
        assert count_distinct_advantage_groups(
            g, n, method, unbiased=False
        ) == count_distinct_advantage_groups(g, n, method, unbiased=True)


def test_enumeration_sizes_and_coverage():
    assert num_binary_groups(16, 2) == 969  # multisets of 16 rows from 4 types
    assert num_binary_groups(4, 8) == 490_314  # multisets of 8 columns from 16 types
    assert sum(len(c) for c in enumerate_binary_groups(16, 2)) == 969
    assert sum(len(c) for c in enumerate_binary_groups(4, 8)) == 490_314
    assert next(enumerate_binary_groups(4, 8)).shape[1:] == (4, 8)


@pytest.mark.parametrize("method", FIG3_ROLLOUTS)
def test_row_and_column_enumerations_give_the_same_counts(method):
    """The patterns are invariant to permuting rollouts and components, so both enumerations agree."""
    for g, n in [(2, 2), (3, 2), (3, 3), (4, 2), (4, 3), (3, 4), (5, 2), (2, 5)]:
        rows = count_distinct_advantage_groups(g, n, method, by="rows")
        assert count_distinct_advantage_groups(g, n, method, by="columns") == rows, (g, n)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="num_rollouts >= 1"):
        count_distinct_advantage_groups(0, 2, "gdpo")
    with pytest.raises(ValueError, match="by must be"):
        count_distinct_advantage_groups(2, 2, "gdpo", by="diagonal")


def test_advantage_diagnostics_on_a_crafted_batch():
    # Group 0: correctness varies, format constant; group 1: both vary; group 2: both constant.
    rewards = torch.tensor(
        [
            [(1.0, 1.0), (0.0, 1.0), (0.0, 1.0), (1.0, 1.0)],
            [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)],
            [(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)],
        ]
    )
    adv = compute_advantages(rewards, "gdpo")
    d = advantage_diagnostics(rewards, adv, ["correct", "format"])
    assert d["reward/correct/mean"] == pytest.approx(4 / 12)
    assert d["reward/format/mean"] == pytest.approx(6 / 12)
    assert d["reward/correct/min"] == 0.0 and d["reward/correct/max"] == 1.0
    assert d["reward/correct/std"] == pytest.approx(math.sqrt(4 / 12 * 8 / 12))
    assert d["reward/correct/zero_std_frac"] == pytest.approx(1 / 3)  # group 2 only
    assert d["reward/format/zero_std_frac"] == pytest.approx(2 / 3)  # groups 0 and 2
    # Sums: group 0 (2,1,1,2) varies; group 1 (1,1,2,0) varies; group 2 constant.
    assert d["reward/sum/zero_std_frac"] == pytest.approx(1 / 3)
    assert d["adv/zero_frac"] == pytest.approx(6 / 12)  # two in group 1, four in group 2
    # a = √3/2: group 0 (a,-a,-a,a); group 1 (0, 0, 2a, -2a); group 2 zeros -> {-2a,-a,0,a,2a}: 5 distinct.
    assert d["adv/distinct_values"] == 5.0
    assert d["adv/mean"] == pytest.approx(0.0, abs=1e-6)
    assert d["adv/max"] == pytest.approx(-d["adv/min"], abs=1e-6)


def test_advantage_diagnostics_handles_nan_and_checks_shapes():
    rewards = torch.tensor([[(1.0, math.nan), (0.0, math.nan)]])
    adv = compute_advantages(rewards, "gdpo")
    d = advantage_diagnostics(rewards, adv)
    assert "reward/r1/mean" not in d  # no valid value to summarise
    assert d["reward/r1/zero_std_frac"] == 1.0
    assert d["reward/r0/zero_std_frac"] == 0.0
    with pytest.raises(ValueError, match="advantages must have shape"):
        advantage_diagnostics(rewards, adv[:, :1])
    with pytest.raises(ValueError, match="names has 1 entries"):
        advantage_diagnostics(rewards, adv, ["only"])
