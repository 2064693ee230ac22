"""Coding (paper §4.3, Table 5): run the completion's program on the problem's tests in the sandbox.

Model-generated code runs only in ``gdpo.sandbox`` (``run_tests``: one sandbox per program, a fresh interpreter
per stdin input), never in this process: every test form is a small harness program (built here, run there)
whose output is parsed here.

Rewards (docs/paper-notes.md §6.4; where the paper's incomplete text is silent, the definitions are ours):

* ``pass_rate`` (R_pass): passed tests / total tests, in [0, 1].
* ``length`` (R~_length, Eq. 8 through :class:`gdpo.rewards.RewardComponent`): 1 iff ``num_tokens <=
  length_limit`` (the whole completion, EOS included, as the rollout counts it), paid only where
  ``pass_rate >= 1`` (all tests pass).
* ``bug`` (R_bug, 3-objective runs only): **1 iff no test ends in a compile error, a runtime error (uncaught
  exception, non-zero exit, killed by a signal), the memory limit or a timeout, and a program was found**; else
  0. Positive = bug-free, so maximising it lowers Table 5's "Bug" ratio. We count timeouts as bugs (the paper
  names only runtime and compile errors) because otherwise a hanging program would out-score a crashing one
  and the policy could learn to loop forever; a wrong answer from a program that runs is not a bug.

Program extraction (:func:`extract_program`): the body of the last fenced block tagged ``python`` (also ``py``,
``python3``, ``py3``; tags are case-insensitive, the first word of the info string counts); if there is none,
the last fenced block without a tag; blocks tagged with another language are ignored, as are blank blocks. A
fence opens at a line starting with three backticks and closes at the next line that is only three backticks;
an unclosed last block runs to the end of the text (a generation cut at the closing fence keeps its code).
A completion without any fenced block has **no program**: every test scores ``no_code`` (pass 0, bug 0),
the task asks for a fenced block and the demonstrations always give one. Indentation is kept as written.

Test forms and how they are judged:

* stdin/stdout ``{"input", "output"}``: the program runs once per test (stdin = input, ``timeout_s`` each), with
  ``__name__ == "__main__"``; a syntax error is told from a runtime error by the harness. Output comparison is
  whitespace-normalised line by line: both texts are stripped, split into lines, each line split on
  whitespace; the lists must be equal, except that an expected token written as a decimal number (with a
  ``.`` or an exponent) also matches an actual number within 1e-6 (absolute, or relative above 1). A non-zero
  exit is a runtime error even if the output is right.
* function call ``{"fn_name", "args", "output"}``: one run per problem executes the program (with
  ``__name__ == "solution"``, so a ``__main__`` block does not read stdin) and calls ``fn_name(*args)`` for each
  case (a ``class Solution`` method is found too), each case under its own ``timeout_s`` alarm, repeated every
  0.1 s: a case that catches the alarm and returns late is a timeout, and one that keeps running stops the harness
  (its later cases count as timeouts, not run) instead of holding the sandbox for its whole limit. The harness
  prints only the JSON of each return value, on a line tagged with a random per-run token; the comparison with
  the expected value happens **here**, so a program cannot forge a pass by printing verdicts (it would have to
  print the right values, which is solving the case). The program's own stdout goes to /dev/null; a case
  reported twice counts as failed. Values match when equal after the JSON round trip (tuples become lists;
  floats within 1e-6 relative/1e-9 absolute; booleans only match booleans), or when the expected value is a
  one-element list holding the value (APPS/TACO wrap returns that way). A return value JSON cannot encode is a
  wrong answer.
* check program ``{"check", "entry_point", "prompt"}`` (HumanEval): the prompt followed by the code (on new
  lines when the code defines ``entry_point`` itself, so it replaces the prompt's stub and keeps its imports;
  directly, as the function's body, otherwise), then the test code, then ``check(entry_point)``, in one
  namespace, ``timeout_s`` for the whole run. An ``AssertionError`` from
  ``check`` is a wrong answer; any other exception is a runtime error. This verdict is decided inside the
  sandbox, as HumanEval's design requires, so a program that deliberately introspects the harness could forge
  it; check programs serve evaluation only, never a training reward.

Execution results are cached per (program, tests, limits): the rewards of one completion share one run, and
:class:`CodeRewardSet` runs a whole batch in parallel before the components read the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdpo.rewards import RewardComponent, RewardSet
from gdpo.tasks import Task, number_option, positive_int_option, register_task

__all__ = [
    "BUG_STATUSES",
    "CaseResult",
    "CodeExecutor",
    "CodeRewardSet",
    "ExecutionResult",
    "build_coding_task",
    "code_messages",
    "coding_rewards",
    "extract_program",
    "humaneval_program",
    "length_reward",
    "outputs_match",
    "run_tests",
    "run_tests_many",
    "test_kind",
    "values_match",
]

BUG_STATUSES = frozenset({"compile_error", "runtime_error", "timeout", "memory", "no_code"})
PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})
INSTRUCTION = "Answer with a Python program in a ```python block."

# --------------------------------------------------------------------------------------------------
# Program extraction
# --------------------------------------------------------------------------------------------------

_OPEN = re.compile(r"^([ \t]*)```[ \t]*([^`\n]*)$")
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of every fenced block, in order; an unclosed last block runs to the end.

    As in CommonMark, a fence indented by n characters (a block inside a list item) removes up to n leading
    whitespace characters from each line of its body; indentation beyond the fence's is the program's own."""
    blocks, tag, body, indent = [], None, [], 0
    for line in text.split("\n"):
        if tag is None:
            opened = _OPEN.match(line)
            if opened:
                words = opened.group(2).split()
                tag, body, indent = (words[0].lower() if words else ""), [], len(opened.group(1))
        elif _CLOSE.match(line):
            blocks.append((tag, "\n".join(body)))
            tag = None
        else:
            own = len(line) - len(line.lstrip(" \t"))
            body.append(line[min(indent, own) :])
    if tag is not None:
        blocks.append((tag, "\n".join(body)))
    return blocks


