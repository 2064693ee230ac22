"""experiments/reproduce.py: jobs as Ray tasks on a real local Ray instance, skip what is done, name the job that
failed."""

from __future__ import annotations

import contextlib
import json
import os
import time
from functools import partial
from pathlib import Path

import pytest

from experiments.reproduce import Job, StepFailed, run_jobs
from tests.conftest import REPO, TEST_OVERRIDES

CONFIG = REPO / "experiments/toy/configs/tiny.yaml"


@pytest.fixture(scope="module")
def ray_instance():
    """One real local Ray instance for the module's jobs (the engine keeps a connection it finds), started
    from an environment with a torchrun rank in it, as when the reproduction itself is launched by torchrun:
    Ray's workers inherit it, and each job must still be a world of its own."""
    from experiments.reproduce import ray_cluster

    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RANK", "3")
            patch.setenv("WORLD_SIZE", "4")
            stack.enter_context(ray_cluster())
        yield


def record_environment(model_dir: Path, cfg, out_dir: Path) -> dict:
    """An evaluation that writes down the process settings it ran with."""
    import torch

    names = ("RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
    out = {**{name: os.environ.get(name) for name in names}, "threads": torch.get_num_threads()}
    out["cwd"] = os.getcwd()
    print(f"evaluating {model_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(out))
    return out


def count_reward_means(
    model_dir: Path, cfg, out_dir: Path, *, fail_on: str | None = None, signal: Path | None = None
) -> dict:
    """A small evaluation (module level, so worker processes can unpickle it). With ``signal``, the failing job
    touches that file and the others wait for it, then 2 s more, so that the failure is first to finish."""
    if signal is not None and not (fail_on and fail_on in str(model_dir)):
        while not signal.exists():
            time.sleep(0.05)
        time.sleep(2)
    if fail_on and fail_on in str(model_dir):
        if signal is not None:
            signal.touch()
        raise ValueError(f"cannot evaluate {model_dir}")
    out = {"model": str(model_dir), "method": cfg.algorithm.method, "seed": cfg.seed}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(out))
    return out


def _jobs(tmp_path: Path, base: Path) -> list[Job]:
    common = (*TEST_OVERRIDES, "steps=2")
    jobs = [Job("base", common, model_dir=base, eval_dir=tmp_path / "base_eval")]
    for method, seed in (("grpo", 0), ("gdpo", 1)):
        jobs.append(
            Job(
                f"{method}/seed{seed}",
                (*common, f"algorithm.method={method}", f"seed={seed}"),
                run_dir=tmp_path / method / f"seed{seed}",
            )
        )
    return jobs


def test_jobs_train_evaluate_and_are_not_redone(tmp_path, toy_model_dir, ray_instance):
    lines: list[str] = []
    jobs = _jobs(tmp_path, toy_model_dir)
    killed = tmp_path / "gdpo" / "seed1"  # killed during its first log line, before any checkpoint
    killed.mkdir(parents=True)
    (killed / "metrics.jsonl").write_text('{"step": 1, "reward/correct/me')
    run_jobs(CONFIG, jobs, evaluate=count_reward_means, parallel=2, log=lines.append)
    assert sorted(line.split("] ")[1].split(":")[0] for line in lines) == ["base", "gdpo/seed1", "grpo/seed0"]
    assert any("base: evaluated" in line for line in lines)
    assert any("grpo/seed0: trained + evaluated" in line for line in lines)
    for method, seed in (("grpo", 0), ("gdpo", 1)):
        run = tmp_path / method / f"seed{seed}"
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
        summary = json.loads((run / "eval" / "summary.json").read_text())
        assert summary == {"model": str(run / "final_model"), "method": method, "seed": seed}
    assert json.loads((tmp_path / "base_eval" / "summary.json").read_text())["model"] == str(toy_model_dir)
    # What each job printed is in its folder, not on the console.
    log = (tmp_path / "grpo" / "seed0" / "reproduce.log").read_text()
    assert log.startswith("--- ") and " job grpo/seed0 on " in log.splitlines()[0]
    assert " job base on " in (tmp_path / "base_eval" / "reproduce.log").read_text()

    again: list[str] = []
    run_jobs(CONFIG, jobs, evaluate=count_reward_means, parallel=1, log=again.append)
    assert len(again) == 3 and all(": done before (" in line for line in again)
    # An evaluation with other options (or a summary without its settings) is redone; the runs are not retrained.
    (tmp_path / "base_eval" / "settings.json").unlink()
    other: list[str] = []
    run_jobs(
        CONFIG, jobs[:2], evaluate=partial(count_reward_means, fail_on="no such model"), log=other.append
    )
    assert sorted(line.split("] ")[1].split(" (")[0] for line in other) == [
        "base: re-evaluated",
        "grpo/seed0: re-evaluated",
    ]
    # A finished run made with other settings does not stand in for the job: the job fails, naming the keys.
    longer = [Job(j.name, (*j.overrides, "steps=3"), run_dir=j.run_dir) for j in jobs[1:2]]
    with pytest.raises(RuntimeError, match=r"(?s)grpo/seed0.*other settings for \['steps'\]"):
        run_jobs(CONFIG, longer, evaluate=count_reward_means, parallel=1)


def test_a_job_is_a_world_of_its_own_with_its_share_of_the_cpus(
    tmp_path, toy_model_dir, ray_instance, monkeypatch
):
    """Ray started with RANK=3 / WORLD_SIZE=4 in its environment (the fixture): no job sees them; a job uses
    cpus // parallel threads (this machine's CPUs, as the local instance has them), in the driver's working
    directory (Ray started its workers in the one the fixture ran from)."""
    monkeypatch.chdir(tmp_path)
    cpus = os.cpu_count()
    for parallel in (1, cpus + 1):
        out = tmp_path / f"parallel{parallel}"
        job = Job("base", tuple(TEST_OVERRIDES), model_dir=toy_model_dir, eval_dir=out)
        run_jobs(CONFIG, [job], evaluate=record_environment, parallel=parallel, log=lambda line: None)
        seen = json.loads((out / "summary.json").read_text())
        threads = max(1, cpus // parallel)
        assert seen["RANK"] in (None, "0") and seen["WORLD_SIZE"] in (None, "1"), seen
        assert (seen["OMP_NUM_THREADS"], seen["threads"]) == (str(threads), threads)
        assert seen["cwd"] == str(tmp_path)
        assert f"evaluating {toy_model_dir}" in (out / "reproduce.log").read_text()


def test_placement_of_jobs_on_cpu_and_gpu_clusters():
    from experiments.reproduce import Placement, plan_placement

    # CPUs only: `parallel` jobs share the largest node's CPUs, fractions rounded down to Ray's 1e-4.
    assert plan_placement(2, 0, 2, None) == (Placement(1.0, 0, 1, 1), Placement(1.0, 0, 1, 1))
    assert plan_placement(2, 0, 3, None)[0] == Placement(0.6666, 0, 1, 1)
    # --cpu-ranks: a CPU run trains with that many torchrun processes; evaluation stays one process.
    assert plan_placement(2, 0, 1, None, 2) == (Placement(2.0, 0, 2, 2), Placement(2.0, 0, 2, 1))
    with pytest.raises(ValueError, match="--cpu-ranks 2: the Ray cluster has GPUs"):
        plan_placement(64, 8, 2, None, 2)
    with pytest.raises(ValueError, match="--cpu-ranks must be at least 1"):
        plan_placement(2, 0, 1, None, 0)
    assert plan_placement(16, 0, 6, None)[0] == Placement(2.6666, 0, 2, 1)  # 6 fit in 16 CPUs, not 8
    # GPUs: a run takes all of a node's by default, or --gpus-per-run; an evaluation-only job takes one.
    assert plan_placement(64, 8, 2, None) == (Placement(1, 8, 64, 8), Placement(1, 1, 8, 1))
    assert plan_placement(64, 8, 2, 2) == (Placement(1, 2, 16, 2), Placement(1, 1, 8, 1))
    assert plan_placement(4, 8, 1, 1)[0] == Placement(1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"--gpus-per-run 9: a run takes 1 to 8 GPUs"):
        plan_placement(64, 8, 2, 9)
    with pytest.raises(ValueError, match=r"--gpus-per-run 1: the Ray cluster has no GPU"):
        plan_placement(2, 0, 2, 1)
    with pytest.raises(ValueError, match=r"--parallel must be at least 1, got 0"):
        plan_placement(2, 0, 0, None)


def test_evaluation_settings_hold_the_evaluation_options_and_the_config_but_not_logging():
    from experiments.reproduce import evaluation_settings
    from gdpo.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, CONFIG, ["steps=2"])
    settings = evaluation_settings(partial(count_reward_means, fail_on="x"), cfg)
    assert settings["evaluate"] == "count_reward_means" and settings["options"] == {"fail_on": "x"}
    assert settings["config"]["steps"] == 2 and "logging" not in settings["config"]
    moved = load_config(TrainConfig, CONFIG, ["steps=2", "logging.run_dir=/elsewhere"])
    assert evaluation_settings(partial(count_reward_means, fail_on="x"), moved) == settings
    longer = load_config(TrainConfig, CONFIG, ["steps=3"])
    assert evaluation_settings(partial(count_reward_means, fail_on="x"), longer) != settings


def test_a_failed_job_is_named(tmp_path, toy_model_dir, ray_instance):
    jobs = _jobs(tmp_path, toy_model_dir)[:1]
    log = tmp_path / "base_eval" / "reproduce.log"
    with pytest.raises(
        StepFailed, match=rf"step 'evaluation of base' failed: cannot evaluate .*\(its output: {log}\)$"
    ):
        run_jobs(CONFIG, jobs, evaluate=partial(count_reward_means, fail_on="models"), parallel=1)
    assert "ValueError: cannot evaluate" in log.read_text()  # the traceback, in the job's log
    # Reported when it happens, not after the jobs submitted before it.
    two = [
        jobs[0],
        Job("second", jobs[0].overrides, model_dir=tmp_path / "second", eval_dir=tmp_path / "ev2"),
    ]
    lines: list[str] = []
    slow_first = partial(count_reward_means, fail_on="second", signal=tmp_path / "failed")
    with pytest.raises(StepFailed, match=r"step 'evaluation of second' failed: cannot evaluate"):
        run_jobs(CONFIG, two, evaluate=slow_first, parallel=2, log=lines.append)
    assert "second: FAILED: step 'evaluation of second' failed: cannot evaluate" in lines[0]
    with pytest.raises(ValueError, match="job names must be unique"):
        run_jobs(CONFIG, jobs * 2, parallel=1)
    with pytest.raises(ValueError, match="needs model_dir and eval_dir"):
        Job("orphan")


def test_benchmarks_without_a_source_are_left_out_of_evaluation_and_tables(capsys):
    from experiments.reproduce import available_benchmarks

    benchmarks = ("math500", "aime24", "amc", "minerva", "olympiad")
    kept = available_benchmarks(
        benchmarks, {"olympiad": "data/olympiad.jsonl"}, ("amc", "olympiad"), "--data"
    )
    assert kept == ("math500", "aime24", "minerva", "olympiad")
    assert "skipping amc: no --data amc=FILE_OR_HUB_NAME given" in capsys.readouterr().out


def test_the_math_reproduction_refuses_a_recipe_it_does_not_reproduce(subprocess_env):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "experiments.math.reproduce", "--preset", "smollm2-gsm8k"],
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 1
    assert (
        "data.options.recipe is 'gsm8k3'" in out.stderr and "experiments/math/train.py --config" in out.stderr
    )


