"""Reward composition: named components, weights, the paper's Eq. 8 conditioning, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gdpo.advantages import compute_advantages
from gdpo.rewards import RewardComponent, RewardError, RewardSet, condition_reward


def correct(rollout):
    return 1.0 if rollout["completion"].strip().endswith("42") else 0.0


def short(rollout, limit=5):
    return 1.0 if rollout["num_tokens"] <= limit else 0.0


def math_rewards(**extra) -> RewardSet:
    """Correctness + length conditioned on correctness (the paper's R~_length), weights 1 and 0.5."""
    return RewardSet(
        [
            RewardComponent("correct", correct),
            RewardComponent("length", short, weight=0.5, condition_on="correct", threshold=1.0, **extra),
        ]
    )


GROUPS = [
    [
        {"completion": "so 42", "num_tokens": 3},  # correct, short
        {"completion": "so 41", "num_tokens": 3},  # wrong, short -> conditioned length 0
        {"completion": "long ... 42", "num_tokens": 9},  # correct, long
        {"completion": "long ... 7", "num_tokens": 9},  # wrong, long
    ],
    [
        {"completion": "42", "num_tokens": 1},
        {"completion": "42", "num_tokens": 2},
        {"completion": "0", "num_tokens": 8},
        {"completion": "0", "num_tokens": 1},
    ],
]


def test_condition_reward_eq8_values():
    reward = torch.tensor([1.0, 1.0, 0.0, math.nan, 1.0])
    cond = torch.tensor([1.0, 0.0, 1.0, 1.0, math.nan])
    got = condition_reward(reward, cond, threshold=1.0)
    assert got[:3].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(got[3].item())  # a reward that does not apply stays NaN
    assert got[4].item() == 0.0  # a missing condition is not met
    assert condition_reward(
        torch.tensor([0.7, 0.7]), torch.tensor([0.5, 0.49]), 0.5
    ).tolist() == pytest.approx([0.7, 0.0])


def test_score_builds_raw_and_conditioned_tensors():
    scored = math_rewards().score(GROUPS)
    assert scored.names == ("correct", "length")
    assert scored.weights == (1.0, 0.5)
    assert scored.raw.shape == (2, 4, 2)
    assert scored.raw[0].tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]
    assert scored.rewards[0].tolist() == [[1, 1], [0, 0], [1, 0], [0, 0]]
    assert scored.rewards[1].tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]
    assert scored.weighted_sum()[0].tolist() == [1.5, 0.0, 1.0, 0.0]


def test_scored_batch_feeds_the_advantage_estimators():
    scored = math_rewards().score(GROUPS)
    adv = compute_advantages(scored.rewards, "gdpo", weights=scored.weights, batch_norm="none", eps=0.0)
    # Group 0: correct (1,0,1,0) -> ±√3/2; length (1,0,0,0) -> (1.5, -.5, -.5, -.5); weight 0.5 on length.
    a = math.sqrt(3) / 2
    assert adv[0].tolist() == pytest.approx([a + 0.75, -a - 0.25, a - 0.25, -a - 0.25], abs=1e-6)


def test_none_means_does_not_apply():
    rs = RewardSet([RewardComponent("bonus", lambda r: None if r["skip"] else 1.0)])
    scored = rs.score([[{"skip": True}, {"skip": False}]])
    assert math.isnan(scored.raw[0, 0, 0].item()) and scored.raw[0, 1, 0].item() == 1.0
    assert scored.weighted_sum().tolist() == [[0.0, 1.0]]


def test_numpy_and_int_values_are_accepted():
    rs = RewardSet([RewardComponent("a", lambda r: np.float32(0.25)), RewardComponent("b", lambda r: 2)])
    assert rs.score([[{}]]).raw.tolist() == [[[0.25, 2.0]]]


def test_with_weights_replaces_by_name():
    rs = math_rewards().with_weights({"length": 0.25})
    assert rs.weights == (1.0, 0.25)
    assert rs.components[1].condition_on == "correct"
    with pytest.raises(ValueError, match=r"unknown reward components \['lenght'\]"):
        math_rewards().with_weights({"lenght": 0.25})


def test_reward_function_errors_name_component_and_rollout():
    def broken(rollout):
        return 1.0 / rollout["num_tokens"]

    rs = RewardSet([RewardComponent("inverse", broken)])
    with pytest.raises(RewardError, match=r"'inverse' on rollout 1 of prompt 0 raised ZeroDivisionError"):
        rs.score([[{"num_tokens": 2}, {"num_tokens": 0}]])
    with pytest.raises(RewardError, match=r"'text' on rollout 0 of prompt 0 returned 'yes'"):
        RewardSet([RewardComponent("text", lambda r: "yes")]).score([[{}]])
    with pytest.raises(RewardError, match=r"returned inf"):
        RewardSet([RewardComponent("big", lambda r: math.inf)]).score([[{}]])
    with pytest.raises(RewardError, match=r"returned True"):
        RewardSet([RewardComponent("flag", lambda r: True)]).score([[{}]])


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ([], "at least one component"),
        (
            [RewardComponent("a", correct), RewardComponent("a", short)],
            r"duplicate reward component names: \['a'\]",
        ),
        ([RewardComponent("a", correct, condition_on="b")], "conditioned on unknown component 'b'"),
        ([RewardComponent("a", correct, condition_on="a")], "cannot be conditioned on itself"),
        ([RewardComponent("a", correct, weight=math.nan)], "weight must be finite"),
    ],
)
def test_invalid_reward_sets_are_rejected(components, message):
    with pytest.raises(ValueError, match=message):
        RewardSet(components)


def test_groups_must_have_equal_sizes():
    with pytest.raises(ValueError, match=r"equal-size non-empty groups, got sizes \[1, 2\]"):
        math_rewards().score([[GROUPS[0][0]], GROUPS[0][:2]])
