"""The task evaluator: per-item records with every reward, and their summary."""

from __future__ import annotations

import json

import pytest

from gdpo.config import RolloutConfig
from gdpo.evaluate import evaluate, main, summarise

from .conftest import REPO


def test_summarise_crafted_records():
    records = [
        {"rewards": {"format": 1.0, "correctness": 3.0}, "truncated": False},
        {"rewards": {"format": 0.0, "correctness": -3.0}, "truncated": True},
        {"rewards": {"format": 1.0, "correctness": 1.5}, "truncated": False},
        {"rewards": {"format": 1.0, "correctness": 3.0}, "truncated": False},
    ]
    s = summarise(records, {"format": 1.0, "correctness": 3.0})
    assert s["items"] == 4 and s["format/mean"] == 0.75 and s["correctness/mean"] == pytest.approx(1.125)
    assert s["format/at_max"] == 0.75 and s["correctness/at_max"] == 0.5 and s["truncated_frac"] == 0.25
    assert "format/applies" not in s  # applies to every item
    # A component that does not apply to an item (null in the output, NaN from the scorer) is left out of
    # its mean, as in the training log; the share it applies to is reported.
    records[1]["rewards"]["correctness"] = None
    records[2]["rewards"]["correctness"] = float("nan")
    s = summarise(records, {"correctness": 3.0})
    assert s["correctness/mean"] == 3.0 and s["correctness/at_max"] == 1.0 and s["correctness/applies"] == 0.5
    for r in records:
        r["rewards"]["correctness"] = None
    s = summarise(records)
    assert s["correctness/applies"] == 0.0 and "correctness/mean" not in s and s["format/mean"] == 0.75


def test_evaluate_scores_the_test_split_with_the_tasks_rewards(toy_policy, toy_task):
    model, tokenizer = toy_policy
    records = evaluate(
        model, tokenizer, toy_task, RolloutConfig(max_new_tokens=16), limit=10, samples=2, greedy=False
    )
    assert len(records) == 20 and [r["index"] for r in records[:4]] == [0, 0, 1, 1]
    from gdpo.tasks.toy import correct_reward, format_reward

    for r in records:  # each record is scored against its own prompt's row (index alignment)
        row = dict(toy_task.test[r["index"]], completion=r["completion"])
        assert r["rewards"] == {"correct": correct_reward(row), "format": format_reward(row)}
    greedy = evaluate(model, tokenizer, toy_task, RolloutConfig(max_new_tokens=16), limit=10)
    assert len(greedy) == 10 and greedy == evaluate(
        model, tokenizer, toy_task, RolloutConfig(max_new_tokens=16), limit=10
    )


def test_command_line_writes_records_and_summary(tmp_path, toy_model_dir):
    out = tmp_path / "eval.json"
    main(
        [
            "--model",
            str(toy_model_dir),
            "--config",
            str(REPO / "experiments/toy/configs/tiny.yaml"),
            "rollout.max_new_tokens=3",  # overrides before and after the options both reach the config
            "--out",
            str(out),
            "--limit",
            "6",
            "--max",
            "format=1",
            "--max",
            "correct=1",
            "rollout.stop=[never]",
        ]
    )
    data = json.loads(out.read_text())
    assert data["summary"]["items"] == 6 and len(data["records"]) == 6
    assert max(r["num_tokens"] for r in data["records"]) == 3 and "correct/at_max" in data["summary"]
    formats = [r["rewards"]["format"] for r in data["records"]]
    assert data["summary"]["format/at_max"] == sum(f >= 1 for f in formats) / 6
    assert set(data["records"][0]["rewards"]) == {"correct", "format"}


def test_command_line_errors_come_before_any_generation(tmp_path, toy_model_dir, monkeypatch, capsys):
    import gdpo.evaluate as evaluate_module

    monkeypatch.setattr(
        evaluate_module, "evaluate", lambda *a, **k: pytest.fail("generated before the error")
    )
    common = ["--model", str(toy_model_dir), "--config", str(REPO / "experiments/toy/configs/tiny.yaml")]
    for extra, message in (
        (["--max", "formt=1"], "--max names ['formt'] are not reward components of task 'toy'"),
        (["--samples", "4"], "--samples above 1 needs --sample"),
        (["rollout.temprature=0.5"], "unknown config key 'rollout.temprature'"),
        (["seed=1", "--limit", "2", "rollout.stp=[x]"], "unknown config key 'rollout.stp'"),
    ):
        with pytest.raises(SystemExit):
            main([*common, "--out", str(tmp_path / "x.json"), *extra])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
