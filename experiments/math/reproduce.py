"""Reproduce the paper's math experiments: train, evaluate, tabulate, plot.

    python -m experiments.math.reproduce --preset tiny               # what `make reproduce-math` runs
    python -m experiments.math.reproduce --preset tiny --sweep       # + the sweep (make reproduce-math-sweep)
    python -m experiments.math.reproduce --preset paper-r1-7b    # each run on all of a node's GPUs

1. Build the starting model once (the tiny model and its warm start are cached and shared by every run).
2. Train every variant over the seeds, one Ray task per run (experiments/reproduce.py, docs/cluster.md): GRPO and
   GDPO with the length reward R_length (Table 3) and with the correctness-conditioned R~_length (Table 4);
   with ``--sweep`` also w_length in {0.75, 0.5, 0.25} for all four (Figure 6 / Table 8; 1.0 is the main run).
   Run folders: ``runs/math/<preset>/<variant>/seed<k>``, variants ``grpo``, ``gdpo``, ``grpo-condlen``,
   ``gdpo-condlen`` and ``<variant>-w<weight>``. A finished run is skipped; an interrupted one is resumed.
3. Evaluate the base model and every final model with eval/math_bench.py (k samples per question at
   temperature 0.6, top_p 0.95: Acc = mean pass@1, Exceed = share of responses over the length limit).
   The tiny preset uses its synthetic test split; the paper presets MATH500, AIME 2024, AMC, Minerva and
   OlympiadBench (AMC and OlympiadBench from the files or hub names given with --data).
4. Execute ``analysis/notebooks/math.ipynb``: Table 3/4-style tables (Markdown + CSV), Figure 5-style median/IQR
   curves and, with the sweep, the weight-sweep plot, under ``results/math/<preset>/``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from analysis.math import PAPER_BENCHMARKS
from experiments.reproduce import (
    REPO,
    Job,
    available_benchmarks,
    config_path,
    evaluation_scale,
    prepare_base,
    reproduce_parser,
    run_and_tabulate,
)
from gdpo.cli import named_values
from gdpo.runlog import atomic_write_text

# variant -> (method, conditioned length reward)
VARIANTS = {
    "grpo": ("grpo", False),
    "gdpo": ("gdpo", False),
    "grpo-condlen": ("grpo", True),
    "gdpo-condlen": ("gdpo", True),
}
SWEEP_WEIGHTS = (0.75, 0.5, 0.25)

# preset -> (benchmarks, samples per question, questions per benchmark (None = all), max new tokens (None = paper's))
EVAL_SETTINGS = {"tiny": (("synthetic",), 4, 100, 96)}
DEFAULT_EVAL = (PAPER_BENCHMARKS, 16, None, None)


def check_recipe(config: Path, overrides) -> None:
    """The variants and benchmarks here are the paper's boxed-answer experiments; other recipes train alone."""
    from gdpo.config import TrainConfig, load_config

    recipe = dict(load_config(TrainConfig, config, list(overrides)).data.options).get("recipe", "boxed")
    if recipe != "boxed":
        raise SystemExit(
            f"{config}: data.options.recipe is {recipe!r}; this script reproduces the paper's experiments with the "
            "'boxed' recipe (R_length and R~_length variants, MATH-style benchmarks). Train this preset with "
            f"experiments/math/train.py --config {config}"
        )


def variant_overrides(variant: str, weight: float | None = None) -> tuple[str, ...]:
    method, conditioned = VARIANTS[variant]
    out = [f"algorithm.method={method}", f"data.options.conditioned_length={str(conditioned).lower()}"]
    if weight is not None:
        out.append(f"data.options.length_weight={weight}")
    return tuple(out)


