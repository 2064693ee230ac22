"""Verified, atomic checkpoints through DeepSpeed: model, optimizer, LR scheduler, RNG states and the trainer step.

``<run>/checkpoints/step_000010/`` holds DeepSpeed's checkpoint (tag ``state``, every rank's ZeRO partition),
``rng_rank<r>.pt`` per rank, ``trainer_state.json`` and, written last, ``manifest.json``: the size and SHA-256
of every other file in the folder, all ranks' files included. A checkpoint is written into a hidden temporary
folder and renamed into place only when every rank has finished and its files are synced to disk, then
``latest`` is replaced atomically: a crash (or a power loss) at any moment leaves the previous checkpoint intact.
The data position needs no state of its own: the prompts of step k are a function of (seed, k).

Resuming verifies the newest checkpoint against its manifest before loading it. A file that is missing, has
another size or checksum, or cannot be read makes the checkpoint damaged: the resume says which file, and falls
back to the newest intact checkpoint, or stops with one line naming every damaged one. A folder without a
manifest is incomplete (an interrupted save) and never resumed from. A save that fails (a full disk: ENOSPC)
is an error naming the folder, and leaves the previous checkpoint the latest.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gdpo.distributed import all_reduce_sum, barrier, is_main, rank, world_size
from gdpo.runlog import atomic_write_text, fsync_dir, fsync_tree

__all__ = [
    "CheckpointDamaged",
    "Restored",
    "latest_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
    "write_manifest",
]

TAG = "state"
MANIFEST = "manifest.json"
STATE = "trainer_state.json"
HASH = "sha256"
# Below this much free space, a write that failed without an errno (torch's zip writer says only "unexpected
# pos") is taken for a full disk: the kernel fills a disk up to its last block before it refuses a write.
LOW_SPACE_BYTES = 1 << 20
_CHUNK = 1 << 22
_THREADS = min(8, os.cpu_count() or 1)


class CheckpointDamaged(ValueError):
    """A checkpoint folder whose files do not match its manifest (or that has no manifest)."""


@dataclass(frozen=True)
class Restored:
    """What a resume loaded: the step (0: nothing to resume), its folder, and the newer checkpoints it skipped
    (folder name -> what is wrong with it), for the log and metadata.json."""

    step: int
    path: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)


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


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def save_checkpoint(root: Path, step: int, engine, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder.

    A write that fails on any rank fails the save on every rank (none is left waiting at a barrier): the
    temporary folder is removed, ``latest`` keeps naming the previous checkpoint, and the error names the
    folder (and ENOSPC when the disk is full).
    """
    root = Path(root)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    error = None
    try:
        engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False)
        torch.save(_rng_state(), tmp / f"rng_rank{rank()}.pt")
        # Every rank syncs (a node syncs only what it wrote itself, on a shared file system too), so that all of
        # the checkpoint is on disk before the manifest and ``latest`` can name it.
        fsync_tree(tmp)
    except Exception as exc:  # any failure must reach every rank, not leave the others at a barrier
        error = _save_error(exc, root, tmp, step)
    _fail_together(error, tmp, step)
    if is_main():
        try:
            atomic_write_text(tmp / STATE, json.dumps({"step": step}))
            write_manifest(tmp)
        except Exception as exc:
            error = _save_error(exc, root, tmp, step)
    _fail_together(error, tmp, step)
    if is_main():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / "latest", final.name)
        _prune(root, keep, final)
    barrier()
    return final


