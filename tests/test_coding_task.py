"""Coding task: the three rewards on judged programs, the task factory, synthetic data (the judge itself:
test_execution.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import gdpo.tasks.coding  # noqa: F401  (registers the "coding" task)
from gdpo.data.code_data import (
    CODE_TEMPLATES,
    PARSE,
    TEMPLATES_BY_NAME,
    crashing_program,
    generate_problems,
    padded_program,
    split_templates,
    wrong_program,
)
from gdpo.execution.judge import run_tests_many
from gdpo.execution.programs import extract_program
from gdpo.tasks import TASKS
from gdpo.tasks.coding import CodeExecutor, coding_rewards

FIXTURES = Path(__file__).parent / "fixtures" / "code"
REPO = Path(__file__).resolve().parent.parent
SUM_TESTS = [{"input": "3 5\n", "output": "8\n"}, {"input": "10 -4", "output": "6"}]
SUM = "a, b = map(int, input().split())\nprint(a + b)"


def fenced(program: str, tag: str = "python") -> str:
    return f"Here it is.\n```{tag}\n{program}\n```\n"


def build(options: dict, seed: int = 0):
    return TASKS["coding"](dict(options), seed)


# --------------------------------------------------------------------------------------------------
# Rewards: exact values through the task's RewardSet, shared execution
# --------------------------------------------------------------------------------------------------


def rollout(program: str | None, num_tokens: int, limit: int = 30) -> dict:
    completion = "no code here" if program is None else fenced(program)
    return {
        "messages": [],
        "tests": SUM_TESTS,
        "length_limit": limit,
        "completion": completion,
        "num_tokens": num_tokens,
    }


def test_rewards_exact_values_and_the_length_condition():
    executor = CodeExecutor(timeout_s=1.0, workers=2)
    rewards = coding_rewards(3, executor)
    assert rewards.names == ("pass_rate", "length", "bug")
    group = [
        rollout(SUM, 20),  # correct and short: pass 1, length 1, bug-free
        rollout(SUM, 31),  # correct, too long: length 0
        rollout("print(8)", 10),  # half correct and short: the length reward is not paid
        rollout("a = int(input())", 10),  # crashes
        rollout(None, 5),  # no program
        rollout("while True:\n    pass", 30),  # times out (a bug by our definition)
    ]
    scored = rewards.score([group])
    assert scored.raw[0].tolist() == [
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.5, 1.0, 1.0],
        [0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0],
    ]
    assert scored.rewards[0, :, 1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # Eq. 8: only where pass == 1
    # Five distinct programs (the two correct ones share one run; "no program" is not run but cached).
    assert executor.sandbox_jobs == 5
    rewards.score([group[:3]])
    assert executor.sandbox_jobs == 5  # cached: nothing runs twice


def test_verdicts_are_kept_by_the_tests_content_not_the_list_object():
    """The digest of a tests list was kept by the list's id(): a list changed in place kept its old verdicts."""
    executor = CodeExecutor(timeout_s=1.0)
    tests = [dict(t) for t in SUM_TESTS]
    sample = dict(rollout(SUM, 10), tests=tests)
    assert executor.execute_many([sample])[0].pass_rate == 1.0
    tests[1]["output"] = "7"  # the same list object, other content
    assert executor.execute_many([sample])[0].pass_rate == 0.5
    assert executor.execute_many([dict(sample, tests=[dict(t) for t in tests])])[0].pass_rate == 0.5
    assert executor.sandbox_jobs == 2  # equal content in another list: judged once


def test_two_objectives_and_weights_keep_the_executor():
    executor = CodeExecutor(timeout_s=1.0)
    rewards = coding_rewards(2, executor)
    assert rewards.names == ("pass_rate", "length")
    weighted = rewards.with_weights({"length": 0.5})
    assert weighted.weights == (1.0, 0.5) and weighted.executor is executor
    scored = weighted.score([[rollout(SUM, 31), rollout(SUM, 30)]])
    assert scored.rewards[0].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="objectives must be 2 or 3"):
        coding_rewards(4)


def test_missing_num_tokens_is_an_error_naming_the_component():
    from gdpo.rewards import RewardError

    bad = rollout(SUM, 1)
    del bad["num_tokens"]
    with pytest.raises(RewardError, match="'length'"):
        coding_rewards(2, CodeExecutor(timeout_s=1.0)).score([[bad]])