def evaluate_model(
    model_dir: Path,
    cfg,
    out_dir: Path,
    *,
    benchmarks: tuple[str, ...],
    k: int,
    limit: int | None,
    max_new_tokens: int | None,
    sources: dict[str, str],
    decontaminate: bool | None,
) -> dict:
    """Acc and Exceed of one model on each benchmark, written to ``out_dir``; with ``decontaminate`` (default: on
    for paper presets) the problems the run trained on are left out."""
    import torch
    from transformers import AutoTokenizer

    from eval.decoding import paper_rollout_config
    from eval.decontaminate import TrainingSet, decontamination_wanted
    from eval.math_bench import run_benchmark
    from gdpo.rollout import load_generator, with_engine_of
    from gdpo.tasks import build_task
    from gdpo.tasks.math import task_length_limit
    from gdpo.tasks.options import task_options

    if max_new_tokens is None:
        rollout = paper_rollout_config()
    else:
        rollout = paper_rollout_config(max_new_tokens, cfg.rollout.max_prompt_tokens)
    rollout = with_engine_of(rollout, cfg.rollout)  # rollout.backend=vllm: vLLM generates here too
    torch.manual_seed(0)
    model = load_generator(model_dir, rollout)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    limit_tokens = task_length_limit(dict(cfg.data.options))  # Exceed measures what training rewarded
    training = None
    if decontamination_wanted(cfg.preset, decontaminate):
        training = TrainingSet(build_task(cfg.task, cfg.data.options, cfg.seed).train)
    out = {}
    for name in benchmarks:
        out[name] = run_benchmark(
            model,
            tokenizer,
            name,
            rollout,
            k=k,
            limit=limit,
            out_dir=out_dir,
            length_limit=limit_tokens,
            source=sources.get(name),
            training=training,
            answer_after_think=task_options(
                "math", cfg.data.options
            ).answer_after_think,  # as the reward read it
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.json", json.dumps(out, indent=2))  # its presence marks "evaluated"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = reproduce_parser(__doc__, seeds=(0, 1, 2))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sweep", action="store_true", help="add the w_length sweep (0.75, 0.5, 0.25)")
    parser.add_argument("--data", nargs="*", default=[], help="NAME=FILE_OR_HUB_NAME for amc / olympiad")
    args = parser.parse_args(argv)
    if args.backend:  # last, so that it wins: every run trains and is evaluated with this engine
        args.overrides.append(f"rollout.backend={args.backend}")
    results = args.results or REPO / "results" / "math" / args.preset
    config = config_path("math", args.preset)
    check_recipe(config, args.overrides)
    benchmarks, k, limit, max_new = EVAL_SETTINGS.get(args.preset, DEFAULT_EVAL)
    limit, k, max_new = evaluation_scale(args, limit, k, max_new)
    sources = named_values(args.data, "--data", PAPER_BENCHMARKS)
    benchmarks = available_benchmarks(benchmarks, sources, ("amc", "olympiad"), "--data")
    started = time.perf_counter()
    _, base = prepare_base(config, args.overrides, started)

    runs = args.runs / "math" / args.preset
    jobs = [Job("base", tuple(args.overrides), model_dir=base, eval_dir=results / "base_eval")]
    weights = (None, *SWEEP_WEIGHTS) if args.sweep else (None,)
    for weight in weights:
        for seed in args.seeds:
            for variant in args.variants:
                name = variant if weight is None else f"{variant}-w{weight}"
                overrides = (*args.overrides, *variant_overrides(variant, weight), f"seed={seed}")
                jobs.append(Job(f"{name}/seed{seed}", overrides, run_dir=runs / name / f"seed{seed}"))
    evaluate = partial(
        evaluate_model,
        benchmarks=benchmarks,
        k=k,
        limit=limit,
        max_new_tokens=max_new,
        sources=sources,
        decontaminate=args.decontaminate,
    )
    run_and_tabulate(
        config,
        jobs,
        evaluate,
        parallel=args.parallel,
        gpus_per_run=args.gpus_per_run,
        cpu_ranks=args.cpu_ranks,
        notebook=REPO / "analysis/notebooks/math.ipynb",
        results=results,
        params={"RUNS_DIR": str(args.runs), "PRESET": args.preset, "BENCHMARKS": list(benchmarks)},
        started=started,
    )


if __name__ == "__main__":
    main()
