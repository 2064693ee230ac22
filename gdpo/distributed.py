"""Process-group helpers. One process or many (torchrun / the deepspeed launcher), on CPU (gloo) or GPU (nccl)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist

__all__ = ["all_gather_cat", "all_reduce_sum", "barrier", "init_distributed", "is_main", "rank", "world_size"]


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
    """Whether RANK and the rest come from torchrun / the deepspeed launcher (not set, or inherited, by us)."""
    if "RANK" not in os.environ:
        return False
    return os.environ.get(LONE_WORLD_ENV) != os.environ.get("MASTER_PORT")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Initialise the default process group through DeepSpeed; a lone process gets a world of one."""
    import deepspeed

    if not dist.is_initialized() and not launched_by_a_launcher():  # a plain script: a world of one
        port = str(_free_port())
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            **{LONE_WORLD_ENV: port},
        )
    if device.type == "cuda":  # before NCCL starts: its communicator binds to the current device
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


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
