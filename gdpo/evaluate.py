"""Score a model on a task's held-out prompts with the task's own reward components.

    python -m gdpo.evaluate --model runs/.../final_model --config experiments/toy/configs/tiny.yaml \
        --out eval.json --max format=1 --max correct=1 rollout.max_new_tokens=32

Generation goes through the rollout backend the config names (``rollout.backend``: ``hf`` or ``vllm``), the
sampling code of training (greedy by default; ``--sample`` samples at the config's temperature, and ``--samples``
above 1 needs it). Writes per-response records
(prompt index, completion, every reward) and a summary: ``items`` (responses: prompts x ``--samples``), the mean
of each component and, for each ``--max NAME=VALUE``, the share of responses where the component reaches VALUE
(e.g. ``format=1``: the correct-format ratio).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from gdpo.cli import named_values
from gdpo.config import ConfigError, RolloutConfig, TrainConfig, load_config
from gdpo.rollout import encode_prompt, generation_chunks, load_generator, make_rollout_backend
from gdpo.tasks import Task, build_task

__all__ = ["evaluate", "summarise"]


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task: Task,
    rollout: RolloutConfig,
    *,
    split: str = "test",
    limit: int | None = None,
    samples: int = 1,
    greedy: bool = True,
    batch_prompts: int = 16,
    seed: int = 0,
) -> list[dict]:
    """Per-item records for ``samples`` completions of each prompt of ``split`` (first ``limit`` prompts).

    ``model``: a transformers model, or the model's folder with ``rollout.backend=vllm``
    (``gdpo.rollout.load_generator``); prompt ``i`` is seeded ``seed * 1_000_003 + i`` whatever the backend."""
    rows = (task.test if split == "test" else task.train)[:limit]
    backend = make_rollout_backend(rollout, model, tokenizer)
    records = []
    for indices in generation_chunks(range(len(rows)), batch_prompts, rollout):
        start, chunk = indices[0], [rows[i] for i in indices]
        prompts = [encode_prompt(tokenizer, row["messages"]) for row in chunk]
        ro = backend.generate(prompts, [seed * 1_000_003 + i for i in indices], samples, greedy=greedy)
        groups = [
            [
                dict(
                    row,
                    completion=ro.completions[i * samples + j],
                    num_tokens=int(ro.num_tokens[i * samples + j]),
                )
                for j in range(samples)
            ]
            for i, row in enumerate(chunk)
        ]
        scored = task.rewards.score(groups)
        for i in range(len(chunk)):
            for j in range(samples):
                records.append(
                    {
                        "index": start + i,
                        "sample": j,
                        "completion": groups[i][j]["completion"],
                        "num_tokens": groups[i][j]["num_tokens"],
                        "truncated": bool(ro.truncated[i * samples + j]),
                        # A reward that does not apply (NaN) is null: the output is strict JSON.
                        "rewards": {
                            name: (None if math.isnan(value) else value)
                            for name, value in zip(scored.names, scored.raw[i, j].tolist())
                        },
                    }
                )
    return records


def summarise(records: list[dict], maxima: dict[str, float] | None = None) -> dict[str, float]:
    """Mean of each reward component over the items it applies to (as the training log's reward means);
    ``<name>/at_max`` = share of those items reaching ``maxima[name]``; ``<name>/applies`` = share of items it
    applies to, where that is not all of them (a component that applies to none has only that key)."""
    names = list(records[0]["rewards"]) if records else []
    out: dict[str, float] = {"items": float(len(records))}
    for name in names:
        values = [r["rewards"][name] for r in records]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if len(values) < len(records):
            out[f"{name}/applies"] = len(values) / len(records)
        if not values:
            continue
        out[f"{name}/mean"] = sum(values) / len(values)
        if maxima and name in maxima:
            out[f"{name}/at_max"] = sum(v >= maxima[name] for v in values) / len(values)
    out["truncated_frac"] = sum(r["truncated"] for r in records) / max(len(records), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="HF model folder, hub id or smollm2-135m-instruct")
    parser.add_argument("--config", help="the run's YAML config (task, data options, rollout settings)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the records and the summary")
    parser.add_argument("--split", default="test", choices=["test", "train"])
    parser.add_argument("--limit", type=int)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument(
        "--sample", action="store_true", help="sample at the config's temperature instead of greedy"
    )
    parser.add_argument(
        "--max",
        action="append",
        default=[],
        help="NAME=VALUE (repeatable): report the share of responses where NAME reaches VALUE",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    maxima = {}
    for name, value in named_values(args.max, "--max").items():
        try:
            maxima[name] = float(value)
        except ValueError:
            parser.error(f"--max {name}={value}: the value must be a number")
    if args.samples > 1 and not args.sample:
        parser.error("--samples above 1 needs --sample (greedy decoding gives one completion k times)")
    from transformers import AutoTokenizer

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    task = build_task(cfg.task, cfg.data.options, cfg.seed)
    unknown = sorted(set(maxima) - set(task.rewards.names))
    if unknown:  # before generating, not after
        parser.error(
            f"--max names {unknown} are not reward components of task {cfg.task!r}: {task.rewards.names}"
        )
    from gdpo.assets import resolve_model

    path = resolve_model(args.model)  # an offline alias (smollm2-135m-instruct) or a folder / hub id
    model = load_generator(path, cfg.rollout)
    tokenizer = AutoTokenizer.from_pretrained(path)
    records = evaluate(
        model,
        tokenizer,
        task,
        cfg.rollout,
        split=args.split,
        limit=args.limit,
        samples=args.samples,
        greedy=not args.sample,
    )
    summary = summarise(records, maxima)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "records": records}, indent=1, allow_nan=False))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
