"""Benchmark: throughput of the sandbox that runs model-written programs (gdpo/sandbox.py).

For each isolation this machine provides (``bwrap``, the default, and the opt-in ``rlimits``), measures
- a trivial program (``print(1)``): ``run_python`` one call at a time, and ``run_many`` on every CPU;
- a test suite: a program checked against 20 stdin/stdout cases, as 20 one-input jobs of ``run_many``, as
  one ``run_inputs`` call (one sandbox, a fresh work dir and process per case), and as ``run_many`` over
  several suites at once.
Every output is checked. Besides throughput, each row has the CPU time of the sandbox processes per execution
(``RUSAGE_CHILDREN``: bwrap, launcher and program; not kernel work done in other threads), which depends much
less on what else the machine runs, and the CPU time of the calling process per execution (``RUSAGE_SELF``:
starting sandboxes and reading their results). Prints a table and writes
``bench/results/sandbox-cpu.json`` naming the machine (CPU model and core count) and the load average while it
ran: throughput is only comparable on an idle machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

from gdpo import sandbox

RESULTS = Path(__file__).parent / "results"
TRIVIAL = "print(1)"
SUITE_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUITE = [(f"{i} {i * 7}\n", f"{i + i * 7}\n") for i in range(20)]  # 20 (stdin, expected stdout) cases


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def check(results, expected: list[str]) -> None:
    wrong = [
        (r.status, r.stdout, want)
        for r, want in zip(results, expected)
        if (r.status, r.stdout) != ("ok", want)
    ]
    if wrong or len(results) != len(expected):
        raise SystemExit(f"wrong sandbox results: {wrong[:3]}")


def cpu_s() -> tuple[float, float]:
    """CPU seconds so far of the waited-for child processes and of this process."""
    children, own = (resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF))
    return children.ru_utime + children.ru_stime, own.ru_utime + own.ru_stime


def since(before: tuple[float, float]) -> tuple[float, float]:
    return tuple(now - then for now, then in zip(cpu_s(), before))


def flat(suites: list[list]) -> list:
    return [result for suite in suites for result in suite]


def timed(fn) -> tuple[float, tuple[float, float]]:
    """Wall seconds, and CPU seconds of the child processes and of this process, while `fn` ran."""
    start, cpu = time.perf_counter(), cpu_s()
    fn()
    return time.perf_counter() - start, since(cpu)


def row(name: str, executions: int, seconds: float, cpu: tuple[float, float], **extra) -> dict:
    rate = round(executions / seconds, 2)
    return {
        "name": name,
        "executions": executions,
        "seconds": round(seconds, 3),
        "executions_per_s": rate,
        "cpu_ms_per_execution": round(cpu[0] / executions * 1e3, 2),
        "caller_cpu_ms_per_execution": round(cpu[1] / executions * 1e3, 2),
        **extra,
    }


def bench_trivial(sequential: int, parallel: int) -> list[dict]:
    latencies, cpu = [], cpu_s()
    for _ in range(sequential):
        start = time.perf_counter()
        check([sandbox.run_python(TRIVIAL)], ["1\n"])
        latencies.append(time.perf_counter() - start)
    median_ms = round(statistics.median(latencies) * 1e3, 1)
    name, cpu = "trivial, run_python, 1 at a time", since(cpu)
    rows = [row(name, sequential, sum(latencies), cpu, median_latency_ms=median_ms)]
    seconds, cpu = timed(
        lambda: check(flat(sandbox.run_many([(TRIVIAL, [""])] * parallel)), ["1\n"] * parallel)
    )
    rows.append(row(f"trivial, run_many, {sandbox.max_workers()} workers", parallel, seconds, cpu))
    return rows


def bench_suites(sequential: int, parallel: int) -> list[dict]:
    stdins = [stdin for stdin, _ in SUITE]
    expected = [stdout for _, stdout in SUITE]
    cases = len(SUITE)
    rows = []

    def as_calls() -> None:
        for _ in range(sequential):
            check(flat(sandbox.run_many([(SUITE_PROGRAM, [stdin]) for stdin in stdins])), expected)

    seconds, cpu = timed(as_calls)
    name = f"suite of {cases}, {cases} one-input jobs (run_many)"
    rows.append(row(name, sequential * cases, seconds, cpu, suites_per_s=round(sequential / seconds, 3)))

    def as_one_call() -> None:
        for _ in range(sequential):
            check(sandbox.run_inputs(SUITE_PROGRAM, stdins), expected)

    seconds, cpu = timed(as_one_call)
    name = f"suite of {cases}, one run_inputs call, 1 at a time"
    rows.append(row(name, sequential * cases, seconds, cpu, suites_per_s=round(sequential / seconds, 3)))

    def many_suites() -> None:
        for suite in sandbox.run_many([(SUITE_PROGRAM, stdins)] * parallel):
            check(suite, expected)

    seconds, cpu = timed(many_suites)
    name = f"suite of {cases}, run_many of suites, {sandbox.max_workers()} workers"
    rows.append(row(name, parallel * cases, seconds, cpu, suites_per_s=round(parallel / seconds, 3)))
    return rows


def available_isolations() -> list[str]:
    found = []
    for isolation in sandbox.ISOLATIONS:
        os.environ["GDPO_SANDBOX_ISOLATION"] = isolation
        try:
            sandbox.sandbox_info()
            found.append(isolation)
        except sandbox.SandboxError as exc:
            print(f"{isolation}: unavailable ({str(exc).splitlines()[0]})")
    return found


def main() -> None:
    load_before = os.getloadavg()
    runs = []
    for isolation in available_isolations():
        os.environ["GDPO_SANDBOX_ISOLATION"] = isolation
        sandbox.run_python(TRIVIAL)  # warm up (detection, page cache)
        rows = bench_trivial(sequential=30, parallel=60) + bench_suites(sequential=3, parallel=6)
        runs.append({"sandbox": sandbox.sandbox_info(), "results": rows})
    os.environ.pop("GDPO_SANDBOX_ISOLATION", None)
    machine = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "sandbox-cpu.json"
    out.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    load = machine["load_average_1min"]
    cpus = machine["usable_cpus"]
    print(
        f"sandbox throughput on {machine['cpu_model']} ({cpus} CPUs, load {load['before']} -> {load['after']}) -> {out}"
    )
    for run in runs:
        print(f"  isolation: {run['sandbox']['isolation']} (python {run['sandbox']['python']})")
        for r in run["results"]:
            extra = f"  {r['suites_per_s']:6.2f} suites/s" if "suites_per_s" in r else ""
            latency = f"  median {r['median_latency_ms']} ms" if "median_latency_ms" in r else ""
            cpu = f"  {r['cpu_ms_per_execution']:5.1f} ms CPU/exec (caller {r['caller_cpu_ms_per_execution']:4.2f})"
            print(f"    {r['name']:<52} {r['executions_per_s']:7.1f} exec/s{cpu}{extra}{latency}")


if __name__ == "__main__":
    main()
