"""Benchmark: our trainer vs TRL's GRPOTrainer (GDPO mode) on the same model, data and batch shape.

Both sides train the embedded tiny model (random init, no warm start, so completions run to the length
limit) on the toy task's prompts with its two rewards, at the tiny preset's shape: 8 prompts x 8 rollouts x
64 new tokens, fp32, one policy update per generation batch, no reference model, no gradient checkpointing.
TRL runs with ``multi_objective_aggregation="normalize_then_sum"`` (its GDPO). Each side runs in its own
subprocess, the two sides alternating (``--repeats`` runs each, so a slow spell of this shared machine does not
fall on one side only); the first step of every run is warm-up and is left out of the medians. A further run of
each side profiles steps 3-5 (``gdpo.profiling``) for their matrix-multiplication time: close to the arithmetic a
step cannot avoid at fp32, which bounds how far engineering can bring the ratio down. The timed runs of our
side also clock the time spent inside the model: its forward calls (``nn.Module`` hooks on the policy), split
into generation (no gradient) and update, and autograd's backward. That is the part of a step only a different
model implementation (not transformers' modules) could shorten; everything else in our step is the rest.

    python -m bench.bench_trainer            # both sides, prints the table and the ratio
    make bench                               # the same, plus the advantage benchmark

Prints, last, ``ours/trl step-time ratio: <x>`` and writes ``bench/results/trainer-vs-trl-<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PROMPTS, ROLLOUTS, NEW_TOKENS, LR = 8, 8, 64, 1e-5
PROFILED_STEPS = [3, 4, 5]  # after two warm-up steps


def toy_config(steps: int, run_dir: str, profile_steps: tuple[int, ...] = ()):
    """The toy task's tiny config at this benchmark's batch shape (bench_generation uses it too)."""
    from gdpo.config import TrainConfig, load_config

    return load_config(
        TrainConfig,
        REPO / "experiments/toy/configs/tiny.yaml",
        [
            f"steps={steps}",
            "device=cpu",  # TRL's side runs on CPU too (use_cpu), also on a machine with a GPU
            "warm_start.enabled=false",
            f"data.prompts_per_step={PROMPTS}",
            f"rollout.num_rollouts={ROLLOUTS}",
            f"rollout.max_new_tokens={NEW_TOKENS}",
            f"optim.micro_batch_size={PROMPTS * ROLLOUTS}",
            f"optim.lr={LR}",
            "algorithm.method=gdpo",
            "logging.progress=false",
            "logging.checkpoint_every=0",
            "logging.sample_every=0",
            f"logging.run_dir={run_dir}",
            f"logging.profile_steps={list(profile_steps)}",
        ],
    )


class ModelClock:
    """Seconds per step inside the policy: forward calls with and without a gradient, and autograd's backward.

    A step starts with its generation (``HFRollout.generate``); forwards without a gradient are the decode
    loop's, forwards with one the update's (the benchmark runs no reference model and one update per step, so
    no other forward happens). ``with clock.installed():`` patches the loader, the backend and autograd for
    the block only; ``steps`` holds each step's seconds and ``calls`` its forward counts.
    """

    KEYS = ("forward_generate_s", "forward_update_s", "backward_s")

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.calls: list[dict[str, int]] = []
        self._started = 0.0

    @contextlib.contextmanager
    def installed(self):
        import torch

        import gdpo.rollout
        import gdpo.trainer

        load_policy, generate, backward = (
            gdpo.trainer.load_policy,
            gdpo.rollout.HFRollout.generate,
            torch.autograd.backward,
        )

        def clocked_load_policy(*args, **kwargs):
            tokenizer, model = load_policy(*args, **kwargs)
            model.register_forward_pre_hook(lambda *_: self._start())
            model.register_forward_hook(
                lambda *_: self._add("forward_update_s" if torch.is_grad_enabled() else "forward_generate_s")
            )
            return tokenizer, model

        def step_generate(*args, **kwargs):
            self.steps.append(dict.fromkeys(self.KEYS, 0.0))
            self.calls.append(dict.fromkeys(self.KEYS, 0))
            return generate(*args, **kwargs)

        def clocked_backward(*args, **kwargs):
            self._start()
            backward(*args, **kwargs)
            self._add("backward_s")

        gdpo.trainer.load_policy, gdpo.rollout.HFRollout.generate = clocked_load_policy, step_generate
        torch.autograd.backward = clocked_backward
        try:
            yield self
        finally:
            gdpo.trainer.load_policy, gdpo.rollout.HFRollout.generate = load_policy, generate
            torch.autograd.backward = backward

    def _start(self) -> None:
        self._started = time.perf_counter()

    def _add(self, key: str) -> None:
        if self.steps:  # forwards before the first step (none in the benchmark) are not a step's
            self.steps[-1][key] += time.perf_counter() - self._started
            self.calls[-1][key] += 1


def run_ours(steps: int, profile: bool = False) -> dict:
    from gdpo.runlog import read_jsonl
    from gdpo.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        if profile:
            run_dir = train(toy_config(max(PROFILED_STEPS), f"{tmp}/run", profile_steps=PROFILED_STEPS))
            return [json.loads((run_dir / "profile" / f"step{k}.json").read_text()) for k in PROFILED_STEPS]
        with ModelClock().installed() as clock:
            run_dir = train(toy_config(steps, f"{tmp}/run"))
        rows = read_jsonl(run_dir / "metrics.jsonl")
    if len(clock.steps) != len(rows):
        raise RuntimeError(f"model clock counted {len(clock.steps)} generations for {len(rows)} steps")
    return {
        "step_s": [r["time/step_s"] for r in rows],
        "generate_s": [r["time/generate_s"] for r in rows],
        "completion_tokens": [r["completion/len_mean"] * PROMPTS * ROLLOUTS for r in rows],
        "model": clock.steps,
        "model_calls": clock.calls,
    }


def run_trl(steps: int, profile: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gdpo.profiling import op_summary
    from gdpo.tasks import build_task
    from gdpo.tasks.toy import correct_reward, format_reward
    from gdpo.trainer import prepare_model

    task = build_task("toy", {}, 0)
    path = prepare_model(toy_config(steps, "unused"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": row["messages"], "answer": row["answer"]} for row in task.train])

    def as_trl(fn):
        def reward(prompts, completions, answer, **_):
            return [fn({"completion": c[0]["content"], "answer": a}) for c, a in zip(completions, answer)]

        reward.__name__ = fn.__name__
        return reward

    timings = {"step_s": [], "generate_s": [], "completion_tokens": []}
    profiled = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.profiler = None
            if profile and state.global_step + 1 in PROFILED_STEPS:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timings["step_s"].append(time.perf_counter() - self.start)
            if self.profiler is not None:  # TRL counts the step before this call
                self.profiler.__exit__(None, None, None)
                profiled.append(
                    {"step": state.global_step, "step_s": timings["step_s"][-1], **op_summary(self.profiler)}
                )

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=PROMPTS * ROLLOUTS,
            num_generations=ROLLOUTS,
            max_completion_length=NEW_TOKENS,
            multi_objective_aggregation="normalize_then_sum",
            learning_rate=LR,
            max_steps=max(PROFILED_STEPS) if profile else steps,
            beta=0.0,
            num_iterations=1,
            gradient_checkpointing=False,
            use_cpu=True,
            bf16=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[as_trl(correct_reward), as_trl(format_reward)],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        generate = trainer._generate

        def timed_generate(prompts):
            start = time.perf_counter()
            with torch.profiler.record_function("generate"):  # the phase gdpo.profiling splits out
                out = generate(prompts)
            timings["generate_s"].append(time.perf_counter() - start)
            return out

        trainer._generate = timed_generate
        trainer.train()
    return profiled if profile else timings


def run_side(side: str, steps: int, profile: bool = False):
    """Run one side in a fresh subprocess (each initialises its own distributed/accelerate state)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "bench.bench_trainer", "--side", side, "--steps", str(steps)] + (
        ["--profile"] if profile else []
    )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    """Medians over every run's steps but its first (warm-up)."""
    steps = [s for t in runs for s in t["step_s"][1:]]
    gens = [g for t in runs for g in t["generate_s"][1 : len(t["step_s"])]]
    step, gen = statistics.median(steps), statistics.median(gens)
    summary = {
        "median_step_s": step,
        "median_generate_s": gen,
        "generation_share": gen / step,
        "steps_timed": len(steps),
    }
    if "model" in runs[0]:
        clocked = [m for t in runs for m in t["model"][1:]]
        summary["median_model_s"] = {
            key: statistics.median(m[key] for m in clocked) for key in ModelClock.KEYS
        }
        summary["median_model_s"]["total"] = statistics.median(sum(m.values()) for m in clocked)
    return summary


