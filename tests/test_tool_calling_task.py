"""Tool-calling task: synthetic data, ToolRL-style prompt, noisy demonstrations, and the rlla_4k loader."""

from __future__ import annotations

import json
import random
import re

import pandas as pd
import pytest

from gdpo.data.synthetic_tools import CATALOGUE, generate_split, split_functions
from gdpo.data.toolrl import load_toolrl, parse_ground_truth_calls
from gdpo.tasks import build_task
from gdpo.tasks.tool_calling import (
    correctness_reward,
    demonstration,
    format_reward,
    render_system_prompt,
    render_user_turn,
    skip_think,
    slip_content,
)


def _called(rows):
    return {c["name"] for r in rows for c in (parse_ground_truth_calls(r["ground_truth"]) or [])}


def _listed(rows):
    return {
        line.split("Name: ")[1]
        for r in rows
        for line in r["messages"][0]["content"].splitlines()
        if "Name: " in line
    }


def test_splits_are_disjoint_in_functions_and_cover_domains():
    train_fns, test_fns = split_functions(seed=0)
    assert not {f.name for f in train_fns} & {f.name for f in test_fns}
    assert len(train_fns) + len(test_fns) == len(CATALOGUE)
    assert len({f.domain for f in test_fns}) >= 4
    task = build_task("tool_calling", {"train_size": 400, "test_size": 100}, seed=0)
    assert not (_called(task.train) | _listed(task.train)) & (_called(task.test) | _listed(task.test))
    # ... but every test function's verb and noun occur in training functions
    train_words = {w for f in train_fns for w in f.name.split("_", 1)}
    assert all(set(f.name.split("_", 1)) <= train_words for f in test_fns)
    assert len(test_fns) == round(0.25 * len(CATALOGUE))


def test_requests_name_the_verb_and_noun_and_unsupported_requests_get_no_call():
    train_fns, _ = split_functions(seed=0)
    samples = generate_split(train_fns, 400, seed=3)
    for s in samples:
        listed = {t["name"] for t in s.tools}
        for call in s.calls:  # e.g. "Please book the hotel in Oslo for 2 nights." -> book_hotel
            verb, noun = call["name"].split("_", 1)
            assert call["name"] in listed and verb in s.request.lower() and noun in s.request
        unsupported = re.search(
            r"none of my tools can (\w+) a (\w+)\.", s.ground_truth
        )  # "can book a hotel."
        if unsupported:
            verb, noun = unsupported.groups()
            assert f"{verb}_{noun}" not in listed and noun in s.request and not s.calls
    unsupported = sum(bool(re.search(r"tools can \w+ a \w+\.", s.ground_truth)) for s in samples)
    assert 0.03 < unsupported / len(samples) < 0.12


def test_ground_truths_are_well_formed_and_score_full_marks():
    task = build_task("tool_calling", {"train_size": 300, "test_size": 60}, seed=0)
    for row in task.train + task.test:
        truth = row["ground_truth"]
        assert format_reward(truth, truth) == 1.0
        calls = parse_ground_truth_calls(truth)
        assert correctness_reward(truth, truth) == (3.0 if calls else 0.0)
        if calls:  # every called function is among the listed tools, with only its declared parameters
            listed = row["messages"][0]["content"]
            for call in calls:
                assert f"Name: {call['name']}" in listed
                assert all(f'"{key}"' in listed for key in call["parameters"])


def test_mix_of_single_parallel_and_no_call_samples():
    train_fns, _ = split_functions(seed=0)
    samples = generate_split(train_fns, 2000, seed=1, parallel=0.2, no_call=0.15)
    kinds = [len(s.calls) for s in samples]
    assert kinds.count(0) / 2000 == pytest.approx(0.15, abs=0.03)
    assert kinds.count(2) / 2000 == pytest.approx(0.20, abs=0.03)
    assert {type(v).__name__ for s in samples for c in s.calls for v in c["parameters"].values()} >= {
        "str",
        "int",
        "float",
        "bool",
    }
    optional = sum(
        1 for s in samples for c in s.calls if "unit" in c["parameters"] or "cabin" in c["parameters"]
    )
    assert optional > 0


