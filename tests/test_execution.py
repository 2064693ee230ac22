"""The judge (gdpo.execution): program extraction, output comparison, sandboxed test runs of every test form,
forged verdicts."""

from __future__ import annotations

import pytest

from gdpo.execution.judge import outputs_match, run_tests, values_match
from gdpo.execution.programs import extract_program

SUM_TESTS = [{"input": "3 5\n", "output": "8\n"}, {"input": "10 -4", "output": "6"}]
SUM = "a, b = map(int, input().split())\nprint(a + b)"


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("```python\nprint(1)\n```", "print(1)"),
        ("```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```", "print(2)"),  # the last python block
        ("```python\nprint(1)\n```\n```\nprint(2)\n```", "print(1)"),  # python wins over a later bare block
        ("```\nprint(2)\n```", "print(2)"),  # a bare block when there is no python block
        ("```cpp\nint main() {}\n```", None),  # other languages are ignored
        ("```cpp\nint x;\n```\n```py\nprint(3)\n```", "print(3)"),
        ("print(1)", None),  # unfenced: no program
        ("just words", None),
        ("```Python3 title=x\nprint(4)\n```", "print(4)"),  # tag: first word, any case
        ("```python\nprint(5)", "print(5)"),  # unclosed last block runs to the end
        (
            "```python\n   \n```\n```python\nprint(6)\n```\n```python\n\n```",
            "print(6)",
        ),  # blank blocks ignored
        ("```python\n    return x\n```", "    return x"),  # indentation kept
        # A block inside a list item: the fence's own indentation is removed, the program's kept.
        (
            "1. Code:\n   ```python\n   n = int(input())\n   if n:\n       print(n)\n   ```",
            "n = int(input())\nif n:\n    print(n)",
        ),
        ("  ```python\n    return x\n  ```", "  return x"),
        ("```python\nx = '```'\nprint(x)\n```", "x = '```'\nprint(x)"),  # inline backticks do not close
    ],
)
def test_extract_program(completion, expected):
    assert extract_program(completion) == expected


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def test_outputs_match_is_whitespace_normalised_line_by_line():
    assert outputs_match("1 2\n3\n", "1   2 \n3")
    assert outputs_match("\n1\t2\r\n3\n\n", "1 2\n3")
    assert not outputs_match("1 2 3", "1 2\n3")  # line structure counts
    assert not outputs_match("1\n\n2", "1\n2")  # inner blank lines count
    assert not outputs_match("12", "1 2")
    assert outputs_match("0.3333333", "0.333333333")  # decimal expected: 1e-6 tolerance
    assert not outputs_match("0.3334", "0.3333")
    assert not outputs_match("3", "3.5")
    assert outputs_match("1", "1 ")
    assert outputs_match("", "\n")


def test_values_match():
    assert values_match([1, 2], (1, 2))  # tuples become lists
    assert values_match(5, [5])  # APPS/TACO wrap returns in a one-element list
    assert values_match(0.1 + 0.2, 0.3)
    assert not values_match(True, 1) and not values_match(1, True)  # booleans only match booleans
    assert values_match({"a": [1, 2.0]}, {"a": [1, 2]})
    assert not values_match("1", 1)
    assert not values_match([5, 6], [5])


# --------------------------------------------------------------------------------------------------
# Running programs: stdin/stdout
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "program, pass_rate, bug_free, statuses",
    [
        (SUM, 1.0, True, ["pass", "pass"]),
        ("print(8)", 0.5, True, ["pass", "fail"]),  # half correct
        ("a, b = map(int, input().split())\nprint(a * b)", 0.0, True, ["fail", "fail"]),  # wrong output
        ("a = int(input())\nprint(a)", 0.0, False, ["runtime_error"] * 2),  # crash on parsing
        ("print(1 +", 0.0, False, ["compile_error"] * 2),
        (
            "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)",
            0.0,
            False,
            ["runtime_error"] * 2,
        ),
        ("while True:\n    pass", 0.0, False, ["timeout"] * 2),
        (None, 0.0, False, ["no_code"] * 2),
    ],
    ids=["correct", "half", "wrong", "crash", "syntax", "nonzero_exit", "loop", "no_code"],
)
def test_stdio_programs(program, pass_rate, bug_free, statuses):
    result = run_tests(program, SUM_TESTS, timeout_s=1.0, workers=2)
    assert [c.status for c in result.cases] == statuses
    assert result.pass_rate == pass_rate
    assert result.has_bug is (not bug_free)


def test_a_long_correct_output_is_not_cut_into_a_wrong_one():
    # 300k numbers: about 2 MB of expected output, beyond the sandbox's default 1 MiB per stream.
    n = 300_000
    tests = [{"input": f"{n}\n", "output": " ".join(str(i) for i in range(n)) + "\n"}]
    program = "n = int(input())\nprint(' '.join(str(i) for i in range(n)))\n"
    assert len(tests[0]["output"]) > 2 * (1 << 20) - 300_000
    assert [c.status for c in run_tests(program, tests, timeout_s=5.0).cases] == ["pass"]
    wrong = "n = int(input())\nprint(' '.join(str(i + 1) for i in range(n)))\n"
    assert [c.status for c in run_tests(wrong, tests, timeout_s=5.0).cases] == ["fail"]


def test_stdio_program_reads_stdin_and_main_block_runs():
    program = "import sys\n\ndef main():\n    print(sum(map(int, sys.stdin.read().split())))\n\n" + (
        "if __name__ == '__main__':\n    main()"
    )
    assert run_tests(program, SUM_TESTS, timeout_s=2.0).pass_rate == 1.0


# --------------------------------------------------------------------------------------------------
# Running programs: function calls, and forged verdicts
# --------------------------------------------------------------------------------------------------