# --------------------------------------------------------------------------------------------------
# Task factory
# --------------------------------------------------------------------------------------------------


def test_task_factory_defaults_and_rows():
    task = build({"num_train": 40, "num_test": 12, "num_demonstrations": 30})
    assert task.name == "coding" and len(task.train) == 40 and len(task.test) == 12
    assert task.rewards.names == ("pass_rate", "length")
    row = task.train[0]
    assert {"messages", "tests", "length_limit", "id", "source", "template", "reference"} <= set(row)
    assert row["length_limit"] == 44 and row["messages"][-1]["role"] == "user"
    assert "```python" in row["messages"][-1]["content"]
    assert task.rewards.executor.timeout_s == 2.0
    assert len(task.demonstrations) == 30


def test_task_factory_options():
    task = build(
        {"objectives": 3, "length_limit": 60, "timeout_s": 0.5, "num_train": 8, "num_test": 4, "demo_noise": 0.0,
         "num_demonstrations": 10, "memory_mb": 256, "workers": 1}
    )  # fmt: skip
    assert task.rewards.names == ("pass_rate", "length", "bug")
    assert {row["length_limit"] for row in task.train + task.test} == {60}
    assert task.rewards.executor.timeout_s == 0.5 and task.rewards.executor.memory_mb == 256
    # No noise: every demonstration is its problem's reference program.
    for messages, completion in task.demonstrations:
        row = next(r for r in task.train if r["messages"] == messages)
        assert extract_program(completion) == row["reference"]


def test_evaluation_scores_with_the_task_limits():
    """The reproduction's evaluation reads the task's own limits (it had a second default: 4000 tokens, 5 s)."""
    from gdpo.config import TrainConfig, load_config
    from gdpo.tasks.coding import scoring_limits

    tiny = load_config(TrainConfig, REPO / "experiments/coding/configs/tiny.yaml")
    assert scoring_limits(dict(tiny.data.options)) == {"length_limit": 44, "timeout_s": 2.0, "memory_mb": 512}
    paper = load_config(TrainConfig, REPO / "experiments/coding/configs/paper-r1-7b.yaml")
    assert scoring_limits(dict(paper.data.options))["length_limit"] == 4000
    assert scoring_limits({"source": "eurus", "timeout_s": 3})["timeout_s"] == 3.0
    task = build(
        {"num_train": 4, "num_test": 4, "num_demonstrations": 2, "length_limit": 50, "memory_mb": 256}
    )
    assert task.test[0]["length_limit"] == 50 and task.rewards.executor.memory_mb == 256


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bogus": 1, "other": 2}, r"unknown data.options for task 'coding': \['bogus', 'other'\]"),
        ({"source": "apps"}, "data.options.source must be 'synthetic' or 'eurus', got 'apps'"),
        ({"objectives": 1}, "objectives must be 2 or 3"),
        ({"objectives": 3.9}, "objectives must be 2 or 3"),
        ({"objectives": 2.0}, r"objectives must be 2 or 3, got 2.0"),
        ({"timeout_s": float("nan")}, r"data.options.timeout_s must be a finite number, got nan"),
        ({"num_demonstrations": -2}, r"num_demonstrations must be a non-negative integer, got -2"),
        ({"length_limit": True}, r"data.options.length_limit must be a positive integer, got True"),
        ({"length_limit": 40.9}, r"data.options.length_limit must be a positive integer, got 40.9"),
        ({"timeout_s": -1}, r"data.options.timeout_s must be positive, got -1"),
        ({"memory_mb": 0.5}, r"data.options.memory_mb must be a positive integer"),
        ({"demo_noise": 1.5}, r"data.options.demo_noise must be in \[0, 1\], got 1.5"),
        ({"workers": 0}, r"data.options.workers must be a positive integer, got 0"),
        ({"path": "somewhere"}, "'path' applies to source 'eurus' only"),
        ({"source": "eurus", "path": str(FIXTURES / "apps.jsonl")}, "is a file; give a folder"),
    ],
)
def test_task_factory_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        build(options)