def extract_program(completion: str) -> str | None:
    """The program of a completion (see the module docstring), or None when it has none."""
    blocks = [(tag, body) for tag, body in _fenced_blocks(completion) if body.strip()]
    for wanted in (lambda t: t in PYTHON_TAGS, lambda t: t == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    return None


def humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """HumanEval program: the prompt then the code when it defines ``entry_point``, else prompt + code."""
    if re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return f"{prompt}\n\n{code}\n"
    return f"{prompt}{code}\n"


# --------------------------------------------------------------------------------------------------
# Output comparison (in this process, on text and JSON data only)
# --------------------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")


def _tokens_match(actual: str, expected: str) -> bool:
    if actual == expected:
        return True
    if not _DECIMAL.match(expected):
        return False
    try:
        a, e = float(actual), float(expected)
    except ValueError:
        return False
    return math.isfinite(a) and abs(a - e) <= 1e-6 * max(1.0, abs(e))


def outputs_match(actual: str, expected: str) -> bool:
    """Whitespace-normalised line-by-line comparison of program output (see the module docstring)."""
    got = [line.split() for line in actual.strip().splitlines()]
    want = [line.split() for line in expected.strip().splitlines()]
    return len(got) == len(want) and all(
        len(g) == len(w) and all(_tokens_match(a, e) for a, e in zip(g, w)) for g, w in zip(got, want)
    )


def _same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        if isinstance(actual, int) and isinstance(expected, int):
            return actual == expected
        return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(_same_value(a, e) for a, e in zip(actual, expected))
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(_same_value(actual[k], expected[k]) for k in actual)
    return type(actual) is type(expected) and actual == expected


def values_match(actual: Any, expected: Any) -> bool:
    """A function's (JSON-decoded) return value against the expected one (see the module docstring)."""
    expected = json.loads(json.dumps(expected))  # tuples -> lists, as the actual value went through JSON
    if _same_value(actual, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _same_value(actual, expected[0])


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one test: ``pass``, ``fail`` (ran, wrong answer) or one of :data:`BUG_STATUSES`."""

    status: str
    detail: str = ""


@dataclass(frozen=True)
class ExecutionResult:
    """All test outcomes of one program."""

    program: str | None
    cases: tuple[CaseResult, ...]

    @property
    def num_passed(self) -> int:
        return sum(c.status == "pass" for c in self.cases)

    @property
    def pass_rate(self) -> float:
        return self.num_passed / len(self.cases)

    @property
    def all_passed(self) -> bool:
        return self.num_passed == len(self.cases)

    @property
    def has_bug(self) -> bool:
        """True when some test ended in a compile/runtime error, the memory limit, a timeout, or no program."""
        return any(c.status in BUG_STATUSES for c in self.cases)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)


# --------------------------------------------------------------------------------------------------
# Harness programs (strings run in the sandbox). Values are inserted as Python literals in an assignment
# header; the bodies below are constant text, so nothing from the program is ever re-scanned as code.
# --------------------------------------------------------------------------------------------------

_CHANNEL = r"""
import json as _json
import os as _os


def _emit(*parts):
    data = (" ".join((_TOKEN,) + parts) + "\n").encode()
    while data:
        data = data[_os.write(_OUT, data):]


def _silence_stdout():
    # The program's prints must never reach the verdict channel: fd 1 -> /dev/null, verdicts -> a copy of it.
    global _OUT
    _OUT = _os.dup(1)
    null = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(null, 1)
    _os.close(null)


def _compile(src):
    try:
        return compile(src, "<solution>", "exec")
    except BaseException as exc:
        _emit("C", _json.dumps(type(exc).__name__))
        _os._exit(0)
"""

_STDIO_BODY = r"""
import sys as _sys

try:
    _code = compile(_PROGRAM, "<solution>", "exec")
except BaseException as _exc:
    _sys.stderr.write("\n" + _TOKEN + " C " + type(_exc).__name__ + "\n")
    _sys.exit(1)
del _PROGRAM
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""

_CALL_BODY = r"""

class _CaseTimeout(BaseException):
    pass


_CASE = [0, 0]  # the case running, and how often its alarm has fired


def _alarm(signum, frame):
    _CASE[1] += 1
    if _CASE[1] > 1:  # the program caught the first alarm and went on: stop, the later cases are not run
        _emit(str(_CASE[0]), "T")
        _emit("H", str(_CASE[0]))
        _os._exit(0)
    raise _CaseTimeout()


def _function(ns, name):
    fn = ns.get(name)
    if fn is None and isinstance(ns.get("Solution"), type):
        fn = getattr(ns["Solution"](), name, None)
    return fn if callable(fn) else None


def _main():
    import signal

    _silence_stdout()
    code = _compile(_PROGRAM)
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, ns)
        fn = _function(ns, _FN_NAME)
    except BaseException as exc:
        _emit("L", _json.dumps(type(exc).__name__))
        return
    if fn is None:
        _emit("M")
        return
    signal.signal(signal.SIGALRM, _alarm)
    for i, args in enumerate(_json.loads(_ARGS)):
        _CASE[0], _CASE[1] = i, 0
        # The alarm repeats (every 0.1 s after the first), so a program that catches it is still stopped.
        signal.setitimer(signal.ITIMER_REAL, _CASE_TIMEOUT, 0.1)
        try:
            value = fn(*args)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if _CASE[1]:
                _emit(str(i), "T")
            else:
                _emit(str(i), "E", _json.dumps(type(exc).__name__))
            continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        if _CASE[1]:  # it returned, but after its time limit (it caught the alarm)
            _emit(str(i), "T")
            continue
        try:
            payload = _json.dumps(value)
        except BaseException:
            _emit(str(i), "X")
            continue
        _emit(str(i), "V", payload)


_main()
_os._exit(0)
"""

_CHECK_BODY = r"""

def _main():
    _silence_stdout()
    code = _compile(_PROGRAM)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, ns)
    except BaseException as exc:
        _emit("L", _json.dumps(type(exc).__name__))
        return
    try:
        exec(compile(_TEST, "<test>", "exec"), ns)
        ns["check"](ns[_ENTRY_POINT])
    except AssertionError:
        _emit("F")
        return
    except BaseException as exc:
        _emit("E", _json.dumps(type(exc).__name__))
        return
    _emit("P")


_main()
_os._exit(0)
"""


def _header(**values: Any) -> str:
    return "".join(f"_{name.upper()} = {value!r}\n" for name, value in values.items())


def _stdio_harness(program: str, token: str) -> str:
    return _header(token=token, program=program) + _STDIO_BODY


def _call_harness(program: str, fn_name: str, args: list[list], case_timeout: float, token: str) -> str:
    header = _header(
        token=token, program=program, fn_name=fn_name, args=json.dumps(args), case_timeout=float(case_timeout)
    )
    return header + _CHANNEL + _CALL_BODY


def _check_harness(program: str, test: str, entry_point: str, token: str) -> str:
    return _header(token=token, program=program, test=test, entry_point=entry_point) + _CHANNEL + _CHECK_BODY


# --------------------------------------------------------------------------------------------------
# Planning runs, running them in the sandbox, reading the outcomes
# --------------------------------------------------------------------------------------------------


def test_kind(test: Any, where: str = "test") -> str:
    """``stdio``, ``call`` or ``check``; a malformed test raises ValueError naming ``where`` and the field."""
    if not isinstance(test, Mapping):
        raise ValueError(f"{where}: a test must be an object, got {type(test).__name__}")
    if "check" in test:
        for key in ("check", "entry_point", "prompt"):
            if not isinstance(test.get(key), str):
                raise ValueError(f"{where}: check test field {key!r} must be a string")
        return "check"
    if "fn_name" in test:
        if (
            not isinstance(test["fn_name"], str)
            or not isinstance(test.get("args"), list)
            or "output" not in test
        ):
            raise ValueError(f"{where}: call test needs 'fn_name' (str), 'args' (list) and 'output'")
        return "call"
    if not isinstance(test.get("input"), str) or not isinstance(test.get("output"), str):
        raise ValueError(f"{where}: stdin/stdout test needs string fields 'input' and 'output'")
    return "stdio"


@dataclass(frozen=True)
class _Run:
    """One program in one sandbox, run once per stdin input (a fresh interpreter each time)."""

    code: str
    inputs: tuple[str, ...]
    timeout_s: float
    max_output_bytes: int = 1 << 20  # per input and stream; beyond it the output is cut (and cannot match)


@dataclass
class _Plan:
    """The sandbox runs one program needs, and how their outcomes become per-test results."""

    program: str | None
    runs: list[_Run]
    finish: Callable[[list[list[Any]]], list[CaseResult]]


def _unreported(result: Any) -> CaseResult:
    """A test the harness gave no verdict for: the run's own status says why."""
    status = getattr(result, "status", "error")
    if status in ("timeout", "memory"):
        return CaseResult(status)
    return CaseResult("runtime_error", f"no verdict (sandbox status {status})")


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _error_name(rest: list[str]) -> str:
    """The exception name a harness reported (a JSON string), or ""."""
    try:
        name = json.loads(rest[0]) if rest else ""
    except json.JSONDecodeError:
        return ""
    return name[:100] if isinstance(name, str) else ""


def _verdict_lines(stdout: str, token: str) -> list[list[str]]:
    prefix = token + " "
    return [
        line[len(prefix) :].split(" ", 2) for line in (stdout or "").splitlines() if line.startswith(prefix)
    ]


def _plan_stdio(program: str, tests: list[dict], timeout_s: float) -> tuple[list[_Run], Callable]:
    token = secrets.token_hex(16)
    # Room for a correct answer however long the expected one (its numbers may be printed longer: 0.5 vs
    # 0.500000), so a long correct output is never cut into a wrong one.
    longest = max(len(t["output"].encode()) for t in tests)
    output_cap = max(1 << 20, 4 * longest)
    run = _Run(_stdio_harness(program, token), tuple(t["input"] for t in tests), timeout_s, output_cap)

    def finish(results: list[list[Any]]) -> list[CaseResult]:
        out = []
        for test, result in zip(tests, results[0]):
            if result.status == "ok":
                passed = outputs_match(result.stdout or "", test["output"])
                out.append(CaseResult("pass" if passed else "fail"))
            elif result.status == "error" and f"{token} C " in (result.stderr or ""):
                out.append(
                    CaseResult("compile_error", result.stderr.split(f"{token} C ", 1)[1].strip()[:200])
                )
            elif result.status in ("timeout", "memory"):
                out.append(CaseResult(result.status))
            else:
                out.append(CaseResult("runtime_error", _last_line(result.stderr)))
        return out

    return [run], finish


def _plan_call(program: str, tests: list[dict], timeout_s: float) -> tuple[list[_Run], Callable]:
    from gdpo.sandbox import MAX_TIMEOUT_S

    token = secrets.token_hex(16)
    fn_name = tests[0]["fn_name"]
    code = _call_harness(program, fn_name, [t["args"] for t in tests], timeout_s, token)
    # The per-case alarm bounds each call; the run's limit also covers loading and every case (capped at the
    # sandbox's maximum: hundreds of cases would otherwise ask for more and fail the whole batch).
    run = _Run(code, ("",), min(timeout_s * len(tests) + 1.0, MAX_TIMEOUT_S))

    def finish(results: list[list[Any]]) -> list[CaseResult]:
        ((result,),) = results
        lines = _verdict_lines(result.stdout, token)
        whole = [parts for parts in lines if parts[0] in ("C", "L", "M")]
        if whole:  # the program did not compile, load, or define the function: every case shares it
            kind = whole[0][0]
            status = "compile_error" if kind == "C" else "runtime_error"
            where = {"C": "compiling", "L": "loading", "M": f"finding function {fn_name!r}"}[kind]
            detail = f"{_error_name(whole[0][1:])} while {where}".lstrip()
            return [CaseResult(status, detail)] * len(tests)
        by_case: dict[str, list[list[str]]] = {}
        for parts in lines:
            by_case.setdefault(parts[0], []).append(parts[1:])
        halted = [int(h[0]) for h in by_case.get("H", []) if h and h[0].isdigit()]
        if halted:  # a case ignored its alarm: the harness stopped there
            not_run = CaseResult("timeout", f"not run: case {halted[0]} did not stop at its time limit")
            return [
                _call_case(by_case[str(i)], test, result) if str(i) in by_case else not_run
                for i, test in enumerate(tests)
            ]
        return [_call_case(by_case.get(str(i), []), test, result) for i, test in enumerate(tests)]

    return [run], finish


def _call_case(reports: list[list[str]], test: dict, result: Any) -> CaseResult:
    if not reports:
        return _unreported(result)
    if len(reports) > 1:
        return CaseResult("fail", "several verdicts for one case")
    kind, *rest = reports[0]
    if kind == "T":
        return CaseResult("timeout")
    if kind == "E":
        return CaseResult("runtime_error", _error_name(rest))
    if kind != "V" or not rest:
        return CaseResult("fail", "return value is not JSON")
    try:
        value = json.loads(rest[0])
    except json.JSONDecodeError:
        return CaseResult("fail", "unreadable return value")
    return CaseResult("pass" if values_match(value, test["output"]) else "fail")


_CHECK_STATUS = {"P": "pass", "F": "fail", "C": "compile_error", "L": "runtime_error", "E": "runtime_error"}


def _plan_check(program: str, test: dict, timeout_s: float) -> tuple[list[_Run], Callable]:
    token = secrets.token_hex(16)
    full = humaneval_program(test["prompt"], program, test["entry_point"])
    run = _Run(_check_harness(full, test["check"], test["entry_point"], token), ("",), timeout_s)

    def finish(results: list[list[Any]]) -> list[CaseResult]:
        ((result,),) = results
        lines = _verdict_lines(result.stdout, token)
        if not lines:
            return [_unreported(result)]
        if len(lines) > 1:
            return [CaseResult("fail", "several verdicts")]
        kind, *rest = lines[0]
        return [CaseResult(_CHECK_STATUS.get(kind, "fail"), _error_name(rest))]

    return [run], finish


def _plan(program: str | None, tests: Sequence[Mapping], timeout_s: float) -> _Plan:
    if not tests:
        raise ValueError("a problem needs at least one test")
    kinds = [test_kind(t, f"test {i}") for i, t in enumerate(tests)]
    if program is None:
        return _Plan(None, [], lambda _: [CaseResult("no_code")] * len(tests))
    # Group the tests: stdio tests one run each, call tests one run per function name, check tests one run each.
    groups: list[tuple[list[int], list[_Run], Callable]] = []
    stdio = [i for i, k in enumerate(kinds) if k == "stdio"]
    if stdio:
        groups.append((stdio, *_plan_stdio(program, [dict(tests[i]) for i in stdio], timeout_s)))
    for name in dict.fromkeys(t["fn_name"] for t, k in zip(tests, kinds) if k == "call"):
        idx = [i for i, (t, k) in enumerate(zip(tests, kinds)) if k == "call" and t["fn_name"] == name]
        groups.append((idx, *_plan_call(program, [dict(tests[i]) for i in idx], timeout_s)))
    for i in (i for i, k in enumerate(kinds) if k == "check"):
        groups.append(([i], *_plan_check(program, dict(tests[i]), timeout_s)))

    def finish(results: list[Any]) -> list[CaseResult]:
        cases: list[CaseResult | None] = [None] * len(tests)
        offset = 0
        for idx, runs, group_finish in groups:
            outcomes = group_finish(results[offset : offset + len(runs)])
            offset += len(runs)
            for i, outcome in zip(idx, outcomes):
                cases[i] = outcome
        return cases  # type: ignore[return-value]

    return _Plan(program, [r for _, runs, _ in groups for r in runs], finish)


def _default_workers() -> int:
    from gdpo.sandbox import max_workers

    return max_workers()


def _execute_runs(runs: list[_Run], memory_mb: int, workers: int | None) -> list[list[Any]]:
    """Sandbox results of ``runs`` in order (one list per run, one result per input), ``workers`` at a time.

    The sandbox itself never runs more programs at once than it allows (``gdpo.sandbox.max_workers``).
    """
    from gdpo.sandbox import run_tests as sandbox_run_tests

    def one(run: _Run):
        return sandbox_run_tests(
            run.code,
            list(run.inputs),
            timeout_s=run.timeout_s,
            memory_mb=memory_mb,
            max_output_bytes=run.max_output_bytes,
        )

    workers = workers or _default_workers()
    if len(runs) <= 1 or workers == 1:
        return [one(r) for r in runs]
    with ThreadPoolExecutor(max_workers=min(workers, len(runs))) as pool:
        return list(pool.map(one, runs))


def run_tests_many(
    jobs: Sequence[tuple[str | None, Sequence[Mapping]]],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
) -> list[ExecutionResult]:
    """Run every (program, tests) job, all sandbox runs of all jobs in one parallel pool."""
    plans = [_plan(program, tests, timeout_s) for program, tests in jobs]
    results = _execute_runs([r for p in plans for r in p.runs], memory_mb, workers)
    out, offset = [], 0
    for plan in plans:
        cases = plan.finish(results[offset : offset + len(plan.runs)])
        offset += len(plan.runs)
        out.append(ExecutionResult(plan.program, tuple(cases)))
    return out


def run_tests(
    program: str | None,
    tests: Sequence[Mapping],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
) -> ExecutionResult:
    """Run one program (None = no program) on its tests."""
    return run_tests_many([(program, tests)], timeout_s=timeout_s, memory_mb=memory_mb, workers=workers)[0]


# --------------------------------------------------------------------------------------------------
# Cached execution of rollouts, rewards
# --------------------------------------------------------------------------------------------------


class CodeExecutor:
    """Runs rollouts' programs on their tests once: results are cached by (program, tests, limits)."""

    def __init__(
        self, timeout_s: float = 5.0, memory_mb: int = 512, workers: int | None = None, cache_size: int = 8192
    ):
        self.timeout_s, self.memory_mb, self.workers = float(timeout_s), int(memory_mb), workers
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ExecutionResult] = OrderedDict()
        self._lock = threading.Lock()
        # Digest of each tests list seen, by id: rollouts of one prompt share their row's list, and hashing
        # large test data (TACO has hundreds of cases) once per component and rollout would dominate. The list
        # itself is kept beside its digest, so its id cannot be reused by another object.
        self._digests: dict[int, tuple[Sequence[Mapping], str]] = {}
        self.sandbox_jobs = 0  # programs actually run (cache misses), for tests and logs

    def _tests_digest(self, tests: Sequence[Mapping]) -> str:
        known = self._digests.get(id(tests))
        if known is not None and known[0] is tests:
            return known[1]
        digest = hashlib.sha256(json.dumps(tests, sort_keys=True, default=str).encode()).hexdigest()
        if len(self._digests) >= 4 * self.cache_size:
            self._digests.clear()
        self._digests[id(tests)] = (tests, digest)
        return digest

    def _key(self, program: str | None, tests: Sequence[Mapping]) -> str:
        blob = json.dumps([program, self._tests_digest(tests), self.timeout_s, self.memory_mb])
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def _job(rollout: Mapping) -> tuple[str | None, Sequence[Mapping]]:
        return extract_program(rollout["completion"]), rollout["tests"]

    def execute_many(self, rollouts: Sequence[Mapping]) -> list[ExecutionResult]:
        """Results of every rollout; the programs not cached yet run in one parallel batch."""
        jobs = [self._job(r) for r in rollouts]
        keys = [self._key(program, tests) for program, tests in jobs]
        with self._lock:
            missing = {k: job for k, job in zip(keys, jobs) if k not in self._cache}
        if missing:
            results = run_tests_many(
                list(missing.values()),
                timeout_s=self.timeout_s,
                memory_mb=self.memory_mb,
                workers=self.workers,
            )
            with self._lock:
                self.sandbox_jobs += len(missing)
                for key, result in zip(missing, results):
                    self._cache[key] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            out = []
            for key, job in zip(keys, jobs):
                result = self._cache.get(key)
                if result is None:  # evicted by a batch larger than the cache: run it again
                    result = run_tests_many([job], timeout_s=self.timeout_s, memory_mb=self.memory_mb)[0]
                else:
                    self._cache.move_to_end(key)
                out.append(result)
        return out

    def execute(self, rollout: Mapping) -> ExecutionResult:
        return self.execute_many([rollout])[0]

    def pass_rate(self, rollout: Mapping) -> float:
        return self.execute(rollout).pass_rate

    def bug(self, rollout: Mapping) -> float:
        return 0.0 if self.execute(rollout).has_bug else 1.0


def length_reward(rollout: Mapping) -> float:
    """1 iff the completion is at most ``length_limit`` tokens (the condition on pass_rate is Eq. 8's)."""
    return 1.0 if int(rollout["num_tokens"]) <= int(rollout["length_limit"]) else 0.0


class CodeRewardSet(RewardSet):
    """A RewardSet that executes the whole batch in the sandbox (in parallel) before scoring it."""

    def __init__(self, components: Sequence[RewardComponent], executor: CodeExecutor):
        super().__init__(components)
        self.executor = executor

    def score(self, groups):
        self.executor.execute_many([r for group in groups for r in group])
        return super().score(groups)

    def with_weights(self, weights):
        return CodeRewardSet(super().with_weights(weights).components, self.executor)


def coding_rewards(objectives: int = 2, executor: CodeExecutor | None = None) -> CodeRewardSet:
    """``pass_rate`` + ``length`` (conditioned on pass_rate == 1), plus ``bug`` when ``objectives == 3``."""
    if objectives not in (2, 3):
        raise ValueError(f"coding objectives must be 2 or 3, got {objectives!r}")
    executor = executor or CodeExecutor()
    components = [
        RewardComponent("pass_rate", executor.pass_rate),
        RewardComponent("length", length_reward, condition_on="pass_rate", threshold=1.0),
    ]
    if objectives == 3:
        components.append(RewardComponent("bug", executor.bug))
    return CodeRewardSet(components, executor)


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


def code_messages(question: str) -> list[dict]:
    """Chat messages for a problem statement: one user turn, the statement then the answer instruction."""
    return [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]


def _fenced(program: str) -> str:
    return f"```python\n{program}\n```"


def _synthetic_demonstration(rng, row: dict, noise: float) -> str:
    """A correct program, or with probability ``noise`` a wrong, crashing or padded (too long) one."""
    from gdpo.data.code_data import TEMPLATES_BY_NAME, crashing_program, padded_program, wrong_program

    template = TEMPLATES_BY_NAME[row["template"]]
    if rng.random() >= noise:
        return _fenced(template.program)
    kind = rng.choice(["wrong", "crash", "long"])
    if kind == "wrong":
        return _fenced(wrong_program(rng, template))
    if kind == "crash":
        return _fenced(crashing_program(template))
    return _fenced(padded_program(rng, template))


SOURCE_DEFAULTS = {  # length limit (tokens), timeout per test (s), train / test sizes (None = all)
    "synthetic": {"length_limit": 44, "timeout_s": 2.0, "num_train": 2000, "num_test": 200},
    "eurus": {"length_limit": 4000, "timeout_s": 5.0, "num_train": None, "num_test": None},
}


def scoring_limits(options: dict) -> dict:
    """``length_limit`` (tokens), ``timeout_s`` and ``memory_mb`` the task scores with, given its ``data.options``.

    The evaluation reads them here too, so that Exceed and Bug measure what training rewarded.
    """
    source = options.get("source", "synthetic")
    if source not in SOURCE_DEFAULTS:
        raise ValueError(f"task 'coding': unknown source {source!r}; known: {sorted(SOURCE_DEFAULTS)}")
    defaults = SOURCE_DEFAULTS[source]
    return {
        "length_limit": positive_int_option(
            options.get("length_limit", defaults["length_limit"]), "length_limit"
        ),
        "timeout_s": number_option(
            options.get("timeout_s", defaults["timeout_s"]), "timeout_s", positive=True
        ),
        "memory_mb": positive_int_option(options.get("memory_mb", 512), "memory_mb"),
    }


def _rows(records: list[dict], length_limit: int) -> list[dict]:
    rows = []
    for record in records:
        messages = record.get("messages") or code_messages(record["question"])
        row = {k: v for k, v in record.items() if k != "messages"}
        rows.append({"messages": messages, **row, "length_limit": length_limit})
    return rows


def _synthetic_splits(num_train: int, num_test: int, length_limit: int) -> tuple[list[dict], list[dict]]:
    from gdpo.data import code_data

    train_templates, test_templates = code_data.split_templates(
        seed=0
    )  # fixed data; the run seed orders demos
    train = code_data.generate_problems(train_templates, num_train, seed=1)
    test = code_data.generate_problems(test_templates, num_test, seed=2)
    return _rows(train, length_limit), _rows(test, length_limit)


def _eurus_splits(location: str, num_train, num_test, length_limit: int) -> tuple[list[dict], list[dict]]:
    from gdpo.data import code_data

    if Path(location).is_file():  # one file cannot give both splits without leaking test rows into training
        raise ValueError(
            f"task 'coding': path {location!r} is a file; give a folder with train.* and validation.* files "
            "(jsonl, json or parquet) or a hub name"
        )
    train = code_data.load_eurus(location, "train", num_train)
    test = code_data.load_eurus(location, "validation", num_test)
    return _rows(train, length_limit), _rows(test, length_limit)


@register_task("coding")
def build_coding_task(options: dict, seed: int) -> Task:
    """Options: source ("synthetic" | "eurus"), path (eurus: a local folder or a hub name), objectives (2 | 3),
    length_limit, timeout_s, memory_mb, workers, num_train, num_test, demo_noise, num_demonstrations; the
    defaults that depend on the source are in SOURCE_DEFAULTS."""
    import random

    from gdpo.data.code_data import HUB_NAMES

    limits = scoring_limits(options)
    length_limit, timeout_s, memory_mb = limits["length_limit"], limits["timeout_s"], limits["memory_mb"]
    for key in limits:
        options.pop(key, None)
    source = options.pop("source", "synthetic")
    defaults = SOURCE_DEFAULTS[source]
    path = options.pop("path", None)
    objectives = options.pop("objectives", 2)
    if type(objectives) is not int or objectives not in (2, 3):
        raise ValueError(f"data.options.objectives must be 2 or 3, got {objectives!r}")
    workers = positive_int_option(options.pop("workers", None), "workers", allow_none=True)
    num_train = positive_int_option(
        options.pop("num_train", defaults["num_train"]), "num_train", allow_none=True
    )
    num_test = positive_int_option(options.pop("num_test", defaults["num_test"]), "num_test", allow_none=True)
    demo_noise = number_option(options.pop("demo_noise", 0.5), "demo_noise", low=0.0, high=1.0)
    num_demos = positive_int_option(
        options.pop("num_demonstrations", 2000), "num_demonstrations", allow_zero=True
    )
    if options:
        raise ValueError(f"unknown data.options for task 'coding': {sorted(options)}")
    if source == "synthetic":
        if path is not None:
            raise ValueError("task 'coding': 'path' applies to source 'eurus' only")
        train, test = _synthetic_splits(int(num_train), int(num_test), length_limit)
    else:
        train, test = _eurus_splits(path or HUB_NAMES["eurus"], num_train, num_test, length_limit)
    demos = []
    if source == "synthetic":  # Eurus-2 ships no solutions: no demonstrations (a real model needs none)
        rng = random.Random(seed)
        for _ in range(num_demos):
            row = rng.choice(train)
            demos.append((row["messages"], _synthetic_demonstration(rng, row, demo_noise)))
    executor = CodeExecutor(timeout_s, memory_mb, workers)
    return Task("coding", train, test, coding_rewards(objectives, executor), demos)
