"""The memory plan (gdpo.plan): parameter counts against transformers models, every memory item against hand
arithmetic for a small Qwen2 model, the command line's exit codes, and the paper presets on 8 x 80 GiB."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from gdpo.config import TrainConfig, load_config
from gdpo.plan import (
    CUDA_CONTEXT_BYTES,
    GIB,
    MODEL_TABLE,
    VLLM_ASLEEP_BYTES,
    activation_bytes,
    activation_bytes_per_token_layer,
    main,
    make_plan,
    model_shape,
    parameter_count,
    rollout_batch_bytes,
    shape_from_hf_config,
)

from .conftest import REPO

PAPER_PRESETS = sorted(REPO.glob("experiments/*/configs/paper-*.yaml"))

# The small model of the hand-worked cases: Qwen2 layout (q/k/v biases), GQA 4 heads / 2 kv heads, untied.
SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=256,
    tie_word_embeddings=False,
)
# embeddings 256*64 = 16384; per layer: q 64*64 + 64, k and v 64*32 + 32 each, o 64*64 -> 12416; MLP 3*64*128
# = 24576; two norms 128 -> 37120 per layer; 2 layers 74240; final norm 64; LM head 16384.
SMALL_PARAMS = 16384 + 2 * 37120 + 64 + 16384  # 107072


def built_count(config) -> int:
    """Parameters of the transformers model built from ``config`` (on the meta device: no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config",
    [
        Qwen2Config(**SMALL),
        Qwen2Config(**{**SMALL, "tie_word_embeddings": True}),
        LlamaConfig(**{**SMALL, "attention_bias": True}),
        LlamaConfig(**{**SMALL, "num_key_value_heads": 4, "tie_word_embeddings": True}),
        Qwen3Config(**{**SMALL, "head_dim": 32}),
        Qwen3Config(**{**SMALL, "head_dim": 32, "attention_bias": True, "tie_word_embeddings": True}),
    ],
    ids=["qwen2", "qwen2-tied", "llama-bias", "llama-mha-tied", "qwen3-head-dim", "qwen3-bias-tied"],
)
def test_parameter_count_equals_the_built_model(config):
    assert parameter_count(shape_from_hf_config(config)) == built_count(config)


def test_parameter_count_of_the_small_model_by_hand():
    assert parameter_count(shape_from_hf_config(Qwen2Config(**SMALL))) == SMALL_PARAMS == 107072


def _table_config(shape):
    kwargs = dict(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        tie_word_embeddings=shape.tied_embeddings,
    )
    if shape.qk_norm:
        return Qwen3Config(head_dim=shape.head_dim, **kwargs)
    return Qwen2Config(**kwargs) if shape.qkv_bias else LlamaConfig(head_dim=shape.head_dim, **kwargs)


# Totals of the hub models (their model cards round them: 1.54B, 3.09B, 1.78B, 7.62B, 4.0B, 135M).
HUB_TOTALS = {
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1_777_088_000,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7_615_616_512,
    "Qwen/Qwen3-4B-Instruct-2507": 4_022_468_096,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008,
}


@pytest.mark.parametrize("name", sorted(MODEL_TABLE))
def test_table_models_count_as_transformers_builds_them(name):
    shape = MODEL_TABLE[name]
    assert parameter_count(shape) == built_count(_table_config(shape)) == HUB_TOTALS[name]


def test_every_paper_model_is_in_the_table():
    for preset in PAPER_PRESETS:
        cfg = load_config(TrainConfig, preset)
        assert cfg.model.name_or_path in MODEL_TABLE, preset


