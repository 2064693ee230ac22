"""The walk-through task of docs/add-a-task.md (examples/custom_task/sort_task.py): its rewards on crafted
completions, the task it registers, and short GRPO and GDPO runs of the file itself, as the guide runs it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from gdpo.runlog import read_jsonl

from .conftest import REPO

SCRIPT = REPO / "examples/custom_task/sort_task.py"
CONFIG = REPO / "examples/custom_task/tiny.yaml"


@pytest.fixture(scope="module")
def sort_task():
    """The example module, imported once (importing it registers the task)."""
    name = "example_sort_task"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _rollout(completion: str, num_tokens: int) -> dict:
    return {"completion": completion, "num_tokens": num_tokens, "answer": "2 5 7"}


def test_rewards_of_crafted_completions(sort_task):
    rollouts = [
        _rollout("<answer>2 5 7</answer>", 10),  # right, tidy, short
        _rollout("2 then 5 then 7\ncheck 2 5 7\n<answer>2 5 7</answer>", 21),  # right, tidy, too long
        _rollout("<answer>7 5 2</answer>", 10),  # wrong: short, but the length reward is conditioned
        _rollout("<answer>2 5 7</answer> ok", 11),  # right, text after the block
        _rollout("2 5 7", 4),  # no tags: not an answer
        _rollout("<answer>1</answer><answer>2 5 7</answer>", 12),  # the last block counts; two blocks
    ]
    scored = sort_task.rewards().score([rollouts])
    assert scored.names == ("correct", "format", "length")
    assert scored.raw[0].tolist() == [
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 1.0],
    ]
    # Eq. 8: length pays only where correct is 1 (rows 3 and 5 lose it); the raw values stay beside
    assert scored.rewards[0, :, 2].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert torch.equal(scored.rewards[0, :, :2], scored.raw[0, :, :2])
    assert sort_task.length_reward(_rollout("", sort_task.LENGTH_LIMIT)) == 1.0
    assert sort_task.length_reward(_rollout("", sort_task.LENGTH_LIMIT + 1)) == 0.0


def test_the_registered_task(sort_task):
    from gdpo.tasks import build_task

    task = build_task("sort3", {}, 0)
    assert task.rewards.names == ("correct", "format", "length")
    assert [c.condition_on for c in task.rewards.components] == [None, None, "correct"]
    assert len(task.train) == 800 and len(task.test) == 200 and len(task.demonstrations) == 2000
    assert task.train[0]["messages"][0]["content"].startswith("Sort ")
    shown = {row["messages"][0]["content"] for row in task.train}
    assert not shown & {row["messages"][0]["content"] for row in task.test}
    assert {row["answer"] for row in task.train[:50]} == {
        " ".join(sorted(row["messages"][0]["content"][5:-1].split())) for row in task.train[:50]
    }
    # the warm start sees every kind of slip: each reward is 0 for some demonstrations and 1 for others
    demo_rollouts = [
        {"completion": c, "num_tokens": 0, "answer": " ".join(sorted(m[0]["content"][5:-1].split()))}
        for m, c in task.demonstrations
    ]
    correct = [sort_task.correct_reward(r) for r in demo_rollouts]
    tidy = [sort_task.format_reward(r) for r in demo_rollouts]
    assert 0.4 < sum(correct) / len(correct) < 0.9 and 0.6 < sum(tidy) / len(tidy) < 0.9
    with pytest.raises(ValueError, match="takes no data.options, got \\['x'\\]"):
        build_task("sort3", {"x": 1}, 0)


@pytest.mark.parametrize("method", [pytest.param("grpo", marks=pytest.mark.slow), "gdpo"])
def test_the_file_trains_with_grpo_and_gdpo(method, tmp_path, subprocess_env):
    """The guide's commands, shortened: 2 steps of 4 prompts x 4 rollouts, no warm start; then the evaluation.
    GDPO runs in the default suite; GRPO, the same file with another method (tested at length on the toy task),
    only in the slow one."""
    run_dir = tmp_path / method
    cmd = [sys.executable, str(SCRIPT), "--config", str(CONFIG), f"algorithm.method={method}"]
    cmd += ["steps=2", "warm_start.enabled=false", "rollout.num_rollouts=4", "data.prompts_per_step=4"]
    cmd += ["logging.checkpoint_every=2", "logging.progress=false", f"logging.run_dir={run_dir}"]
    result = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        for name in ("correct", "format", "length"):
            assert 0.0 <= m[f"reward/{name}/mean"] <= 1.0
    assert f"method: {method}" in (run_dir / "config.yaml").read_text()
    if method == "gdpo":  # the guide's evaluation command, on the first 8 test prompts
        out = tmp_path / "eval.json"
        cmd = [sys.executable, str(SCRIPT), "evaluate", "--config", str(CONFIG), "--limit", "8"]
        cmd += ["--model", str(run_dir / "final_model"), "--out", str(out)]
        result = subprocess.run(
            cmd, env=subprocess_env, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["summary"]["items"] == 8.0
        assert set(report["records"][0]["rewards"]) == {"correct", "format", "length"}


def test_the_guide_quotes_the_file():
    """Every Python block of docs/add-a-task.md is a verbatim excerpt of the example, so the two cannot drift."""
    guide = (REPO / "docs/add-a-task.md").read_text()
    code = SCRIPT.read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        assert block in code, block[:200]
