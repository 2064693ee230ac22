"""Reproduce the paper's tool-calling experiment: train, evaluate, tabulate, plot.

    python -m experiments.tool_calling.reproduce --preset tiny            # what `make reproduce-tool` runs
    python -m experiments.tool_calling.reproduce --preset paper-qwen2.5-1.5b  # each run on all of a node's GPUs
    RAY_ADDRESS=auto python -m experiments.tool_calling.reproduce --preset paper-qwen2.5-1.5b  # on a Ray cluster

1. Build the starting model once (the tiny model and its warm start are cached and shared by every run).
2. Train every (method, seed): GRPO, GRPO w/o std and GDPO over the seeds, one Ray task per run
   (experiments/reproduce.py: ``--parallel`` runs at a time sharing the CPUs, or ``--gpus-per-run`` GPUs of a node
   each; docs/cluster.md). A finished run is skipped; an interrupted one is resumed. Each task evaluates its run
   right after training it, and one more evaluates the base model: the task's
   test split (format ratio, mean correctness; greedy and sampled) and BFCL-v3 (eval/bfcl.py), written to ``<run>/eval/``
   (``<results>/base_eval/`` for the base model).
4. Execute ``analysis/notebooks/tool_calling.ipynb``: Table 1/2 (Markdown + CSV), Figure 4 and Figure 1b (PNG)
   under ``results/tool_calling/<preset>/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from experiments.reproduce import (
    REPO,
    Job,
    config_path,
    evaluation_scale,
    prepare_base,
    reproduce_parser,
    run_and_tabulate,
)
from gdpo.runlog import atomic_write_text

METHODS = ("grpo", "grpo_no_std", "gdpo")
# Evaluation sizes per preset (BFCL items per category, test-split prompts); None = everything. The tiny model's
# context fits few BFCL prompts, so its BFCL numbers only exercise the harness. --eval-items sets both.
EVAL_LIMITS = {"tiny": (3, 50)}
# Completions per test prompt sampled at the training temperature, beside the greedy one: the policy RL trains
# is the sampling one, and a greedy score hides a habit the policy takes only some of the time.
SAMPLES_PER_PROMPT = 2


def evaluate_model(
    model_dir: Path,
    cfg,
    out_dir: Path,
    *,
    bfcl_limit: int | None,
    test_limit: int | None,
    decontaminate: bool | None,
    samples: int = SAMPLES_PER_PROMPT,
    max_new_tokens: int | None = None,
) -> dict:
    """Test-split rewards and BFCL summary of one model, written to ``out_dir``. BFCL items are asked in the run's
    own training layout; with ``decontaminate`` (default: on for paper presets) the questions the run trained on
    are left out. The run's sampling settings generate (``max_new_tokens``: another completion limit), with prompts
    up to the model's context."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from eval.bfcl import generate_and_score
    from eval.decontaminate import TrainingSet, decontamination_wanted
    from gdpo.evaluate import evaluate, summarise
    from gdpo.rollout import load_generator
    from gdpo.tasks import build_task
    from gdpo.tasks.tool_calling import system_prompt_like

    task = build_task(cfg.task, cfg.data.options, cfg.seed)
    new_tokens = cfg.rollout.max_new_tokens if max_new_tokens is None else max_new_tokens
    # Prompts up to the model's context, not the training prompt limit: BFCL's multi-turn prompts (their long tool
    # documentation) exceed the paper presets' 2,048 tokens and would all be skipped, scoring Multi-turn 0.
    context = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    prompt_tokens = max(cfg.rollout.max_prompt_tokens, context - new_tokens)
    rollout = replace(cfg.rollout, max_new_tokens=new_tokens, max_prompt_tokens=prompt_tokens)

    torch.manual_seed(0)
    model = load_generator(model_dir, rollout)  # rollout.backend=vllm: the folder, which vLLM loads
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    maxima = {"format": 1.0, "correctness": 3.0}
    records = evaluate(model, tokenizer, task, rollout, limit=test_limit)
    sampled_records = evaluate(
        model, tokenizer, task, rollout, limit=test_limit, samples=samples, greedy=False
    )
    bfcl = generate_and_score(
        model,
        tokenizer,
        rollout,
        limit=bfcl_limit,
        system_prompt=system_prompt_like(task.train[0]["messages"][0]["content"]),  # as the run was trained
        out_dir=out_dir / "bfcl",
        training=TrainingSet(task.train) if decontamination_wanted(cfg.preset, decontaminate) else None,
    )
    out = {"bfcl": bfcl}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("synthetic", records), ("synthetic_sampled", sampled_records)):
        out[name] = summarise(rows, maxima)
        (out_dir / f"{name}_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out_dir / "summary.json", json.dumps(out, indent=2))  # its presence marks "evaluated"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = reproduce_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args(argv)
    if args.backend:  # last, so that it wins: every run trains and is evaluated with this engine
        args.overrides.append(f"rollout.backend={args.backend}")
    results = args.results or REPO / "results" / "tool_calling" / args.preset
    bfcl_limit, test_limit = EVAL_LIMITS.get(args.preset, (None, None))
    items, samples, max_new = evaluation_scale(args, None, SAMPLES_PER_PROMPT, None)
    if items is not None:
        bfcl_limit = test_limit = items
    config = config_path("tool_calling", args.preset)
    started = time.perf_counter()
    cfg, base = prepare_base(config, args.overrides, started)

    jobs = [Job("base", tuple(args.overrides), model_dir=base, eval_dir=results / "base_eval")]
    for seed in args.seeds:
        for method in args.methods:
            run_dir = args.runs / "tool_calling" / args.preset / method / f"seed{seed}"
            overrides = (*args.overrides, f"algorithm.method={method}", f"seed={seed}")
            jobs.append(Job(f"{method}/seed{seed}", overrides, run_dir=run_dir))
    evaluate = partial(
        evaluate_model,
        bfcl_limit=bfcl_limit,
        test_limit=test_limit,
        decontaminate=args.decontaminate,
        samples=samples,
        max_new_tokens=max_new,
    )
    run_and_tabulate(
        config,
        jobs,
        evaluate,
        parallel=args.parallel,
        gpus_per_run=args.gpus_per_run,
        cpu_ranks=args.cpu_ranks,
        notebook=REPO / "analysis/notebooks/tool_calling.ipynb",
        results=results,
        params={"RUNS_DIR": str(args.runs), "PRESET": args.preset, "PAPER_STEPS": cfg.steps},
        started=started,
    )


if __name__ == "__main__":
    main()