def test_activation_bytes_per_token_and_layer_by_hand():
    shape = shape_from_hf_config(Qwen2Config(**SMALL))
    # fp32 norm inputs 2*4*64 = 512; bf16: 2*(2*64 + 2*64 + 2*32 + 4*128) = 1664; SDPA output 2*64 + lse 4*4 = 144
    assert activation_bytes_per_token_layer(shape, 2, "sdpa", 48) == 2320
    # eager: the fp32 softmax + its bf16 copy, 4 heads x 48 keys x 6 bytes = 1152, instead of the 144
    assert activation_bytes_per_token_layer(shape, 2, "eager", 48) == 512 + 1664 + 1152
    # fp32 training: every model-dtype tensor in 4 bytes
    assert activation_bytes_per_token_layer(shape, 4, "sdpa", 48) == 512 + 3328 + 256 + 16
    qwen3 = shape_from_hf_config(Qwen3Config(**{**SMALL, "head_dim": 32}))  # q = 128, kv = 64 wide
    # 512 + 2*(128 + 256 + 128 + 512) + 2*128 + 16, + q/k norm inputs in fp32 4*(128 + 64)
    assert activation_bytes_per_token_layer(qwen3, 2, "sdpa", 48) == 512 + 2048 + 272 + 768


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-qwen2")
    Qwen2Config(**SMALL).save_pretrained(folder)
    return folder


def small_cfg(folder, *extra):
    """prompt 32 + completion 16 = 48 tokens; 4 prompts x 2 rollouts on 2 GPUs: 4 rows per GPU, micro 2."""
    return load_config(
        TrainConfig,
        None,
        [
            f"model.name_or_path={folder}",
            "model.dtype=bfloat16",
            "optim.precision=bf16",
            "rollout.max_prompt_tokens=32",
            "rollout.max_new_tokens=16",
            "rollout.num_rollouts=2",
            "data.prompts_per_step=4",
            "optim.micro_batch_size=2",
            "optim.logprob_chunk_tokens=8",
            *extra,
        ],
    )


def rows(plan) -> dict[str, tuple]:
    """Counted items by name (without their details in brackets): (generation, update) bytes."""
    return {r.name.split(" (")[0]: (r.generation, r.update) for r in plan.rows if r.counted}


P = SMALL_PARAMS
# 2 x 48 tokens: layer inputs (bf16) + one layer + final norm (4h + 2h); SDPA's bool padding mask 2 x 48 x 48
ACT_CKPT = 96 * (2 * 2 * 64 + 2320 + 384) + 2 * 48 * 48
ACT_FULL = 96 * (2 * 2320 + 384) + 2 * 48 * 48
LOGPROB = 8 * 256 * (2 + 4 * 4) + 32 * (16 * 4 + 2 * 64)  # chunk 8 x vocab; 2 x 16 completion tokens
ROLLOUTS = 4 * (48 * 16 + 16 * (1 + 4))  # 4 rows: ids + mask int64, completion mask, sample log-probs
HF_GENERATION = 4 * 48 * (2 * 2 * 2 * 16 * 2) + 4 * 256 * 8 + 2 * 32 * 2320  # KV cache, logits, prefill