CALL_TESTS = [
    {"fn_name": "add", "args": [1, 2], "output": 3},
    {"fn_name": "add", "args": [2, 2], "output": [4]},
    {"fn_name": "add", "args": [0, 0], "output": 0},
]


@pytest.mark.parametrize(
    "program, statuses",
    [
        ("def add(a, b):\n    return a + b", ["pass", "pass", "pass"]),
        ("class Solution:\n    def add(self, a, b):\n        return a + b", ["pass", "pass", "pass"]),
        (
            "def add(a, b):\n    print(a + b)\n    return a * b",
            ["fail", "pass", "pass"],
        ),  # prints are ignored
        ("def add(a, b):\n    return a + b + 0 // a", ["pass", "pass", "runtime_error"]),
        ("def add(a, b):\n    while a == 0:\n        pass\n    return a + b", ["pass", "pass", "timeout"]),
        ("def add(a, b):\n    return {a, b}", ["fail", "fail", "fail"]),  # not JSON: a wrong answer
        ("def plus(a, b):\n    return a + b", ["runtime_error"] * 3),  # no entry point
        ("import sys\nx = int(sys.stdin.read())\ndef add(a, b):\n    return a + b", ["runtime_error"] * 3),
        ("def add(a, b)\n    return a + b", ["compile_error"] * 3),
        ("if __name__ == '__main__':\n    input()\ndef add(a, b):\n    return a + b", ["pass"] * 3),
    ],
    ids=[
        "function",
        "solution_class",
        "prints",
        "crash_one",
        "loop_one",
        "set",
        "missing",
        "load",
        "syntax",
        "main",
    ],
)
def test_call_programs(program, statuses):
    result = run_tests(program, CALL_TESTS, timeout_s=0.5)
    assert [c.status for c in result.cases] == statuses


def test_a_program_that_catches_its_alarm_is_still_stopped():
    tests = [{"fn_name": "f", "args": [x], "output": x} for x in (0, 1, 2)]
    # Catches every exception of the loop, the alarm's included: the harness stops at the repeated alarm and
    # does not run the later cases (before, the run waited out the sandbox's whole limit).
    stubborn = "def f(x):\n    while x == 0:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n    return x\n"
    cases = run_tests(stubborn, tests, timeout_s=0.3).cases
    assert [(c.status, c.detail) for c in cases] == [("timeout", "")] + [
        ("timeout", "not run: case 0 did not stop at its time limit")
    ] * 2
    # Catches the alarm once and returns: over its limit, so a timeout; the later cases run.
    late = "def f(x):\n    if x == 0:\n        try:\n            while True:\n                pass\n        except BaseException:\n            return 0\n    return x\n"
    assert [c.status for c in run_tests(late, tests, timeout_s=0.3).cases] == ["timeout", "pass", "pass"]


FORGERIES = {
    # prints every plausible verdict text to stdout, then returns a wrong value
    "plain_prints": "def add(a, b):\n    print('PASS')\n    print('0 V 3')\n    print('P')\n    return -1",
    # finds the harness's token and its verdict channel, writes claims of its own, and exits before the harness
    "harness_introspection": (
        "import os, sys\n"
        "g = sys._getframe(1).f_globals\n"
        "for i in range(3):\n"
        "    os.write(g['_OUT'], (g['_TOKEN'] + ' ' + str(i) + ' V 999\\n').encode())\n"
        "for word in ('P', 'pass'):\n"
        "    os.write(g['_OUT'], (g['_TOKEN'] + ' ' + word + '\\n').encode())\n"
        "os._exit(0)\n"
    ),
    # the function itself writes a claim on the channel, then returns a wrong value: two verdicts -> failed
    "claim_then_return": (
        "import os, sys\n"
        "def add(a, b):\n"
        "    g = sys._getframe(1).f_globals\n"
        "    os.write(g['_OUT'], (g['_TOKEN'] + ' 0 V 3\\n').encode())\n"
        "    return -1\n"
    ),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_do_not_pass(name):
    result = run_tests(FORGERIES[name], CALL_TESTS, timeout_s=1.0)
    assert result.num_passed == 0, result.cases


def test_check_program_prints_do_not_pass():
    check = {
        "check": "def check(f):\n    assert f(1) == 2\n",
        "entry_point": "inc",
        "prompt": "def inc(x):\n",
    }
    forged = "    print('P')\n    print('pass')\n    return x\n"
    assert run_tests(forged, [check]).cases[0].status == "fail"
    assert run_tests("    return x + 1\n", [check]).cases[0].status == "pass"


def test_mixed_test_forms_keep_their_order():
    tests = [SUM_TESTS[0], {"fn_name": "f", "args": [2], "output": 4}, SUM_TESTS[1]]
    program = (
        "def f(x):\n    return 2 * x\nif __name__ == '__main__':\n    print(sum(map(int, input().split())))"
    )
    assert [c.status for c in run_tests(program, tests).cases] == ["pass", "pass", "pass"]


def test_hundreds_of_call_tests_fit_the_sandbox_time_limit():
    """800 cases x 5 s asked the sandbox for 4001 s, over its 3600 s maximum: the whole batch failed."""
    tests = [{"fn_name": "double", "args": [i], "output": 2 * i} for i in range(800)]
    result = run_tests("def double(x):\n    return 2 * x\n", tests, timeout_s=5.0)
    assert result.pass_rate == 1.0 and len(result.cases) == 800


def test_malformed_tests_are_errors_naming_the_test():
    with pytest.raises(ValueError, match="test 1: stdin/stdout test needs"):
        run_tests("print(1)", [SUM_TESTS[0], {"input": 3, "output": "1"}])
    with pytest.raises(ValueError, match="at least one test"):
        run_tests("print(1)", [])
