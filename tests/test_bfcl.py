"""BFCL-v3 harness: real package data, BFCL's own checker (in its environment), known verdicts."""

from __future__ import annotations

import json
from functools import partial

import pytest

from eval.bfcl import (
    ground_truth_completion,
    load_category,
    messages_for,
    score_category,
    summarise,
)
from eval.bfcl_data import AST_CATEGORIES, BFCL_PYTHON, parse_calls
from gdpo.tasks.tool_calling import render_system_prompt

needs_checker = pytest.mark.skipif(
    not BFCL_PYTHON.exists(), reason="BFCL environment missing: make setup-bfcl"
)


def completion(*calls):
    return (
        "<think>t</think>\n<tool_call>\n"
        + "\n".join(json.dumps({"name": n, "parameters": p}) for n, p in calls)
        + "\n</tool_call>"
    )


def test_data_comes_from_the_package():
    simple = load_category("simple")
    assert len(simple) == 400 and simple[0]["id"] == "simple_0"
    assert simple[0]["possible_answer"] == [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert len(load_category("live_multiple")) == 1053 and len(load_category("irrelevance")) == 240
    assert "possible_answer" not in load_category("irrelevance", limit=1)[0]
    with pytest.raises(ValueError, match="unknown or multi-turn BFCL category 'multi_turn_base'"):
        load_category("multi_turn_base")
    relevance = load_category("live_relevance")
    assert len(relevance) == 18 and "possible_answer" not in relevance[0]


def test_prompt_and_parsing():
    item = load_category("simple", limit=1)[0]
    system, user = messages_for(item)
    assert (
        "1. Name: calculate_triangle_area" in system["content"]
        and '"base": {"type": "integer"' in system["content"]
    )
    assert (
        user["content"]
        == "**Dialogue Records History**\n<user> Find the area of a triangle with a base of 10 units and height of 5 units. </user>"
    )
    assert parse_calls(completion(("f", {"x": 1}), ("g", {}))) == [{"f": {"x": 1}}, {"g": {}}]
    assert parse_calls("<think>t</think>\n<response>no</response>") is None
    assert parse_calls("<tool_call>\n{bad json}\n</tool_call>") is None


@needs_checker
def test_known_verdicts():
    """One checker call (BFCL's import takes seconds) over crafted outputs for real items."""
    simple = load_category("simple", limit=1)
    parallel = load_category("parallel", limit=1)
    irrelevance = load_category("irrelevance", limit=2)
    full = ground_truth_completion(parallel[0])
    lines = full.split("\n")
    first_only = "\n".join(lines[:3]) + "\n</tool_call>"
    cases = [
        (simple[0], completion(("calculate_triangle_area", {"base": 10, "height": 5})), True),
        (simple[0], completion(("calculate_triangle_area", {"base": 11, "height": 5})), False),
        (simple[0], completion(("triangle_area", {"base": 10, "height": 5})), False),
        (simple[0], "I think the area is 25.", False),
        (parallel[0], full, True),
        (parallel[0], first_only, False),
        (irrelevance[0], "<think>x</think>\n<response>I can't.</response>", True),
        (irrelevance[1], completion(("determine_body_mass_index", {})), False),
        (irrelevance[0], None, False),  # not generated (prompt too long): wrong, not "no call"
        (simple[0], None, False),
    ]
    records = score_category([c[0] for c in cases], [c[1] for c in cases])
    assert [r["correct"] for r in records] == [c[2] for c in cases]
    assert records[1]["error_type"] == "value_error:others"
    assert records[3]["error_type"] == "format:no_parseable_tool_call" and not records[3]["well_formatted"]
    assert records[6]["well_formatted"] and records[7]["error_type"] == "irrelevance:called_a_tool"
    assert [r["error_type"] for r in records[8:]] == ["skipped:prompt_too_long"] * 2
    assert not any(r["well_formatted"] for r in records[8:])


@needs_checker
def test_worker_registry_entry_matches_bfcls_own():
    """The worker skips BFCL's model registry (vendor SDK imports) and stands in our model's one entry; here the
    real registry, imported in BFCL's environment, must give that model the same setting."""
    import subprocess

    from eval.bfcl_worker import MODEL_NAME

    code = (
        "from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING as m; "
        f"print(m[{MODEL_NAME!r}].underscore_to_dot)"
    )
    out = subprocess.run([str(BFCL_PYTHON), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_checker
def test_ground_truth_answers_score_close_to_100_percent():
    simple = load_category("simple")
    others = {c: load_category(c, limit=40) for c in AST_CATEGORIES if c != "simple"}
    items = simple + [i for group in others.values() for i in group]
    records = score_category(items, [ground_truth_completion(i) for i in items])
    assert sum(r["correct"] for r in records[:400]) == 393  # as in docs/data-sources.md §1
    for category in others:
        mine = [r for r in records if r["category"] == category]
        assert sum(r["correct"] for r in mine) >= 0.9 * len(mine), category
    assert all(r["well_formatted"] for r in records)


@needs_checker
def test_garbage_scores_zero_with_zero_format():
    items = [i for c in AST_CATEGORIES for i in load_category(c, limit=10)]
    garbage = ["", "sure!", "<tool_call>\n{\n</tool_call>", completion(("no_such_function", {"a": 1}))]
    records = score_category(items, [garbage[k % 4] for k in range(len(items))])
    summary = summarise([r for r in records if r["completion"] != garbage[3]])
    assert all(v == 0.0 for v in summary["categories"].values()) and summary["correct_format"] == 0.0
    assert not any(r["correct"] for r in records)


def test_summary_arithmetic():
    def rec(category, correct, formatted=True):
        return {"category": category, "correct": correct, "well_formatted": formatted}

    records = [
        rec("simple", True),
        rec("simple", False),
        rec("multiple", True),
        rec("live_simple", True),
        rec("live_simple", False, False),
        rec("irrelevance", True),
    ]
    s = summarise(records)
    assert s["categories"] == {"simple": 50.0, "multiple": 100.0, "live_simple": 50.0, "irrelevance": 100.0}
    assert s["non_live"] == pytest.approx((50 + 100 + 100) / 3) and s["live"] == 50.0
    assert s["multi_turn"] is None and s["avg"] is None
    assert s["avg_live_non_live"] == pytest.approx((250 / 3 + 50) / 2)
    assert s["correct_format"] == pytest.approx(500 / 6)
    # Live weights its categories by item count, as BFCL's overall live accuracy: 2 of 3 items, not (50 + 100) / 2.
    s = summarise([*records, rec("live_irrelevance", True)])
    assert s["live"] == pytest.approx(200 / 3) and s["non_live"] == pytest.approx(250 / 3)
    # Relevance counts in Live; Multi-turn is the unweighted mean of its categories; Avg the mean of the three.
    multi = [{"category": "multi_turn_base", "correct": c} for c in (True, True, False, False)]
    multi += [{"category": "multi_turn_miss_func", "correct": True}]
    s = summarise([*records, rec("live_relevance", False), *multi])
    assert s["live"] == pytest.approx(100 / 3) and s["multi_turn"] == pytest.approx((50 + 100) / 2)
    assert s["avg"] == pytest.approx((100 / 3 + 250 / 3 + 75) / 3)
    assert s["correct_format"] == pytest.approx(600 / 7)  # the 7 single-turn outputs only


@needs_checker
def test_relevance_is_correct_with_any_call():
    item = load_category("live_relevance", limit=1)[0]
    name = item["function"][0]["name"]
    no_call = "<think>x</think>\n<response>no</response>"
    records = score_category([item] * 3, [completion((name, {})), no_call, None])
    assert [r["correct"] for r in records] == [True, False, False]
    assert records[0]["well_formatted"] and records[1]["error_type"] == "relevance:no_tool_call"


@needs_checker
def test_generate_and_score_with_a_model(tmp_path, toy_policy):
    """End to end with the (toy-trained) tiny model: it cannot call BFCL tools, but every file and count is there."""
    from eval.bfcl import generate_and_score
    from gdpo.config import RolloutConfig

    model, tokenizer = toy_policy
    rollout = RolloutConfig(max_new_tokens=8, max_prompt_tokens=500)
    compact = partial(render_system_prompt, compact=True)
    summary = generate_and_score(
        model,
        tokenizer,
        rollout,
        ["simple", "irrelevance", "multi_turn_base"],
        limit=6,
        system_prompt=compact,
        out_dir=tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert len(records) == 18 and {r["category"] for r in records} == {
        "simple",
        "irrelevance",
        "multi_turn_base",
    }
    assert summary["items"] == {"simple": 6, "irrelevance": 6, "multi_turn_base": 6}
    # A multi-turn system prompt (the file system's 18 function docs) is far beyond the tiny model's context.
    assert summary["skipped_prompt_too_long"]["multi_turn_base"] == 6 and summary["multi_turn"] == 0.0
    assert summary["categories"]["simple"] == 0.0  # the toy model never writes a tool call
    assert json.loads((tmp_path / "summary.json").read_text())["categories"] == summary["categories"]
    from eval.bfcl import messages_for
    from gdpo.rollout import encode_prompt

    for category in ("simple", "irrelevance"):
        lengths = [
            len(encode_prompt(tokenizer, messages_for(i, compact))) for i in load_category(category, limit=6)
        ]
        too_long = [n > 500 for n in lengths]
        assert summary["skipped_prompt_too_long"].get(category, 0) == sum(too_long)
        mine = [r for r in records if r["category"] == category]
        assert all(r["completion"] == "" for r, skip in zip(mine, too_long) if skip)
        assert all(r["error_type"] == "skipped:prompt_too_long" for r, s in zip(mine, too_long) if s)
        assert all(not r["correct"] for r, skip in zip(mine, too_long) if skip)


@needs_checker
def test_questions_the_run_trained_on_are_left_out(tmp_path, toy_policy):
    from eval.bfcl import generate_and_score, user_text
    from eval.decontaminate import TrainingSet
    from gdpo.config import RolloutConfig

    model, tokenizer = toy_policy
    first = load_category("simple", limit=1)[0]
    training = TrainingSet(
        [{"messages": [{"role": "user", "content": f"<user> {user_text(first)} </user>"}]}]
    )
    rollout = RolloutConfig(max_new_tokens=4, max_prompt_tokens=64)
    summary = generate_and_score(
        model, tokenizer, rollout, ["simple", "irrelevance"], limit=2, out_dir=tmp_path, training=training
    )
    assert summary["decontaminated"] == {"simple": 1, "irrelevance": 0}
    records = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["simple_1", "simple_2", "irrelevance_0", "irrelevance_1"]
