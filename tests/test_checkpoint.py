"""Durability of checkpoints and rewinds: everything is synced to disk before anything points at it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gdpo.checkpoint import latest_checkpoint, save_checkpoint
from gdpo.runlog import RunLog, read_jsonl


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


def test_latest_naming_a_missing_checkpoint_is_an_error(tmp_path):
    assert latest_checkpoint(tmp_path) is None  # no checkpoint yet: a fresh start
    (tmp_path / "latest").write_text("step_000004")
    (tmp_path / "step_000004").mkdir()  # without trainer_state.json: incomplete
    with pytest.raises(FileNotFoundError, match="latest names step_000004, which is missing or incomplete"):
        latest_checkpoint(tmp_path)
