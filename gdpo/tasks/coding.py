"""Coding (paper §4.3, Table 5): the rewards of a completion's program run on the problem's tests.

The program is read from the completion and judged by ``gdpo.execution`` (extraction in
``gdpo.execution.programs``; test forms, sandbox runs and verdicts in ``gdpo.execution.judge``); this module holds
the rewards built on those verdicts, the data and the task's options.

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

:class:`CodeRewardSet` judges a whole batch at once (all sandbox runs in one parallel pool) and hands each
component its rollout with the verdicts under ``"execution"``; :class:`CodeExecutor` keeps the verdicts of the
programs already judged, keyed by the content of (program, tests, limits), the most recent ``cache_size``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

from gdpo.execution.judge import ExecutionResult, run_tests_many
from gdpo.execution.programs import code_messages, extract_program
from gdpo.rewards import RewardComponent, RewardSet
from gdpo.tasks import Task, register_task
from gdpo.tasks.options import task_options

__all__ = [
    "CodeExecutor",
    "CodeRewardSet",
    "build_coding_task",
    "bug_reward",
    "coding_rewards",
    "length_reward",
    "pass_rate_reward",
    "scoring_limits",
]

# --------------------------------------------------------------------------------------------------
# Judging rollouts once, rewards
# --------------------------------------------------------------------------------------------------


def _tests_digests(rollouts: Sequence[Mapping]) -> list[str]:
    """The digest of each rollout's tests. The rollouts of one prompt come together and share their row's tests,
    so a digest is computed once per run of equal neighbours (comparing equal tests is cheap: the same objects)
    instead of once per rollout (TACO problems have hundreds of cases)."""
    digests: list[str] = []
    for i, rollout in enumerate(rollouts):
        tests = rollout["tests"]
        if i and tests == rollouts[i - 1]["tests"]:
            digests.append(digests[-1])
        else:
            digests.append(
                hashlib.sha256(json.dumps(tests, sort_keys=True, default=str).encode()).hexdigest()
            )
    return digests


class CodeExecutor:
    """Judges rollouts' programs on their tests, each distinct (program, tests) once: the verdicts are kept by
    the content of (program, tests, limits), the ``cache_size`` most recently used."""

    def __init__(
        self, timeout_s: float = 5.0, memory_mb: int = 512, workers: int | None = None, cache_size: int = 8192
    ):
        self.timeout_s, self.memory_mb, self.workers = float(timeout_s), int(memory_mb), workers
        self.cache_size = cache_size
        self._cache: OrderedDict[str, ExecutionResult] = OrderedDict()
        self._lock = threading.Lock()
        self.sandbox_jobs = 0  # programs actually judged (cache misses), for tests and logs

    def execute_many(self, rollouts: Sequence[Mapping]) -> list[ExecutionResult]:
        """Verdicts of every rollout (``completion`` and ``tests``); those not known yet are judged in one batch."""
        programs = [extract_program(r["completion"]) for r in rollouts]
        limits = [self.timeout_s, self.memory_mb]
        keys = [
            hashlib.sha256(json.dumps([program, digest, *limits]).encode()).hexdigest()
            for program, digest in zip(programs, _tests_digests(rollouts))
        ]
        with self._lock:
            known = {key: self._cache[key] for key in keys if key in self._cache}
        missing = {
            key: (program, r["tests"])
            for key, program, r in zip(keys, programs, rollouts)
            if key not in known
        }
        judged = run_tests_many(
            list(missing.values()), timeout_s=self.timeout_s, memory_mb=self.memory_mb, workers=self.workers
        )
        known.update(zip(missing, judged))
        with self._lock:
            self.sandbox_jobs += len(missing)
            for key in keys:
                self._cache[key] = known[key]
                self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [known[key] for key in keys]


def pass_rate_reward(rollout: Mapping) -> float:
    """R_pass: the share of tests passed (the verdicts :class:`CodeRewardSet` put under ``"execution"``)."""
    return rollout["execution"].pass_rate


def bug_reward(rollout: Mapping) -> float:
    """R_bug: 1 iff no test ended in a bug and a program was found (see the module docstring)."""
    return 0.0 if rollout["execution"].has_bug else 1.0


def length_reward(rollout: Mapping) -> float:
    """1 iff the completion is at most ``length_limit`` tokens (the condition on pass_rate is Eq. 8's)."""
    return 1.0 if int(rollout["num_tokens"]) <= int(rollout["length_limit"]) else 0.0


class CodeRewardSet(RewardSet):
    """A RewardSet that judges the whole batch (in parallel) before scoring it: each component receives the
    rollout with its verdicts under ``"execution"``."""

    def __init__(self, components: Sequence[RewardComponent], executor: CodeExecutor):
        super().__init__(components)
        self.executor = executor

    def score(self, groups):
        results = iter(self.executor.execute_many([r for group in groups for r in group]))
        return super().score([[{**r, "execution": next(results)} for r in group] for group in groups])

    def with_weights(self, weights):
        return CodeRewardSet(super().with_weights(weights).components, self.executor)


def coding_rewards(objectives: int = 2, executor: CodeExecutor | None = None) -> CodeRewardSet:
    """``pass_rate`` + ``length`` (conditioned on pass_rate == 1), plus ``bug`` when ``objectives == 3``."""
    if objectives not in (2, 3):
        raise ValueError(f"coding objectives must be 2 or 3, got {objectives!r}")
    components = [
        RewardComponent("pass_rate", pass_rate_reward),
        RewardComponent("length", length_reward, condition_on="pass_rate", threshold=1.0),
    ]
    if objectives == 3:
        components.append(RewardComponent("bug", bug_reward))
    return CodeRewardSet(components, executor or CodeExecutor())


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


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


def scoring_limits(options: dict) -> dict:
    """``length_limit`` (tokens), ``timeout_s`` and ``memory_mb`` the task scores with, given its ``data.options``.

    The evaluation reads them here too, so that Exceed and Bug measure what training rewarded.
    """
    opts = task_options("coding", options)
    return {"length_limit": opts.length_limit, "timeout_s": opts.timeout_s, "memory_mb": opts.memory_mb}


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
    length_limit, timeout_s, memory_mb, workers, num_train, num_test, demo_noise, num_demonstrations
    (gdpo.tasks.options.CodingOptions; the defaults that depend on the source are in CODING_SOURCE_DEFAULTS)."""
    import random

    from gdpo.data.code_data import HUB_NAMES

    opts = task_options("coding", options)
    source, path, objectives, workers = opts.source, opts.path, opts.objectives, opts.workers
    length_limit, timeout_s, memory_mb = opts.length_limit, opts.timeout_s, opts.memory_mb
    num_train, num_test, demo_noise = opts.num_train, opts.num_test, opts.demo_noise
    num_demos = opts.num_demonstrations
    if source == "synthetic":
        train, test = _synthetic_splits(num_train, num_test, length_limit)
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
