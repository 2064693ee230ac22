"""Durability of checkpoints and rewinds: everything is synced to disk before anything points at it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from gdpo.checkpoint import Restored, latest_checkpoint, restore_checkpoint, save_checkpoint
from gdpo.runlog import RunLog, read_jsonl

from .conftest import REPO, TEST_OVERRIDES


@pytest.fixture
def disk_events(monkeypatch):
    """Every fsync (by path) and every rename (by destination), in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


class _FakeEngine:
    """Writes one file per save, as DeepSpeed writes its state files under ``<folder>/<tag>/``."""

    def save_checkpoint(self, folder, tag, save_latest):
        (Path(folder) / tag).mkdir(parents=True)
        (Path(folder) / tag / "mp_rank_00_model_states.pt").write_bytes(b"weights")


def test_a_checkpoint_is_synced_before_latest_names_it(tmp_path, disk_events):
    final = save_checkpoint(tmp_path, 3, _FakeEngine())
    assert final == tmp_path / "step_000003" and latest_checkpoint(tmp_path) == final
    latest_written = disk_events.index(("replace", str(tmp_path / "latest")))
    synced_before = {path for kind, path in disk_events[:latest_written] if kind == "fsync"}
    staged = tmp_path / ".tmp-step_000003"
    for name in ("state/mp_rank_00_model_states.pt", "rng_rank0.pt", "state", "."):
        assert str((staged / name).resolve()) in synced_before, name
    # trainer_state.json (what marks the checkpoint complete) is written atomically: synced under a temporary
    # name, renamed, then its folder synced, all before ``latest`` moves.
    state_written = disk_events.index(("replace", str(staged / "trainer_state.json")))
    assert any(
        kind == "fsync" and Path(path).name.startswith(".trainer_state.json.")
        for kind, path in disk_events[:state_written]
    )
    assert ("fsync", str(staged.resolve())) in disk_events[state_written:latest_written]
    # The folder's rename into place is synced (the parent folder) before ``latest`` moves.
    renamed = disk_events.index(("replace", str(final)))
    assert ("fsync", str(tmp_path)) in disk_events[renamed:latest_written]
    # ``latest`` itself: its content, then its folder entry.
    assert ("fsync", str(tmp_path)) in disk_events[latest_written:]


def test_rewound_lines_are_synced_in_the_discarded_file_before_they_leave_the_log(tmp_path, disk_events):
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log_metrics(step, {"loss": float(step)})
    disk_events.clear()
    assert log.rewind_to(1) == 2
    rewritten = disk_events.index(("replace", str(tmp_path / "metrics.jsonl")))
    discarded = disk_events.index(("fsync", str(tmp_path / "metrics.discarded.jsonl")))
    assert discarded < rewritten
    assert ("fsync", str(tmp_path)) in disk_events[discarded:rewritten]  # the new file's folder entry
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.discarded.jsonl")] == [2, 3]


def test_the_manifest_is_written_last_and_lists_every_file(tmp_path, disk_events):
    final = save_checkpoint(tmp_path, 3, _FakeEngine())
    staged = tmp_path / ".tmp-step_000003"
    manifest_written = disk_events.index(("replace", str(staged / "manifest.json")))
    assert disk_events.index(("replace", str(staged / "trainer_state.json"))) < manifest_written
    assert manifest_written < disk_events.index(("replace", str(final)))  # then the folder moves into place
    files = json.loads((final / "manifest.json").read_text())["files"]
    assert files == {
        "rng_rank0.pt": {
            "size": (final / "rng_rank0.pt").stat().st_size,
            "sha256": _sha256(final / "rng_rank0.pt"),
        },
        "state/mp_rank_00_model_states.pt": {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()},
        "trainer_state.json": {"size": 11, "sha256": hashlib.sha256(b'{"step": 3}').hexdigest()},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_without_manifest_is_incomplete_and_never_resumed(tmp_path):
    assert latest_checkpoint(tmp_path) is None  # no checkpoint yet: a fresh start
    (tmp_path / "latest").write_text("step_000004")
    (tmp_path / "step_000004").mkdir()
    (tmp_path / "step_000004/trainer_state.json").write_text('{"step": 4}')
    with pytest.raises(
        RuntimeError,
        match=r"^no intact checkpoint to resume from in .*: step_000004: no manifest\.json \(an interrupted save: "
        r"incomplete\)$",
    ):
        latest_checkpoint(tmp_path)


# -- A full disk ----------------------------------------------------------------------------------------------


class _FullDisk(_FakeEngine):
    """Fails the way a write to a full disk fails: an OSError, or torch's zip writer's RuntimeError (no errno)."""

    def __init__(self, error):
        self.error = error

    def save_checkpoint(self, folder, tag, save_latest):
        super().save_checkpoint(folder, tag, save_latest)
        raise self.error


def test_a_full_disk_is_named_and_the_previous_checkpoint_stays_the_latest(tmp_path):
    save_checkpoint(tmp_path, 3, _FakeEngine())
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".tmp-step_000006/state/x.pt"))
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path, 6, _FullDisk(full))
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value) == (
        f"[Errno 28] checkpoint of step 6 not saved: no space left on device (ENOSPC) writing "
        f"{tmp_path}/.tmp-step_000006/state/x.pt; step_000003 stays the latest"
    )
    assert not (tmp_path / ".tmp-step_000006").exists()  # its space is given back
    assert (tmp_path / "latest").read_text() == "step_000003" and latest_checkpoint(
        tmp_path
    ) == tmp_path / "step_000003"