def test_run_and_result_folders_are_made_absolute(tmp_path, monkeypatch):
    from experiments.reproduce import reproduce_parser

    monkeypatch.chdir(tmp_path)  # the notebook later runs from the repository root, not from here
    args = reproduce_parser("x").parse_args(["--runs", "runs2", "--results", "out"])
    assert (args.runs, args.results) == (tmp_path / "runs2", tmp_path / "out")
    assert (args.parallel, args.gpus_per_run) == (2, None)
    assert reproduce_parser("x").parse_args(["--gpus-per-run", "4"]).gpus_per_run == 4


def test_the_evaluation_scale_options_replace_the_presets_defaults_and_must_be_positive(capsys):
    from experiments.reproduce import evaluation_scale, reproduce_parser

    parser = reproduce_parser("x")
    assert evaluation_scale(parser.parse_args([]), None, 16, None) == (None, 16, None)
    given = parser.parse_args(["--eval-items", "2", "--eval-samples", "1", "--eval-max-new-tokens", "16"])
    assert evaluation_scale(given, 100, 4, 96) == (2, 1, 16)
    assert evaluation_scale(parser.parse_args(["--eval-samples", "3"]), 100, 4, 96) == (100, 3, 96)
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-items", "0"])
    assert "--eval-items: must be at least 1, got 0" in capsys.readouterr().err


