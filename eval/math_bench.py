"""Math benchmarks (paper §4.2, Tables 3-4): average pass@1 over k samples, and the Exceed ratio.

    python -m eval.math_bench --model M --benchmarks math500,aime24 --k 16 --out-dir results/math
    python -m eval.math_bench --model M --benchmarks amc,olympiad --data amc=amc.json --data olympiad=ob.json

Protocol (docs/paper-notes.md §8.2; ``eval.decoding``): temperature 0.6, top_p 0.95, k = 16 samples; Acc = pass@1 averaged over
the samples, then over the questions; Exceed = % of all responses longer than the length limit (4,000 tokens;
40 for the tiny ``synthetic`` benchmark). What the paper leaves open and we decide:

* Prompt: DeepSeek-R1's math instruction after the problem (``gdpo.tasks.math.boxed_messages``), rendered with
  the model's chat template; the score is ``gdpo.tasks.math.correctness_reward`` (last ``\\boxed{}``,
  math-verify), the same function that rewards training.
* Length = completion tokens including the EOS token, as the rollout counts them; a response is "longer than the
  limit" when it has more than ``length_limit`` tokens (the complement of the length reward).
* Generation goes through the rollout backend ``--backend`` names (``gdpo.rollout.make_rollout_backend``): ``hf``
  (in-process, the CPU default) or ``vllm`` (as the paper; the vLLM environment, docs/generation.md), with the
  same sampling settings and per-sample seeds; the paper's 32k-token generation cap is the CLI default, lower
  it with ``--max-new-tokens`` on small machines. A truncated
  response is scored as it is for Acc and counts as exceeding whatever its length (it would have been longer; an
  upper bound when ``--max-new-tokens`` is below the limit), as in ``eval.code_bench``.
* Items whose prompt exceeds ``max_prompt_tokens`` are not generated: their samples count as wrong (and not as
  exceeding), and the summary says how many.
* Benchmarks: math500 (MATH500, the subset the DLER numbers use), aime24 (2024 I + II), amc (AMC 2022 + 2023),
  minerva (OCW), olympiad (OlympiadBench), gsm8k (test), synthetic (the tiny preset's test problems). AMC and
  OlympiadBench ship in no package: pass ``--data amc=FILE`` or a hub name (see ``gdpo.data.math_data``).

Writes ``<out-dir>/<benchmark>/records.jsonl`` (one line per question: id, answer, every sample's completion,
token count and verdict, its pass@1) and ``<out-dir>/<benchmark>/summary.json``; the CLI also writes
``<out-dir>/summary.json`` with every benchmark's summary.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.decoding import PAPER_TEMPERATURE, PAPER_TOP_P, paper_rollout_config
from eval.decontaminate import TrainingSet, decontaminate
from gdpo.data import math_data
from gdpo.tasks.math import boxed_messages, correctness_reward

__all__ = [
    "BENCHMARKS",
    "DEFAULT_LENGTH_LIMIT",
    "load_benchmark",
    "run_benchmark",
    "score_samples",
]

BENCHMARKS: dict[str, Callable[..., list[dict]]] = {
    "math500": math_data.load_math500,
    "aime24": math_data.load_aime24,
    "amc": math_data.load_amc,
    "minerva": math_data.load_minerva,
    "olympiad": math_data.load_olympiad,
    "gsm8k": lambda: math_data.load_gsm8k("test"),
    "synthetic": lambda: math_data.synthetic_problems(200, "test", seed=0),
}
TAKES_SOURCE = ("amc", "olympiad")  # loaders that read a local file or a hub dataset
DEFAULT_LENGTH_LIMIT = {"synthetic": 40}
PAPER_LENGTH_LIMIT = 4000


def load_benchmark(name: str, source: str | None = None) -> list[dict]:
    """Items (problem, answer, source, id) of a registered benchmark; ``source`` only for amc/olympiad."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown math benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if source is not None:
        if name not in TAKES_SOURCE:
            raise ValueError(f"benchmark {name!r} ships in a package and takes no data source")
        return BENCHMARKS[name](source)
    return BENCHMARKS[name]()


