"""Every way of starting several processes gives one world: torchrun, the deepspeed launcher (which appends
``--local_rank=N`` to the command line) and SLURM's ``srun`` (tasks that know only SLURM_* variables).

The process tests start 2 real processes (gloo): torchrun and ``deepspeed.launcher.launch`` (what the
``deepspeed`` command runs on each node) are the real launchers; srun is imitated by its environment. The slow
test trains the toy task under each of the three and compares the runs.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gdpo.distributed import first_host, slurm_world, use_local_rank_flag

from .conftest import REPO, TEST_OVERRIDES

# A rank's report: its command line goes through the CLI's argument handling (``--describe`` stops it before
# training), then it joins the world, sums rank + 1 over it and writes what it saw to REPORT_DIR/<rank>.json.
REPORT = """
import json, os, sys, torch
from pathlib import Path
from gdpo.cli import main
from gdpo.distributed import all_reduce_sum, init_distributed
main(sys.argv[1:] + ["--describe"])
rank, world = init_distributed(torch.device("cpu"))
total = all_reduce_sum(rank + 1)
report = [rank, world, os.environ["LOCAL_RANK"], total]
(Path(os.environ["REPORT_DIR"]) / f"{rank}.json").write_text(json.dumps(report))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _slurm_env(base: dict, task: int, tasks: int, job: int) -> dict:
    return dict(
        base,
        SLURM_JOB_ID=str(job),
        SLURM_STEP_ID="0",
        SLURM_PROCID=str(task),
        SLURM_LOCALID=str(task),
        SLURM_NTASKS=str(tasks),
        SLURM_STEP_NUM_TASKS=str(tasks),
        SLURM_STEP_NODELIST="localhost",
    )


def _slurm_job_with_a_free_port() -> int:
    """A job id whose derived MASTER_PORT (``slurm_world``) is free here."""
    for job in range(4000, 5000):
        port = int(slurm_world(_slurm_env({}, 0, 2, job))["MASTER_PORT"])
        if _port_is_free(port):
            return job
    raise RuntimeError("no free port among the job ids tried")


def _deepspeed_launch(port: int, procs: int) -> list[str]:
    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(procs))}).encode()).decode()
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={world_info}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    ]


def _launch(launcher: str, script: list[str], env: dict) -> None:
    """Run ``script`` (argv after the interpreter) in 2 processes started as ``launcher`` would."""
    if launcher == "torchrun":
        cmd = [
            str(Path(sys.executable).parent / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            *script,
        ]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    elif launcher == "deepspeed":
        cmd = [*_deepspeed_launch(_free_port(), 2), *script]
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        job = _slurm_job_with_a_free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, *script],
                env=_slurm_env(env, task, 2, job),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for task in range(2)
        ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]


def test_first_host_of_slurm_host_lists():
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("rack[1-2]-node[003-004]") == "rack1-node003"
    assert first_host("node17,node18") == "node17"
    assert first_host("login") == "login"
    with pytest.raises(ValueError, match=r"SLURM_STEP_NODELIST='gpu\[1-2' is not a SLURM host list"):
        first_host("gpu[1-2")


def test_slurm_world_from_a_step_of_several_tasks():
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_ID": "3",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_NODELIST": "gpu[07-10]",
    }
    assert slurm_world(env) == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(15_000 + 456 * 20 + 3),
    }
    chosen = slurm_world(dict(env, MASTER_ADDR="10.0.0.1", MASTER_PORT="29500"))
    assert (chosen["MASTER_ADDR"], chosen["MASTER_PORT"]) == ("10.0.0.1", "29500")


def test_slurm_world_is_none_for_one_task_and_for_the_batch_script():
    # The batch script of a job of 4 tasks: SLURM_NTASKS=4 but no step of srun (it is one process).
    assert slurm_world({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None
    assert slurm_world({"SLURM_JOB_ID": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) is None
    assert slurm_world({}) is None


def test_slurm_world_names_a_missing_variable():
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NODELIST": "n1",
    }
    with pytest.raises(ValueError, match="SLURM_PROCID=None is not a task number"):
        slurm_world(env)
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST is not set: set MASTER_ADDR"):
        slurm_world({k: v for k, v in env.items() if k != "SLURM_STEP_NODELIST"} | {"SLURM_PROCID": "0"})


def test_an_srun_task_seeing_several_gpus_must_not_share_gpu_0(monkeypatch):
    """The device is chosen before the SLURM world is known: with 8 GPUs visible every task would get cuda:0."""
    import torch

    from gdpo import distributed

    monkeypatch.delenv("RANK", raising=False)
    for name, value in _slurm_env({}, 1, 2, 4242).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    with pytest.raises(
        RuntimeError, match=r"SLURM_LOCALID=1\) sees 8 GPUs and was given cuda:0: .*--gpus-per-task=1"
    ):
        distributed.init_distributed(torch.device("cuda", 0))


def test_local_rank_flag_fills_or_must_match_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    use_local_rank_flag(3)
    import os

    assert os.environ["LOCAL_RANK"] == "3"
    use_local_rank_flag(3)
    with pytest.raises(ValueError, match="--local_rank=1 disagrees with LOCAL_RANK=3 in the environment"):
        use_local_rank_flag(1)


def test_cli_accepts_the_deepspeed_launchers_local_rank(monkeypatch, capsys):
    from gdpo.cli import main

    monkeypatch.setenv("LOCAL_RANK", "1")
    main(["--local_rank=1", "--describe"])
    assert "algorithm.method" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--local_rank=0", "--describe"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "--local_rank=0 disagrees with LOCAL_RANK=1 in the environment\n"


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "slurm"])
def test_each_launcher_gives_one_world_of_two(launcher, subprocess_env, tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    _launch(launcher, [str(script)], dict(subprocess_env, REPORT_DIR=str(tmp_path)))
    reports = sorted(json.loads(p.read_text()) for p in tmp_path.glob("*.json"))
    assert reports == [[0, 2, "0", 3.0], [1, 2, "1", 3.0]]


CONFIG = REPO / "experiments/toy/configs/tiny.yaml"
SCRIPT = REPO / "experiments/toy/train.py"


@pytest.mark.slow
def test_the_three_launchers_give_the_same_run(subprocess_env, tmp_path, toy_model_dir):
    """2 steps of the toy task on 2 processes under each launcher: the same rollouts, rewards, advantages and
    losses (timings aside)."""
    from gdpo.runlog import read_jsonl

    runs = {}
    for launcher in ("torchrun", "deepspeed", "slurm"):
        run_dir = tmp_path / launcher
        args = [
            str(SCRIPT),
            "--config",
            str(CONFIG),
            *TEST_OVERRIDES,
            "steps=2",
            "logging.dump_rollouts=true",
        ]
        _launch(launcher, [*args, f"logging.run_dir={run_dir}"], subprocess_env)
        assert json.loads((run_dir / "metadata.json").read_text())["world_size"] == 2
        metrics = [
            {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}
            for row in read_jsonl(run_dir / "metrics.jsonl")
        ]
        runs[launcher] = (metrics, read_jsonl(run_dir / "rollouts.jsonl"))
    assert [m["step"] for m in runs["torchrun"][0]] == [1, 2]
    assert runs["deepspeed"] == runs["torchrun"]
    assert runs["slurm"] == runs["torchrun"]