def test_coding_evaluation_samples_as_the_math_evaluation_and_decontaminates(
    tmp_path, toy_model_dir, monkeypatch
):
    """The coding reproduction evaluates with temperature 0.6 / top_p 0.95 (eval/decoding.py) and, asked to,
    leaves out problems of the training set: the synthetic test split shares no problem with training."""
    import json

    from eval import code_bench
    from experiments.coding.reproduce import evaluate_model
    from gdpo.config import TrainConfig, load_config

    settings, generate = [], code_bench.generate

    def recording(model, tokenizer, items, rollout, **kwargs):
        settings.append((rollout.temperature, rollout.top_p, rollout.max_new_tokens, kwargs["samples"]))
        return generate(model, tokenizer, items, rollout, **kwargs)

    monkeypatch.setattr(code_bench, "generate", recording)

    cfg = load_config(
        TrainConfig, REPO / "experiments/coding/configs/tiny.yaml", ["data.options.num_train=50"]
    )
    summary = evaluate_model(
        toy_model_dir, cfg, tmp_path, benchmarks=("synthetic",), k=2, limit=3, max_new_tokens=8, sources={},
        decontaminate=True,
    )  # fmt: skip
    assert summary["synthetic"]["decontaminated"] == 0
    records = [json.loads(line) for line in (tmp_path / "synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 2 and all(r["num_tokens"] <= 8 for r in records)
    assert settings == [(0.6, 0.95, 8, 2)]


def test_tool_calling_evaluation_takes_prompts_up_to_the_models_context(tmp_path, toy_model_dir, monkeypatch):
    """BFCL's multi-turn prompts exceed a paper preset's 2,048-token training prompt limit: the evaluation takes
    prompts up to the model's context instead (found by the tool-calling rehearsal: every multi-turn item was
    skipped), and the sampled test split takes --eval-samples completions per prompt."""
    from transformers import AutoConfig

    import eval.bfcl
    import gdpo.evaluate
    from experiments.tool_calling.reproduce import evaluate_model
    from gdpo.config import TrainConfig, load_config

    seen = []

    def record_bfcl(model, tokenizer, rollout, **kwargs):
        seen.append(("bfcl", rollout.max_prompt_tokens, rollout.max_new_tokens))
        return {"avg": 0.0}

    def record_split(model, tokenizer, task, rollout, limit=None, samples=1, greedy=True):
        seen.append(("split", rollout.max_prompt_tokens, samples))
        return []

    monkeypatch.setattr(eval.bfcl, "generate_and_score", record_bfcl)
    monkeypatch.setattr(gdpo.evaluate, "evaluate", record_split)
    monkeypatch.setattr(gdpo.evaluate, "summarise", lambda rows, maxima: {})
    cfg = load_config(
        TrainConfig, REPO / "experiments/tool_calling/configs/tiny.yaml", ["rollout.max_prompt_tokens=64"]
    )
    context = AutoConfig.from_pretrained(toy_model_dir).max_position_embeddings
    evaluate_model(
        toy_model_dir,
        cfg,
        tmp_path,
        bfcl_limit=1,
        test_limit=1,
        decontaminate=False,
        samples=3,
        max_new_tokens=8,
    )
    assert seen == [("split", context - 8, 1), ("split", context - 8, 3), ("bfcl", context - 8, 8)]