def score_samples(
    items: Sequence[dict],
    completions_per_item: Sequence[Sequence[str]],
    num_tokens_per_item: Sequence[Sequence[int]],
    length_limit: int = PAPER_LENGTH_LIMIT,
    skipped: Sequence[bool] | None = None,
    truncated_per_item: Sequence[Sequence[bool]] | None = None,
    answer_after_think: bool = False,
) -> dict[str, Any]:
    """Score k samples per item: ``{"summary": {...}, "records": [...]}`` (Acc and Exceed in %).

    Acc = mean over items of the item's pass@1 (its share of correct samples); Exceed = share of all responses
    with more than ``length_limit`` tokens or cut at the generation cap (``truncated_per_item``). ``skipped[i]``
    marks items that were not generated (counted wrong, not exceeding). ``answer_after_think``: the answer is
    read only after ``</think>``, as the run's reward read it (``gdpo.tasks.math.correctness_reward``).
    """
    if not (len(items) == len(completions_per_item) == len(num_tokens_per_item)):
        raise ValueError(
            f"{len(items)} items, {len(completions_per_item)} completion lists, "
            f"{len(num_tokens_per_item)} token-count lists: they must match"
        )
    skipped = list(skipped) if skipped is not None else [False] * len(items)
    if truncated_per_item is None:
        truncated_per_item = [[False] * len(c) for c in completions_per_item]
    if len(truncated_per_item) != len(items):
        raise ValueError(f"{len(items)} items but {len(truncated_per_item)} truncation lists")
    records, responses, exceeding = [], 0, 0
    for i, (item, completions, lengths) in enumerate(zip(items, completions_per_item, num_tokens_per_item)):
        if len(completions) != len(lengths) or not completions or len(truncated_per_item[i]) != len(lengths):
            raise ValueError(
                f"item {i} ({item.get('id')}): {len(completions)} completions, {len(lengths)} token counts and "
                f"{len(truncated_per_item[i])} truncation flags"
            )
        correct = [
            0.0
            if skipped[i]
            else correctness_reward(c, item["answer"], answer_after_think=answer_after_think)
            for c in completions
        ]
        longer = [
            not skipped[i] and (int(n) > length_limit or bool(cut))
            for n, cut in zip(lengths, truncated_per_item[i])
        ]
        responses += len(completions)
        exceeding += sum(longer)
        records.append(
            {
                "id": item["id"],
                "answer": item["answer"],
                "pass@1": sum(correct) / len(correct),
                "exceed": sum(longer) / len(longer),
                "skipped": skipped[i],
                "samples": [
                    {"completion": c, "num_tokens": int(n), "correct": bool(v), "exceeds": x}
                    for c, n, v, x in zip(completions, lengths, correct, longer)
                ],
            }
        )
    n = max(len(records), 1)
    summary = {
        "items": len(records),
        "responses": responses,
        "samples_per_item": sorted({len(r["samples"]) for r in records}),
        "acc": 100.0 * sum(r["pass@1"] for r in records) / n,
        "exceed": 100.0 * exceeding / max(responses, 1),
        "length_limit": length_limit,
        "mean_tokens": sum(s["num_tokens"] for r in records for s in r["samples"]) / max(responses, 1),
        "skipped_prompt_too_long": sum(skipped),
    }
    return {"summary": summary, "records": records}


def _write(out_dir: Path, name: str, scored: dict[str, Any]) -> None:
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored["records"]))
    (folder / "summary.json").write_text(json.dumps(scored["summary"], indent=2))


