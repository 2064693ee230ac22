"""Benchmark: what the checkpoint manifest costs, on the tiny model's checkpoint (CPU, a world of one).

Builds the toy config's DeepSpeed engine, takes one optimizer step (so the checkpoint holds Adam's moments),
then times (median of repeats) a whole ``save_checkpoint``, ``write_manifest`` alone (hashing every file) and
``verify_checkpoint`` (what a resume adds), and the throughput of SHA-256 and BLAKE2b over the checkpoint's
bytes. Writes ``bench/results/checkpoint-cpu.json`` and prints a table.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_advantages import device_name
from gdpo.checkpoint import save_checkpoint, verify_checkpoint, write_manifest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
REPEATS = 7


def median_time(fn, repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def tiny_engine():
    from transformers import AutoModelForCausalLM

    from gdpo.config import TrainConfig, load_config
    from gdpo.distributed import init_distributed
    from gdpo.trainer import build_engine, plan_layout, prepare_model

    cfg = load_config(
        TrainConfig,
        REPO / "experiments/toy/configs/tiny.yaml",
        ["warm_start.enabled=false", "logging.progress=false"],
    )
    path = prepare_model(cfg)
    init_distributed(torch.device("cpu"))
    engine = build_engine(cfg, AutoModelForCausalLM.from_pretrained(path), plan_layout(cfg, 1), 1)
    for _ in range(engine.gradient_accumulation_steps()):  # one update: Adam's moments exist
        engine.backward(engine(torch.arange(8).view(1, -1)).logits.float().pow(2).mean())
        engine.step()
    return engine


def main() -> None:
    engine = tiny_engine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_s = median_time(lambda: save_checkpoint(root, 1, engine, keep=1))
        folder = root / "step_000001"
        files = [p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"]
        data = [p.read_bytes() for p in files]
        size = sum(len(d) for d in data)
        row = {
            "checkpoint_bytes": size,
            "files": len(files),
            "save_checkpoint_s": save_s,
            "write_manifest_s": median_time(lambda: write_manifest(folder)),
            "verify_checkpoint_s": median_time(lambda: verify_checkpoint(folder)),
            **{
                f"{name}_mb_per_s": size
                / 1e6
                / median_time(lambda n=name: [hashlib.new(n, d).digest() for d in data])
                for name in ("sha256", "blake2b")
            },
        }
    out = {"device": device_name("cpu"), "torch": torch.__version__, "results": row}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checkpoint-cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"tiny model checkpoint: {size / 1e6:.1f} MB in {len(files)} files ({out['device']})")
    for key, value in row.items():
        if key.endswith("_per_s"):
            print(f"  {key:<22} {value:8.0f}")
        elif key.endswith("_s"):
            print(f"  {key:<22} {value * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
