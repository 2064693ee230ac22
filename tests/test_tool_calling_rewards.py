"""ToolRL format and correctness rewards: hand-computed values and fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdpo.data.toolrl import parse_ground_truth_calls
from gdpo.tasks.tool_calling import correctness_reward, format_reward

THOUGHT = (
    "<think>I should use the appropriate tool with proper parameters to respond to the user's need.</think>"
)


def calls_block(*calls) -> str:
    return "<tool_call>\n" + "\n".join(json.dumps(c) for c in calls) + "\n</tool_call>"


def answer(*calls, think="<think>ok</think>") -> str:
    return f"{think}\n{calls_block(*calls)}"


WEATHER = {"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}
GT_CALL = answer(WEATHER, think=THOUGHT)
GT_RESPONSE = f"{THOUGHT}\n<response>Hello! How can I help?</response>"


# --------------------------------------------------------------------------------------------------
# Correctness, hand-computed: S_max = 1 + (1 + 2) = 4 for the single get_weather call
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ([WEATHER], 3.0),  # exact match
        # names 1 + keys 1 + one equal value (city) = 3 -> 6*3/4 - 3
        ([{"name": "get_weather", "parameters": {"city": "Paris", "unit": "kelvin"}}], 1.5),
        # keys [city] vs [city, unit]: 1/2; city equal: 1 -> S = 1 + 1.5 = 2.5 -> 0.75
        ([{"name": "get_weather", "parameters": {"city": "Paris"}}], 0.75),
        # wrong name: name overlap 0, no same-name candidate -> S = 0 -> -3
        ([{"name": "get_forecast", "parameters": {"city": "Paris", "unit": "celsius"}}], -3.0),
        # an extra call: names [w, t] vs [w] -> 1/2; exact params 1 + 2 -> S = 3.5 -> 2.25
        ([WEATHER, {"name": "get_time", "parameters": {}}], 2.25),
        # a non-matching extra call without "parameters" is allowed: same 2.25
        ([WEATHER, {"name": "other"}], 2.25),
        # parameter order does not matter for equality of the parsed call
        ([{"name": "get_weather", "parameters": {"unit": "celsius", "city": "Paris"}}], 3.0),
    ],
)
def test_correctness_values(calls, expected):
    assert correctness_reward(answer(*calls), GT_CALL) == pytest.approx(expected)


def test_value_equality_is_python_equality():
    gt = answer({"name": "count", "parameters": {"n": 1}})
    assert correctness_reward(answer({"name": "count", "parameters": {"n": 1.0}}), gt) == 3.0  # 1 == 1.0
    # "1" != 1: names 1 + keys 1 + values 0 = 2, S_max = 3 -> 6*2/3 - 3 = 1
    assert correctness_reward(answer({"name": "count", "parameters": {"n": "1"}}), gt) == pytest.approx(1.0)


def test_parallel_calls_greedy_matching():
    a1 = {"name": "f", "parameters": {"x": 1, "y": 2}}
    a2 = {"name": "f", "parameters": {"x": 1}}
    gt = answer(a1, a2)  # S_max = 1 + (1 + 2) + (1 + 1) = 6
    # Reversed order is not an exact match, but greedy pairs a1 with its twin (3) and a2 with its twin (2):
    # S = 1 + 3 + 2 = 6 -> 3.0.
    assert correctness_reward(answer(a2, a1), gt) == pytest.approx(3.0)
    # Only one prediction: names [f] vs [f, f] -> 1/2; a1 takes it (3); a2 finds none -> S = 3.5 -> 0.5.
    assert correctness_reward(answer(a1), gt) == pytest.approx(0.5)
    # Equal totals: the first candidate is kept (strictly greater replaces). Both predictions f(x=1, y=9):
    # for a1 each scores keys 1 + x equal 1 = 2; a1 takes the first; a2 (keys [x] vs [x, y] = 1/2, x equal)
    # takes the second with 1.5 -> S = 1 + 2 + 1.5 = 4.5 -> 6*4.5/6 - 3 = 1.5.
    b = {"name": "f", "parameters": {"x": 1, "y": 9}}
    assert correctness_reward(answer(b, b), gt) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "completion",
    [
        "<think>ok</think>\nno tool call at all",
        "<think>ok</think>\n<tool_call>\n" + json.dumps(WEATHER),  # no closing tag
        "<think>ok</think>\n" + json.dumps(WEATHER) + "\n</tool_call>",  # no opening tag
        "<think>ok</think>\n<tool_call>\n{not json}\n</tool_call>",
        "<think>ok</think>\n<tool_call>\n"
        + json.dumps(WEATHER)
        + "\n\n"
        + json.dumps(WEATHER)
        + "\n</tool_call>",  # empty line
        answer({"parameters": {"city": "Paris"}}),  # no name
        answer(["get_weather"]),  # not an object
        answer({"name": "get_weather"}),  # same name as the ground truth, no parameters
        answer({"name": "get_weather", "parameters": ["Paris"]}),  # parameters not an object
        "",
    ],
)
def test_correctness_minus_three_cases(completion):
    assert correctness_reward(completion, GT_CALL) == -3.0


def test_correctness_is_zero_without_a_ground_truth_call():
    assert correctness_reward(answer(WEATHER), GT_RESPONSE) == 0.0
    assert correctness_reward("garbage", GT_RESPONSE) == 0.0


def test_blank_lines_around_the_calls_are_stripped():
    assert (
        correctness_reward(
            "<think>ok</think>\n<tool_call>\n\n" + json.dumps(WEATHER) + "\n\n</tool_call>", GT_CALL
        )
        == 3.0
    )


def test_only_the_first_tool_call_block_counts():
    two_blocks = answer(WEATHER) + "\n" + calls_block({"name": "x", "parameters": {}})
    assert correctness_reward(two_blocks, GT_CALL) == 3.0


def test_ground_truth_parsing_errors_name_the_line():
    assert parse_ground_truth_calls(GT_RESPONSE) is None
    assert parse_ground_truth_calls(GT_CALL) == [WEATHER]
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        parse_ground_truth_calls("<tool_call>\n" + json.dumps(WEATHER) + "\n{oops\n</tool_call>")
    assert correctness_reward(answer(WEATHER), "<tool_call>\n{oops\n</tool_call>") == -3.0  # never raises


# --------------------------------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------------------------------

GT_BOTH = f"{THOUGHT}\n{calls_block(WEATHER)}\n<response>Done.</response>"
GT_NONE = THOUGHT


@pytest.mark.parametrize(
    ("completion", "ground_truth", "expected"),
    [
        (answer(WEATHER), GT_CALL, 1.0),
        ("  \n" + answer(WEATHER) + "\n\n", GT_CALL, 1.0),  # surrounding whitespace is stripped
        ("<think>multi\nline</think>\n" + calls_block(WEATHER, WEATHER), GT_CALL, 1.0),
        ("<think>ok</think>" + calls_block(WEATHER), GT_CALL, 0.0),  # no newline after </think>
        (
            "<think>ok</think>\n<tool_call>" + json.dumps(WEATHER) + "</tool_call>",
            GT_CALL,
            0.0,
        ),  # no inner newlines
        (answer(WEATHER) + "\n" + calls_block(WEATHER), GT_CALL, 0.0),  # two blocks
        (answer(WEATHER) + " thanks", GT_CALL, 0.0),  # trailing text
        (answer(WEATHER) + "\n<response>hi</response>", GT_CALL, 0.0),  # a response the ground truth lacks
        (calls_block(WEATHER), GT_CALL, 0.0),  # no think block
        ("<think>a</think>b</think>\n<response>c</response>", GT_RESPONSE, 1.0),  # "any" may contain </think>
        ("<think>x</think>\n<response>hi</response>", GT_RESPONSE, 1.0),
        ("<think>x</think>\n<response>hi</response><response>", GT_RESPONSE, 0.0),  # tag twice
        (answer(WEATHER) + "\n<response>Done.</response>", GT_BOTH, 1.0),
        (answer(WEATHER), GT_BOTH, 0.0),
        ("<think>x</think>", GT_NONE, 1.0),
        ("<think>x</think> and more", GT_NONE, 0.0),
    ],
)
def test_format_values(completion, ground_truth, expected):
    assert format_reward(completion, ground_truth) == expected


# --------------------------------------------------------------------------------------------------
# Fuzzing: never raise, stay in range, finish on huge and deeply nested inputs
# --------------------------------------------------------------------------------------------------

PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<response>",
        "</response>",
        "\n",
        " ",
        "{",
        "}",
        '"name"',
        '"parameters"',
        ":",
        ",",
        '"get_weather"',
        '"city"',
        '"Paris"',
        "1",
        "[",
        "]",
        "null",
        "\\",
        '"',
    ]
)
ADVERSARIAL = st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), ADVERSARIAL), st.sampled_from([GT_CALL, GT_RESPONSE, GT_BOTH, GT_NONE]))
def test_rewards_never_raise_and_stay_in_range(completion, ground_truth):
    assert format_reward(completion, ground_truth) in (0.0, 1.0)
    assert -3.0 <= correctness_reward(completion, ground_truth) <= 3.0


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), ADVERSARIAL), st.one_of(st.text(), ADVERSARIAL))
def test_arbitrary_ground_truth_never_raises(completion, ground_truth):
    assert format_reward(completion, ground_truth) in (0.0, 1.0)
    assert -3.0 <= correctness_reward(completion, ground_truth) <= 3.0


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=4
    )
)
def test_any_prediction_scores_at_most_the_exact_match(params):
    gt = answer({"name": "tool", "parameters": params})
    assert correctness_reward(answer({"name": "tool", "parameters": params}), gt) == 3.0
    other = {k: "changed" for k in params}
    if other != params:
        assert correctness_reward(answer({"name": "tool", "parameters": other}), gt) < 3.0


_PARAMS = st.dictionaries(
    st.text(max_size=6), st.one_of(st.integers(), st.text(max_size=6), st.booleans()), max_size=3
)


@settings(max_examples=200, deadline=None)
@given(_PARAMS, st.sampled_from(["tool", "other"]), _PARAMS)
def test_only_the_exact_call_earns_the_full_reward(truth, name, predicted):
    """Arbitrary predicted calls against an arbitrary true one: 3.0 exactly when the call is the true call."""
    gt = answer({"name": "tool", "parameters": truth})
    got = correctness_reward(answer({"name": name, "parameters": predicted}), gt)
    assert -3.0 <= got <= 3.0
    assert (got == 3.0) == (name == "tool" and predicted == truth)


@pytest.mark.timeout(120)
def test_huge_and_deeply_nested_inputs():
    deep = "<think>x</think>\n<tool_call>\n" + "[" * 200_000 + "\n</tool_call>"
    assert correctness_reward(deep, GT_CALL) == -3.0
    assert format_reward(deep, GT_CALL) == 1.0
    huge = "<think>" + "</think>\n<tool_call>\n" * 50_000
    assert format_reward(huge, GT_CALL) == 0.0 and correctness_reward(huge, GT_CALL) == -3.0
    long_think = "<think>" + "a</think>" * 200_000 + "\n" + calls_block(WEATHER)
    assert format_reward(long_think, GT_CALL) == 1.0
    assert correctness_reward(long_think, GT_CALL) == 3.0
