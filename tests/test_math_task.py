"""Math task: correctness (math-verify, time limit, threads), length, GSM8K recipe rewards, the task factory and
the synthetic generator."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdpo.tasks.math as math_task
from gdpo.data.math_data import last_boxed, render_synthetic_solution, synthetic_problems
from gdpo.tasks import build_task
from gdpo.tasks.math import (
    GSM8K_SYSTEM_PROMPT,
    R1_INSTRUCTION,
    MathVerifyUnavailable,
    correctness_reward,
    extract_final_answer,
    gsm8k_correctness_reward,
    gsm8k_extract_answer,
    gsm8k_format_reward,
    gsm8k_integer_reward,
    length_reward,
)

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate a number with ~10^8 digits: never returns

# --------------------------------------------------------------------------------------------------
# correctness_reward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("So the answer is \\boxed{0.5}.", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac12", 1.0),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("\\boxed{1,080}", "1080", 1.0),
        ("\\boxed{1\\,000}", "1000", 1.0),  # a thin space groups the digits
        ("\\boxed{1~000\\;000}", "1000000", 1.0),
        ("\\boxed{1\\,001}", "1000", 0.0),
        ("\\boxed{-7}", "-7", 1.0),
        ("\\boxed{5.0}", "5", 1.0),
        ("\\boxed{-3}", "3", 0.0),
        ("\\boxed{4048}", "4049", 0.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("nested: \\boxed{\\boxed{42}}", "42", 1.0),
        ("nested: \\boxed{ \\boxed{42} }", "42", 1.0),
        ("The answer is 42.", "42", 0.0),  # no box, no answer tag
        ("\\boxed{41} no wait, \\boxed{42}", "42", 1.0),  # the last box wins
        ("\\boxed{42} no wait, \\boxed{41}", "42", 0.0),
        ("<think>6*7</think>\n<answer>42</answer>", "42", 1.0),  # <answer> fallback
        ("<answer>\\frac{3}{6}</answer>", "0.5", 1.0),
        ("\\boxed{7} <answer>42</answer>", "42", 0.0),  # a box takes precedence over the tag
        ("\\boxed{42", "42", 0.0),  # truncated box
        ("\\boxed{}", "42", 0.0),
        ("so $\\boxed 5$.", "5", 1.0),
        ("so \\boxed {5}.", "5", 1.0),  # a space before the brace is still a box
        ("\\fbox {12}", "12", 1.0),
        ("\\fbox{12}", "12", 1.0),
        ("", "42", 0.0),
        ("\\boxed{42}", "", 0.0),
    ],
)
def test_correctness_reward_on_crafted_completions(completion, answer, expected):
    assert correctness_reward(completion, answer) == expected


def test_extraction_rules():
    assert extract_final_answer("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert extract_final_answer("\\boxed{\\boxed{5}+1}") == "\\boxed{5}+1"  # not one box: kept whole
    assert extract_final_answer("\\boxed{3} then \\boxed{4") == "3"  # the unclosed later box is ignored
    assert extract_final_answer("<answer> 7 ") == "7"  # a missing closing tag: up to the end
    assert extract_final_answer("nothing") is None
    assert last_boxed("\\boxed{a}\\boxed 9") == "9"


def test_adversarial_nesting_is_linear_time():
    start = time.monotonic()
    for text in ("\\boxed{" * 30_000, "\\boxed{" * 20_000 + "}" * 20_000, "{" * 100_000 + "\\boxed{1}"):
        assert correctness_reward(text, "1") in (0.0, 1.0)
    assert time.monotonic() - start < 3


# A guard, not a benchmark: under a second a call here; the quadratic version took 1.3 s at 80k levels, so some
# 20 s a call at 320k. Generous, as the test machine is shared.
@pytest.mark.timeout(60)
def test_last_boxed_unwraps_320k_nested_boxes():
    n = 320_000  # 2.5 MB of text
    assert last_boxed("\\boxed{" * n + "7" + "}" * n) == "7"
    assert last_boxed("\\fbox{ \\boxed {" * (n // 2) + "7" + " }}" * (n // 2)) == "7"  # spaces, both kinds
    # One closer short: the outermost box never closes and does not count; the one inside it is the answer.
    assert last_boxed("\\boxed{" * n + "7" + "}" * (n - 1)) == "7"
    # The innermost content is not one box: kept whole, its own box included.
    assert last_boxed("\\boxed{" * n + "\\boxed{7}+1" + "}" * n) == "\\boxed{7}+1"


@pytest.mark.timeout(60)
def test_last_boxed_on_a_2_5_mb_random_completion():
    import random

    rng = random.Random(0)
    noise = [
        "\\boxed{3}", "\\fbox{\\frac{1}{2}}", "\\boxed{\\boxed{ 4 }}", "\\boxed ", "\\boxed{", "{", "}",
        "$x^{2}$", " so ", "\n",
    ]  # fmt: skip
    text = "".join(rng.choices(noise, k=400_000))
    assert len(text) > 2_500_000
    # Every brace the final box opens, it closes: no earlier unclosed box can take it in.
    assert last_boxed(text + " the answer is \\boxed{ \\fbox{42} }.") == "42"
    assert last_boxed(text + "\\boxed{\\frac{1}{2}} and \\boxed 9") == "9"


def test_thread_safe_and_matches_main_thread():
    # distinct inputs that need math-verify (not the exact fast path), scored from 4 threads at once
    cases = [
        (f"\\boxed{{\\frac{{{2 * i}}}{{{2 * (i + 7)}}}}}", f"\\frac{{{i}}}{{{i + 7}}}") for i in range(1, 13)
    ]
    cases += [(f"\\boxed{{\\frac{{{i}}}{{{i + 8}}}}}", f"\\frac{{{i + 1}}}{{{i + 8}}}") for i in range(1, 13)]
    expected = [1.0] * 12 + [0.0] * 12
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: correctness_reward(*c), cases))
    assert got == expected


def test_pathological_input_times_out_in_a_thread_and_the_verifier_recovers():
    result = {}

    def call():
        start = time.monotonic()
        result["value"] = correctness_reward(PATHOLOGICAL, "1", timeout=1.0)
        result["seconds"] = time.monotonic() - start

    correctness_reward("\\boxed{\\frac{2}{4}}", "0.5")  # a warm worker: the 1 s limit is all math-verify time
    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=30)
    assert result["value"] == 0.0
    assert result["seconds"] < 2.5
    assert correctness_reward("\\boxed{\\frac{6}{8}}", "0.75") == 1.0  # a fresh worker took over


def _score_in_child(args):
    return correctness_reward(*args)


def test_works_in_daemonic_worker_processes():
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:  # pool workers are daemonic: they may not use multiprocessing children
        got = pool.map(_score_in_child, [("\\boxed{\\frac{4}{10}}", "0.4"), ("\\boxed{\\sqrt{2}}", "2")])
    assert got == [1.0, 0.0]


def test_a_worker_that_cannot_start_is_an_environment_error(monkeypatch):
    math_task.shutdown_verifier()
    monkeypatch.setattr(math_task, "_WORKER_SOURCE", "import sys; sys.exit(3)")
    try:
        with pytest.raises(MathVerifyUnavailable, match="did not start"):
            correctness_reward("\\boxed{\\frac{1}{7}}", "0.5")
    finally:
        monkeypatch.undo()
        math_task.shutdown_verifier()
    assert correctness_reward("\\boxed{\\frac{1}{7}}", "0.5") == 0.0


_LATEX_BITS = [
    "\\boxed{",
    "\\fbox{",
    "}",
    "{",
    "\\frac",
    "\\sqrt",
    "<answer>",
    "</answer>",
    "^",
    "_",
    "1",
    "2",
]
_LATEX_BITS += ["x", " ", "\\left(", "\\right)", ",", "=", "-", ".", "\\pi", "\\infty", "\\text{", "$", "\\"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    completion=st.one_of(
        st.text(max_size=60), st.lists(st.sampled_from(_LATEX_BITS), max_size=25).map("".join)
    ),
    answer=st.one_of(st.text(max_size=12), st.lists(st.sampled_from(_LATEX_BITS), max_size=8).map("".join)),
)
def test_fuzz_correctness_reward_never_raises(completion, answer):
    math_task.VERIFY_TIMEOUT_S = 1.0  # bounds a random slow sympy case; restored by the fixture below
    assert correctness_reward(completion, answer) in (0.0, 1.0)


@pytest.fixture(autouse=True)
def _restore_timeout():
    saved = math_task.VERIFY_TIMEOUT_S
    yield
    math_task.VERIFY_TIMEOUT_S = saved


# --------------------------------------------------------------------------------------------------
# length and the GSM8K three-reward recipe
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "limit", "expected"), [(0, 40, 1.0), (39, 40, 1.0), (40, 40, 1.0), (41, 40, 0.0)]
)
def test_length_reward_edges(tokens, limit, expected):
    assert length_reward(tokens, limit) == expected


GOOD = "<think>16 - 3 - 4 = 9 eggs, 9 * 2 = 18.</think>\n<answer>18</answer>"


@pytest.mark.parametrize(
    ("completion", "answer", "correct", "integer", "fmt"),
    [
        (GOOD, "18", 1.0, 1.0, 1.0),
        ("  " + GOOD + "\n", "18", 1.0, 1.0, 1.0),  # outer whitespace is stripped
        ("<think>a\nb\n</think>\n<answer> 18 </answer>", "18", 1.0, 1.0, 1.0),
        (GOOD.replace("\n", ""), "18", 1.0, 1.0, 0.0),  # no newline between the blocks
        ("<answer>18</answer>", "18", 1.0, 1.0, 0.0),  # no think block
        (GOOD + " done", "18", 1.0, 1.0, 0.0),  # trailing text
        ("<think>x</think>\n<answer>5</answer><answer>18</answer>", "18", 1.0, 1.0, 0.0),  # last tag; twice
        ("18", "18", 1.0, 1.0, 0.0),  # no tag: the whole completion
        ("<think>x</think>\n<answer>-5</answer>", "-5", 1.0, 0.0, 1.0),  # negative: correct, not "integer"
        ("<think>x</think>\n<answer>2.5</answer>", "2.5", 1.0, 0.0, 1.0),  # decimal
        ("<think>x</think>\n<answer>18.0</answer>", "18", 0.0, 0.0, 1.0),  # exact strings only
        ("<think>x</think>\n<answer>1080</answer>", "1,080", 0.0, 1.0, 1.0),  # GSM8K keeps its commas
        ("<think>x</think>\n<answer>1,080</answer>", "1,080", 1.0, 0.0, 1.0),
        ("<think>x</think>\n<answer></answer>", "18", 0.0, 0.0, 1.0),
        ("<think>x</think>\n<answer>\\boxed{18}</answer>", "18", 0.0, 0.0, 1.0),
    ],
)
def test_gsm8k_three_rewards(completion, answer, correct, integer, fmt):
    assert gsm8k_correctness_reward(completion, answer) == correct
    assert gsm8k_integer_reward(completion) == integer
    assert gsm8k_format_reward(completion) == fmt


def test_gsm8k_extraction_and_system_prompt():
    assert gsm8k_extract_answer("x <answer> 1 </answer> y <answer> 2 </answer>") == "2"
    assert gsm8k_extract_answer("just 7 </answer> tail") == "just 7"
    for needle in ("step by step", "integer", "<think>", "</think>", "<answer>", "</answer>"):
        assert needle in GSM8K_SYSTEM_PROMPT
    assert "fianl" not in GSM8K_SYSTEM_PROMPT


# --------------------------------------------------------------------------------------------------
# The task: rows, rewards (Eq. 8 through RewardSet), options, demonstrations
# --------------------------------------------------------------------------------------------------


def _small(**options):
    return build_task("math", {"num_train": 20, "num_test": 5, "num_demonstrations": 0, **options}, 0)


def _group(row, outputs):
    return [dict(row, completion=c, num_tokens=n) for c, n in outputs]


def test_rows_follow_the_boxed_recipe():
    task = _small()
    row = task.train[0]
    assert row["messages"] == [{"role": "user", "content": f"{row['problem']}\n{R1_INSTRUCTION}"}]
    assert isinstance(row["answer"], str) and row["length_limit"] == 40
    assert task.rewards.names == ("correctness", "length")
    gsm = _small(recipe="gsm8k3")
    assert gsm.train[0]["messages"][0] == {"role": "system", "content": GSM8K_SYSTEM_PROMPT}
    assert gsm.train[0]["messages"][1]["content"] == gsm.train[0]["problem"]
    assert gsm.rewards.names == ("correctness", "integer", "format")


def test_conditioned_length_through_the_reward_set():
    task = _small(conditioned_length=True, length_weight=0.5)
    row = task.train[0]
    right, wrong = f"\\boxed{{{row['answer']}}}", f"\\boxed{{{int(row['answer']) + 1}}}"
    group = _group(row, [(right, 30), (right, 50), (wrong, 30), ("no answer", 40), (wrong, 41)])
    scored = task.rewards.score([group])
    assert scored.raw[0].tolist() == [[1, 1], [1, 0], [0, 1], [0, 1], [0, 0]]
    assert scored.rewards[0].tolist() == [[1, 1], [1, 0], [0, 0], [0, 0], [0, 0]]
    assert scored.weights == (1.0, 0.5)
    assert scored.weighted_sum()[0].tolist() == [1.5, 1.0, 0.0, 0.0, 0.0]
    plain = _small().rewards.score([group])
    assert plain.rewards[0].tolist() == [[1, 1], [1, 0], [0, 1], [0, 1], [0, 0]]


def test_gsm8k3_task_scores_a_group():
    task = _small(recipe="gsm8k3")
    row = dict(task.train[0], answer="-7")
    group = _group(
        row,
        [
            ("<think>a</think>\n<answer>-7</answer>", 9),
            ("<think>a</think><answer>-7</answer>", 9),
            ("<think>a</think>\n<answer>7</answer>", 9),
        ],
    )
    assert task.rewards.score([group]).rewards[0].tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 1]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bogus": 1, "other": 2}, "unknown data.options for task 'math': ['bogus', 'other']"),
        ({"source": "mathqa"}, "source must be one of"),
        ({"path": "x.json"}, "path applies only to source 'deepscaler'"),
        ({"recipe": "xml"}, "recipe must be 'boxed' or 'gsm8k3'"),
        (
            {"recipe": "gsm8k3", "conditioned_length": True},
            "['conditioned_length'] apply only to recipe 'boxed'",
        ),
        ({"length_limit": 0}, "length_limit must be a positive integer"),
        ({"num_train": -3}, "num_train must be a positive integer"),
        ({"demo_noise": 1.5}, "demo_noise must be in [0, 1]"),
        ({"conditioned_length": "maybe"}, "conditioned_length must be true or false"),
        ({"conditioned_length": 1}, "conditioned_length must be true or false, got 1"),
        ({"length_weight": "heavy"}, "length_weight must be a finite number"),
        ({"length_weight": float("inf")}, "length_weight must be a finite number, got inf"),
        ({"num_demonstrations": -1}, "num_demonstrations must be a non-negative integer, got -1"),
        ({"num_demonstrations": 2.0}, "num_demonstrations must be a non-negative integer, got 2.0"),
    ],
)
def test_factory_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_task("math", options, 0)


def test_options_and_string_booleans():
    task = _small(length_limit=25, conditioned_length="true")
    assert {r["length_limit"] for r in task.train + task.test} == {25}
    assert task.rewards.components[1].condition_on == "correctness"
    assert len(task.train) == 20 and len(task.test) == 5


def test_evaluation_reads_the_task_length_limit():
    from gdpo.tasks.math import task_length_limit

    assert task_length_limit({}) == 40 == _small().test[0]["length_limit"]  # synthetic default
    assert task_length_limit({"source": "deepscaler"}) == 4000
    assert task_length_limit({"source": "deepscaler", "length_limit": 123}) == 123
    with pytest.raises(ValueError, match="length_limit must be a positive integer"):
        task_length_limit({"length_limit": 0})


def test_demonstrations_leave_room_to_learn():
    task = build_task("math", {"num_demonstrations": 1000, "demo_noise": 0.5}, 0)
    answers = {r["messages"][0]["content"]: r["answer"] for r in task.train}
    correct = [correctness_reward(c, answers[m[0]["content"]]) for m, c in task.demonstrations]
    padded = ["Check:" in c for _, c in task.demonstrations]
    assert 0.18 < 1 - sum(correct) / len(correct) < 0.32  # p/2 = 25% with a slip in the last step
    assert 0.18 < sum(padded) / len(padded) < 0.32  # p/2 = 25% padded with check lines
    again = build_task("math", {"num_demonstrations": 1000, "demo_noise": 0.5}, 0)
    assert again.demonstrations == task.demonstrations  # deterministic in the seed
    clean = build_task("math", {"num_demonstrations": 300, "demo_noise": 0.0}, 0)
    assert all(correctness_reward(c, answers[m[0]["content"]]) == 1.0 for m, c in clean.demonstrations)
    assert not any("Check:" in c for _, c in clean.demonstrations)


def test_default_length_limit_binds_on_tiny_tokenizer(tmp_path):
    """Clean solutions fit the 40-token default, padded ones exceed it, with the tiny model's own tokenizer."""
    from transformers import AutoTokenizer

    from gdpo.config import TinyModelConfig
    from gdpo.tiny import build_tiny_model

    task = build_task("math", {"num_demonstrations": 400}, 0)
    folder = build_tiny_model(TinyModelConfig(), task.corpus, tmp_path, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    limit = task.train[0]["length_limit"]
    for _, completion in task.demonstrations:
        tokens = (
            len(tokenizer(completion, add_special_tokens=False)["input_ids"]) + 1
        )  # + EOS, as rollouts count
        assert (tokens > limit) == ("Check:" in completion), (completion, tokens)


def test_gsm8k3_demonstrations_vary_in_format_and_integer():
    task = build_task("math", {"recipe": "gsm8k3", "num_demonstrations": 600}, 0)
    fmt = [gsm8k_format_reward(c) for _, c in task.demonstrations]
    integer = [gsm8k_integer_reward(c) for _, c in task.demonstrations]
    assert 0.6 < sum(fmt) / len(fmt) < 0.9
    assert 0.5 < sum(integer) / len(integer) < 0.95  # negative answers are "not integer" in this recipe


# --------------------------------------------------------------------------------------------------
# Synthetic generator
# --------------------------------------------------------------------------------------------------


def _check_item(item):
    problem = item["problem"]
    if item["kind"] == "linear":
        a, sign, b, c = re.fullmatch(r"Solve for x: (\d+)x ([+-]) (\d+) = (-?\d+)\.", problem).groups()
        x = int(item["answer"])
        assert int(a) * x + (int(b) if sign == "+" else -int(b)) == int(c)
    else:
        expression = re.fullmatch(r"What is (.+)\?", problem).group(1)
        assert eval(expression) == int(item["answer"])  # only digits and + - * here
    assert last_boxed(item["solution"]) == item["answer"]
    assert correctness_reward(item["solution"], item["answer"]) == 1.0


def test_synthetic_generator_is_deterministic_correct_and_split():
    train = synthetic_problems(600, "train", seed=0)
    assert train == synthetic_problems(600, "train", seed=0)
    assert [i["problem"] for i in train] != [i["problem"] for i in synthetic_problems(600, "train", seed=1)]
    assert len({i["problem"] for i in train}) == 600
    assert {i["kind"] for i in train} == {"arith2", "arith3", "linear"}
    test_problems = {i["problem"] for seed in (0, 1) for i in synthetic_problems(300, "test", seed=seed)}
    train_problems = {i["problem"] for seed in (0, 1) for i in synthetic_problems(600, "train", seed=seed)}
    assert not test_problems & train_problems
    for item in train[:200]:
        _check_item(item)
    with pytest.raises(ValueError, match="split"):
        synthetic_problems(3, "validation")


def test_synthetic_solution_variants():
    item = next(i for i in synthetic_problems(50, "train") if i["kind"] == "arith3")
    wrong = render_synthetic_solution(item, final_delta=1)
    assert last_boxed(wrong) == str(int(item["answer"]) + 1)
    long = render_synthetic_solution(item, extra_checks=5)
    assert long.count("\n") == item["solution"].count("\n") + 5 and last_boxed(long) == item["answer"]


@pytest.mark.parametrize(
    ("completion", "whole", "after_think"),
    [
        ("<think>maybe \\boxed{5}</think> so \\boxed{7}", 1.0, 1.0),
        ("<think>maybe \\boxed{7}</think> the answer is \\boxed{5}", 0.0, 0.0),
        ("<think>it is \\boxed{7}</think> I am done.", 1.0, 0.0),  # boxed only while thinking
        ("<think>still thinking... \\boxed{7}", 1.0, 0.0),  # unfinished think: no answer
        ("\\boxed{7}", 1.0, 0.0),  # no </think> at all
        ("<think>a</think> \\boxed{7} </think> \\boxed{5}", 0.0, 1.0),  # DeepScaleR: up to a second </think>
    ],
)
def test_answer_after_think_reads_only_what_follows_the_thinking(completion, whole, after_think):
    assert correctness_reward(completion, "7") == whole
    assert correctness_reward(completion, "7", answer_after_think=True) == after_think


def test_answer_after_think_option_reaches_the_task_reward():
    options = {"num_train": 4, "num_test": 2, "num_demonstrations": 0}
    rollout = {
        "completion": "<think>\\boxed{7}</think> done",
        "answer": "7",
        "num_tokens": 5,
        "length_limit": 40,
    }
    plain = build_task("math", options, 0).rewards
    strict = build_task("math", {**options, "answer_after_think": True}, 0).rewards
    assert plain.score([[rollout]]).raw[0, 0, 0].item() == 1.0
    assert strict.score([[rollout]]).raw[0, 0, 0].item() == 0.0
    with pytest.raises(Exception, match="answer_after_think"):
        build_task("math", {**options, "recipe": "gsm8k3", "answer_after_think": True}, 0)
