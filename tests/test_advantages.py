"""Exact values, error handling, a slow loop reference and properties of gdpo.advantages."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdpo.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    group_normalize,
    groups_with_signal,
    register_advantage_estimator,
)

SQRT_HALF = 1 / math.sqrt(2)
METHODS = ("grpo", "grpo_no_std", "gdpo")


def adv(rows, method, **kw):
    """Advantages of one group given as a list of per-rollout reward tuples."""
    return compute_advantages(torch.tensor([rows], dtype=torch.float64), method, **kw)[0].tolist()


# --------------------------------------------------------------------------------------------------
# The paper's toy example (Figure 2), exact values, before the batch step
# --------------------------------------------------------------------------------------------------

TOY = {  # (rollout 1, rollout 2) -> expected advantages of rollout 2 for GRPO, GRPO w/o std, GDPO
    "totals (0,1)": ([(0, 0), (1, 0)], (SQRT_HALF, 0.5, SQRT_HALF)),
    "totals (0,2)": ([(0, 0), (1, 1)], (SQRT_HALF, 1.0, 2 * SQRT_HALF)),
    "totals (1,2)": ([(1, 0), (1, 1)], (SQRT_HALF, 0.5, SQRT_HALF)),
    "totals (0,0)": ([(0, 0), (0, 0)], (0.0, 0.0, 0.0)),
    "totals (1,1) same": ([(1, 0), (1, 0)], (0.0, 0.0, 0.0)),
    "totals (1,1) mixed": ([(1, 0), (0, 1)], (0.0, 0.0, 0.0)),
    "totals (2,2)": ([(1, 1), (1, 1)], (0.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("case", TOY)
@pytest.mark.parametrize("method_index", range(3))
def test_figure2_toy_values_exact(case, method_index):
    rows, expected = TOY[case]
    value = expected[method_index]
    got = adv(rows, METHODS[method_index], eps=0.0, batch_norm="none")
    assert got == pytest.approx([-value, value], abs=1e-12)


def test_figure2_toy_values_with_default_eps_to_four_decimals():
    assert [round(x, 4) for x in adv([(0, 0), (1, 1)], "gdpo", batch_norm="none")] == [-1.4142, 1.4142]
    assert [round(x, 4) for x in adv([(0, 0), (1, 1)], "grpo")] == [-0.7071, 0.7071]
    assert [round(x, 4) for x in adv([(0, 0), (1, 1)], "grpo_no_std")] == [-1.0, 1.0]


def test_gdpo_batch_step_on_figure2_batch():
    """All three non-trivial toy groups in one batch: pre-batch (∓a, ±a), (∓2a, ±2a), (∓a, ±a), a=1/√2.

    Batch mean 0; sample variance over 6 values = (4·0.5 + 2·2)/5 = 1.2, so Â = A/√1.2.
    """
    rewards = torch.tensor([[(0, 0), (1, 0)], [(0, 0), (1, 1)], [(1, 0), (1, 1)]], dtype=torch.float64)
    got = compute_advantages(rewards, "gdpo", eps=0.0)
    scale = 1 / math.sqrt(1.2)
    expected = torch.tensor([[-1, 1], [-2, 2], [-1, 1]], dtype=torch.float64) * SQRT_HALF * scale
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------------


def test_two_rewards_constant_sum_gives_zero_for_both():
    """docs/paper-notes.md §1.5: with two equal-weight rewards, r2 = c - r1 forces A2 = -A1."""
    rows = [(1, 0), (1, 0), (0, 1)]
    assert adv(rows, "gdpo", batch_norm="none") == [0.0, 0.0, 0.0]
    assert adv(rows, "grpo") == [0.0, 0.0, 0.0]


def test_three_rewards_constant_sum_still_carries_gdpo_signal():
    """Rewards (1,0,0), (0,1,0), (0,0,1), (1,0,0) all sum to 1: GRPO gives 0, GDPO ±(1 - √3/2)."""
    rows = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0)]
    d = 1 - math.sqrt(3) / 2  # 0.1339746
    assert adv(rows, "grpo") == [0.0, 0.0, 0.0, 0.0]
    assert adv(rows, "gdpo", eps=0.0, batch_norm="none") == pytest.approx([-d, d, d, -d], abs=1e-12)


def test_population_std_option():
    """Rewards 0 and 1: population std 0.5 gives ±1; sample std 1/√2 gives ±0.7071."""
    assert adv([(0,), (1,)], "grpo", eps=0.0, unbiased=False) == pytest.approx([-1.0, 1.0], abs=1e-12)
    assert adv([(0,), (1,)], "grpo", eps=0.0, unbiased=True) == pytest.approx(
        [-SQRT_HALF, SQRT_HALF], abs=1e-12
    )


def test_eps_is_added_to_std():
    got = adv([(0,), (1,)], "grpo", eps=0.1)
    assert got == pytest.approx([-0.5 / (SQRT_HALF + 0.1), 0.5 / (SQRT_HALF + 0.1)], abs=1e-12)


def test_gdpo_nan_component_left_out_of_its_group_statistics():
    """Component 1 over (1, 0, 1): mean 2/3, std 1/√3 -> (1/√3, -2/√3, 1/√3).
    Component 2 is NaN for rollout 1; over (1, 0): ±1/√2; rollout 1 gets 0 for it."""
    rows = [(1, math.nan), (0, 1), (1, 0)]
    got = adv(rows, "gdpo", eps=0.0, batch_norm="none")
    r3 = 1 / math.sqrt(3)
    assert got == pytest.approx([r3, -2 * r3 + SQRT_HALF, r3 - SQRT_HALF], abs=1e-12)


def test_grpo_counts_nan_as_zero_in_the_sum():
    assert adv([(1, math.nan), (0, 1)], "grpo") == [0.0, 0.0]  # sums 1 and 1
    assert adv([(math.nan,), (1,)], "grpo", eps=0.0) == pytest.approx([-SQRT_HALF, SQRT_HALF], abs=1e-12)
    assert adv([(math.nan,), (1,)], "grpo_no_std") == pytest.approx([-0.5, 0.5], abs=1e-12)


def test_gdpo_unscorable_rollout_gets_zero_and_stays_out_of_batch_statistics():
    """Group 0 = (0, 1, NaN) -> (-1/√2, +1/√2, 0); group 1 = (1, 0, 0) -> (2/√3, -1/√3, -1/√3).
    Batch over the 5 scorable rollouts: mean 0, sample var (0.5+0.5+4/3+1/3+1/3)/4 = 3/4.
    (Counting the unscorable rollout as 0 would give var 3/5 instead.)"""
    rewards = torch.tensor([[(0.0,), (1.0,), (math.nan,)], [(1.0,), (0.0,), (0.0,)]], dtype=torch.float64)
    got = compute_advantages(rewards, "gdpo", eps=0.0)
    std = math.sqrt(0.75)
    r3 = 1 / math.sqrt(3)
    expected = [[-SQRT_HALF / std, SQRT_HALF / std, 0.0], [2 * r3 / std, -r3 / std, -r3 / std]]
    assert got.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def test_all_nan_group_gives_zeros_for_every_method():
    rewards = torch.full((2, 3, 2), math.nan)
    rewards[1] = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    for method in METHODS:
        got = compute_advantages(rewards, method)
        assert not torch.isnan(got).any(), method
        assert got[0].tolist() == [0.0, 0.0, 0.0], method


def test_gdpo_weights_multiply_normalised_components():
    """(0,0) vs (1,1): each component ±1/√2; weights (2, 1) -> ±3/√2 before the batch step."""
    got = adv([(0, 0), (1, 1)], "gdpo", weights=[2.0, 1.0], eps=0.0, batch_norm="none")
    assert got == pytest.approx([-3 * SQRT_HALF, 3 * SQRT_HALF], abs=1e-12)


def test_grpo_weights_multiply_raw_rewards():
    """(1,0) vs (0,1) with weights (2, 1): sums 2 and 1 -> ±1/√2 (GRPO); ±0.5 (w/o std)."""
    assert adv([(1, 0), (0, 1)], "grpo", weights=[2, 1], eps=0.0) == pytest.approx(
        [SQRT_HALF, -SQRT_HALF], abs=1e-12
    )
    assert adv([(1, 0), (0, 1)], "grpo_no_std", weights=[2, 1]) == pytest.approx([0.5, -0.5], abs=1e-12)


def test_gdpo_uniform_weight_scale_cancels_in_batch_step():
    rewards = torch.rand(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = compute_advantages(rewards, "gdpo", weights=[1, 1, 1], eps=0.0)
    b = compute_advantages(rewards, "gdpo", weights=[3, 3, 3], eps=0.0)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_group_of_size_one_gives_zero():
    rewards = torch.tensor([[[1.0, 0.5]], [[0.0, 0.25]], [[1.0, 1.0]]])  # B=3, G=1, K=2
    for method in METHODS:
        assert compute_advantages(rewards, method).tolist() == [[0.0], [0.0], [0.0]], method


def test_constant_non_representable_reward_gives_exact_zero():
    """ToolRL-style 6·k/S − 3 values are not exact in float32; x − mean would leave residue that
    (residue)/(std + 1e-6) turns into |A| up to ~0.19 (docs/paper-notes.md §5.2). We must give exactly 0."""
    value = 6 * 5 / 7 - 3
    for g in (4, 8, 16):
        rewards = torch.full((1, g, 2), value, dtype=torch.float32)
        rewards[0, :, 1] = torch.tensor([i % 2 for i in range(g)], dtype=torch.float32)
        pre = compute_advantages(rewards[..., :1], "gdpo", batch_norm="none")
        assert pre.eq(0).all(), g
        grpo = compute_advantages(rewards[..., :1], "grpo")
        assert grpo.eq(0).all(), g


def test_gdpo_zero_variance_decided_per_component_not_on_sum():
    """Groups whose *sum* is constant but whose components vary keep their GDPO signal (3 rewards)."""
    rewards = torch.tensor(
        [[(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0)], [(1, 1, 1), (0, 0, 0), (1, 1, 1), (0, 0, 0)]]
    )
    got = compute_advantages(rewards.double(), "gdpo", batch_norm="none", eps=0.0)
    # Group 0, by hand (N-1 std): component 1 [1,0,0,1] -> ±√3/2; components 2 and 3 -> 1.5 / -0.5.
    d = 1 - math.sqrt(3) / 2
    assert got[0].tolist() == pytest.approx([-d, d, d, -d], abs=1e-12)
    # Group 1: every component [1,0,1,0] -> ±√3/2 each, three of them.
    h = 3 * math.sqrt(3) / 2
    assert got[1].tolist() == pytest.approx([h, -h, h, -h], abs=1e-12)


def test_batch_step_of_a_constant_batch_is_zero_not_a_blow_up():
    rewards = torch.tensor([[(1.0, 0.0), (1.0, 0.0)], [(0.3, 0.7), (0.3, 0.7)]])
    assert compute_advantages(rewards, "gdpo").eq(0).all()


def test_token_weighted_batch_step_matches_peers_worked_example():
    """docs/paper-notes.md §5.5: group A (1, 0) at 10 and 100 tokens, group B (1, 1) at 50 and 50.
    Per sequence: (+1.2247, −1.2247, 0, 0); token-weighted: (+2.4437, −0.9775, +0.7331, +0.7331)."""
    rewards = torch.tensor([[(1.0,), (0.0,)], [(1.0,), (1.0,)]], dtype=torch.float64)
    lengths = torch.tensor([[10, 100], [50, 50]])
    seq = compute_advantages(rewards, "gdpo", eps=0.0)
    tok = compute_advantages(rewards, "gdpo", eps=0.0, batch_norm="token", lengths=lengths)
    r15 = math.sqrt(1.5)
    assert seq.flatten().tolist() == pytest.approx([r15, -r15, 0, 0], abs=1e-12)
    assert tok.flatten().tolist() == pytest.approx(
        [2.443650664769531, -0.9774602659078123, 0.7330951994308592, 0.7330951994308592], abs=1e-12
    )


def test_batch_norm_none_returns_weighted_sum_of_group_z_scores():
    """(0,0), (1,2), (2,1): component z-scores (N-1) [-1, 0, 1] and [-1, 1, 0]; weights (0.5, 2)."""
    got = adv([(0, 0), (1, 2), (2, 1)], "gdpo", weights=[0.5, 2.0], eps=0.0, batch_norm="none")
    assert got == pytest.approx([-2.5, 2.0, 0.5], abs=1e-12)
    # With eps, each z-score is divided by (std + eps): here std = 1.
    eps = adv([(0, 0), (1, 2), (2, 1)], "gdpo", weights=[0.5, 2.0], eps=1e-3, batch_norm="none")
    assert eps == pytest.approx([-2.5 / 1.001, 2.0 / 1.001, 0.5 / 1.001], abs=1e-12)


def test_output_dtype_follows_input():
    rewards = torch.tensor([[(0.0, 1.0), (1.0, 1.0)]])
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert compute_advantages(rewards.to(dtype), "gdpo").dtype == dtype


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": [[[1.0]]]}, "torch.Tensor"),
        ({"rewards": torch.ones(2, 2, 1, dtype=torch.int64)}, "floating-point"),
        ({"rewards": torch.ones(2, 2)}, r"shape \[B, G, K\]"),
        ({"rewards": torch.ones(0, 2, 1)}, r"shape \[B, G, K\]"),
        ({"method": "ppo"}, "unknown advantage method 'ppo'"),
        ({"batch_norm": "group"}, "unknown batch_norm 'group'"),
        ({"weights": [1.0]}, "weights has 1 entries but rewards has 2"),
        ({"weights": [1.0, math.nan]}, r"weights\[1\] must be a finite number"),
        ({"weights": [1.0, "2"]}, r"weights\[1\] must be a finite number"),
        ({"batch_norm": "token"}, "needs lengths"),
        ({"batch_norm": "token", "lengths": torch.ones(3, 2)}, r"lengths must be a tensor of shape \(2, 2\)"),
        ({"batch_norm": "token", "lengths": -torch.ones(2, 2)}, "non-negative"),
        ({"eps": -1.0}, "eps must be >= 0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, message):
    args = {"rewards": torch.ones(2, 2, 2), "method": "gdpo", **kwargs}
    rewards, method = args.pop("rewards"), args.pop("method")
    with pytest.raises(ValueError, match=message):
        compute_advantages(rewards, method, **args)


def test_infinite_reward_is_reported_with_its_index():
    rewards = torch.zeros(2, 3, 2)
    rewards[1, 2, 0] = math.inf
    with pytest.raises(ValueError, match=r"rewards\[1, 2, 0\] is inf"):
        compute_advantages(rewards, "grpo")


def test_estimators_are_registered_by_name_and_names_are_unique():
    assert set(METHODS) <= set(ADVANTAGE_ESTIMATORS)

    @register_advantage_estimator("test_mean_only")
    def mean_only(rewards, weights, **_):
        return rewards.nansum(-1) - rewards.nansum(-1).mean(1, keepdim=True)

    try:
        got = compute_advantages(torch.tensor([[(0.0,), (2.0,)]]), "test_mean_only")
        assert got.tolist() == [[-1.0, 1.0]]
        with pytest.raises(ValueError, match="already registered"):
            register_advantage_estimator("test_mean_only")(mean_only)
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_mean_only")


# --------------------------------------------------------------------------------------------------
# A slow reference written independently with Python lists, and agreement on random inputs
# --------------------------------------------------------------------------------------------------


def _zscore(values: list[float], eps: float, unbiased: bool, scale: bool = True) -> list[float]:
    """Group z-score of a list with None for missing; constant or <2 valid values give 0."""
    valid = [v for v in values if v is not None]
    if len(valid) < 2 or max(valid) == min(valid):
        return [0.0] * len(values)
    mean = statistics.fmean(valid)
    std = statistics.stdev(valid) if unbiased else statistics.pstdev(valid)
    return [0.0 if v is None else ((v - mean) / (std + eps) if scale else v - mean) for v in values]


def reference_advantages(
    rewards, method, weights=None, eps=1e-6, unbiased=True, batch_norm="sequence", lengths=None
):
    r = rewards.double().tolist()
    b_size, g_size, k_size = len(r), len(r[0]), len(r[0][0])
    w = weights or [1.0] * k_size
    nan = math.isnan
    out = []
    for b in range(b_size):
        if method in ("grpo", "grpo_no_std"):
            sums = [sum(wk * (0.0 if nan(x) else x) for wk, x in zip(w, r[b][g])) for g in range(g_size)]
            out.append(_zscore(sums, eps, unbiased, scale=method == "grpo"))
        else:
            total = [0.0] * g_size
            for k in range(k_size):
                z = _zscore([None if nan(r[b][g][k]) else r[b][g][k] for g in range(g_size)], eps, unbiased)
                total = [t + w[k] * zi for t, zi in zip(total, z)]
            out.append(total)
    if method == "gdpo" and batch_norm != "none":
        flat, weight = [], []
        for b in range(b_size):
            for g in range(g_size):
                scorable = any(not nan(x) for x in r[b][g])
                n = (float(lengths[b][g]) if batch_norm == "token" else 1.0) if scorable else 0.0
                flat.append(out[b][g])
                weight.append(n)
        included = [a for a, n in zip(flat, weight) if n > 0]
        if len(included) < 2 or max(included) == min(included):
            normed = [0.0] * len(flat)
        else:
            total_w = sum(weight)
            mean = sum(a * n for a, n in zip(flat, weight)) / total_w
            var = sum(n * (a - mean) ** 2 for a, n in zip(flat, weight)) / (total_w - (1 if unbiased else 0))
            normed = [(a - mean) / (math.sqrt(var) + eps) if n > 0 else 0.0 for a, n in zip(flat, weight)]
        out = [normed[b * g_size : (b + 1) * g_size] for b in range(b_size)]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("method", METHODS)
def test_vectorised_matches_loop_reference_on_random_inputs(seed, method):
    gen = torch.Generator().manual_seed(seed)
    b, g, k = (int(x) for x in torch.randint(1, 6, (3,), generator=gen))
    # A mix of binary, discrete and continuous rewards with some NaN, so constant groups occur.
    kind = seed % 3
    if kind == 0:
        rewards = torch.randint(0, 2, (b, g, k), generator=gen).double()
    elif kind == 1:
        rewards = torch.randint(-3, 4, (b, g, k), generator=gen).double() / 7
    else:
        rewards = torch.randn(b, g, k, generator=gen, dtype=torch.float64)
    rewards[torch.rand(b, g, k, generator=gen) < 0.15] = math.nan
    weights = (torch.rand(k, generator=gen) * 2).tolist()
    lengths = torch.randint(1, 50, (b, g), generator=gen)
    for unbiased in (True, False):
        for batch_norm in ("sequence", "token", "none"):
            kw = dict(weights=weights, eps=1e-6, unbiased=unbiased, batch_norm=batch_norm, lengths=lengths)
            got = compute_advantages(rewards, method, **kw)
            expected = reference_advantages(rewards, method, **kw)
            torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# Properties (hypothesis)
# --------------------------------------------------------------------------------------------------


@st.composite
def reward_tensors(draw, min_g=1, allow_nan=True):
    b = draw(st.integers(1, 4))
    g = draw(st.integers(min_g, 6))
    k = draw(st.integers(1, 4))
    values = st.one_of(
        st.sampled_from([0.0, 1.0]),
        st.floats(-3, 3, allow_nan=False, width=32),
        *([st.just(math.nan)] if allow_nan else []),
    )
    flat = draw(st.lists(values, min_size=b * g * k, max_size=b * g * k))
    return torch.tensor(flat, dtype=torch.float64).reshape(b, g, k)


@settings(max_examples=150, deadline=None)
@given(reward_tensors())
def test_gdpo_component_advantages_sum_to_zero_in_every_group(rewards):
    z = group_normalize(rewards, eps=1e-6, unbiased=True)
    torch.testing.assert_close(z.sum(1), torch.zeros_like(z.sum(1)), atol=1e-9, rtol=0)
    pre = compute_advantages(rewards, "gdpo", batch_norm="none")
    torch.testing.assert_close(pre.sum(1), torch.zeros_like(pre.sum(1)), atol=1e-9, rtol=0)


@settings(max_examples=300, deadline=None)
@given(reward_tensors(), st.lists(st.sampled_from([1.0, 0.0, 0.5, 2.0, -1.0]), min_size=4, max_size=4))
def test_each_signal_test_agrees_with_its_methods_group_advantages(rewards, weight_pool):
    """A group "has signal" exactly when its method's group step gives it a non-zero advantage, NaNs, zero and
    negative weights included."""
    weights = weight_pool[: rewards.shape[-1]]
    grpo = compute_advantages(rewards, "grpo_no_std", weights=weights)
    gdpo = compute_advantages(rewards, "gdpo", weights=weights, batch_norm="none", eps=0.0)
    assert groups_with_signal(rewards, weights, "weighted_sum").tolist() == grpo.ne(0).any(1).tolist()
    assert groups_with_signal(rewards, weights, "any_component").tolist() == gdpo.ne(0).any(1).tolist()


@settings(max_examples=150, deadline=None)
@given(reward_tensors(), st.sampled_from(METHODS), st.sampled_from(["sequence", "none"]), st.randoms())
def test_permuting_rollouts_permutes_advantages(rewards, method, batch_norm, rnd):
    perms = [
        torch.tensor(rnd.sample(range(rewards.shape[1]), rewards.shape[1])) for _ in range(rewards.shape[0])
    ]
    permuted = torch.stack([rewards[b, p] for b, p in enumerate(perms)])
    a = compute_advantages(rewards, method, batch_norm=batch_norm)
    a_perm = compute_advantages(permuted, method, batch_norm=batch_norm)
    expected = torch.stack([a[b, p] for b, p in enumerate(perms)])
    torch.testing.assert_close(a_perm, expected, atol=1e-9, rtol=1e-9)


@settings(max_examples=150, deadline=None)
@given(reward_tensors(), st.integers(0, 3), st.floats(0.01, 100), st.sampled_from(["sequence", "none"]))
def test_scaling_one_component_leaves_gdpo_unchanged(rewards, k, scale, batch_norm):
    k = k % rewards.shape[-1]
    scaled = rewards.clone()
    scaled[..., k] *= scale
    a = compute_advantages(rewards, "gdpo", eps=0.0, batch_norm=batch_norm)
    b = compute_advantages(scaled, "gdpo", eps=0.0, batch_norm=batch_norm)
    torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-7)


def test_scaling_one_component_changes_grpo_but_not_gdpo():
    rewards = torch.tensor([[(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]])
    scaled = rewards.clone()
    scaled[..., 1] *= 3.0  # sums (1, 1, 2) become (1, 3, 4)
    assert not torch.allclose(compute_advantages(rewards, "grpo"), compute_advantages(scaled, "grpo"))
    torch.testing.assert_close(compute_advantages(rewards, "gdpo"), compute_advantages(scaled, "gdpo"))


@settings(max_examples=100, deadline=None)
@given(reward_tensors(), st.sampled_from(METHODS), st.sampled_from(["sequence", "token", "none"]))
def test_no_nan_ever_leaks(rewards, method, batch_norm):
    lengths = torch.arange(1, rewards.shape[0] * rewards.shape[1] + 1).reshape(rewards.shape[:2])
    got = compute_advantages(rewards, method, batch_norm=batch_norm, lengths=lengths)
    assert torch.isfinite(got).all()


@settings(max_examples=100, deadline=None)
@given(reward_tensors(min_g=2, allow_nan=False))
def test_gdpo_sequence_batch_step_has_zero_mean_and_unit_std(rewards):
    a = compute_advantages(rewards, "gdpo", eps=0.0)
    if groups_with_signal(rewards, [1.0] * rewards.shape[-1], "any_component").any():
        assert a.mean().item() == pytest.approx(0.0, abs=1e-9)
        assert a.std().item() == pytest.approx(1.0, abs=1e-9)
    else:  # no group carries signal: exactly zero, not a blow-up of float residue
        assert a.eq(0).all()


# --------------------------------------------------------------------------------------------------
# CUDA (runs where a GPU is present)
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (64, 8, 3), generator=gen).float()
    rewards[0, 0, 0] = math.nan
    lengths = torch.randint(1, 100, (64, 8), generator=gen)
    for batch_norm in ("sequence", "token"):
        cpu = compute_advantages(rewards, method, batch_norm=batch_norm, lengths=lengths)
        gpu = compute_advantages(rewards.cuda(), method, batch_norm=batch_norm, lengths=lengths.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu)


def test_groups_with_signal_per_component_and_on_the_sum():
    from gdpo.advantages import groups_with_signal

    nan = float("nan")
    rewards = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # both components vary, the sums tie: they cancel, no signal either way
            [[1.0, 1.0], [1.0, 1.0]],  # nothing varies
            [[1.0, 0.0], [0.0, 0.0]],  # the first component varies and so does the sum
            [[1.0, nan], [1.0, 0.0]],  # NaN is left out: the second component has one value, no signal
        ]
    )
    assert groups_with_signal(rewards, [1.0, 1.0], "any_component").tolist() == [False, False, True, False]
    assert groups_with_signal(rewards, [1.0, 1.0], "weighted_sum").tolist() == [False, False, True, False]
    # With weights (1, 2) the first group's sums differ (1 vs 2) and its z-scores no longer cancel.
    assert groups_with_signal(rewards, [1.0, 2.0], "weighted_sum").tolist() == [True, False, True, False]
    assert groups_with_signal(rewards, [1.0, 2.0], "any_component").tolist() == [True, False, True, False]
    # A component with weight 0 teaches nothing, however it varies.
    assert groups_with_signal(rewards, [0.0, 1.0], "any_component").tolist() == [True, False, False, False]
    # Three rewards with a tied sum (docs/paper-notes.md §1.5): GDPO's view has signal, GRPO's has none.
    three = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    assert groups_with_signal(three, [1.0, 1.0, 1.0], "any_component").tolist() == [True]
    assert groups_with_signal(three, [1.0, 1.0, 1.0], "weighted_sum").tolist() == [False]
    # A rollout with every component NaN: GRPO's sum counts it 0, so (0 vs 1) carries GRPO signal; GDPO leaves it
    # out of every component, which then has one value: no signal. Each test agrees with its method.
    lost = torch.tensor([[[nan, nan], [1.0, 0.0]]])
    assert groups_with_signal(lost, [1.0, 1.0], "weighted_sum").tolist() == [True]
    assert compute_advantages(lost, "grpo").abs().min().item() > 0
    assert groups_with_signal(lost, [1.0, 1.0], "any_component").tolist() == [False]
    assert compute_advantages(lost, "gdpo").eq(0).all()
    with pytest.raises(ValueError, match="unknown signal test 'sum'"):
        groups_with_signal(rewards, [1.0, 1.0], "sum")


def test_gdpo_components_that_cancel_with_different_spreads_give_zero():
    """Format 1/0 vs correctness -3/+3, equal weights: z-scores cancel exactly (docs/paper-notes.md §1.5), but
    with std + eps they differ by about 1e-6. The batch step must not scale that residue up when the batch has no
    other signal (it gave +-0.64 while the cancellation test used the eps z-scores)."""
    from gdpo.advantages import groups_with_signal

    rewards = torch.tensor(
        [
            [[1.0, -3.0], [1.0, -3.0], [0.0, 3.0], [0.0, 3.0]],
            [[1.0, 3.0]] * 4,
        ]
    )
    for batch_norm in ("none", "sequence"):
        adv = compute_advantages(rewards, "gdpo", weights=[1.0, 1.0], batch_norm=batch_norm)
        assert adv.tolist() == [[0.0] * 4] * 2, batch_norm
    assert groups_with_signal(rewards, [1.0, 1.0], "any_component").tolist() == [False, False]
    # Unequal weights do not cancel: z = +-0.866 per component, 0.866 * (1 - 0.5) = 0.433 before the batch step.
    adv = compute_advantages(rewards, "gdpo", weights=[1.0, 0.5], batch_norm="none")
    assert adv[0].tolist() == pytest.approx([0.433013, 0.433013, -0.433013, -0.433013], abs=1e-5)
    assert groups_with_signal(rewards, [1.0, 0.5], "any_component").tolist() == [True, False]