@pytest.mark.parametrize(
    "stage, params, grads, optimizer, gathered, bucket",
    [
        (0, 2 * P, 2 * P, 12 * P, 0, 0),
        (1, 2 * P, 2 * P, 12 * P // 2, 0, 2 * P),
        (2, 2 * P, P, 12 * P // 2, 0, 2 * P),
        (3, P, P, 12 * P // 2, 2 * 2 * 37120, 2 * P),  # gathered: 2 x the largest module (a layer) in bf16
    ],
)
def test_zero_stages_by_hand(small_model, stage, params, grads, optimizer, gathered, bucket):
    plan = make_plan(
        small_cfg(small_model, f"optim.zero_stage={stage}"), model_shape(small_cfg(small_model)), 2, 1
    )
    r = rows(plan)
    assert r["parameters"] == (params, params)
    assert r["gradients"] == (grads, grads)
    assert r["optimizer states"] == (optimizer, optimizer)
    assert r.get("ZeRO-3 gathered parameters", (None, 0))[1] == gathered
    assert r.get("DeepSpeed reduce bucket", (None, 0))[1] == bucket
    resident = params + grads + optimizer + ROLLOUTS + CUDA_CONTEXT_BYTES
    assert plan.generation == resident + HF_GENERATION + gathered  # ZeRO-3 gathers in generation too
    assert plan.update == resident + gathered + bucket + ACT_FULL + LOGPROB


def test_gradient_checkpointing_by_hand(small_model):
    shape = model_shape(small_cfg(small_model))
    off = make_plan(small_cfg(small_model), shape, 2, 1)
    on = make_plan(small_cfg(small_model, "model.gradient_checkpointing=true"), shape, 2, 1)
    assert rows(off)["activations, no checkpointing"] == (None, ACT_FULL)
    assert rows(on)["activations, gradient checkpointing"] == (None, ACT_CKPT)
    assert off.update - on.update == ACT_FULL - ACT_CKPT == 198144


def test_eager_attention_keeps_the_s2_terms_by_hand(small_model):
    cfg = small_cfg(small_model, "model.attn_implementation=eager")
    per_layer = 512 + 1664 + 4 * 48 * 6  # the softmax in fp32 and bf16 instead of SDPA's output and lse
    mask = 2 * 48 * 48 * 2  # transformers' additive mask in the model dtype
    assert activation_bytes(cfg, model_shape(cfg), 2) == (
        96 * (2 * 2 * 64 + per_layer + 384) + mask,
        96 * (2 * per_layer + 384) + mask,
    )


def test_rollout_batch_with_old_logprobs_and_dynamic_sampling_by_hand(small_model):
    from gdpo.trainer import plan_layout

    cfg = small_cfg(
        small_model,
        "algorithm.num_iterations=2",  # more than one update: the old log-probs are kept
        "algorithm.dynamic_sampling=any_component",
        "algorithm.max_sampling_rounds=3",
    )
    # 48 x 16 (ids + mask) + 16 x (1 + 4 + 4), 4 rows per GPU, 3 rounds
    assert rollout_batch_bytes(cfg, plan_layout(cfg, 2)) == 3 * 4 * (48 * 16 + 16 * 9) == 10944


def test_the_tiny_model_is_planned_from_its_settings():
    cfg = load_config(TrainConfig, REPO / "experiments/math/configs/tiny.yaml")
    t = cfg.model.tiny
    built = LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        tie_word_embeddings=True,
    )  # as gdpo.tiny builds it (its tokenizer has at most vocab_size tokens)
    assert parameter_count(model_shape(cfg)) == built_count(built)


def test_offload_moves_optimizer_states_to_host(small_model):
    cfg = small_cfg(small_model, "optim.zero_stage=2", "optim.offload_optimizer=true")
    plan = make_plan(cfg, model_shape(cfg), 2, 1)
    assert rows(plan)["optimizer states"] == (0, 0)
    assert f"host memory for this GPU's optimizer states: {12 * P // 2 / GIB:.2f} GiB" in plan.notes


@pytest.mark.parametrize(
    "stage, dtype, reference",
    [
        (0, "bfloat16", 2 * P),  # a full copy on every GPU
        (3, "bfloat16", P),  # partitioned over the 2 GPUs
        (0, "float32", 4 * P),  # loaded in model.dtype
        (3, "float32", P),  # a DeepSpeed engine: bf16 like the policy, partitioned
    ],
)
def test_kl_adds_the_reference_model_by_hand(small_model, stage, dtype, reference):
    base = small_cfg(small_model, f"optim.zero_stage={stage}", f"model.dtype={dtype}")
    with_kl = small_cfg(
        small_model, f"optim.zero_stage={stage}", f"model.dtype={dtype}", "algorithm.kl_coef=0.1"
    )
    without, kl = make_plan(base, model_shape(base), 2, 1), make_plan(with_kl, model_shape(base), 2, 1)
    assert rows(kl)["reference model"] == (reference, reference)
    more_rollouts = 4 * 16 * 4  # the reference log-probs, fp32 per completion token of 4 rows
    assert kl.generation - without.generation == reference + more_rollouts
    assert kl.update - without.update == reference + more_rollouts


@pytest.mark.parametrize("sleep, asleep", [("true", VLLM_ASLEEP_BYTES), ("false", GIB // 4)])
def test_vllm_phases_with_and_without_sleep(small_model, sleep, asleep):
    cfg = small_cfg(
        small_model,
        "optim.zero_stage=2",
        "rollout.backend=vllm",
        "rollout.vllm_gpu_memory_utilization=0.25",
        f"rollout.vllm_sleep={sleep}",
    )
    plan = make_plan(cfg, model_shape(cfg), 2, 1)
    assert rows(plan)["vLLM engine"] == (GIB // 4, asleep)  # 0.25 x 1 GiB while generating
    resident = 2 * P + P + 6 * P + ROLLOUTS + CUDA_CONTEXT_BYTES
    assert plan.generation == resident + GIB // 4
    assert plan.update == resident + 2 * P + ACT_FULL + LOGPROB + asleep
    kv_tokens = (GIB // 4 - 2 * P) // 256  # 2 x 2 layers x 2 kv heads x 16 x 2 bytes per token
    assert any(f"= {kv_tokens:,} tokens (one sequence: 48)" in note for note in plan.notes)


def test_vllm_kv_cache_gib_and_a_cache_too_small_for_one_sequence(small_model):
    cfg = small_cfg(small_model, "rollout.backend=vllm", "rollout.vllm_kv_cache_gib=0.5")
    plan = make_plan(cfg, model_shape(cfg), 2, 1)
    assert rows(plan)["vLLM engine"][0] == 2 * P + GIB // 2
    tiny_fraction = small_cfg(
        small_model, "rollout.backend=vllm", "rollout.vllm_gpu_memory_utilization=0.0002"
    )
    plan = make_plan(tiny_fraction, model_shape(cfg), 2, 1)  # 214,748 bytes: the weights (214,144) + 2 tokens
    assert plan.problems and "holds 2 tokens, less than one sequence of 48" in plan.problems[0]
    assert not plan.fits


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_paper_preset_fits_8_gpus_of_80_gib(capsys, preset):
    code, out, _ = run_cli(capsys, "--config", str(preset))
    assert "gpus: 8 (default for paper-* presets" in out
    assert re.search(r"^activations, no checkpointing \(not used\) +\(\d+\.\d\d\)$", out, re.M)
    assert out.splitlines()[-1].startswith("plan: fits (peak ") and out.splitlines()[-1].endswith(
        " GiB of 80)"
    )
    assert code == 0


def test_exit_one_when_it_does_not_fit_and_the_default_for_other_presets():
    preset = REPO / "experiments/math/configs/paper-r1-7b.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "gdpo.plan", "--config", str(preset), "--gpus", "1", "--gpu-memory-gib", "40"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("plan: does not fit (peak ") and last.endswith(" GiB of 40)")


def test_overrides_and_the_default_gpu_count_of_other_presets(capsys):
    code, out, _ = run_cli(
        capsys, "--config", str(REPO / "experiments/toy/configs/tiny.yaml"), "optim.zero_stage=1"
    )
    assert code == 0
    assert "gpus: 1 (default for presets other than paper-*)" in out
    assert "training: ZeRO-1" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gpus", "0"], "error: --gpus must be a finite number > 0 (got '0')"),
        (["--gpus", "two"], "error: --gpus must be a positive integer (got 'two')"),
        (["--gpu-memory-gib", "-8"], "error: --gpu-memory-gib must be a finite number > 0 (got '-8')"),
        (["--gpu-memory-gib", "inf"], "error: --gpu-memory-gib must be a finite number > 0 (got 'inf')"),
        (["model.name_or_path=org/unknown-7b"], "error: model.name_or_path 'org/unknown-7b' is unknown"),
        (
            ["--gpus", "3"],
            "error: data.prompts_per_step=512 must be divisible by the number of processes (3)",
        ),
        (["optim.offload_optimizer=true", "optim.zero_stage=0"], "offload_optimizer"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_two(capsys, argv, message):
    code, out, err = run_cli(
        capsys, "--config", str(REPO / "experiments/math/configs/paper-r1-7b.yaml"), *argv
    )
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_in_reward_kl_loads_the_reference_model_for_the_methods_it_applies_to(capsys):
    from gdpo.plan import main

    config = str(REPO / "experiments/tool_calling/configs/paper-qwen2.5-1.5b-verl-grpo.yaml")
    assert main(["--config", config]) == 0
    assert "KL on (reference model)" in capsys.readouterr().out
    assert main(["--config", config, "algorithm.method=gdpo"]) == 0  # GDPO ignores the in-reward KL
    assert "KL off" in capsys.readouterr().out
