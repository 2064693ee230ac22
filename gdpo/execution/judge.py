"""The judge: run a program on its tests in the sandbox and give each test a verdict.

Model-generated code runs only in ``gdpo.sandbox``, never in this process: every test form is run by the
harness script (``gdpo/execution/harness.py``) around the program, and the harness's output is read here.
:func:`run_tests` / :func:`run_tests_many` are the API: (program, tests) -> :class:`ExecutionResult`, one
:class:`CaseResult` per test, in the tests' order. All sandbox runs of all programs of one call go through one
bounded pool.

Verdicts: ``pass``, ``fail`` (ran, wrong answer), or a bug: ``compile_error``, ``runtime_error`` (uncaught
exception, non-zero exit, killed by a signal), ``memory``, ``timeout``, ``no_code`` (the completion held no
program, :func:`gdpo.execution.programs.extract_program`).

Test forms and how they are judged:

* stdin/stdout ``{"input", "output"}``: the program runs once per test (stdin = input, ``timeout_s`` each), with
  ``__name__ == "__main__"``; a syntax error is told from a runtime error by the harness. Output comparison is
  whitespace-normalised line by line: both texts are stripped, split into lines, each line split on
  whitespace; the lists must be equal, except that an expected token written as a decimal number (with a
  ``.`` or an exponent) also matches an actual number within 1e-6 (absolute, or relative above 1). A non-zero
  exit is a runtime error even if the output is right.
* function call ``{"fn_name", "args", "output"}``: one run per problem and function name executes the program
  (with ``__name__ == "solution"``, so a ``__main__`` block does not read stdin) and calls ``fn_name(*args)`` for
  each case (a ``class Solution`` method is found too), each case under its own ``timeout_s`` alarm, repeated
  every 0.1 s: a case that catches the alarm and returns late is a timeout, and one that keeps running stops the
  harness (its later cases count as timeouts, not run) instead of holding the sandbox for its whole limit. The
  harness reports only the JSON of each return value, on a line tagged with a random per-run token; the
  comparison with the expected value happens **here**, so a program cannot forge a pass by printing verdicts
  (it would have to print the right values, which is solving the case). The program's own stdout goes to
  /dev/null; a case reported twice counts as failed. Values match when equal after the JSON round trip (tuples
  become lists; floats within 1e-6 relative/1e-9 absolute; booleans only match booleans), or when the expected
  value is a one-element list holding the value (APPS/TACO wrap returns that way). A return value JSON cannot
  encode is a wrong answer.
* check program ``{"check", "entry_point", "prompt"}`` (HumanEval): the prompt followed by the code (on new
  lines when the code defines ``entry_point`` itself, so it replaces the prompt's stub and keeps its imports;
  directly, as the function's body, otherwise), then the test code, then ``check(entry_point)``, in one
  namespace, ``timeout_s`` for the whole run. An ``AssertionError`` from ``check`` is a wrong answer; any other
  exception is a runtime error. This verdict is decided inside the sandbox, as HumanEval's design requires, so
  a program that deliberately introspects the harness could forge it; check programs serve evaluation only,
  never a training reward.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gdpo import sandbox

__all__ = [
    "BUG_STATUSES",
    "CaseResult",
    "ExecutionResult",
    "outputs_match",
    "run_tests",
    "run_tests_many",
    "values_match",
]

BUG_STATUSES = frozenset({"compile_error", "runtime_error", "timeout", "memory", "no_code"})

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
# Comparing outputs (in this process, on text and JSON data only)
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
# Test forms and the sandbox runs they need
# --------------------------------------------------------------------------------------------------


def _test_kind(test: Any, where: str = "test") -> str:
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


@cache
def _harness_source() -> str:
    return resources.files("gdpo.execution").joinpath("harness.py").read_text(encoding="utf-8")


def _script(entry: str, *values: str | float) -> str:
    """The harness followed by one call of its entry point; the values go in as Python literals."""
    return f"{_harness_source()}\n{entry}({', '.join(repr(v) for v in values)})\n"


@dataclass(frozen=True)
class _Run:
    """One script in one sandbox, run once per stdin input (a fresh interpreter each time); ``verdicts`` turns
    its results (one per input) into the verdicts of the tests at ``indices`` of the program's tests."""

    indices: list[int]
    code: str
    inputs: tuple[str, ...]
    timeout_s: float
    verdicts: Callable[[list[sandbox.SandboxResult]], list[CaseResult]]
    max_output_bytes: int = 1 << 20  # per input and stream; beyond it the output is cut (and cannot match)


def _unreported(result: sandbox.SandboxResult) -> CaseResult:
    """A test the harness gave no verdict for: the run's own status says why."""
    if result.status in ("timeout", "memory"):
        return CaseResult(result.status)
    return CaseResult("runtime_error", f"no verdict (sandbox status {result.status})")


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


def _reports(stdout: str, token: str) -> list[list[str]]:
    """The harness's report lines (``<token> <fields>``), each split into at most three fields."""
    prefix = token + " "
    return [
        line[len(prefix) :].split(" ", 2) for line in (stdout or "").splitlines() if line.startswith(prefix)
    ]


