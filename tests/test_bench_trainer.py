"""The trainer benchmark's clock of the time spent inside the model (``bench.bench_trainer.ModelClock``)."""

from __future__ import annotations

import torch

import gdpo.rollout
import gdpo.trainer
from bench.bench_trainer import NEW_TOKENS, ModelClock, run_side


def _patch_points():
    return gdpo.trainer.load_policy, gdpo.rollout.HFRollout.generate, torch.autograd.backward


def test_model_clock_patches_only_inside_its_block():
    before = _patch_points()
    with ModelClock().installed():
        assert all(now is not then for now, then in zip(_patch_points(), before))
    assert _patch_points() == before


def test_model_clock_counts_each_steps_forwards_and_backward_and_stays_inside_the_step():
    # In a subprocess, as the benchmark runs it: a training run in the test process would leave its process
    # group (and RANK/MASTER_PORT in the environment) to the tests that launch runs after it.
    out = run_side("ours", 2)
    # Random init: every completion runs to the limit. One prefill, then one forward per new token but the
    # last; the update runs the shared prompt pass and the completion pass, then one backward.
    assert (
        out["model_calls"] == [{"forward_generate_s": NEW_TOKENS, "forward_update_s": 2, "backward_s": 1}] * 2
    )
    for seconds, step_s, generate_s in zip(out["model"], out["step_s"], out["generate_s"]):
        assert all(value > 0 for value in seconds.values())
        assert seconds["forward_generate_s"] < generate_s
        assert sum(seconds.values()) < step_s
