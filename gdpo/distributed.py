"""Process-group helpers. One process or many, on CPU (gloo) or GPU (nccl).

Where the world comes from, first match wins:
* a launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): torchrun, and the
  deepspeed launcher, which also appends ``--local_rank=N`` to the command line (``use_local_rank_flag``);
* SLURM: ``srun`` that starts more than one task of a step (``SLURM_STEP_NUM_TASKS`` > 1) without a launcher
  inside; the world is built from the step's variables (``slurm_world``). Without this, every task would train
  alone as a world of one, all writing the same run folder;
* otherwise a world of one.
"""

from __future__ import annotations

import os
import re
import socket
import weakref
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_cat",
    "all_reduce_sum",
    "barrier",
    "first_host",
    "init_distributed",
    "is_main",
    "rank",
    "slurm_world",
    "use_local_rank_flag",
    "world_size",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The MASTER_PORT of a world of one set up by ``init_distributed``. DeepSpeed needs RANK, LOCAL_RANK, etc. in the
# environment for as long as the process runs, so they stay there, and a child process inherits them. The mark
# lets the child tell them from a launcher's: otherwise it would join its parent's world and fail to listen on
# its parent's port (e.g. a train.py started from a notebook that ran ``train``).
LONE_WORLD_ENV = "GDPO_LONE_WORLD_PORT"


def launched_by_a_launcher() -> bool:
    """Whether RANK and the rest come from torchrun / the deepspeed launcher (not set, or inherited, by us).

    A task of an ``srun`` step holds them only once ``init_distributed`` put them there (``slurm_world``)."""
    if "RANK" not in os.environ:
        return False
    return os.environ.get(LONE_WORLD_ENV) != os.environ.get("MASTER_PORT")


def _lone_world() -> dict[str, str]:
    """A world of one on a free port, marked as ours (``LONE_WORLD_ENV``)."""
    port = str(_free_port())
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        LONE_WORLD_ENV: port,
    }


def use_local_rank_flag(local_rank: int) -> None:
    """Take ``--local_rank=N`` from the command line (the deepspeed launcher appends it; it also sets
    LOCAL_RANK=N in the environment, which stays the one source the rest of the code reads)."""
    current = os.environ.get("LOCAL_RANK")
    if current is None:
        os.environ["LOCAL_RANK"] = str(local_rank)
    elif current != str(local_rank):
        raise ValueError(f"--local_rank={local_rank} disagrees with LOCAL_RANK={current} in the environment")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``, ``"r[1-2]-n[3-4]"`` ->
    ``"r1-n3"`` (each bracket gives its first number, zero padding kept)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first host expression ends at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    host = re.sub(r"\[([^\]\-,]+)[^\]]*\]", r"\1", nodelist[:end].strip())
    if not host or any(c in host for c in "[],"):
        raise ValueError(f"SLURM_STEP_NODELIST={nodelist!r} is not a SLURM host list")
    return host


def _slurm_int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None or not value.strip().isdigit():
        raise ValueError(f"srun started several tasks but {name}={value!r} is not a task number")
    return int(value)


def slurm_world(env: Mapping[str, str]) -> dict[str, str] | None:
    """The process-group variables of one task of an ``srun`` step of several tasks; None for any other process.

    RANK / WORLD_SIZE / LOCAL_RANK are SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID. MASTER_ADDR is the
    first host of the step (where task 0 runs) and MASTER_PORT is derived from the job and step ids, so every
    task agrees on them without talking; MASTER_ADDR / MASTER_PORT set by the user win. The step's count of
    tasks is read, not the job's (SLURM_NTASKS): the batch script itself is one process of a job of N tasks.
    """
    if "SLURM_STEP_NUM_TASKS" not in env or _slurm_int(env, "SLURM_STEP_NUM_TASKS") <= 1:
        return None
    job, step = _slurm_int(env, "SLURM_JOB_ID"), env.get("SLURM_STEP_ID", "0")
    step = int(step) if step.isdigit() else 0
    if not env.get("MASTER_ADDR") and not env.get("SLURM_STEP_NODELIST"):
        raise ValueError("srun started several tasks but SLURM_STEP_NODELIST is not set: set MASTER_ADDR")
    return {
        "RANK": str(_slurm_int(env, "SLURM_PROCID")),
        "WORLD_SIZE": str(_slurm_int(env, "SLURM_STEP_NUM_TASKS")),
        "LOCAL_RANK": str(_slurm_int(env, "SLURM_LOCALID")),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_STEP_NODELIST"]),
        "MASTER_PORT": env.get("MASTER_PORT") or str(15_000 + (job % 1000) * 20 + step % 20),
    }


def _check_slurm_gpu(device: torch.device, local_rank: int) -> None:
    """An srun task that sees several GPUs had its device chosen before its local rank was known (cuda:0 for
    every task of the node): an error, not several ranks on one GPU."""
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    if visible > 1 and device.index != local_rank:
        raise RuntimeError(
            f"this srun task (SLURM_LOCALID={local_rank}) sees {visible} GPUs and was given {device}: start one "
            "task per GPU with --gpus-per-task=1 (each task then sees only its own), or torchrun under srun"
        )


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Initialise the default process group through DeepSpeed, from a launcher's environment, an ``srun`` step
    of several tasks (``slurm_world``) or, for a lone process, as a world of one."""
    import deepspeed

    if not dist.is_initialized() and not launched_by_a_launcher():
        slurm = slurm_world(os.environ)
        if slurm is not None:
            _check_slurm_gpu(device, int(slurm["LOCAL_RANK"]))
        os.environ.update(slurm or _lone_world())
    if device.type == "cuda":  # before NCCL starts: its communicator binds to the current device
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        # A process that exits with its group alive can abort in the backend's teardown ("terminate called
        # without an active exception", seen in 3 of 12 two-process gloo exits here), failing its launcher.
        # A finalizer, not atexit: finalizers run newest first at exit, so a vLLM engine made later (it has
        # one) leaves its groups before this removes the default group, which would take theirs along.
        weakref.finalize(_WORLD, _leave_world)
    return dist.get_rank(), dist.get_world_size()


class _World:
    """The anchor of the finalizer that leaves the process group at exit (alive as long as the module)."""


_WORLD = _World()


def _leave_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def prebuild_cpu_ops() -> None:
    """Compile DeepSpeed's CPU shared-memory communication op now (``make setup``), not in the first run.

    On CPU, ``deepspeed.init_distributed`` JIT-builds this op into the torch extensions cache once per machine
    (26 s here); a first training run or timed reproduction would otherwise pay for it.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and builder.is_compatible():
        builder.load(verbose=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def all_reduce_sum(value: float | int, device: torch.device | None = None) -> float:
    """Sum of a number over ranks (a float64 tensor on ``device``, by default where the backend needs it)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor(float(value), dtype=torch.float64, device=device or collective_device())
    dist.all_reduce(t)
    return t.item()


def collective_device() -> torch.device:
    """Where a collective's tensors must live: NCCL takes CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
