"""experiments/reproduce.py on a Ray cluster with GPUs: a training job holds the GPUs of a node and starts one
rank per GPU with torchrun; an evaluation-only job holds one GPU.

Ray's GPUs are a count it is told: a local instance given two on this CPU machine places the jobs as on a node
with two GPUs (CUDA_VISIBLE_DEVICES set by Ray), and the two ranks train on CPU (gloo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from experiments.reproduce import OBJECT_STORE_BYTES, Job, run_jobs
from tests.conftest import REPO, TEST_OVERRIDES

CONFIG = REPO / "experiments/toy/configs/tiny.yaml"


def record_devices(model_dir: Path, cfg, out_dir: Path) -> dict:
    """An evaluation that writes down the GPUs Ray gave its job."""
    out = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(out))
    return out


@pytest.mark.slow
def test_a_run_holds_a_nodes_gpus_and_trains_one_rank_on_each(tmp_path, toy_model_dir):
    import ray

    common = (*TEST_OVERRIDES, "steps=2")
    evaluations = [
        Job(f"base{i}", common, model_dir=toy_model_dir, eval_dir=tmp_path / f"base{i}") for i in range(3)
    ]
    run = tmp_path / "gdpo" / "seed0"
    jobs = [*evaluations, Job("gdpo/seed0", (*common, "algorithm.method=gdpo"), run_dir=run)]
    lines: list[str] = []
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
    )
    try:
        run_jobs(CONFIG, jobs, evaluate=record_devices, log=lines.append)
    finally:
        ray.shutdown()
    assert sorted(line.split("] ")[1].split(" (")[0] for line in lines) == [
        "base0: evaluated",
        "base1: evaluated",
        "base2: evaluated",
        "gdpo/seed0: trained + evaluated",
    ]
    assert json.loads((run / "metadata.json").read_text())["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    seen = [json.loads((job.eval_dir or run / "eval").joinpath("summary.json").read_text()) for job in jobs]
    assert seen[-1]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert all(s["CUDA_VISIBLE_DEVICES"] in ("0", "1") for s in seen[:-1])
    # Every GPU job in a fresh Ray worker: a reused one would keep the CUDA context of the GPUs it had.
    assert len({s["pid"] for s in seen}) == len(jobs)
    assert (run / "reproduce.log").read_text().count("run folder: ") == 2  # gdpo.cli's last line, per rank