def test_torchs_write_error_on_a_full_disk_is_named_enospc(tmp_path, monkeypatch):
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4480 vs 4372")
    with pytest.raises(OSError) as caught:  # plenty of space here: a write error, not a full disk
        save_checkpoint(tmp_path, 2, _FullDisk(torch_error))
    assert caught.value.errno == errno.EIO and "ENOSPC" not in str(caught.value)
    assert f"writing {tmp_path}/.tmp-step_000002 failed ([enforce fail" in str(caught.value)
    real_statvfs = os.statvfs

    def full(path):  # what the file system reports once the disk is full
        stats = real_statvfs(path)
        return os.statvfs_result((*stats[:4], 0, *stats[5:]))  # f_bavail = 0

    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(
        OSError, match=r"no space left on device \(ENOSPC\) writing .*\.tmp-step_000002; no earlier"
    ):
        save_checkpoint(tmp_path, 2, _FullDisk(torch_error))
    assert latest_checkpoint(tmp_path) is None and not list(tmp_path.iterdir())


# -- Damaged checkpoints, on a real DeepSpeed engine (the tiny model) -------------------------------------------


@pytest.fixture(scope="module")
def engine(toy_model_dir):
    from transformers import AutoModelForCausalLM

    from gdpo.config import TrainConfig, load_config
    from gdpo.distributed import init_distributed
    from gdpo.trainer import build_engine, plan_layout

    cfg = load_config(TrainConfig, REPO / "experiments/toy/configs/tiny.yaml", TEST_OVERRIDES)
    environ = dict(os.environ)
    started = not torch.distributed.is_initialized()
    init_distributed(torch.device("cpu"))  # a world of one, in this process
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir)  # its own copy: training changes it
    yield build_engine(cfg, model, plan_layout(cfg, 1), 1)
    if started:  # leave the process as the other test modules expect it: no process group, no RANK
        torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)


def _update(engine) -> None:
    """One optimizer step on a made-up loss: the weights change."""
    for _ in range(engine.gradient_accumulation_steps()):
        logits = engine(torch.arange(8).view(1, -1)).logits
        engine.backward(logits.float().pow(2).mean())
        engine.step()


def _weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@pytest.fixture(scope="module")
def saved(engine, tmp_path_factory):
    """Checkpoints of steps 2 and 4 with different weights, the weights, and the draw after each save."""
    root = tmp_path_factory.mktemp("saved")
    weights, draws = {}, {}
    for step in (2, 4):
        _update(engine)
        save_checkpoint(root, step, engine)
        weights[step], draws[step] = _weights(engine), random.random()
    _update(engine)  # the engine moves on: a resume must bring it back
    return root, weights, draws


def _restored_to(engine, saved, step) -> bool:
    _, weights, draws = saved
    now = _weights(engine)
    assert now.keys() == weights[step].keys()
    return all(torch.equal(now[k], weights[step][k]) for k in now) and random.random() == draws[step]


def _scribble(path: Path) -> None:  # 4 KiB of random bytes in the middle of the file
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(4096))


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _unreadable(path: Path) -> None:  # a folder where the file was: open() fails
    path.unlink()
    path.mkdir()


MODEL = "state/mp_rank_00_model_states.pt"
DAMAGE = {  # file, how it is spoilt, what the resume says ({size}: the file's size as saved, {half}: half of it)
    "random bytes": (MODEL, _scribble, "{name} differs from its manifest (sha256 checksum)"),
    "truncated model": (MODEL, _truncate, "{name} has {half} bytes, its manifest says {size}"),
    "truncated rng": ("rng_rank0.pt", _truncate, "{name} has {half} bytes, its manifest says {size}"),
    "missing rng": ("rng_rank0.pt", Path.unlink, "{name} is missing"),
    "empty state": (
        "trainer_state.json",
        lambda p: p.write_text(""),
        "{name} has 0 bytes, its manifest says 11",
    ),
    "unreadable model": (MODEL, _unreadable, "{name} cannot be read (Is a directory)"),
    "no manifest": ("manifest.json", Path.unlink, "no manifest.json (an interrupted save: incomplete)"),
    "torn manifest": (
        "manifest.json",
        lambda p: p.write_text('{"files": {'),
        "manifest.json unreadable (JSONDecodeError",
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_falls_back_to_the_newest_intact_one(damage, engine, saved, tmp_path, capsys):
    name, spoil, why = DAMAGE[damage]
    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0], root)
    size = (root / "step_000004" / name).stat().st_size
    spoil(root / "step_000004" / name)
    assert restore_checkpoint(root, engine).step == 2
    assert _restored_to(engine, saved, 2)
    err = capsys.readouterr().err
    assert f"checkpoint step_000004 is damaged: {why.format(name=name, size=size, half=size // 2)}" in err
    assert err.endswith("; resuming from step_000002 instead\n")


