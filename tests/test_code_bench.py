"""Coding benchmarks: HumanEval from its wheel (canonical and broken solutions), loaders on fixtures, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.code_bench import load_benchmark, main, messages_for, run, score, summarise
from gdpo.data import code_data
from gdpo.execution.judge import run_tests_many

FIXTURES = Path(__file__).parent / "fixtures" / "code"
HUMANEVAL_SUBSET = 20


@pytest.fixture(scope="module")
def humaneval():
    return code_data.load_humaneval()


def responses(texts, num_tokens=10, truncated=False):
    return [[{"completion": t, "num_tokens": num_tokens, "truncated": truncated}] for t in texts]


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


# --------------------------------------------------------------------------------------------------
# HumanEval
# --------------------------------------------------------------------------------------------------


def test_humaneval_has_164_problems_with_every_field(humaneval):
    assert len(humaneval) == code_data.HUMANEVAL_SIZE == 164
    assert len({item["id"] for item in humaneval}) == 164
    for item in humaneval:
        assert item["source"] == "humaneval"
        assert item["tests"] == [
            {"check": item["test"], "entry_point": item["entry_point"], "prompt": item["prompt"]}
        ]
        assert f"def {item['entry_point']}" in item["prompt"] and "def check(" in item["test"]
        assert item["canonical_solution"].strip()
    assert item["prompt"] in messages_for(item)[0]["content"]


def _canonical(items):
    return score(
        "humaneval", items, responses(fenced(i["canonical_solution"]) for i in items), length_limit=100
    )


def test_humaneval_canonical_solutions_pass_all_164(humaneval):
    # About 10 s on 2 free cores (16 s under load): fast enough for the default suite.
    records = _canonical(humaneval)
    assert [r["id"] for r in records if not r["passed"]] == []
    summary = summarise(records)
    assert summary["items"] == 164 and summary["pass"] == 100.0 and summary["bug"] == 0.0


def test_humaneval_whole_function_answers_pass_too(humaneval):
    items = humaneval[:5]
    texts = [f"Sure:\n{fenced(i['prompt'] + i['canonical_solution'])}\nDone." for i in items]
    assert summarise(score("humaneval", items, responses(texts), length_limit=100))["pass"] == 100.0


def test_humaneval_broken_solutions(humaneval):
    items = humaneval[:HUMANEVAL_SUBSET]
    syntax = summarise(
        score("humaneval", items, responses([fenced("    return (")] * len(items)), length_limit=9)
    )
    assert syntax["pass"] == 0.0 and syntax["bug"] == 100.0 and syntax["bug_compile_runtime"] == 100.0
    raising = summarise(
        score("humaneval", items, responses([fenced("    raise ValueError()")] * len(items)), length_limit=9)
    )
    assert raising["pass"] == 0.0 and raising["bug"] == 100.0
    records = score("humaneval", items, responses([fenced("    return None")] * len(items)), length_limit=9)
    summary = summarise(records)
    assert summary["pass"] == 0.0 and summary["no_code"] == 0.0 and summary["exceed"] == 100.0
    # None mostly fails an assert (a wrong answer, not a bug); where a check does arithmetic on it, a TypeError.
    assert all(set(r["statuses"]) <= {"fail", "runtime_error"} for r in records)
    crashed = [r for r in records if "runtime_error" in r["statuses"]]
    assert summary["bug"] == pytest.approx(100 * len(crashed) / len(items)) and 0 < len(crashed) < len(items)
    unfenced = summarise(score("humaneval", items[:3], responses(["    return None"] * 3), length_limit=99))
    assert unfenced["no_code"] == 100.0 and unfenced["bug"] == 100.0


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_summary_averages_pass_over_samples_and_counts_exceed_and_bugs():
    def record(item, passed, bug=False, exceed=False, **extra):
        base = {
            "id": item,
            "passed": passed,
            "pass_rate": 1.0 if passed else 0.0,
            "bug": bug,
            "exceed": exceed,
        }
        return {"compile_runtime_error": bug, "timeout": False, "no_code": False, **base, **extra}

    records = [
        record("a", True),
        record("a", False, bug=True),
        record("b", True, exceed=True),
        record("b", True),
        record("c", False, timeout=True, bug=True, compile_runtime_error=False),
        record("c", False),
    ]
    s = summarise(records)
    assert s["items"] == 3 and s["responses"] == 6
    assert s["pass"] == pytest.approx(100 * (0.5 + 1.0 + 0.0) / 3)
    assert s["exceed"] == pytest.approx(100 / 6)
    assert s["bug"] == pytest.approx(200 / 6) and s["bug_compile_runtime"] == pytest.approx(100 / 6)
    assert s["timeout"] == pytest.approx(100 / 6)


def test_score_marks_truncated_and_long_responses_as_exceeding():
    items = load_benchmark("apps", FIXTURES / "apps.jsonl")[:1]
    rs = [
        [
            {
                "completion": fenced("a, b = map(int, input().split())\nprint(a + b)"),
                "num_tokens": 5,
                "truncated": False,
            },
            {"completion": fenced("print(3)"), "num_tokens": 50, "truncated": False},
            {"completion": "```python\nprint(", "num_tokens": 20, "truncated": True},
        ]
    ]
    records = score("apps", items, rs, length_limit=20)
    assert [r["exceed"] for r in records] == [False, True, True]
    assert [r["passed"] for r in records] == [True, False, False]
    assert [r["pass_rate"] for r in records] == [1.0, 0.5, 0.0]
    assert [r["bug"] for r in records] == [False, False, True]
    assert records[2]["statuses"] == {"compile_error": 2}


# --------------------------------------------------------------------------------------------------
# Loaders on fixtures (same schemas as the hub datasets); references run through the sandbox
# --------------------------------------------------------------------------------------------------


def test_apps_loader():
    with pytest.warns(UserWarning, match=r"apps.jsonl: skipped 1 rows without tests: \[2\]"):
        items = code_data.load_apps(FIXTURES / "apps.jsonl")
    assert [i["id"] for i in items] == ["apps/4001", "apps/4002"]  # the row without tests is skipped, said
    assert items[0]["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -3\n", "output": "7\n"}]
    assert items[1]["tests"][0] == {"fn_name": "largest", "args": [[1, 5, 2]], "output": [5]}
    assert "Starter code:\ndef largest(xs):" in items[1]["question"]
    with pytest.warns(UserWarning, match="without tests"):
        assert code_data.load_apps(FIXTURES / "apps.jsonl", limit=1) == items[:1]


def test_taco_codecontests_codeforces_loaders():
    taco = code_data.load_taco(FIXTURES / "taco.jsonl")
    assert [len(i["tests"]) for i in taco] == [2, 3] and taco[1]["tests"][0]["fn_name"] == "double"
    cc = code_data.load_code_contests(FIXTURES / "code_contests.jsonl")
    assert [i["id"] for i in cc] == ["codecontests/1000_A. Squares", "codecontests/1000_B. Lines"]
    assert [len(i["tests"]) for i in cc] == [4, 2]
    public = code_data.load_code_contests(FIXTURES / "code_contests.jsonl", test_sets=("public_tests",))
    assert [len(i["tests"]) for i in public] == [1, 1]
    cf = code_data.load_codeforces(FIXTURES / "codeforces.jsonl")
    assert [i["id"] for i in cf] == ["codeforces/4A", "codeforces/71A"]  # submissions of one problem merged
    assert len(cf[0]["tests"]) == 3 and cf[1]["question"].startswith("Abbreviate")


def test_eurus_loader_reads_verl_parquet_and_flat_rows():
    train = code_data.load_eurus(FIXTURES / "eurus", "train")
    assert [i["id"] for i in train] == ["eurus/codecontests/1", "eurus/taco/2"]  # the math row is skipped
    assert train[0]["tests"] == [{"input": "2 3\n", "output": "6\n"}, {"input": "7 0\n", "output": "0\n"}]
    assert train[1]["tests"][1] == {"fn_name": "add", "args": [5, -5], "output": [0]}
    assert [m["role"] for m in train[0]["messages"]] == ["system", "user"]
    flat = code_data.load_eurus(FIXTURES / "eurus", "validation")
    assert [i["id"] for i in flat] == ["eurus/eurus-flat-0"] and flat[0]["source"] == "apps"
    assert code_data.load_eurus(FIXTURES / "eurus", "train", limit=1) == train[:1]


def test_fixture_references_pass_their_tests():
    solved = {
        "apps/4001": "a, b = map(int, input().split())\nprint(a + b)",
        "apps/4002": "def largest(xs):\n    return max(xs)",
        "taco/0": "print(input()[::-1])",
        "taco/1": "class Solution:\n    def double(self, n):\n        return 2 * n",
        "codecontests/1000_A. Squares": "n = int(input())\nprint(n * n)",
        "codecontests/1000_B. Lines": "a = input()\nb = input()\nprint(b)\nprint(a)",
        "codeforces/71A": "for _ in range(int(input())):\n    s = input()\n"
        "    print(s if len(s) <= 10 else s[0] + str(len(s) - 2) + s[-1])",
    }
    items = (
        code_data.load_apps(FIXTURES / "apps.jsonl")
        + code_data.load_taco(FIXTURES / "taco.jsonl")
        + code_data.load_code_contests(FIXTURES / "code_contests.jsonl")
        + code_data.load_codeforces(FIXTURES / "codeforces.jsonl")[1:]
    )
    results = run_tests_many([(solved[i["id"]], i["tests"]) for i in items], timeout_s=2.0, workers=2)
    assert [i["id"] for i, r in zip(items, results) if not r.all_passed] == []


@pytest.mark.parametrize(
    "loader, row, message",
    [
        (
            code_data.load_apps,
            {"problem_id": 1, "input_output": "{}"},
            r"bad\.jsonl row 1: field 'question' must be str",
        ),
        (
            code_data.load_apps,
            {"question": "q", "input_output": "{not json"},
            r"row 1 field 'input_output'.*not JSON",
        ),
        (
            code_data.load_taco,
            {"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": []})},
            r"row 1 field 'input_output'.*must pair up",
        ),
        (
            code_data.load_taco,
            {"question": "q", "input_output": json.dumps({"inputs": [1], "outputs": ["1"]})},
            r"row 1 field 'input_output' input 0: a stdin test must be a string",
        ),
        (
            code_data.load_code_contests,
            {"name": "x", "description": "d", "public_tests": {"input": ["1"], "output": []}},
            r"row 1: field 'public_tests' needs 'input' and 'output' lists",
        ),
        (code_data.load_codeforces, {"name": "x", "prompt": "p"}, r"row 1: field 'test_cases' must be list"),
        (
            code_data.load_codeforces,
            {"name": "x", "prompt": "p", "test_cases": [{"input": "1"}]},
            r"row 1 field 'test_cases' item 0: field 'output' must be str or list",
        ),
        (
            code_data.load_eurus,
            {"prompt": [{"role": "user", "content": "q"}], "ability": "code", "reward_model": {}},
            r"row 1 field 'reward_model': field 'ground_truth' must be str",
        ),
        (
            code_data.load_eurus,
            {"task": "code", "instruction": "q"},
            r"row 1: field 'reference' must be str or dict",
        ),
    ],
)
def test_bad_rows_are_errors_naming_file_row_and_field(tmp_path, loader, row, message):
    good = {
        code_data.load_apps: {"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": ["1"]})},
        code_data.load_taco: {"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": ["1"]})},
        code_data.load_code_contests: {"name": "y", "description": "d", "public_tests": {"input": ["1"], "output": ["1"]}},
        code_data.load_codeforces: {"name": "y", "prompt": "p", "test_cases": [{"input": "1", "output": "1"}]},
        code_data.load_eurus: {"task": "code", "instruction": "q", "reference": json.dumps({"inputs": ["1"], "outputs": ["1"]})},
    }[loader]  # fmt: skip
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        loader(path)


def test_missing_local_data_and_unknown_benchmarks_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds none of test.jsonl"):
        code_data.load_apps(tmp_path)
    with pytest.raises(FileNotFoundError, match="no data file"):
        code_data.load_apps(tmp_path / "apps.jsonl")
    with pytest.raises(ValueError, match="unknown coding benchmark 'mbpp'"):
        load_benchmark("mbpp")
    with pytest.raises(ValueError, match="takes no --source"):
        load_benchmark("humaneval", "somewhere")
    with pytest.raises(SystemExit, match="unknown benchmarks"):
        main(["--model", "m", "--benchmarks", "humaneval,mbpp", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        main(["--model", "m", "--benchmarks", "apps", "--source", "nope", "--out", str(tmp_path)])


# --------------------------------------------------------------------------------------------------
# End to end with the (toy-trained) tiny model
# --------------------------------------------------------------------------------------------------


def test_run_generates_scores_and_writes_files(tmp_path, toy_policy):
    from gdpo.config import RolloutConfig

    model, tokenizer = toy_policy
    rollout = RolloutConfig(max_new_tokens=6, max_prompt_tokens=300, temperature=1.0)
    summary = run(
        model,
        tokenizer,
        ["apps", "humaneval"],
        rollout,
        sources={"apps": str(FIXTURES / "apps.jsonl")},
        limit=2,
        samples=2,
        length_limit=4,
        out_dir=tmp_path,
    )
    apps = [json.loads(line) for line in (tmp_path / "apps.jsonl").read_text().splitlines()]
    assert len(apps) == 4 and {(r["id"], r["sample"]) for r in apps} == {
        (i, j) for i in ("apps/4001", "apps/4002") for j in (0, 1)
    }
    assert all(not r["skipped"] and r["num_tokens"] >= 1 for r in apps)
    assert (
        summary["apps"]["items"] == 2 and summary["apps"]["pass"] == 0.0
    )  # the toy model writes no programs
    he = [json.loads(line) for line in (tmp_path / "humaneval.jsonl").read_text().splitlines()]
    # HumanEval prompts exceed 300 toy tokens: not generated, so failed but neither buggy nor over the limit
    assert all(r["skipped"] and not r["passed"] and not r["bug"] and not r["no_code"] for r in he)
    assert summary["humaneval"]["skipped_prompt_too_long"] == 2 and summary["humaneval"]["bug"] == 0.0
    assert summary["humaneval"]["pass"] == 0.0 and summary["apps"]["skipped_prompt_too_long"] == 0
    assert json.loads((tmp_path / "summary.json").read_text())["apps"] == summary["apps"]