def test_data_is_fixed_and_the_run_seed_only_changes_demonstrations():
    a = build_task("tool_calling", {"train_size": 50, "test_size": 10, "num_demonstrations": 20}, seed=0)
    b = build_task("tool_calling", {"train_size": 50, "test_size": 10, "num_demonstrations": 20}, seed=1)
    assert a.train == b.train and a.test == b.test
    assert a.demonstrations != b.demonstrations


@pytest.mark.parametrize(("format_noise", "content_noise"), [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_demonstration_noise(format_noise, content_noise):
    options = {"train_size": 200, "test_size": 10, "num_demonstrations": 300}
    options |= {"demo_format_noise": format_noise, "demo_content_noise": content_noise}
    task = build_task("tool_calling", options, 0)
    truths = {json.dumps(row["messages"]): row["ground_truth"] for row in task.train}
    for messages, completion in task.demonstrations:
        truth = truths[json.dumps(messages)]
        assert format_reward(completion, truth) == 1.0 - format_noise
        score = correctness_reward(completion, truth)
        if "<tool_call>" not in truth:
            assert score == 0.0
        else:
            assert score < 3.0 if content_noise else score == 3.0


def test_demonstration_mistakes_hand_checked():
    rng = random.Random(0)
    truth = '<think>t</think>\n<tool_call>\n{"name": "f", "parameters": {"x": 1}}\n</tool_call>'
    assert skip_think(truth) == '<tool_call>\n{"name": "f", "parameters": {"x": 1}}\n</tool_call>'
    slips = {slip_content(rng, truth) for _ in range(40)}
    assert slips == {
        '<think>t</think>\n<tool_call>\n{"name": "f_v2", "parameters": {"x": 1}}\n</tool_call>',
        '<think>t</think>\n<tool_call>\n{"name": "f", "parameters": {"x": "unknown"}}\n</tool_call>',
    }
    # S_max = 1 + (1 + 1) = 3. Wrong name: no call of the same name, S = 0 -> -3.
    # Wrong value: S = 1 (names) + 1 (parameter names) + 0 (values) = 2 -> 6 * 2 / 3 - 3 = 1.
    scores = {s.split('"name": ')[1][:5]: correctness_reward(s, truth) for s in slips}
    assert scores == {'"f_v2': -3.0, '"f", ': 1.0}
    reply = "<think>no tool</think>\n<response>Hi</response>"
    assert slip_content(rng, reply) == reply
    assert demonstration(rng, reply, 1.0, 1.0) == "<response>Hi</response>"


def test_prompt_structure():
    tools = [CATALOGUE[0].schema(), CATALOGUE[3].schema()]
    full = render_system_prompt(tools)
    for section in (
        "**Available Tools**",
        "**Steps for Each Turn**",
        "**Output Format**",
        "**Important Notes**",
    ):
        assert section in full
    assert "1. Name: get_weather" in full and "2. Name: get_forecast" in full
    params = json.loads(full.split("Parameters: ")[1].split("\n")[0])
    assert params["unit"] == {"description": "celsius or fahrenheit", "type": "string", "default": "celsius"}
    compact = render_system_prompt(tools, compact=True)
    assert "**Important Notes**" not in compact and "**Output Format**" in compact
    assert render_user_turn("Hi") == "**Dialogue Records History**\n<user> Hi </user>"


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match=r"unknown data.options for task 'tool_calling': \['trian_size'\]"):
        build_task("tool_calling", {"trian_size": 10}, 0)


# --------------------------------------------------------------------------------------------------
# ToolRL rlla_4k loader, on files of the published schema that we write
# --------------------------------------------------------------------------------------------------

CALL_TRUTH = '<think>I should use a tool.</think>\n<tool_call>\n{"name": "lookup", "parameters": {"q": "x"}}\n</tool_call>'
REPLY_TRUTH = "<think>No tool needed.</think>\n<response>Hi!</response>"


def _verl_row(i, truth, split="train"):
    return {
        "data_source": "rlla",
        "prompt": [
            {"role": "system", "content": f"tools {i}"},
            {"role": "user", "content": f"<user> q{i} </user>"},
        ],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {
            "split": split,
            "index": i,
            "instruction": f"tools {i}",
            "input": f"q{i}",
            "output": truth,
        },
    }


@pytest.fixture
def toolrl_dir(tmp_path):
    pd.DataFrame([_verl_row(0, CALL_TRUTH), _verl_row(1, REPLY_TRUTH), _verl_row(2, CALL_TRUTH)]).to_parquet(
        tmp_path / "train.parquet"
    )
    pd.DataFrame([_verl_row(7, CALL_TRUTH, "test")]).to_parquet(tmp_path / "test.parquet")
    return tmp_path


def test_load_verl_parquet(toolrl_dir):
    rows = load_toolrl(toolrl_dir / "train.parquet")
    assert len(rows) == 3
    assert rows[0]["messages"] == [
        {"role": "system", "content": "tools 0"},
        {"role": "user", "content": "<user> q0 </user>"},
    ]
    assert rows[1]["ground_truth"] == REPLY_TRUTH and rows[1]["source"] == "rlla" and rows[1]["index"] == 1
    assert [r["index"] for r in load_toolrl(toolrl_dir, "test")] == [7]
    demos = {"num_demonstrations": 1, "demo_format_noise": 0.0, "demo_content_noise": 0.0}
    task = build_task("tool_calling", {"source": str(toolrl_dir), **demos}, 0)  # a folder: both splits
    assert [r["index"] for r in task.train] == [0, 1, 2] and [r["index"] for r in task.test] == [7]
    # One parquet file (or URL) is one split: the test set would be the training set again.
    for one in (str(toolrl_dir / "train.parquet"), "https://example.org/train.parquet"):
        with pytest.raises(ValueError, match=r"train.parquet is one file, one split only.*test_source"):
            build_task("tool_calling", {"source": one, **demos}, 0)
        with pytest.raises(ValueError, match="one split only"):
            build_task("tool_calling", {"source": one, "test_source": one, **demos}, 0)
    file_task = build_task(
        "tool_calling",
        {
            "source": str(toolrl_dir / "train.parquet"),
            "test_source": str(toolrl_dir / "test.parquet"),
            **demos,
        },
        0,
    )
    assert [r["index"] for r in file_task.test] == [7]


def test_load_raw_json(tmp_path):
    path = tmp_path / "rlla_rl.json"
    path.write_text(
        json.dumps([{"instruction": "tools", "input": "<user> hi </user>", "output": REPLY_TRUTH}])
    )
    (row,) = load_toolrl(path)
    assert row["messages"][0] == {"role": "system", "content": "tools"} and row["ground_truth"] == REPLY_TRUTH
    assert load_toolrl(path, "test") == [row]  # one file, one split: whatever it is loaded as
    demos = {"num_demonstrations": 1, "demo_format_noise": 0.0, "demo_content_noise": 0.0}
    # As the task's training source it needs its own test file, not itself again.
    with pytest.raises(
        ValueError, match=r"rlla_rl.json is a raw ToolRL JSON file, one split only.*test_source"
    ):
        build_task("tool_calling", {"source": str(path), **demos}, 0)
    (tmp_path / "link.json").symlink_to(path)  # the same file under another name is still the same file
    for same in (str(tmp_path / "." / "rlla_rl.json"), str(tmp_path / "link.json")):
        with pytest.raises(ValueError, match="one split only"):
            build_task("tool_calling", {"source": str(path), "test_source": same, **demos}, 0)
    held_out = tmp_path / "held_out.json"
    held_out.write_text(
        json.dumps([{"instruction": "tools", "input": "<user> bye </user>", "output": REPLY_TRUTH}] * 2)
    )
    task = build_task("tool_calling", {"source": str(path), "test_source": str(held_out), **demos}, 0)
    assert len(task.train) == 1 and len(task.test) == 2
    assert task.test[0]["messages"][1]["content"] == "<user> bye </user>"
    with pytest.raises(ValueError, match="test_source needs a ToolRL data.options.source"):
        build_task("tool_calling", {"test_source": str(held_out)}, 0)


def test_malformed_rows_name_the_file_and_row(tmp_path):
    bad = _verl_row(1, '<tool_call>\n{"name": "lookup", "parameters": \n</tool_call>')
    pd.DataFrame([_verl_row(0, CALL_TRUTH), bad]).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet row 1: ground-truth tool-call line 1 is not JSON"):
        load_toolrl(tmp_path / "train.parquet")
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(ValueError, match=r"bad.json row 0: expected the fields instruction, input, output"):
        load_toolrl(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no ToolRL data"):
        load_toolrl(tmp_path / "missing")
    text_prompt = {**_verl_row(0, CALL_TRUTH), "prompt": "tools, then q0"}
    no_index = _verl_row(1, CALL_TRUTH)
    no_index["extra_info"] = {**no_index["extra_info"], "index": None}
    for row, message in (
        (text_prompt, r"text.parquet row 0: 'prompt' must be a non-empty list of messages"),
        (no_index, r"text.parquet row 0: 'extra_info.index' must be an integer, got None"),
    ):
        pd.DataFrame([row]).to_parquet(tmp_path / "text.parquet")
        with pytest.raises(ValueError, match=message):
            load_toolrl(tmp_path / "text.parquet")


def test_task_from_toolrl_files(toolrl_dir):
    task = build_task(
        "tool_calling",
        {
            "source": str(toolrl_dir),
            "num_demonstrations": 5,
            "demo_format_noise": 0.0,
            "demo_content_noise": 0.0,
        },
        0,
    )
    assert len(task.train) == 3 and len(task.test) == 1
    assert all(completion in (CALL_TRUTH, REPLY_TRUTH) for _, completion in task.demonstrations)
    assert task.rewards.names == ("format", "correctness")


def test_no_demonstrations_is_allowed_and_the_options_name_the_bound():
    from gdpo.tasks.options import task_options

    task = build_task("tool_calling", {"num_demonstrations": 0, "train_size": 4, "test_size": 2}, 0)
    assert task.demonstrations == [] and len(task.train) == 4 and len(task.test) == 2
    assert task_options("tool_calling", {"num_demonstrations": 0}).num_demonstrations == 0
    bad = [
        ({"train_size": 0}, "data.options.train_size must be a positive integer, got 0"),
        (
            {"num_demonstrations": -1},
            "data.options.num_demonstrations must be a non-negative integer, got -1",
        ),
        ({"demo_format_noise": 1.5}, "data.options.demo_format_noise must be in [0, 1], got 1.5"),
        (
            {"demo_content_noise": float("-inf")},
            "data.options.demo_content_noise must be a finite number, got -inf",
        ),
        (
            {"demo_content_noise": 10**400},
            "data.options.demo_content_noise must be a finite number, got 1000",
        ),
        ({"compact_prompt": 0}, "data.options.compact_prompt must be true or false, got 0"),
        ({"test_size": "5"}, "data.options.test_size must be a positive integer, got '5'"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError) as err:
            build_task("tool_calling", options, 0)
        assert str(err.value).startswith(message)
    assert task_options("tool_calling", {"demo_format_noise": 1}).demo_format_noise == 1.0
    assert task_options("tool_calling", {"compact_prompt": "False"}).compact_prompt is False
    assert task_options("tool_calling", {"compact_prompt": True}).compact_prompt is True
