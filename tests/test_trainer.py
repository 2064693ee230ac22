"""The trainer: batch layout, data order, LR schedule, and end-to-end runs of the toy task on the tiny model.

The end-to-end runs are subprocesses (each initialises DeepSpeed and a process group of its own):
an uninterrupted run; a run killed with SIGKILL and resumed, which must end with the same metrics; and a
2-process torchrun (gloo), which must compute the same step-1 advantages and gradient as 1 process.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gdpo.config import TrainConfig, load_config
from gdpo.runlog import read_jsonl
from gdpo.trainer import lr_lambda, plan_layout, prompt_seed, step_prompt_indices

from .conftest import REPO, TEST_OVERRIDES

CONFIG = REPO / "experiments/toy/configs/tiny.yaml"
SCRIPT = REPO / "experiments/toy/train.py"
RUN_ARGS = [
    *TEST_OVERRIDES,
    "steps=6",
    "logging.checkpoint_every=2",
    "logging.dump_rollouts=true",
    "logging.sample_every=3",
]
TIMING = ("time/", "throughput/")


def cfg_with(*overrides):
    return load_config(TrainConfig, CONFIG, list(overrides))


def test_layout_splits_whole_prompts_per_rank():
    layout = plan_layout(
        cfg_with(
            "data.prompts_per_step=8",
            "rollout.num_rollouts=4",
            "optim.micro_batch_size=8",
            "optim.mini_batches=2",
        ),
        world=2,
    )
    assert (layout.prompts_per_rank, layout.sequences_per_rank, layout.sequences_per_mini_batch) == (4, 16, 8)
    assert layout.grad_accumulation == 1
    with pytest.raises(ValueError, match="prompts_per_step=8 must be divisible by the number of processes"):
        plan_layout(cfg_with("data.prompts_per_step=8"), world=3)
    with pytest.raises(ValueError, match="optim.mini_batches=3 must divide"):
        plan_layout(cfg_with("optim.mini_batches=3"), world=1)
    with pytest.raises(ValueError, match="optim.micro_batch_size=12 must divide"):
        plan_layout(cfg_with("optim.micro_batch_size=12"), world=1)


def test_prompt_order_is_seeded_and_covers_each_epoch():
    first_epoch = [i for step in range(1, 11) for i in step_prompt_indices(80, 8, step, seed=0, shuffle=True)]
    assert sorted(first_epoch) == list(range(80))
    assert step_prompt_indices(80, 8, 3, 0, True) == step_prompt_indices(80, 8, 3, 0, True)
    assert step_prompt_indices(80, 8, 3, 0, True) != step_prompt_indices(80, 8, 3, 1, True)
    assert step_prompt_indices(10, 4, 3, 0, False) == [8, 9, 0, 1]  # wraps into the next epoch
    assert prompt_seed(0, 1, 0) != prompt_seed(0, 1, 1) != prompt_seed(0, 2, 0)


def test_each_rank_gets_its_own_gpu_before_nccl_starts(monkeypatch):
    """Without a GPU here: CUDA is faked, so the device choice and the call order are what is checked."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from gdpo import distributed
    from gdpo.trainer import pick_device

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(
        deepspeed, "init_distributed", lambda dist_backend: calls.append(("init", dist_backend))
    )
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    for key, value in {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "3",
        "MASTER_ADDR": "x",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    assert [pick_device(name) for name in ("auto", "cuda", "cuda:1")] == [
        torch.device("cuda", 3),
        torch.device("cuda", 3),
        torch.device("cuda", 1),
    ]
    assert distributed.init_distributed(pick_device("auto")) == (3, 4)
    assert calls == [("set_device", "cuda:3"), ("init", "nccl")]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # each rank sees only its own GPU
    assert pick_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 4 ranks on a node with 2 GPUs
    with pytest.raises(RuntimeError, match="LOCAL_RANK 3 but this process sees 2 GPUs"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")


def test_lr_schedules():
    cfg = cfg_with("optim.warmup_steps=2", "optim.lr_schedule=linear")
    f = lr_lambda(cfg, total_updates=10)
    assert [f(u) for u in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    f = lr_lambda(cfg_with("optim.lr_schedule=cosine"), total_updates=10)
    assert [f(u) for u in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_lambda(cfg_with(), 10)(7) == 1.0


def _run(args, env, run_dir, *, launcher=None):
    cmd = (launcher or [sys.executable]) + [
        str(SCRIPT),
        "--config",
        str(CONFIG),
        *RUN_ARGS,
        f"logging.run_dir={run_dir}",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _strip(row):
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, toy_model_dir):
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    result = _run(["logging.profile_steps=[2]"], env, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_run_folder_contents(full_run):
    metrics = read_jsonl(full_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for key in (
        "reward/correct/mean",
        "reward/format/zero_std_frac",
        "reward/sum/zero_std_frac",
        "adv/distinct_values",
        "adv/zero_frac",
        "loss",
        "kl",
        "entropy",
        "clip_frac/low",
        "clip_frac/high",
        "grad_norm",
        "lr",
        "completion/len_mean",
        "completion/truncated_frac",
        "time/generate_s",
        "time/score_s",
        "time/update_s",
        "throughput/rollout_tokens_per_s",
        "throughput/train_tokens_per_s",
    ):
        assert key in metrics[0], key
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in metrics)
    assert all(m["nonfinite/skipped"] == 0 and "memory/peak_gib" not in m for m in metrics)  # CPU: no peak
    # The hf sampler is the trained model itself, in fp32: its log-probs are the trainer's up to rounding.
    assert all(0 <= m["rollout/logprob_gap"] <= m["rollout/logprob_gap_max"] < 1e-4 for m in metrics)
    assert 0.0 < metrics[0]["reward/format/mean"] < 1.0  # the warm start leaves room to learn
    config = (full_run / "config.yaml").read_text()
    assert "method: gdpo" in config and "dump_rollouts: true" in config
    meta = json.loads((full_run / "metadata.json").read_text())
    assert (
        meta["packages"]["torch"].startswith("2.13") and meta["world_size"] == 1 and "commit" in meta["git"]
    )
    assert meta["overlong_prompts_dropped"] == 0
    samples = read_jsonl(full_run / "samples.jsonl")
    assert {s["step"] for s in samples} == {3, 6} and set(samples[0]["rewards"]) == {"correct", "format"}
    rollouts = read_jsonl(full_run / "rollouts.jsonl")
    assert (
        len(rollouts) == 6 and len(rollouts[0]["advantages"]) == 8 and len(rollouts[0]["advantages"][0]) == 8
    )
    # The logged advantages are GDPO's (the configured method) of the logged rewards, and with one on-policy
    # update (ratio 1) the sequence-mean policy loss is minus their mean: the wiring from config to loss.
    from gdpo.advantages import compute_advantages

    for row, m in zip(rollouts, metrics):
        nan = float("nan")
        rewards = torch.tensor([[[nan if v is None else v for v in g] for g in b] for b in row["rewards"]])
        expected = compute_advantages(rewards, "gdpo", lengths=torch.tensor(row["num_tokens"]))
        assert torch.equal(expected.float(), torch.tensor(row["advantages"]))
        assert m["pg_loss"] == pytest.approx(-expected.mean().item(), abs=1e-6)
        assert m["loss"] == pytest.approx(m["pg_loss"], abs=1e-7)  # no KL, no entropy bonus
    profile = json.loads((full_run / "profile/step2.json").read_text())  # logging.profile_steps=[2]
    assert profile["step"] == 2 and (full_run / "profile/step2.trace.json").exists()
    phases = profile["matmul_s_by_phase"]
    assert phases["generate"] > 0 and phases["update"] > 0
    # every product of a step falls in one of the two phases
    assert phases["generate"] + phases["update"] == pytest.approx(profile["matmul_s"], rel=1e-9)
    assert profile["matmul_s"] < profile["step_s"]
    assert (full_run / "checkpoints/latest").read_text() == "step_000006"
    assert sorted(p.name for p in (full_run / "checkpoints").glob("step_*")) == ["step_000004", "step_000006"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(full_run / "final_model").num_parameters() > 1_000_000


def test_existing_run_is_not_overwritten(full_run, subprocess_env):
    result = _run([], subprocess_env, full_run)
    assert result.returncode != 0
    assert "already holds a run; pass --resume" in result.stderr


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_and_the_resume_falls_back(full_run, tmp_path, subprocess_env):
    """Issue scenario: 4 KiB of random bytes in the newest checkpoint's model file. The resume names it, falls
    back to the intact step 4, records the fallback in its metadata, and ends with the uninterrupted run's
    metrics (a silent resume from the damaged file gave NaN losses and a non-finite model)."""
    import os
    import shutil

    run_dir = tmp_path / "damaged"
    shutil.copytree(full_run, run_dir)
    (model_file,) = (run_dir / "checkpoints" / "step_000006").rglob("mp_rank_00_model_states.pt")
    with open(model_file, "r+b") as f:
        f.seek(os.path.getsize(model_file) // 2)
        f.write(os.urandom(4096))
    result = _run(["--resume"], subprocess_env, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step_000006 is damaged" in result.stdout + result.stderr and "at step 4" in result.stdout
    (resume_meta,) = run_dir.glob("metadata.resume-*.json")
    meta = json.loads(resume_meta.read_text())
    assert meta["resumed_from_step"] == 4 and list(meta["skipped_checkpoints"]) == ["step_000006"]
    assert "mp_rank_00_model_states.pt" in meta["skipped_checkpoints"]["step_000006"]
    resumed, uninterrupted = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(full_run / "metrics.jsonl")
    assert [_strip(m) for m in resumed] == [_strip(m) for m in uninterrupted]


def test_resume_after_sigkill_gives_the_same_metrics(full_run, tmp_path, subprocess_env):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), "--config", str(CONFIG), *RUN_ARGS, f"logging.run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_jsonl(run_dir / "metrics.jsonl")) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint = int((run_dir / "checkpoints/latest").read_text().removeprefix("step_"))
    before_kill = read_jsonl(run_dir / "metrics.jsonl")
    killed_at = len(before_kill)
    assert killed_at < 6, "the run finished before it could be killed"
    assert 2 <= checkpoint <= killed_at

    result = _run(["--resume"], subprocess_env, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    # It continued from the checkpoint (a run started over would give the same final metrics too).
    assert f"resumed {run_dir} at step {checkpoint}" in result.stdout
    assert json.loads((run_dir / "metadata.json").read_text())["resumed_from_step"] == 0  # the first start's
    (resume_meta,) = run_dir.glob("metadata.resume-*.json")
    assert json.loads(resume_meta.read_text())["resumed_from_step"] == checkpoint
    resumed, uninterrupted = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(full_run / "metrics.jsonl")
    assert resumed[:checkpoint] == before_kill[:checkpoint]  # kept as written, timings included
    discarded = run_dir / "metrics.discarded.jsonl"
    moved = [r["step"] for r in read_jsonl(discarded)] if discarded.exists() else []
    assert moved == list(range(checkpoint + 1, killed_at + 1))
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]  # no duplicated or missing steps
    assert [_strip(m) for m in resumed] == [_strip(m) for m in uninterrupted]
    assert read_jsonl(run_dir / "rollouts.jsonl") == read_jsonl(full_run / "rollouts.jsonl")


def test_resuming_with_other_settings_is_an_error(full_run, subprocess_env):
    result = _run(["algorithm.method=grpo", "optim.lr=1e-3", "--resume"], subprocess_env, full_run)
    assert result.returncode != 0
    assert "was started with other settings for ['algorithm.method', 'optim.lr']" in result.stderr


def test_two_processes_give_the_same_advantages(full_run, tmp_path, subprocess_env):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run_dir = tmp_path / "ddp"
    result = _run(["steps=2"], subprocess_env, run_dir, launcher=torchrun)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_jsonl(full_run / "rollouts.jsonl"), read_jsonl(run_dir / "rollouts.jsonl")
    assert two[0]["rewards"] == one[0]["rewards"]
    flat = lambda rows: [x for row in rows for x in row]  # noqa: E731
    assert flat(two[0]["advantages"]) == pytest.approx(flat(one[0]["advantages"]), abs=1e-6)
    m1, m2 = read_jsonl(full_run / "metrics.jsonl")[0], read_jsonl(run_dir / "metrics.jsonl")[0]
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)  # the same global gradient
    assert json.loads((run_dir / "metadata.json").read_text())["world_size"] == 2


# The tiny model's matrices are below ZeRO-3's default persistence threshold (1e5 elements): without this
# override nothing would be partitioned and the gathering code paths would go untested.
ZERO3_PARTITION_ALL = "optim.deepspeed_config={zero_optimization: {stage3_param_persistence_threshold: 0}}"


def _assert_full_weights(final_model: Path, reference: Path) -> None:
    """Every tensor of the saved model has the reference model's shape (a ZeRO-3 placeholder has shape (0,))."""
    import torch
    from safetensors.torch import load_file

    saved, expected = load_file(final_model / "model.safetensors"), load_file(reference / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(torch.isfinite(v.float()).all() for v in saved.values())


def test_two_processes_under_zero3_finish_and_save_full_weights(tmp_path, subprocess_env, toy_model_dir):
    """ZeRO-3 over 2 ranks: every forward gathers parameters (a collective), so the ranks decode in step until
    all rows of both are done, and the final model is gathered from the partitions. The KL reference is a
    partitioned inference engine too: at step 1 the policy is the reference (KL 0), at step 2 it has moved."""
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run_dir = tmp_path / "zero3-ddp"
    result = _run(
        # Chunks of 5 tokens: the ranks' completions differ in length, and so would their number of chunks
        # (each call of the output head gathers its weight, a collective) unless they are made equal.
        [
            "steps=2",
            "optim.zero_stage=3",
            ZERO3_PARTITION_ALL,
            "algorithm.kl_coef=0.05",
            "optim.logprob_chunk_tokens=5",
        ],
        subprocess_env,
        run_dir,
        launcher=torchrun,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6) and metrics[1]["kl"] > 1e-6
    _assert_full_weights(run_dir / "final_model", toy_model_dir)


OPTION_RUNS = {
    "zero2-mu2-kl-entropy-token": [
        "optim.zero_stage=2",
        "algorithm.num_iterations=2",
        "optim.mini_batches=2",
        "optim.micro_batch_size=16",
        "algorithm.kl_coef=0.05",
        "algorithm.entropy_coef=0.01",
        "rollout.mask_truncated=true",
        "algorithm.loss_agg=token_mean",
        "optim.lr_schedule=cosine",
        "optim.warmup_steps=1",
        "algorithm.clip_high=0.28",
        "algorithm.batch_norm=token",
        "rollout.max_new_tokens=8",
        "optim.lr=1e-4",
    ],
    "zero3-bf16-grpo-no-std-checkpointing": [
        "optim.zero_stage=3",
        "optim.precision=bf16",
        "algorithm.method=grpo_no_std",
        "model.gradient_checkpointing=true",
        ZERO3_PARTITION_ALL,
    ],
    # One on-policy update per step: the logged loss must be the configured combination of its logged parts.
    "kl-entropy-one-update": [
        "algorithm.kl_coef=0.05",
        "algorithm.entropy_coef=0.01",
        "algorithm.loss_agg=token_mean",
        "logging.dump_rollouts=true",
        "optim.lr=1e-3",
    ],
    "zero2-offload": ["optim.zero_stage=2", "optim.offload_optimizer=true"],
    "dynamic-sampling": ["algorithm.dynamic_sampling=any_component", "algorithm.max_sampling_rounds=2"],
    "mini-batches-warmup": [
        "optim.mini_batches=2",
        "optim.lr=2e-2",
        "optim.warmup_steps=4",
        "optim.lr_schedule=constant",
    ],
}
SLOW_RUNS = {"zero2-offload"}  # DeepSpeedCPUAdam is JIT-compiled on first use (about a minute)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_RUNS else n for n in OPTION_RUNS]
)
def test_option_combinations_train(name, tmp_path, subprocess_env, toy_model_dir):
    run_dir = tmp_path / name
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(CONFIG),
        *TEST_OVERRIDES,
        "steps=2",
        f"logging.run_dir={run_dir}",
        *OPTION_RUNS[name],
    ]
    result = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    if name == "kl-entropy-one-update":
        for m, row in zip(metrics, read_jsonl(run_dir / "rollouts.jsonl")):
            assert m["loss"] == pytest.approx(m["pg_loss"] - 0.01 * m["entropy"] + 0.05 * m["kl"], rel=1e-5)
            adv, n = torch.tensor(row["advantages"]), torch.tensor(row["num_tokens"], dtype=torch.float32)
            assert m["pg_loss"] == pytest.approx(-(adv * n).sum().item() / n.sum().item(), abs=1e-6)
        assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples from the reference itself
        assert metrics[1]["kl"] > 1e-6
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["entropy"]) and m["entropy"] > 0
    if name == "zero2-mu2-kl-entropy-token":
        assert all(m["kl"] > 0 for m in metrics)  # the policy moves away from the frozen reference
        assert any(
            m["clip_frac/low"] + m["clip_frac/high"] > 0 for m in metrics
        )  # mu=2: the second pass clips
        assert 0 < metrics[0]["completion/truncated_frac"] < 1
    elif "kl_coef=0.05" not in " ".join(OPTION_RUNS[name]):
        assert all(m["kl"] == 0 for m in metrics)
    if name.startswith("zero3"):
        _assert_full_weights(run_dir / "final_model", toy_model_dir)
    if name == "mini-batches-warmup":
        # Two updates per step: the logged rate is the step's first update's (warmup 1/4, then 3/4 of 2e-2) ...
        assert [m["lr"] for m in metrics] == pytest.approx([5e-3, 1.5e-2])
        # ... and the second mini-batch is scored against the behaviour policy, so the clip can act.
        assert any(m["clip_frac/low"] + m["clip_frac/high"] > 0 for m in metrics)


@pytest.mark.parametrize(
    "override, field",
    [
        ("rollout.temperature=0", "rollout.temperature must be positive"),
        ("rollout.top_p=0", r"rollout.top_p must be in \(0, 1\]"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens must be a positive integer"),
        ("logging.keep_checkpoints=0", "logging.keep_checkpoints must be a positive integer"),
        ("optim.mini_batches=0", "optim.mini_batches must be a positive integer"),
    ],
)
def test_unusable_training_settings_are_errors_naming_the_field(override, field):
    """The schema's bounds refuse them when the config loads, before anything is built."""
    from gdpo.config import ConfigError, TrainConfig, load_config

    load_config(TrainConfig, CONFIG)  # the toy preset itself is fine
    with pytest.raises(ConfigError, match=field):
        load_config(TrainConfig, CONFIG, [override])


def test_chat_template_comes_from_the_config(tmp_path, toy_model_dir, toy_task):
    import torch

    from gdpo.rollout import encode_prompt
    from gdpo.trainer import load_policy

    messages = toy_task.train[0]["messages"]
    inline = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
    tokenizer, _ = load_policy(
        cfg_with(f"model.chat_template={json.dumps(inline)}"), str(toy_model_dir), torch.device("cpu")
    )
    assert tokenizer.decode(encode_prompt(tokenizer, messages)) == "Q: Add 7 and 1.\nA:"
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0]['content'] }} =")
    tokenizer, _ = load_policy(
        cfg_with(f"model.chat_template={path}"), str(toy_model_dir), torch.device("cpu")
    )
    assert tokenizer.decode(encode_prompt(tokenizer, messages)) == "Add 7 and 1. ="


def test_base_model_does_not_depend_on_the_rl_seed(toy_model_dir):
    """Every RL seed starts from the same base model (one warm start per task and model settings)."""
    from gdpo.trainer import prepare_model

    paths = {prepare_model(cfg_with(*TEST_OVERRIDES, f"seed={seed}")) for seed in (0, 1, 7)}
    assert paths == {str(toy_model_dir)}


class ScriptedBackend:
    """Completions decided by the prompt: ``Add a and b.`` gets the right sum from every rollout when ``a`` is
    even (a group without signal) and right/wrong alternately when ``a`` is odd."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def generate(self, prompt_ids, prompt_seeds, num_rollouts, greedy=False):
        from gdpo.rollout import pack_rollouts

        self.calls += 1
        rows, completions = [], []
        for ids in prompt_ids:
            a, b = (int(t) for t in self.tokenizer.decode(ids).split("Add ")[1].split(".")[0].split(" and "))
            for j in range(num_rollouts):
                total = a + b + (j % 2 if a % 2 else 0)
                rows.append(list(ids))
                completions.append(
                    self.tokenizer(f"<answer>{total}</answer>", add_special_tokens=False)["input_ids"]
                )
        n = len(rows)
        return pack_rollouts(
            self.tokenizer, rows, completions, [[-0.5] * len(c) for c in completions], [False] * n
        )


def _sample(toy_policy, toy_task, *overrides):
    from gdpo.rollout import encode_prompt
    from gdpo.trainer import sample_groups

    _, tokenizer = toy_policy
    cfg = cfg_with("data.prompts_per_step=4", "rollout.num_rollouts=4", *overrides)
    backend = ScriptedBackend(tokenizer)
    prompts = [encode_prompt(tokenizer, row["messages"]) for row in toy_task.train]
    out = sample_groups(
        cfg, 3, backend, tokenizer, prompts, toy_task, toy_task.rewards, 0, plan_layout(cfg, 1)
    )
    return cfg, backend, prompts, out


def test_dynamic_sampling_keeps_groups_with_signal(toy_policy, toy_task):
    _, off_backend, prompts, (ro_off, groups_off, scored_off, m_off) = _sample(toy_policy, toy_task)
    assert off_backend.calls == 1 and m_off["sampling/rounds"] == 1
    first_as = [int(g[0]["messages"][0]["content"].split()[1]) for g in groups_off]
    has_signal = [a % 2 == 1 for a in first_as]
    assert m_off["sampling/signal_frac"] == sum(has_signal) / 4

    _, backend, _, (ro, groups, scored, m) = _sample(
        toy_policy, toy_task, "algorithm.dynamic_sampling=any_component", "algorithm.max_sampling_rounds=6"
    )
    kept_as = [int(g[0]["messages"][0]["content"].split()[1]) for g in groups]
    assert all(a % 2 == 1 for a in kept_as)  # only groups whose correctness varies
    assert m["sampling/rounds"] == backend.calls > 1
    assert scored.rewards.shape == (4, 4, 2)
    assert scored.rewards[:, :, 0].tolist() == [[1.0, 0.0, 1.0, 0.0]] * 4  # correct, wrong, correct, wrong
    # The re-packed rollouts hold the kept groups' own tokens.
    assert ro.input_ids.shape[0] == 16 and len(ro.completions) == 16
    for i, group in enumerate(groups):
        for j, rollout in enumerate(group):
            assert ro.completions[i * 4 + j] == rollout["completion"]
            prompt = ro.input_ids[i * 4 + j, : ro.prompt_width][
                ro.attention_mask[i * 4 + j, : ro.prompt_width].bool()
            ]
            assert (
                prompt.tolist()
                == prompts[
                    toy_task.train.index(
                        {k: v for k, v in rollout.items() if k not in ("completion", "num_tokens")}
                    )
                ]
            )


def test_a_completion_holding_the_padding_token_is_an_error(toy_policy):
    from gdpo.rollout import forbidden_token, pack_rollouts
    from gdpo.trainer import check_no_forbidden_token

    _, tokenizer = toy_policy
    pad, eos = forbidden_token(tokenizer), tokenizer.eos_token_id
    assert pad is not None and pad != eos
    ok = pack_rollouts(tokenizer, [[5, 6], [7]], [[8, eos], [9]], [[0.0, 0.0], [0.0]], [False, True])
    check_no_forbidden_token(ok, pad)  # padding after a short completion is not a completion token
    bad = pack_rollouts(
        tokenizer, [[5, 6], [7]], [[8, eos], [9, pad]], [[0.0, 0.0], [0.0, 0.0]], [False, False]
    )
    with pytest.raises(ValueError, match=f"completion 1 of this step contains the padding token {pad}"):
        check_no_forbidden_token(bad, pad)


def _plain_update(toy_policy, advantages, *overrides):
    """One policy update of the tiny model on four scripted rollouts (two micro-batches), through the guard."""
    from gdpo.rollout import forbidden_token
    from gdpo.trainer import NonFiniteGuard, policy_update

    from .test_logprobs import PlainEngine, _update_inputs

    model, tokenizer, cfg, layout, ro = _update_inputs(toy_policy, *overrides)
    engine = PlainEngine(model, layout.grad_accumulation)
    guard = NonFiniteGuard(engine.basic_optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    stats, _ = policy_update(
        engine, None, ro, torch.tensor(advantages), cfg, layout, forbidden_token(tokenizer), guard
    )
    changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    return stats, changed, guard


@pytest.mark.parametrize("mini_batches", [1, 2])  # 2: the pre-update log-probs come from behaviour_logprobs
def test_the_sampler_trainer_logprob_gap_is_measured_on_the_pre_update_policy(toy_policy, mini_batches):
    from gdpo.rollout import forbidden_token
    from gdpo.trainer import policy_update, step_logprobs

    from .test_logprobs import PlainEngine, _update_inputs

    model, tokenizer, cfg, layout, ro = _update_inputs(toy_policy, f"optim.mini_batches={mini_batches}")
    with torch.no_grad():  # the scripted rollouts' sampler log-probs are all -1.0
        forbidden = forbidden_token(tokenizer)
        logp, _ = step_logprobs(model, slice(None), ro=ro, cfg=cfg, forbidden=forbidden, with_entropy=False)
    diff = (logp + 1.0).abs()[ro.completion_mask[:, : logp.shape[1]]]
    assert diff.numel() == 8  # every completion token (2 + 1 + 3 + 2), the truncated completion's too
    engine = PlainEngine(model, layout.grad_accumulation)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    stats, _ = policy_update(engine, None, ro, advantages, cfg, layout, forbidden_token(tokenizer))
    # Micro-batches of 2 against the whole batch at once: equal to fp32 rounding of values near 14.
    assert stats["rollout/logprob_gap"] == pytest.approx(diff.mean().item(), rel=1e-6)
    assert stats["rollout/logprob_gap_max"] == pytest.approx(diff.max().item(), rel=1e-6)


def test_an_update_with_a_non_finite_loss_is_skipped(toy_policy):
    stats, changed, guard = _plain_update(toy_policy, [1.0, -1.0, 0.5, -0.5])
    assert stats["nonfinite/skipped"] == 0 and changed and math.isfinite(stats["loss"])
    stats, changed, guard = _plain_update(toy_policy, [1.0, float("nan"), 0.5, -0.5])
    assert stats["nonfinite/skipped"] == 1 and not changed and math.isnan(stats["loss"])
    assert not guard.corrupted


def test_the_guard_skips_non_finite_gradients_and_notes_non_finite_parameters():
    from gdpo.trainer import NonFiniteGuard

    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    guard = NonFiniteGuard(optimizer)
    weight.grad = torch.tensor([0.5, float("inf")])  # a finite loss can still give this (overflow)
    guard.begin_update(loss_nonfinite=False)
    optimizer.step()
    assert guard.end_update() == 1 and weight.tolist() == [1.0, 2.0]
    weight.grad = torch.tensor([0.5, 0.5])
    guard.begin_update(loss_nonfinite=True)  # a non-finite loss on some rank: skipped whatever the gradient
    optimizer.step()
    assert guard.end_update() == 1 and weight.tolist() == [1.0, 2.0]
    guard.begin_update(loss_nonfinite=False)
    optimizer.step()
    assert guard.end_update() == 0 and weight.tolist() == [0.5, 1.5] and not guard.corrupted
    weight.data.fill_(3e38)
    weight.grad = torch.tensor([-3e38, 0.0])  # finite, but the update overflows float32
    guard.begin_update(loss_nonfinite=False)
    optimizer.step()
    assert guard.end_update() == 0 and guard.corrupted


def test_non_finite_steps_stop_the_run_as_configured():
    from gdpo.trainer import check_finite_step

    ok, skipped = {"nonfinite/skipped": 0, "loss": 0.5}, {"nonfinite/skipped": 1, "loss": float("nan")}
    cfg = cfg_with("algorithm.max_nonfinite_skips=2")
    check_finite_step(cfg, 3, ok, 0, False, rank=1)
    check_finite_step(cfg, 3, skipped, 1, False, rank=1)  # skip: logged, the run goes on
    with pytest.raises(
        RuntimeError, match=r"step 4: 1 update\(s\) skipped .* 2 steps in a row, algorithm.max"
    ):
        check_finite_step(cfg, 4, skipped, 2, False, rank=1)
    with pytest.raises(RuntimeError, match="algorithm.on_nonfinite=stop"):
        check_finite_step(cfg_with("algorithm.on_nonfinite=stop"), 3, skipped, 1, False, rank=1)
    with pytest.raises(RuntimeError, match="step 5: an update made the policy's parameters non-finite"):
        check_finite_step(cfg, 5, ok, 0, True, rank=1)


def test_peak_memory_is_measured_per_step_on_cuda_only(monkeypatch):
    from gdpo import trainer

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(("reset", str(d))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**30 + 2**29)
    monkeypatch.setattr(trainer, "world_size", lambda: 1)
    gpu = torch.device("cuda", 0)
    trainer.reset_peak_memory(gpu)
    assert calls == [("reset", "cuda:0")]
    assert trainer.peak_memory(gpu) == {"memory/peak_gib": 3.5}
    trainer.reset_peak_memory(torch.device("cpu"))
    assert calls == [("reset", "cuda:0")] and trainer.peak_memory(torch.device("cpu")) == {}


def test_overlong_prompts_are_dropped_or_refused():
    from gdpo.trainer import kept_prompts

    prompts = [[1] * 5, [1] * 9, [1] * 8, [1] * 12]
    assert kept_prompts(prompts, 8, "drop") == [0, 2]
    with pytest.raises(
        ValueError, match=r"train prompt 1 has 9 tokens > rollout.max_prompt_tokens=8 \(2 such"
    ):
        kept_prompts(prompts, 8, "error")
    assert kept_prompts(prompts, 12, "error") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="every training prompt is longer than rollout.max_prompt_tokens=4"):
        kept_prompts(prompts, 4, "drop")


# Runs ``train`` in a fresh process with two faults injected: NaN advantages at the steps named in argv[1] and,
# at the update named in argv[2] (0: none), a parameter set to NaN after the optimizer step. Every 4th training
# prompt is made 10 tokens longer (the toy prompts all have 22), for rollout.max_prompt_tokens to drop.
FAULTY_TRAIN = """
import sys
from torch.optim.optimizer import register_optimizer_step_post_hook
import gdpo.trainer as trainer
from gdpo.config import TrainConfig, load_config

nan_steps, corrupt_at = {int(s) for s in sys.argv[1].split(",") if s}, int(sys.argv[2])
steps, updates = [], []
advantages, encode = trainer.compute_advantages, trainer.encode_prompt

def nan_advantages(*args, **kwargs):
    adv = advantages(*args, **kwargs)
    steps.append(1)
    if len(steps) in nan_steps:
        adv[0, 0] = float("nan")
    return adv

def longer_prompts(tokenizer, messages, _calls=[]):
    _calls.append(1)
    ids = encode(tokenizer, messages)
    return ids + ids[:1] * 10 if len(_calls) % 4 == 0 else ids

def corrupt(optimizer, args, kwargs):
    updates.append(1)
    if len(updates) == corrupt_at:
        optimizer.param_groups[0]["params"][0].data.fill_(float("nan"))

trainer.compute_advantages, trainer.encode_prompt = nan_advantages, longer_prompts
register_optimizer_step_post_hook(corrupt)
trainer.train(load_config(TrainConfig, sys.argv[3], sys.argv[4:]))
"""


def _faulty_run(run_dir, env, nan_steps: str, corrupt_at: int, *overrides):
    cmd = [sys.executable, "-c", FAULTY_TRAIN, nan_steps, str(corrupt_at), str(CONFIG), *TEST_OVERRIDES]
    cmd += [f"logging.run_dir={run_dir}", "rollout.max_prompt_tokens=25", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _module_weights(checkpoint: Path) -> dict:
    (states,) = checkpoint.glob("state/*model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


@pytest.mark.slow
def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, subprocess_env, toy_model_dir):
    """NaN advantages at steps 2, 4, 5 and 6 with max_nonfinite_skips=3: steps 2, 4 and 5 are skipped and logged,
    step 6 stops the run; a skipped step leaves the parameters as they were, nothing of step 6 is saved."""
    run_dir = tmp_path / "nan"
    overrides = ["steps=8", "logging.checkpoint_every=1", "logging.keep_checkpoints=10"]
    result = _faulty_run(run_dir, subprocess_env, "2,4,5,6", 0, *overrides, "algorithm.max_nonfinite_skips=3")
    assert result.returncode != 0
    assert "step 6: 1 update(s) skipped for a non-finite loss or gradient" in result.stderr
    assert "3 steps in a row, algorithm.max_nonfinite_skips=3" in result.stderr.strip().splitlines()[-1]
    assert "dropped 20 of 80 training prompts longer than rollout.max_prompt_tokens=25" in result.stdout
    assert json.loads((run_dir / "metadata.json").read_text())["overlong_prompts_dropped"] == 20
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["nonfinite/skipped"] for m in metrics] == [0, 1, 0, 1, 1, 1]
    skipped = metrics[1]
    assert skipped["loss"] is None and "reward/correct/mean" in skipped and "adv/zero_frac" in skipped
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert checkpoints == [f"step_{k:06d}" for k in range(1, 6)] and not (run_dir / "final_model").exists()
    weights = {k: _module_weights(run_dir / "checkpoints" / f"step_{k:06d}") for k in (1, 2, 3, 5)}
    same = lambda a, b: all(torch.equal(a[n], b[n]) for n in a)  # noqa: E731
    assert same(weights[1], weights[2]) and not same(weights[2], weights[3]) and same(weights[3], weights[5])
    assert all(torch.isfinite(v).all() for w in weights.values() for v in w.values())


@pytest.mark.slow
def test_an_update_that_makes_the_parameters_non_finite_stops_before_its_checkpoint(
    tmp_path, subprocess_env, toy_model_dir
):
    run_dir = tmp_path / "corrupt"
    result = _faulty_run(run_dir, subprocess_env, "", 2, "steps=3", "logging.checkpoint_every=1")
    assert result.returncode != 0
    assert "step 2: an update made the policy's parameters non-finite" in result.stderr
    assert (run_dir / "checkpoints/latest").read_text() == "step_000001"
    assert not (run_dir / "checkpoints/step_000002").exists() and not (run_dir / "final_model").exists()
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


REFERENCE_UNDER_ZERO3 = """
import sys
import torch
from gdpo.config import TrainConfig, load_config
from gdpo.distributed import init_distributed
from gdpo.rollout import pack_rollouts
from gdpo.trainer import build_reference, completion_logprobs, load_policy, plan_layout

cfg = load_config(TrainConfig, sys.argv[1], sys.argv[3:])
init_distributed(torch.device("cpu"))
tokenizer, model = load_policy(cfg, sys.argv[2], torch.device("cpu"))
_, copy = load_policy(cfg, sys.argv[2], torch.device("cpu"))
ref = build_reference(cfg, copy, plan_layout(cfg, 1))
params = list(ref.module.parameters())
assert all(hasattr(p, "ds_id") and p.numel() == 0 and p.ds_numel > 0 for p in params), "not partitioned"
ro = pack_rollouts(tokenizer, [[5, 6, 7], [8, 9]], [[11, 12], [13, 14, 15]], [[0.0] * 2, [0.0] * 3], [False] * 2)
with torch.no_grad():
    expected = completion_logprobs(model, ro, slice(None), 1.0, tokenizer.pad_token_id, False)[0]
    got = completion_logprobs(ref, ro, slice(None), 1.0, tokenizer.pad_token_id, False)[0]
assert torch.allclose(got, expected, atol=1e-6), (got, expected)
print("partitioned", len(params), "parameters")
"""


def test_the_kl_reference_is_partitioned_under_zero3(subprocess_env, toy_model_dir):
    """Under ZeRO-3 the reference holds placeholders (its parameters live in ZeRO partitions) and gives the
    plain model's log-probs, its output head gathered outside the engine's forward."""
    cmd = [sys.executable, "-c", REFERENCE_UNDER_ZERO3, str(CONFIG), str(toy_model_dir), *TEST_OVERRIDES]
    cmd += ["optim.zero_stage=3", ZERO3_PARTITION_ALL, "algorithm.kl_coef=0.05"]
    result = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "partitioned 29 parameters" in result.stdout


def test_in_reward_kl_sums_the_k1_estimate_over_completion_tokens():
    from gdpo.trainer import in_reward_kl

    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    torch.testing.assert_close(in_reward_kl(old, ref, mask), torch.tensor([0.5 - 1.0, 0.0 + 1.0]))


def test_in_reward_kl_applies_to_the_grpo_methods_only():
    """verl-GDPO penalises GRPO's rewards with the KL and not GDPO's: one preset serves every method."""
    from gdpo.trainer import in_reward_kl_coef

    coef = {
        method: in_reward_kl_coef(
            load_config(TrainConfig, CONFIG, [f"algorithm.method={method}", "algorithm.kl_in_reward=0.001"])
        )
        for method in ("grpo", "grpo_no_std", "gdpo")
    }
    assert coef == {"grpo": 0.001, "grpo_no_std": 0.001, "gdpo": 0.0}


@pytest.mark.slow
def test_in_reward_kl_run_is_zero_before_the_first_update_and_moves_the_advantages(tmp_path, subprocess_env):
    """GRPO with verl's in-reward KL: at step 1 the policy is the reference, so the penalty is exactly 0 and the
    advantages are plain GRPO's; at step 2 it is positive."""
    run_dir = tmp_path / "kl"
    overrides = [
        "algorithm.method=grpo",
        "algorithm.kl_in_reward=0.5",
        "steps=2",
        "logging.checkpoint_every=0",
    ]
    result = _run(overrides, subprocess_env, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = read_jsonl(run_dir / "metrics.jsonl")
    assert first["kl_in_reward/seq_mean"] == 0.0 and second["kl_in_reward/seq_mean"] > 0