def test_task_factory_eurus_from_a_local_folder():
    task = build({"source": "eurus", "path": str(FIXTURES / "eurus"), "objectives": 3})
    assert [r["id"] for r in task.train] == [
        "eurus/codecontests/1",
        "eurus/taco/2",
    ]  # the math row is skipped
    assert [r["id"] for r in task.test] == ["eurus/eurus-flat-0"]
    assert task.train[0]["messages"][0]["role"] == "system"  # the published prompt is kept as it is
    assert {r["length_limit"] for r in task.train} == {4000}
    assert task.demonstrations == []
    references = {"eurus/codecontests/1": "a, b = map(int, input().split())\nprint(a * b)",
                  "eurus/taco/2": "def add(a, b):\n    return a + b"}  # fmt: skip
    rollouts = [dict(r, completion=fenced(references[r["id"]]), num_tokens=100) for r in task.train]
    scored = task.rewards.score([rollouts])
    assert scored.rewards[0].tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_demonstrations_mix_correct_wrong_crashing_and_long_programs():
    task = build(
        {"num_train": 6, "num_test": 4, "num_demonstrations": 20, "demo_noise": 0.5, "objectives": 3}
    )
    rows = {id(r["messages"]): r for r in task.train}
    rollouts = [dict(rows[id(m)], completion=c, num_tokens=len(c) // 3) for m, c in task.demonstrations]
    results = task.rewards.executor.execute_many(rollouts)
    pass_rates = {r.pass_rate for r in results}
    assert 1.0 in pass_rates and 0.0 in pass_rates
    assert any(r.has_bug for r in results) and any(not r.has_bug for r in results)
    padded = [c for _, c in task.demonstrations if extract_program(c).count("\n") >= 8]
    assert padded  # the too-long (padded) kind is present


# --------------------------------------------------------------------------------------------------
# Synthetic generator
# --------------------------------------------------------------------------------------------------


def test_synthetic_problems_are_deterministic_and_splits_disjoint():
    train_t, test_t = split_templates(seed=0)
    assert not {t.name for t in train_t} & {t.name for t in test_t}
    assert len(train_t) + len(test_t) == len(CODE_TEMPLATES)
    assert {t.kind for t in test_t} == {t.kind for t in train_t} == set(PARSE)
    assert split_templates(seed=0) == (train_t, test_t)
    assert split_templates(seed=1) != (train_t, test_t)
    a, b = generate_problems(train_t, 50, seed=3), generate_problems(train_t, 50, seed=3)
    assert a == b and a != generate_problems(train_t, 50, seed=4)
    task = build({"num_train": 100, "num_test": 30})
    assert not {r["template"] for r in task.train} & {r["template"] for r in task.test}
    for problem in a:
        inputs = [t["input"] for t in problem["tests"]]
        assert len(set(inputs)) == len(inputs) == 4
        assert problem["tests"][0]["input"] in problem["question"]


def test_reference_and_noise_programs_behave_as_designed():
    rng = random.Random(0)
    problems = generate_problems(CODE_TEMPLATES, len(CODE_TEMPLATES), seed=5, tests_per_problem=1)
    jobs = [(p["reference"], p["tests"]) for p in problems]
    two_tests = generate_problems(CODE_TEMPLATES, len(CODE_TEMPLATES), seed=6, tests_per_problem=2)
    one_per_kind = [next(p for p in two_tests if TEMPLATES_BY_NAME[p["template"]].kind == k) for k in PARSE]
    for p in one_per_kind:
        template = TEMPLATES_BY_NAME[p["template"]]
        jobs += [(crashing_program(template), p["tests"]), (padded_program(rng, template), p["tests"])]
        jobs += [(wrong_program(rng, template), p["tests"])]
    results = run_tests_many(jobs, timeout_s=2.0, workers=2)
    n = len(problems)
    assert all(r.all_passed for r in results[:n]), [(p["id"], r.cases) for p, r in zip(problems, results)]
    for i in range(len(one_per_kind)):
        crash, padded, wrong = results[n + 3 * i : n + 3 * i + 3]
        assert crash.count("runtime_error") == 2  # crashes on every input: pass 0, bug 0
        assert padded.all_passed and not padded.has_bug
        assert not wrong.has_bug
