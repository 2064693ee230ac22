"""Loss pieces: clipped surrogate, KL estimators and aggregations, with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from gdpo.losses import aggregate, kl_penalty, policy_loss, token_logprobs


def _lp(ratio):
    return torch.tensor([[math.log(r) for r in ratio]], dtype=torch.float64)


def test_clipped_surrogate_values():
    old = torch.zeros(1, 4, dtype=torch.float64)
    # Ratios 0.5, 0.9, 1.1, 1.5 with A = +1: loss = max(-r, -clip(r, 0.8, 1.2)) = (-0.5, -0.9, -1.1, -1.2).
    loss, low, high = policy_loss(
        _lp([0.5, 0.9, 1.1, 1.5]), old, torch.tensor([1.0], dtype=torch.float64), clip_low=0.2, clip_high=0.2
    )
    assert loss.tolist()[0] == pytest.approx([-0.5, -0.9, -1.1, -1.2])
    assert high.tolist()[0] == [False, False, False, True] and not low.any()
    # A = -1: loss = max(r, clip(r)) = (0.8, 0.9, 1.1, 1.5).
    loss, low, high = policy_loss(
        _lp([0.5, 0.9, 1.1, 1.5]), old, torch.tensor([-1.0], dtype=torch.float64), clip_low=0.2, clip_high=0.2
    )
    assert loss.tolist()[0] == pytest.approx([0.8, 0.9, 1.1, 1.5])
    assert low.tolist()[0] == [True, False, False, False] and not high.any()


def test_clip_higher_only_widens_the_upper_side():
    old = torch.zeros(1, 2, dtype=torch.float64)
    loss, _, high = policy_loss(
        _lp([1.25, 1.4]), old, torch.tensor([2.0], dtype=torch.float64), clip_low=0.2, clip_high=0.28
    )
    assert loss.tolist()[0] == pytest.approx([-2.5, -2.56])
    assert high.tolist()[0] == [False, True]


def test_gradient_is_zero_where_clipped():
    logp = _lp([1.5, 1.0]).requires_grad_(True)
    loss, _, _ = policy_loss(
        logp,
        torch.zeros(1, 2, dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        clip_low=0.2,
        clip_high=0.2,
    )
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -1.0])  # d(-r)/dlogp = -r = -1 at r = 1


def test_kl_estimators_at_log_ratio_log2():
    logp = torch.tensor([math.log(2.0)])
    ref = torch.tensor([0.0])
    d = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + d - 1)  # exp(-d) + d - 1
    assert kl_penalty(logp, ref, "mse").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="unknown kl_estimator 'k2'"):
        kl_penalty(logp, ref, "k2")


def test_entropy_of_uniform_and_peaked():
    """Rows of an identity head: uniform over 4 tokens (log 4), all mass on one (0), uniform over 3 of 4 with the
    4th forbidden (log 3: the forbidden token has no probability and adds nothing, not NaN)."""
    hidden = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e9, -1e9, -1e9], [0.0, 0.0, 0.0, 0.0]])
    options = {"temperature": 1.0, "chunk_tokens": 2, "with_entropy": True}
    _, entropy = token_logprobs(
        hidden, lambda h: h, torch.zeros(3, dtype=torch.long), forbidden=None, **options
    )
    assert entropy[:2].tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
    hidden.requires_grad_(True)
    _, entropy = token_logprobs(hidden, lambda h: h, torch.zeros(3, dtype=torch.long), forbidden=3, **options)
    assert entropy[2].item() == pytest.approx(math.log(3), abs=1e-6)
    entropy.sum().backward()
    assert torch.isfinite(hidden.grad).all()


VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("seq_mean_token_mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # 3.0
        ("token_mean", (1 + 2 + 3 + 4) / 4),  # 2.5
        ("seq_mean_token_sum_norm", (1 + 2 + 3 + 4) / (4 * 2)),  # 1.25, max_tokens = 4
    ],
)
def test_aggregations(mode, expected):
    got = aggregate(VALUES, MASK, mode, num_tokens=4, num_sequences=2, max_tokens=4)
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_sum_to_the_mini_batch_loss(mode):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(8, 6, generator=gen)
    mask = torch.rand(8, 6, generator=gen) > 0.3
    mask[:, 0] = True
    norm = {"num_tokens": int(mask.sum()), "num_sequences": 8, "max_tokens": 6}
    whole = aggregate(values, mask, mode, **norm)
    parts = sum(aggregate(values[i : i + 3], mask[i : i + 3], mode, **norm) for i in range(0, 8, 3))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_a_fully_masked_sequence_still_counts_in_the_sequence_mean():
    """rollout.mask_truncated masks every token of a truncated sequence: it adds 0 and still counts among the
    sequences (TRL's behaviour; verl's seq-mean-token-mean would leave it out and give 2.0 here)."""
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    mask = torch.tensor([[True, True], [False, False]])
    norm = {"num_tokens": 2, "num_sequences": 2, "max_tokens": 2}
    assert aggregate(values, mask, "seq_mean_token_mean", **norm).item() == 1.0  # (2 + 0) / 2
    assert aggregate(values, mask, "token_mean", **norm).item() == 2.0  # its tokens are simply absent
    assert aggregate(values, mask, "seq_mean_token_sum_norm", **norm).item() == 1.0  # 4 / (2 * 2)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="unknown loss_agg 'sum'"):
        aggregate(VALUES, MASK, "sum", num_tokens=4, num_sequences=2, max_tokens=4)


def test_dual_clip_caps_the_loss_of_negative_advantages():
    """A = -1: ratio 4 gives max(4, 1.2) = 4 capped at c = 3 (no gradient); ratio 2 stays 2. A = +1 is untouched."""
    ratio = torch.tensor([[4.0, 2.0], [4.0, 0.5]])
    logprobs = torch.log(ratio).requires_grad_(True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([-1.0, 1.0])
    loss, low, high = policy_loss(logprobs, old, adv, clip_low=0.2, clip_high=0.2, clip_ratio_c=3.0)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0], [-1.2, -0.5]]))
    assert high.tolist() == [[True, False], [True, False]] and low.tolist() == [[False, False], [False, False]]
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 2.0], [0.0, -0.5]]))
    plain, _, plain_high = policy_loss(torch.log(ratio), old, adv, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(plain, torch.tensor([[4.0, 2.0], [-1.2, -0.5]]))
    assert plain_high.tolist() == [[False, False], [True, False]]
