"""The trainer benchmark's clock of the time spent inside the model (``bench.bench_trainer.ModelClock``)."""

from __future__ import annotations

import torch

import gdpo.rollout
import gdpo.trainer
from bench.bench_trainer import NEW_TOKENS, run_ours


def test_model_clock_counts_each_steps_forwards_and_backward_and_stays_inside_the_step():
    patched = (gdpo.trainer.load_policy, gdpo.rollout.HFRollout.generate, torch.autograd.backward)
    out = run_ours(2)
    # Random init: every completion runs to the limit. One prefill, then one forward per new token but the
    # last; the update runs the shared prompt pass and the completion pass, then one backward.
    assert (
        out["model_calls"] == [{"forward_generate_s": NEW_TOKENS, "forward_update_s": 2, "backward_s": 1}] * 2
    )
    for seconds, step_s, generate_s in zip(out["model"], out["step_s"], out["generate_s"]):
        assert all(value > 0 for value in seconds.values())
        assert seconds["forward_generate_s"] < generate_s
        assert sum(seconds.values()) < step_s
    assert (gdpo.trainer.load_policy, gdpo.rollout.HFRollout.generate, torch.autograd.backward) == patched
