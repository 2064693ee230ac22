"""Benchmark: where the ``hf`` rollout backend's time goes at the trainer benchmark's shape.

The trainer benchmark (``bench_trainer.py``) finds generation about half of our step. This one times the
``hf`` backend alone on the same model and prompts (the embedded tiny model, random init, so completions run
to the length limit: 8 prompts x 8 rollouts x 64 new tokens) in the settings one would try to speed it up:

* torch threads 2 (the default here) and 1;
* float32 and bfloat16 weights (the CPU's bf16 matrix instructions, where it has them);
* the cost of one decode step (a forward of one new token per sequence over a KV cache of 40 tokens) for
  1 sequence and for 64: if the 64-sequence step costs far less than 64 one-sequence steps, the loop is
  bound by per-call overhead rather than by arithmetic.
* the KV cache with room reserved ahead (``gdpo.rollout.reserve_cache``: written in place, doubled when
  full) against transformers' concatenating dynamic cache, at the benchmark's 64 new tokens and at 256 (the
  copies the reserved cache saves grow with the square of the completion length).

    python -m bench.bench_generation        # prints a table; writes bench/results/generation-cpu.json
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from bench.bench_advantages import device_name
from bench.bench_trainer import NEW_TOKENS, PROMPTS, ROLLOUTS, toy_config

REPO = Path(__file__).resolve().parent.parent

REPEATS = 5


def _median_time(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def decode_step_ms(model, batch: int, context: int = 40, steps: int = 20) -> float:
    """Median time of one single-token forward over a ``context``-token KV cache, for ``batch`` sequences."""
    ids = torch.randint(10, 200, (batch, context))
    past = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
    token = torch.randint(10, 200, (batch, 1))
    times = []
    for i in range(steps):
        mask = torch.ones(batch, context + i + 1, dtype=torch.long)
        start = time.perf_counter()
        model(input_ids=token, attention_mask=mask, past_key_values=past, use_cache=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def cache_row(model, tokenizer, cfg, prompts, new_tokens: int) -> dict:
    """Generation time with the reserved KV cache and with transformers' concatenating one, alternated."""
    import gdpo.rollout
    from gdpo.rollout import HFRollout

    reserve = gdpo.rollout.reserve_cache
    backend = HFRollout(model, tokenizer, dataclasses.replace(cfg.rollout, max_new_tokens=new_tokens))
    times = {"reserved": [], "concatenated": []}
    try:
        for repeat in range(REPEATS + 1):  # the first round is warm-up
            for mode in times:
                gdpo.rollout.reserve_cache = reserve if mode == "reserved" else (lambda cache, extra: None)
                start = time.perf_counter()
                backend.generate(prompts, list(range(PROMPTS)), ROLLOUTS)
                if repeat:
                    times[mode].append(time.perf_counter() - start)
    finally:
        gdpo.rollout.reserve_cache = reserve
    return {"max_new_tokens": new_tokens, **{f"{m}_s": statistics.median(t) for m, t in times.items()}}


def main() -> None:
    from gdpo.rollout import HFRollout, encode_prompt
    from gdpo.tasks import build_task
    from gdpo.trainer import load_policy, prepare_model

    cfg = toy_config(2, "unused")
    task = build_task("toy", {}, 0)
    tokenizer, model = load_policy(cfg, prepare_model(cfg), torch.device("cpu"))
    model.eval()
    prompts = [encode_prompt(tokenizer, row["messages"]) for row in task.train[:PROMPTS]]
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    threads_before = torch.get_num_threads()

    rows = []
    for threads in (threads_before, 1):
        torch.set_num_threads(threads)
        for dtype, m in models.items():
            backend = HFRollout(m, tokenizer, cfg.rollout)
            seconds = _median_time(lambda b=backend: b.generate(prompts, list(range(PROMPTS)), ROLLOUTS))
            rows.append(
                {
                    "threads": threads,
                    "dtype": dtype,
                    "generate_s": seconds,
                    "ms_per_position": 1000 * seconds / NEW_TOKENS,  # one new token for every sequence
                    "decode_step_ms_batch1": decode_step_ms(m, 1),
                    f"decode_step_ms_batch{PROMPTS * ROLLOUTS}": decode_step_ms(m, PROMPTS * ROLLOUTS),
                }
            )
    torch.set_num_threads(threads_before)
    result = {
        "device": device_name("cpu"),
        "shape": {"prompts": PROMPTS, "rollouts": ROLLOUTS, "max_new_tokens": NEW_TOKENS},
        "rows": rows,
        "kv_cache": [cache_row(model, tokenizer, cfg, prompts, n) for n in (NEW_TOKENS, 4 * NEW_TOKENS)],
    }
    out = REPO / "bench" / "results" / "generation-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"hf rollout on {result['device']}: {PROMPTS} prompts x {ROLLOUTS} rollouts x {NEW_TOKENS} new tokens"
    )
    batch = PROMPTS * ROLLOUTS
    print(
        f"  threads dtype     generate  per position ({batch} seqs)  decode step (1 seq)  decode step ({batch} seqs)"
    )
    for r in rows:
        print(
            f"  {r['threads']:>7} {r['dtype']:<9} {r['generate_s']:7.3f} s {r['ms_per_position']:7.2f} ms"
            f" {r['decode_step_ms_batch1']:15.2f} ms {r[f'decode_step_ms_batch{batch}']:17.2f} ms"
        )
    print("  KV cache     new tokens  reserved  concatenated")
    for r in result["kv_cache"]:
        print(f"  {'':<12} {r['max_new_tokens']:10} {r['reserved_s']:7.3f} s {r['concatenated_s']:9.3f} s")


if __name__ == "__main__":
    main()
