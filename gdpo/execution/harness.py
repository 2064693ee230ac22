"""The script the sandbox runs around a model-written program: ``gdpo.execution.judge`` sends this file's text
followed by one call of an entry point, the run's values as Python literals (``run_call('<token>', ...)``).
Standard library only; the program stays a string literal until an entry point compiles it.

``run_call`` and ``run_check`` send the program's stdout to /dev/null and report on a copy of the original
stdout, one line each, ``<token> <fields>``: ``C name`` (does not compile), ``L name`` (raised while loading),
``M`` (no such function); per case ``i V json`` (returned), ``i E name`` (raised), ``i T`` (over its time
limit), ``i X`` (not JSON), ``H i`` (case i ignored its alarm: later cases not run); HumanEval: ``P`` / ``F`` /
``E name``. A program that reads ``_OUT`` and ``_TOKEN`` from its caller's frame can write such lines, which
is why the judge compares the values itself and fails a case reported twice.
"""

import os
import sys

_OUT = 1  # the verdict channel: a copy of the original stdout once the program's stdout is silenced
_TOKEN = ""  # random per run; tags every report line


def _emit(*parts):
    data = (" ".join((_TOKEN,) + parts) + "\n").encode()
    while data:
        data = data[os.write(_OUT, data) :]


def _silence_stdout():
    """The program's prints must never reach the verdict channel: fd 1 -> /dev/null, reports -> a copy of it."""
    global _OUT
    _OUT = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _compile(program, json):
    try:
        return compile(program, "<solution>", "exec")
    except BaseException as exc:
        _emit("C", json.dumps(type(exc).__name__))
        os._exit(0)


def run_stdio(token, program):
    """Run ``program`` as ``__main__`` on stdin; a syntax error is told apart from a runtime error on stderr."""
    try:
        code = compile(program, "<solution>", "exec")
    except BaseException as exc:
        sys.stderr.write("\n" + token + " C " + type(exc).__name__ + "\n")
        sys.exit(1)
    del program
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


class _CaseTimeout(BaseException):
    pass


_CASE = [0, 0]  # the case running, and how often its alarm has fired


def _alarm(signum, frame):
    _CASE[1] += 1
    if _CASE[1] > 1:  # the program caught the first alarm and went on: stop, the later cases are not run
        _emit(str(_CASE[0]), "T")
        _emit("H", str(_CASE[0]))
        os._exit(0)
    raise _CaseTimeout()


def _function(namespace, name):
    fn = namespace.get(name)
    if fn is None and isinstance(namespace.get("Solution"), type):
        fn = getattr(namespace["Solution"](), name, None)
    return fn if callable(fn) else None


def _call_cases(fn, cases, case_timeout, json):
    import signal

    signal.signal(signal.SIGALRM, _alarm)
    for i, args in enumerate(cases):
        _CASE[0], _CASE[1] = i, 0
        signal.setitimer(signal.ITIMER_REAL, case_timeout, 0.1)
        try:
            value = fn(*args)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if _CASE[1]:
                _emit(str(i), "T")
            else:
                _emit(str(i), "E", json.dumps(type(exc).__name__))
            continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        if _CASE[1]:  # it returned, but after its time limit (it caught the alarm)
            _emit(str(i), "T")
            continue
        try:
            payload = json.dumps(value)
        except BaseException:
            _emit(str(i), "X")
            continue
        _emit(str(i), "V", payload)


def run_call(token, program, fn_name, cases_json, case_timeout):
    """Load ``program`` as module ``solution`` and report ``fn_name(*args)`` for each case of ``cases_json``."""
    global _TOKEN
    import json

    _TOKEN = token
    _silence_stdout()
    code = _compile(program, json)
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
        fn = _function(namespace, fn_name)
    except BaseException as exc:
        _emit("L", json.dumps(type(exc).__name__))
        os._exit(0)
    if fn is None:
        _emit("M")
        os._exit(0)
    _call_cases(fn, json.loads(cases_json), case_timeout, json)
    os._exit(0)


def run_check(token, program, test, entry_point):
    """HumanEval: run ``program``, then ``test``, then ``check(entry_point)``, in one namespace."""
    global _TOKEN
    import json

    _TOKEN = token
    _silence_stdout()
    code = _compile(program, json)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except BaseException as exc:
        _emit("L", json.dumps(type(exc).__name__))
        os._exit(0)
    try:
        exec(compile(test, "<test>", "exec"), namespace)
        namespace["check"](namespace[entry_point])
    except AssertionError:
        _emit("F")
        os._exit(0)
    except BaseException as exc:
        _emit("E", json.dumps(type(exc).__name__))
        os._exit(0)
    _emit("P")
    os._exit(0)
