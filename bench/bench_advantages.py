"""Benchmark: cost of the advantage estimators at the paper's batch shapes.

Times ``compute_advantages`` (median of repeated calls) for the tool-calling shape (512 prompts x 4
rollouts x 2 rewards), the math shape (512 x 16 x 2) and the coding shape (512 x 16 x 3), on the CPU
and, where present, on CUDA. Writes ``bench/results/advantages-<device>.json`` and prints a table.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gdpo.advantages import compute_advantages

SHAPES = {"tool (512x4x2)": (512, 4, 2), "math (512x16x2)": (512, 16, 2), "code (512x16x3)": (512, 16, 3)}
METHODS = ("grpo", "grpo_no_std", "gdpo")
RESULTS = Path(__file__).parent / "results"


def time_call(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rows = []
        for label, (b, g, k) in SHAPES.items():
            rewards = torch.randint(0, 2, (b, g, k), device=device).float()
            lengths = torch.randint(1, 1024, (b, g), device=device)
            for method in METHODS:
                for batch_norm in ("sequence", "token") if method == "gdpo" else ("sequence",):
                    seconds = time_call(
                        lambda: compute_advantages(rewards, method, batch_norm=batch_norm, lengths=lengths)  # noqa: B023
                    )
                    rows.append(
                        {"shape": label, "method": method, "batch_norm": batch_norm, "ms": seconds * 1e3}
                    )
        result = {"device": device_name(device), "torch": torch.__version__, "results": rows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"advantages-{device}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"compute_advantages on {result['device']} (median ms per call) -> {out}")
        for r in rows:
            print(f"  {r['shape']:<18} {r['method']:<12} {r['batch_norm']:<9} {r['ms']:8.3f} ms")


if __name__ == "__main__":
    main()
