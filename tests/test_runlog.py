"""Run log: append-only JSONL, torn last lines after a crash, rewinding to a checkpoint without losing lines."""

from __future__ import annotations

import json

import pytest
import torch

from gdpo.runlog import RunLog, read_jsonl


def test_append_read_and_rewind(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3, 4):
        log.log_metrics(step, {"loss": 0.1 * step, "bad": float("nan")})
    log.log_samples(3, [{"completion": "x"}])
    log.log_rollouts(2, torch.tensor([[[1.0, float("nan")]]]), torch.tensor([[0.5]]), torch.tensor([[3]]))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[0]["bad"] is None
    assert read_jsonl(tmp_path / "rollouts.jsonl")[0]["rewards"] == [[[1.0, None]]]

    moved = log.rewind_to(2)
    assert moved == 3  # metrics 3, 4 and the sample of step 3
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.discarded.jsonl")] == [3, 4]
    assert read_jsonl(tmp_path / "samples.jsonl") == []
    assert read_jsonl(tmp_path / "samples.discarded.jsonl")[0]["completion"] == "x"


def test_torn_last_line_is_ignored_and_dropped_on_rewind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo')
    assert read_jsonl(path) == [{"step": 1}]
    RunLog(tmp_path).rewind_to(1)
    assert path.read_text() == '{"step": 1}\n'


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_non_main_ranks_write_nothing(tmp_path):
    log = RunLog(tmp_path / "run", is_main=False)
    log.log_metrics(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()