def _stdio_run(indices: list[int], program: str, tests: list[Mapping], timeout_s: float) -> _Run:
    token = secrets.token_hex(16)
    # Room for a correct answer however long the expected one (its numbers may be printed longer: 0.5 vs
    # 0.500000), so a long correct output is never cut into a wrong one.
    longest = max(len(t["output"].encode()) for t in tests)
    output_cap = max(1 << 20, 4 * longest)

    def verdicts(results: list[sandbox.SandboxResult]) -> list[CaseResult]:
        out = []
        for test, result in zip(tests, results):
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

    inputs = tuple(t["input"] for t in tests)
    return _Run(indices, _script("run_stdio", token, program), inputs, timeout_s, verdicts, output_cap)


def _call_run(indices: list[int], program: str, tests: list[Mapping], timeout_s: float) -> _Run:
    token = secrets.token_hex(16)
    fn_name = tests[0]["fn_name"]
    code = _script(
        "run_call", token, program, fn_name, json.dumps([t["args"] for t in tests]), float(timeout_s)
    )

    def verdicts(results: list[sandbox.SandboxResult]) -> list[CaseResult]:
        (result,) = results
        lines = _reports(result.stdout, token)
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

    # The per-case alarm bounds each call; the run's limit also covers loading and every case (capped at the
    # sandbox's maximum: hundreds of cases would otherwise ask for more and fail the whole batch).
    return _Run(indices, code, ("",), min(timeout_s * len(tests) + 1.0, sandbox.MAX_TIMEOUT_S), verdicts)


def _call_case(reports: list[list[str]], test: Mapping, result: sandbox.SandboxResult) -> CaseResult:
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


def _humaneval_program(prompt: str, code: str, entry_point: str) -> str:
    """The prompt then the code on new lines when it defines ``entry_point``, else prompt + code (the body)."""
    if re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return f"{prompt}\n\n{code}\n"
    return f"{prompt}{code}\n"


_CHECK_STATUS = {"P": "pass", "F": "fail", "C": "compile_error", "L": "runtime_error", "E": "runtime_error"}


def _check_run(index: int, program: str, test: Mapping, timeout_s: float) -> _Run:
    token = secrets.token_hex(16)
    full = _humaneval_program(test["prompt"], program, test["entry_point"])

    def verdicts(results: list[sandbox.SandboxResult]) -> list[CaseResult]:
        (result,) = results
        lines = _reports(result.stdout, token)
        if not lines:
            return [_unreported(result)]
        if len(lines) > 1:
            return [CaseResult("fail", "several verdicts")]
        kind, *rest = lines[0]
        return [CaseResult(_CHECK_STATUS.get(kind, "fail"), _error_name(rest))]

    code = _script("run_check", token, full, test["check"], test["entry_point"])
    return _Run([index], code, ("",), timeout_s, verdicts)


def _runs(program: str | None, tests: Sequence[Mapping], timeout_s: float) -> list[_Run]:
    """The runs a program needs: stdio tests share one, call tests one per function name, check tests one each.
    Malformed tests are errors, with or without a program."""
    if not tests:
        raise ValueError("a problem needs at least one test")
    kinds = [_test_kind(t, f"test {i}") for i, t in enumerate(tests)]
    if program is None:
        return []
    runs = []
    stdio = [i for i, k in enumerate(kinds) if k == "stdio"]
    if stdio:
        runs.append(_stdio_run(stdio, program, [tests[i] for i in stdio], timeout_s))
    for name in dict.fromkeys(t["fn_name"] for t, k in zip(tests, kinds) if k == "call"):
        idx = [i for i, (t, k) in enumerate(zip(tests, kinds)) if k == "call" and t["fn_name"] == name]
        runs.append(_call_run(idx, program, [tests[i] for i in idx], timeout_s))
    runs += [_check_run(i, program, tests[i], timeout_s) for i, k in enumerate(kinds) if k == "check"]
    return runs


def _execute(runs: list[_Run], memory_mb: int, workers: int | None) -> list[list[sandbox.SandboxResult]]:
    """Sandbox results of ``runs`` in order (one list per run, one result per input), ``workers`` at a time
    (``sandbox.run_many``; runs differ in their limits, so each job carries its own)."""
    jobs = [
        {"code": r.code, "inputs": r.inputs, "timeout_s": r.timeout_s, "max_output_bytes": r.max_output_bytes}
        for r in runs
    ]
    return sandbox.run_many(jobs, workers=workers, memory_mb=memory_mb)


def run_tests_many(
    jobs: Sequence[tuple[str | None, Sequence[Mapping]]],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
) -> list[ExecutionResult]:
    """Judge every (program, tests) job (program None: no program), all sandbox runs in one parallel pool.

    ``timeout_s`` bounds each stdin test, each function-call case and each check program; ``workers`` (default:
    ``gdpo.sandbox.max_workers()``) bounds the sandbox runs at a time."""
    runs = [_runs(program, tests, timeout_s) for program, tests in jobs]
    results = iter(_execute([run for program_runs in runs for run in program_runs], memory_mb, workers))
    out = []
    for (program, tests), program_runs in zip(jobs, runs):
        cases = {i: CaseResult("no_code") for i in range(len(tests))}  # a program's runs cover every test
        for run in program_runs:
            cases.update(zip(run.indices, run.verdicts(next(results))))
        out.append(ExecutionResult(program, tuple(cases[i] for i in range(len(tests)))))
    return out


def run_tests(
    program: str | None,
    tests: Sequence[Mapping],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int | None = None,
) -> ExecutionResult:
    """Judge one program (None = no program) on its tests (see :func:`run_tests_many`)."""
    return run_tests_many([(program, tests)], timeout_s=timeout_s, memory_mb=memory_mb, workers=workers)[0]