def _save_error(exc: BaseException, root: Path, tmp: Path, step: int) -> OSError:
    """One line naming the checkpoint, the file or folder being written, and ENOSPC when the disk is full."""
    latest = root / "latest"
    kept = f"{latest.read_text().strip()} stays the latest" if latest.exists() else "no earlier checkpoint"
    where = getattr(exc, "filename", None) or tmp
    if _disk_full(exc, tmp):
        error = OSError(
            errno.ENOSPC,
            f"checkpoint of step {step} not saved: no space left on device (ENOSPC) writing {where}; {kept}",
        )
    else:  # keep the cause: its traceback is the only clue to an unexpected failure
        code = getattr(exc, "errno", None) or errno.EIO
        error = OSError(code, f"checkpoint of step {step} not saved: writing {where} failed ({exc}); {kept}")
        error.__cause__ = exc
    return error


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an error it was raised from) is ENOSPC / EDQUOT, or a write error without an errno
    while ``folder``'s file system has (almost) no free space left."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # another error the system named
    try:
        stats = os.statvfs(folder if folder.exists() else folder.parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES


def _fail_together(error: OSError | None, tmp: Path, step: int) -> None:
    """Collective: raise on every rank if a write failed on any (the failing rank raises its own error)."""
    if not all_reduce_sum(int(error is not None)):
        return
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
    if error is not None:
        raise error
    raise OSError(
        errno.EIO, f"checkpoint of step {step} not saved: a write failed on another rank (see its error)"
    )


def write_manifest(folder: Path) -> dict:
    """Record the size and checksum of every file under ``folder`` in ``folder/manifest.json`` (atomically,
    synced); returns the manifest. Files are hashed in parallel threads (hashlib releases the GIL)."""
    names = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    )
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(lambda name: _digest(folder / name), names))
    files = {
        name: {"size": (folder / name).stat().st_size, HASH: digest} for name, digest in zip(names, digests)
    }
    manifest = {"hash": HASH, "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _digest(path: Path, algorithm: str = HASH) -> str:
    """Hex checksum of the file at ``path``."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _prune(root: Path, keep: int, newest: Path) -> None:
    """Keep ``newest`` (just written, intact) and the ``keep - 1`` checkpoints before it. Folders of later steps
    are from before a resume that skipped them as damaged or incomplete: removed, as are interrupted saves."""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    older = [p for p in steps if p.name < newest.name]
    later = [p for p in steps if p.name > newest.name]
    for old in [*older[: max(0, len(older) - (keep - 1))], *later, *root.glob(".tmp-step_*")]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Verifying and loading
# --------------------------------------------------------------------------------------------------


def verify_checkpoint(path: Path) -> None:
    """Check every file of the checkpoint ``path`` against its manifest (files hashed in parallel threads).

    Raises CheckpointDamaged naming the first file (in manifest order) that is missing, unreadable, or of
    another size or checksum; or saying that the manifest itself is missing or unreadable.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        algorithm, files = manifest["hash"], manifest["files"]
        expected = [(name, int(entry["size"]), entry[algorithm]) for name, entry in files.items()]
        hashlib.new(algorithm)
    except FileNotFoundError:
        raise CheckpointDamaged(f"{path.name}: no {MANIFEST} (an interrupted save: incomplete)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointDamaged(f"{path.name}: {MANIFEST} unreadable ({type(exc).__name__}: {exc})") from None
    if STATE not in files:
        raise CheckpointDamaged(f"{path.name}: {MANIFEST} does not list {STATE}")
    with ThreadPoolExecutor(_THREADS) as pool:
        problems = pool.map(lambda item: _file_problem(path / item[0], item[1], item[2], algorithm), expected)
        for (name, _, _), problem in zip(expected, problems):
            if problem:
                raise CheckpointDamaged(f"{path.name}: {name} {problem}")


def _file_problem(file: Path, size: int, digest: str, algorithm: str) -> str | None:
    """What is wrong with ``file`` given its manifest entry, or None."""
    try:
        with open(file, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            if actual != size:
                return f"has {actual} bytes, its manifest says {size}"
            h = hashlib.new(algorithm)
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if h.hexdigest() == digest else f"differs from its manifest ({algorithm} checksum)"


def _newest_intact(root: Path) -> tuple[Path | None, dict[str, str]]:
    """The newest checkpoint under ``root`` that verifies, and the newer ones that did not (name -> reason).

    Raises RuntimeError with one line naming each damaged checkpoint when there are checkpoints (or a ``latest``
    pointer) but none is intact.
    """
    folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    skipped: dict[str, str] = {}
    for folder in folders:
        try:
            verify_checkpoint(folder)
            return folder, skipped
        except CheckpointDamaged as exc:
            skipped[folder.name] = str(exc).removeprefix(f"{folder.name}: ")
    if folders or (root / "latest").exists():
        found = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "no step_* folder"
        raise RuntimeError(f"no intact checkpoint to resume from in {root}: {found}")
    return None, skipped


def latest_checkpoint(root: Path) -> Path | None:
    """The newest intact checkpoint under ``root``; None when no checkpoint was ever written there."""
    return _newest_intact(Path(root))[0]


def restore_checkpoint(root: Path, engine) -> Restored:
    """Collective: load the newest intact checkpoint into ``engine`` (and the RNG states).

    Rank 0 verifies the checkpoints and tells the others which one to load. A newer checkpoint that is damaged is
    skipped: rank 0 says so on stderr, and ``Restored.skipped`` names it (for metadata.json).
    """
    root = Path(root)
    choice: list = [None, {}, None]
    if is_main():
        try:
            path, skipped = _newest_intact(root)
            choice = [path and path.name, skipped, None]
        except RuntimeError as exc:
            choice = [None, {}, str(exc)]
    if world_size() > 1:
        torch.distributed.broadcast_object_list(choice, src=0)
    name, skipped, error = choice
    if error is not None:
        raise RuntimeError(error)
    if name is None:
        return Restored(0)
    path = root / name
    if skipped and is_main():
        for damaged, why in skipped.items():
            print(f"checkpoint {damaged} is damaged: {why}; resuming from {name} instead", file=sys.stderr)
    try:
        load_path, _ = engine.load_checkpoint(
            str(path), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except Exception as exc:  # verified bytes that DeepSpeed cannot read: name the folder, keep the cause
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}: {exc}") from exc
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
    rng = path / f"rng_rank{rank()}.pt"
    if rng.exists():
        try:
            _set_rng_state(torch.load(rng, weights_only=False))
        except Exception as exc:
            raise RuntimeError(f"cannot restore the RNG states from {rng}: {exc}") from exc
    return Restored(int(json.loads((path / STATE).read_text())["step"]), path, skipped)