def _profile_summary(steps: list[dict]) -> dict:
    """Medians over the profiled steps (each step's own summary is kept too)."""
    return {
        "median_step_s": statistics.median(p["step_s"] for p in steps),
        "median_matmul_s": statistics.median(p["matmul_s"] for p in steps),
        "median_generate_matmul_s": statistics.median(p["matmul_s_by_phase"]["generate"] for p in steps),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", choices=["ours", "trl", "both"], default="both")
    parser.add_argument("--steps", type=int, default=12, help="steps per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side, alternating")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"with --side: profile steps {PROFILED_STEPS} instead of timing",
    )
    args = parser.parse_args()
    if args.side != "both":
        import torch

        torch.manual_seed(0)
        run = run_ours if args.side == "ours" else run_trl
        print(json.dumps(run(args.steps, profile=args.profile)))
        return

    from bench.bench_advantages import device_name  # same machine description as the other bench

    runs = {"ours": [], "trl": []}
    for _ in range(args.repeats):
        for side in runs:
            runs[side].append(run_side(side, args.steps))
    ours, trl = _summary(runs["ours"]), _summary(runs["trl"])
    profiled = {side: _profile_summary(run_side(side, args.steps, profile=True)) for side in runs}
    ratio = ours["median_step_s"] / trl["median_step_s"]
    floor = profiled["ours"]["median_matmul_s"] / trl["median_step_s"]
    in_model = ours["median_model_s"]["total"] / trl["median_step_s"]
    result = {
        "device": device_name("cpu"),
        "shape": {"prompts": PROMPTS, "rollouts": ROLLOUTS, "max_new_tokens": NEW_TOKENS},
        "ours": ours,
        "trl": trl,
        "profiled": profiled,
        "ours_matmul_over_trl_step_time": floor,
        "ours_model_over_trl_step_time": in_model,
        "ours_over_trl_step_time": ratio,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer-vs-trl-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"trainer step time on {result['device']}, {PROMPTS} prompts x {ROLLOUTS} rollouts x {NEW_TOKENS} new tokens"
    )
    for name, s in (("ours", ours), ("trl", trl)):
        print(
            f"  {name:<5} median step {s['median_step_s']:.3f} s, generation {s['median_generate_s']:.3f} s ({s['generation_share']:.0%} of the step), {s['steps_timed']} steps"
        )
    print(f"  matrix multiplications, median of profiled steps {PROFILED_STEPS} (the profiler slows a step):")
    for name, p in profiled.items():
        gen = p["median_generate_matmul_s"]
        print(
            f"  {name:<5} {p['median_matmul_s']:.3f} s of {p['median_step_s']:.3f} s (in generation {gen:.3f} s)"
        )
    print(
        f"  our matrix multiplications alone take {floor:.3f} x trl's median step: the ratio's floor at fp32"
    )
    m = ours["median_model_s"]
    print(
        f"  inside the model (transformers forward, autograd backward), median of the timed steps: {m['total']:.3f} s"
        f" of our step (forward in generation {m['forward_generate_s']:.3f} s, in the update"
        f" {m['forward_update_s']:.3f} s, backward {m['backward_s']:.3f} s) = {in_model:.3f} x trl's median step:"
        " the ratio's floor for any change outside the model code"
    )
    print(f"ours/trl step-time ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
