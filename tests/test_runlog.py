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


def test_a_torn_first_line_is_progress_that_a_resume_moves_aside(tmp_path):
    """A crash during the very first write: a fresh start must not append after the fragment."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lo')
    run = RunLog(tmp_path)
    assert run.has_progress()  # so the trainer asks for --resume instead of appending
    run.rewind_to(0)
    assert (tmp_path / "metrics.jsonl").read_text() == "" and not run.has_progress()


def test_samples_with_a_reward_that_does_not_apply_are_strict_json(tmp_path):
    run = RunLog(tmp_path)
    run.log_samples(3, [{"completion": "x", "rewards": {"length": float("nan"), "pass_rate": 1.0}}])
    line = (tmp_path / "samples.jsonl").read_text()
    assert "NaN" not in line
    assert json.loads(line) == {"step": 3, "completion": "x", "rewards": {"length": None, "pass_rate": 1.0}}


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2: not JSON"):
        read_jsonl(path)


def test_non_main_ranks_write_nothing(tmp_path):
    log = RunLog(tmp_path / "run", is_main=False)
    log.log_metrics(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_tensorboard_mirror_writes_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path)
    log.add_writers(tensorboard=True, wandb=False, name="t", config={})
    log.log_metrics(1, {"loss": 0.5, "skipped": float("nan")})
    log.log_metrics(2, {"loss": 0.25})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert "skipped" not in events.Tags()["scalars"]


def test_wandb_mirror_runs_offline(tmp_path, monkeypatch):
    import sys
    import types

    calls = {}

    class FakeRun:
        def log(self, scalars, step):
            calls.setdefault("log", []).append((step, scalars))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    log = RunLog(tmp_path)
    log.add_writers(tensorboard=False, wandb=True, name="run", config={"seed": 1})
    log.log_metrics(3, {"loss": 1.0})
    log.close()
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == {"seed": 1}
    assert calls["log"] == [(3, {"loss": 1.0})] and calls["finished"]


def test_missing_writer_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match=r"logging.wandb=true needs the wandb package"):
        RunLog(tmp_path).add_writers(tensorboard=False, wandb=True, name="x", config={})


def test_saved_config_reads_back_unchanged_under_yaml_1_1_and_1_2(tmp_path):
    """Strings that look like numbers or booleans to one YAML version are quoted in config.yaml."""
    import yaml

    from gdpo.config import TrainConfig, load_config, to_dict

    tricky = ["1e5", "0o17", "yes", "on", "010", "1_000", "null", ".5"]
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"rollout.stop={json.dumps(tricky)}",
            "data.options={source: '1e-6', test_source: 'no'}",
            "task=tool_calling",
        ],
    )
    assert cfg.rollout.stop == tricky and cfg.data.options == {"source": "1e-6", "test_source": "no"}
    run = RunLog(tmp_path)
    run.write_config(cfg)
    saved = tmp_path / "config.yaml"
    assert load_config(TrainConfig, saved) == cfg  # what --resume reads (YAML 1.2)
    assert yaml.safe_load(saved.read_text()) == to_dict(cfg)  # what a notebook's PyYAML reads (YAML 1.1)
    assert run.config_changes(cfg) == []
    # A config.yaml written the old way (PyYAML's YAML 1.1 dump, '1e5' unquoted) still matches its own settings.
    saved.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert "- 1e5" in saved.read_text() and run.config_changes(cfg) == []
    other = load_config(TrainConfig, None, ["rollout.stop=[x]", "task=tool_calling"])
    assert run.config_changes(other) == ["rollout.stop"]  # options only one side has are not compared


def test_run_logs_name_the_file_and_line_of_bad_bytes_and_deep_nesting(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1}\n{"note": "caf\xe9"}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2: not UTF-8 \(byte 0xe9 at column 14\)"):
        read_jsonl(log)
    log.write_text('{"step": 1}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2: JSON nested 100000 levels deep"):
        read_jsonl(log)
    log.write_bytes(
        b'{"step": 1, "text": "a\xe2\x80\xa8b"}\n{"step": 2, "cut": "\xe2\x80'
    )  # U+2028; torn end
    assert read_jsonl(log) == [{"step": 1, "text": "a\u2028b"}]