def test_the_fallback_is_reported_for_metadata(engine, saved, tmp_path, capsys):
    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0], root)
    _scribble(root / "step_000004" / MODEL)
    restored = restore_checkpoint(root, engine)
    assert restored == Restored(
        2, root / "step_000002", {"step_000004": f"{MODEL} differs from its manifest (sha256 checksum)"}
    )
    assert capsys.readouterr().err == (
        f"checkpoint step_000004 is damaged: {MODEL} differs from its manifest (sha256 checksum); "
        "resuming from step_000002 instead\n"
    )


def test_an_intact_checkpoint_restores_weights_and_random_states(engine, saved, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0], root)
    assert restore_checkpoint(root, engine) == Restored(4, root / "step_000004", {})
    assert _restored_to(engine, saved, 4)
    assert restore_checkpoint(tmp_path / "none", engine) == Restored(0)  # nothing saved yet: a fresh start


def test_with_no_intact_checkpoint_the_resume_stops_naming_each(engine, saved, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0], root)
    (root / "step_000004/rng_rank0.pt").unlink()
    (root / "step_000002/trainer_state.json").write_text("")
    with pytest.raises(RuntimeError) as caught:
        restore_checkpoint(root, engine)
    assert str(caught.value) == (
        f"no intact checkpoint to resume from in {root}: step_000004: rng_rank0.pt is missing; "
        "step_000002: trainer_state.json has 0 bytes, its manifest says 11"
    )


@pytest.mark.parametrize("keep, left", [(1, ["step_000003"]), (2, ["step_000002", "step_000003"])])
def test_pruning_after_a_fallback_keeps_the_new_checkpoint(keep, left, engine, saved, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(saved[0], root)
    _truncate(root / "step_000004" / MODEL)
    assert restore_checkpoint(root, engine).step == 2
    save_checkpoint(root, 3, engine, keep=keep)  # step_000004 (damaged, later) must not outlive it
    assert sorted(p.name for p in root.iterdir()) == ["latest", *left]
    assert latest_checkpoint(root) == root / "step_000003"


# -- Two ranks (gloo): every rank's files in the manifest, a failure on one rank fails the save on both ----------

RANK_SCRIPT = """
import errno, json, sys
from pathlib import Path
import torch.distributed as dist
from gdpo.checkpoint import restore_checkpoint, save_checkpoint

dist.init_process_group("gloo")
rank, root = dist.get_rank(), Path(sys.argv[1])


class Engine:  # each rank writes its own shard, as DeepSpeed's ZeRO does
    full_on = None

    def save_checkpoint(self, folder, tag, save_latest):
        (Path(folder) / tag).mkdir(parents=True, exist_ok=True)
        (Path(folder) / tag / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(b"shard %d" % rank)
        if self.full_on == rank:
            raise OSError(errno.ENOSPC, "No space left on device")

    def load_checkpoint(self, path, tag, **options):
        return path, None


engine = Engine()
save_checkpoint(root, 2, engine)
engine.full_on = 1
try:
    save_checkpoint(root, 4, engine)
except OSError as exc:
    error = str(exc)
print(json.dumps({"error": error, "step": restore_checkpoint(root, engine).step}))
dist.destroy_process_group()  # a gloo group left alive can abort the process at exit
"""


def test_two_ranks_share_one_manifest_and_fail_a_save_together(tmp_path, subprocess_env):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, str(tmp_path)],
            env={
                **subprocess_env,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": "2",
                "RANK": str(r),
                "LOCAL_RANK": str(r),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in ranks]  # a rank left at a barrier would time out here
    assert [p.returncode for p in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    reports = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert reports == [
        {
            "error": "[Errno 5] checkpoint of step 4 not saved: a write failed on another rank (see its error)",
            "step": 2,
        },
        {
            "error": "[Errno 28] checkpoint of step 4 not saved: no space left on device (ENOSPC) writing "
            f"{tmp_path}/.tmp-step_000004; step_000002 stays the latest",
            "step": 2,
        },
    ]
    manifest = json.loads((tmp_path / "step_000002/manifest.json").read_text())
    assert sorted(manifest["files"]) == [
        "rng_rank0.pt", "rng_rank1.pt", "state/zero_pp_rank_0_optim_states.pt",
        "state/zero_pp_rank_1_optim_states.pt", "trainer_state.json",
    ]  # fmt: skip
    assert manifest["files"]["state/zero_pp_rank_1_optim_states.pt"]["size"] == len(b"shard 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000002"]
