"""Atomic checkpoints through DeepSpeed: model, optimizer, LR scheduler, RNG states and the trainer step.

``<run>/checkpoints/step_000010/`` holds DeepSpeed's checkpoint (tag ``state``, every rank's ZeRO partition),
``rng_rank<r>.pt`` per rank and ``trainer_state.json``. A checkpoint is written into a hidden temporary folder
and renamed into place only when every rank has finished and its files are synced to disk, then ``latest`` is
replaced atomically: a crash (or a power loss) at any moment leaves the previous checkpoint intact. The data position needs no state of its own: the prompts of
step k are a function of (seed, k).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from gdpo.distributed import barrier, is_main, rank
from gdpo.runlog import atomic_write_text, fsync_dir, fsync_tree

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]

TAG = "state"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, engine, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = Path(root)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False)
    torch.save(_rng_state(), tmp / f"rng_rank{rank()}.pt")
    # Every rank syncs (a node syncs only what it wrote itself, on a shared file system too), so that all of
    # the checkpoint is on disk before ``latest`` can name it.
    fsync_tree(tmp)
    barrier()
    if is_main():
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / "latest", final.name)
        _prune(root, keep)
    barrier()
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = Path(root) / "latest"
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def load_checkpoint(root: Path, engine) -> int:
    """Restore the latest checkpoint into ``engine`` (and the RNG states); return its step, or 0 if none."""
    path = latest_checkpoint(root)
    if path is None:
        return 0
    load_path, _ = engine.load_checkpoint(
        str(path), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
    rng = path / f"rng_rank{rank()}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())["step"]
