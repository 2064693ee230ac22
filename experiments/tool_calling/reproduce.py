"""Reproduce the paper's tool-calling experiment: train, evaluate, tabulate, plot.

    python experiments/tool_calling/reproduce.py --preset tiny            # what `make reproduce-tool` runs
    python experiments/tool_calling/reproduce.py --preset paper-qwen2.5-1.5b --parallel 1

1. Build the starting model once (the tiny model and its warm start are cached; the children reuse them).
2. Train every (method, seed): GRPO, GRPO w/o std and GDPO over the seeds, ``--parallel`` processes at a time
   with the cores split between them. A finished run is skipped; an interrupted one is resumed.
3. Evaluate the base model and every final model: the task's test split (format ratio, mean correctness) and
   BFCL-v3 (eval/bfcl.py), written to ``<run>/eval/`` (``<results>/base_eval/`` for the base model).
4. Execute ``analysis/notebooks/tool_calling.ipynb``: Table 1/2 (Markdown + CSV), Figure 4 and Figure 1b (PNG)
   under ``results/tool_calling/<preset>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

METHODS = ("grpo", "grpo_no_std", "gdpo")
# Evaluation sizes per preset (BFCL items per category, test-split prompts); None = everything. The tiny model's
# context fits few BFCL prompts, so its BFCL numbers only exercise the harness.
EVAL_LIMITS = {"tiny": (20, 100)}


def config_path(preset: str) -> Path:
    path = REPO / "experiments/tool_calling/configs" / f"{preset}.yaml"
    if not path.exists():
        raise SystemExit(f"no preset {preset!r}: {path} does not exist")
    return path


def train_one(
    preset: str, method: str, seed: int, runs: Path, threads: int, extra: list[str]
) -> tuple[str, float, str]:
    run_dir = runs / "tool_calling" / preset / method / f"seed{seed}"
    if (run_dir / "final_model" / "config.json").exists():
        return f"{method}/seed{seed}", 0.0, "done before"
    cmd = [
        sys.executable,
        str(REPO / "experiments/tool_calling/train.py"),
        "--config",
        str(config_path(preset)),
        f"algorithm.method={method}",
        f"seed={seed}",
        f"logging.run_dir={run_dir}",
        "logging.progress=false",
        *extra,
    ]
    if (run_dir / "checkpoints" / "latest").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{method}/seed{seed} failed:\n{result.stderr[-3000:]}")
    return f"{method}/seed{seed}", time.perf_counter() - start, "trained"


def evaluate_model(
    model_dir: Path, cfg, task, out_dir: Path, bfcl_limit: int | None, test_limit: int | None
) -> dict:
    """Test-split rewards and BFCL summary of one model, written to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval.bfcl import generate_and_score
    from gdpo.evaluate import evaluate, summarise

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = evaluate(model, tokenizer, task, cfg.rollout, limit=test_limit)
    synthetic = summarise(records, {"format": 1.0, "correctness": 3.0})
    bfcl = generate_and_score(
        model,
        tokenizer,
        cfg.rollout,
        limit=bfcl_limit,
        compact=bool(cfg.data.options.get("compact_prompt")),
        out_dir=out_dir / "bfcl",
    )
    out = {"synthetic": synthetic, "bfcl": bfcl}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(out, indent=2))
    (out_dir / "synthetic_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--parallel", type=int, default=2, help="training processes at a time")
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--results", type=Path, default=None, help="default results/tool_calling/<preset>")
    parser.add_argument("--bfcl-limit", type=int, default=None, help="BFCL items per category (default: all)")
    parser.add_argument(
        "--test-limit", type=int, default=None, help="test-split prompts evaluated (default: all)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. steps=10")
    args = parser.parse_args()
    results = args.results or REPO / "results" / "tool_calling" / args.preset
    bfcl_default, test_default = EVAL_LIMITS.get(args.preset, (None, None))
    args.bfcl_limit = args.bfcl_limit if args.bfcl_limit is not None else bfcl_default
    args.test_limit = args.test_limit if args.test_limit is not None else test_default
    started = time.perf_counter()

    from gdpo.config import TrainConfig, load_config
    from gdpo.tasks import build_task
    from gdpo.trainer import prepare_model

    cfg = load_config(TrainConfig, config_path(args.preset), args.overrides)
    task = build_task("tool_calling", cfg.data.options, 0)
    base = Path(prepare_model(cfg))
    print(f"[{time.perf_counter() - started:6.0f}s] base model: {base}", flush=True)

    jobs = [(m, s) for s in args.seeds for m in args.methods]
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [
            pool.submit(train_one, args.preset, m, s, args.runs, threads, args.overrides) for m, s in jobs
        ]
        for future in futures:
            name, seconds, what = future.result()
            print(f"[{time.perf_counter() - started:6.0f}s] {name}: {what} ({seconds:.0f}s)", flush=True)

    if not (results / "base_eval" / "summary.json").exists():
        evaluate_model(base, cfg, task, results / "base_eval", args.bfcl_limit, args.test_limit)
    for m, s in jobs:
        run_dir = args.runs / "tool_calling" / args.preset / m / f"seed{s}"
        if not (run_dir / "eval" / "summary.json").exists():
            evaluate_model(
                run_dir / "final_model", cfg, task, run_dir / "eval", args.bfcl_limit, args.test_limit
            )
    print(f"[{time.perf_counter() - started:6.0f}s] evaluated {len(jobs) + 1} models", flush=True)

    from analysis.run_notebook import run_notebook

    run_notebook(
        REPO / "analysis/notebooks/tool_calling.ipynb",
        results,
        {"RUNS_DIR": str(args.runs), "PRESET": args.preset, "PAPER_STEPS": cfg.steps},
    )
    print(f"[{time.perf_counter() - started:6.0f}s] tables and figures in {results}", flush=True)


if __name__ == "__main__":
    main()