def run_benchmark(
    model,
    tokenizer,
    benchmark_name: str,
    rollout_cfg=None,
    k: int = 16,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    *,
    length_limit: int | None = None,
    source: str | None = None,
    batch_prompts: int = 4,
    seed: int = 0,
    training: TrainingSet | None = None,
    answer_after_think: bool = False,
) -> dict[str, Any]:
    """Generate ``k`` samples for each of the first ``limit`` items, score them, write the files; the summary.

    ``model``: a transformers model, or the model's folder where ``rollout_cfg.backend`` is ``vllm``
    (``gdpo.rollout.load_generator``). ``rollout_cfg`` defaults to :func:`paper_rollout_config`; ``length_limit``
    to 4,000 (40 for synthetic). Question ``i`` is seeded ``seed * 1_000_003 + i`` whatever the backend.
    With ``training`` (the run's training prompts), items the run trained on are left out first
    (``eval.decontaminate``); the summary counts them in ``decontaminated``.
    """
    from gdpo.rollout import encode_prompt, generation_chunks, make_rollout_backend

    rollout_cfg = rollout_cfg or paper_rollout_config()
    if length_limit is None:
        length_limit = DEFAULT_LENGTH_LIMIT.get(benchmark_name, PAPER_LENGTH_LIMIT)
    items, dropped = decontaminate(
        load_benchmark(benchmark_name, source), training, lambda item: item["problem"]
    )
    items = items[:limit]
    prompts = [encode_prompt(tokenizer, boxed_messages(item["problem"])) for item in items]
    skipped = [len(p) > rollout_cfg.max_prompt_tokens for p in prompts]
    completions: list[list[str]] = [[""] * k for _ in items]
    lengths: list[list[int]] = [[0] * k for _ in items]
    truncated: list[list[bool]] = [[False] * k for _ in items]
    backend = make_rollout_backend(rollout_cfg, model, tokenizer)
    todo = [i for i in range(len(items)) if not skipped[i]]
    for chunk in generation_chunks(todo, batch_prompts, rollout_cfg):
        ro = backend.generate([prompts[i] for i in chunk], [seed * 1_000_003 + i for i in chunk], k)
        for row, i in enumerate(chunk):
            completions[i] = ro.completions[row * k : (row + 1) * k]
            lengths[i] = [int(n) for n in ro.num_tokens[row * k : (row + 1) * k]]
            truncated[i] = [bool(t) for t in ro.truncated[row * k : (row + 1) * k]]
    scored = score_samples(
        items, completions, lengths, length_limit, skipped, truncated, answer_after_think=answer_after_think
    )
    scored["summary"].update(
        benchmark=benchmark_name,
        temperature=rollout_cfg.temperature,
        top_p=rollout_cfg.top_p,
        max_new_tokens=rollout_cfg.max_new_tokens,
        decontaminated=len(dropped),
        answer_after_think=answer_after_think,
    )
    if out_dir is not None:
        _write(Path(out_dir), benchmark_name, scored)
    return scored["summary"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="HF model folder, hub id or offline alias")
    parser.add_argument("--benchmarks", default="math500,aime24,amc,minerva,olympiad", help="comma-separated")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--k", type=int, default=16, help="samples per question (paper: 16)")
    parser.add_argument("--limit", type=int, help="first N questions of each benchmark")
    parser.add_argument(
        "--length-limit", type=int, help="Exceed threshold in tokens (default 4000; synthetic 40)"
    )
    parser.add_argument("--temperature", type=float, default=PAPER_TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=PAPER_TOP_P)
    parser.add_argument("--max-new-tokens", type=int, default=32768)
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--batch-prompts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", action="append", default=[], help="NAME=FILE_OR_HUB_NAME for amc, olympiad")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; hf only)")
    parser.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="generation engine (vllm: the vLLM environment)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARKS)}")
    from gdpo.cli import named_values

    sources = named_values(args.data, "--data", BENCHMARKS)

    import torch
    from transformers import AutoTokenizer

    from gdpo.assets import resolve_model
    from gdpo.config import RolloutConfig
    from gdpo.rollout import load_generator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = RolloutConfig(
        backend=args.backend,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    model = load_generator(path, cfg, device)
    summaries = {}
    for name in names:
        summaries[name] = run_benchmark(
            model,
            tokenizer,
            name,
            cfg,
            args.k,
            args.limit,
            args.out_dir,
            length_limit=args.length_limit,
            source=sources.get(name),
            batch_prompts=args.batch_prompts,
            seed=args.seed,
        )
        print(json.dumps({name: summaries[name]}), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "summary.json").write_text(json.dumps(summaries, indent=2))


if __name__ == "__main__":
    main()
