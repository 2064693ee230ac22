"""How ``VLLMRollout`` drives a vLLM engine, checked against a stand-in ``vllm.LLM`` that records every call.

vLLM's CPU backend has no sleep mode, so the GPU sequence (sleep level 2 on release; wake the weights, reload
them, wake the KV cache) is checked here, without vLLM; ``tests/test_vllm.py`` runs the real engine on CPU.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from gdpo.config import RolloutConfig
from gdpo.rollout import VLLMRollout


class RecordingLLM:
    """The public ``vllm.LLM`` methods the rollout uses; each call is appended to ``calls``."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.weights = kwargs, [], {}

    def sleep(self, level: int = 1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))
        return tags == ["kv_cache"]  # fully awake once the KV cache is back too

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.weights = {name: tensor.clone() for name, tensor in kwargs["weights_iterator"]}
        self.calls.append(("collective_rpc", method, kwargs["is_checkpoint_format"]))
        return [None]

    def apply_model(self, func):
        self.calls.append(("apply_model",))
        return [func(types.SimpleNamespace())]  # an engine model without a tied head: nothing to redo

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))
        return True


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = RecordingLLM
    monkeypatch.setitem(sys.modules, "vllm", module)


def _rollout(device: str, sleep: bool = True) -> VLLMRollout:
    cfg = RolloutConfig(backend="vllm", vllm_sleep=sleep, max_prompt_tokens=64, max_new_tokens=16)
    return VLLMRollout("some/model", None, cfg, dtype="bfloat16", seed=3, device=torch.device(device))


RELOAD = [("collective_rpc", "reload_weights", True), ("apply_model",)]


def test_on_gpu_release_sleeps_at_level_2_and_sync_wakes_weights_then_kv_cache(fake_vllm):
    rollout = _rollout("cuda")
    llm = rollout.llm
    assert llm.kwargs["enable_sleep_mode"] is True and "enforce_eager" not in llm.kwargs
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    policy = torch.nn.Linear(3, 2)
    rollout.sync_weights(policy)  # the first sync: the engine is awake, nothing to wake
    assert llm.calls == [*RELOAD, ("reset_prefix_cache",)]
    llm.calls.clear()
    rollout.release()
    assert llm.calls == [("sleep", 2)]
    with pytest.raises(RuntimeError, match=r"discarded its weights in release\(\): call sync_weights"):
        rollout.generate([[1, 2]], [0], 1)
    rollout.sync_weights(policy)
    assert llm.calls == [
        ("sleep", 2),
        ("wake_up", ["weights"]),
        *RELOAD,  # the weights are written only once their memory is back
        ("wake_up", ["kv_cache"]),
        ("reset_prefix_cache",),
    ]
    assert set(llm.weights) == {"weight", "bias"}
    assert torch.equal(llm.weights["weight"], policy.weight.detach())


def test_on_cpu_or_without_sleep_the_engine_never_sleeps(fake_vllm):
    for rollout in (_rollout("cpu"), _rollout("cuda", sleep=False)):
        llm = rollout.llm
        assert llm.kwargs["enable_sleep_mode"] is False
        rollout.release()
        rollout.sync_weights(torch.nn.Linear(2, 2))
        assert llm.calls == [*RELOAD, ("reset_prefix_cache",)]
    assert _rollout("cpu").llm.kwargs["enforce_eager"] is True
