"""Task definitions: prompts, reward components, demonstrations for the tiny warm start.

A task is built by a registered factory ``factory(options: dict, seed: int) -> Task``; the trainer looks it up
by the config's ``task`` name. Each task issue adds its own module (tool_calling, math, coding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import isfinite  # not `import math`: the submodule gdpo.tasks.math would shadow it
from typing import Any

from gdpo.rewards import RewardSet

__all__ = [
    "TASKS",
    "Task",
    "bool_option",
    "build_task",
    "number_option",
    "positive_int_option",
    "register_task",
]


@dataclass
class Task:
    """Everything the trainer needs from a task.

    Attributes:
        name: task name.
        train: training prompts; each a dict with ``messages`` (chat messages ending with the user turn) and
            whatever fields its reward functions read (ground truth, limits, ...).
        test: held-out prompts of the same form.
        rewards: the named reward components; each reward function receives a rollout dict: the prompt's
            fields plus ``completion`` (text) and ``num_tokens`` (completion length in tokens).
        demonstrations: (messages, completion) pairs for the supervised warm start of the tiny model.
        corpus: text for training the tiny model's tokenizer (defaults to prompts + demonstrations).
    """

    name: str
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    rewards: RewardSet
    demonstrations: list[tuple[list[dict], str]] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)

    def __post_init__(self):
        for split, rows in (("train", self.train), ("test", self.test)):
            for i, row in enumerate(rows):
                if not isinstance(row.get("messages"), list) or not row["messages"]:
                    raise ValueError(f"task {self.name!r}: {split}[{i}] has no 'messages' list")
        if not self.train:
            raise ValueError(f"task {self.name!r} has no training prompts")
        if not self.corpus:
            self.corpus = [m["content"] for row in self.train for m in row["messages"]]
            self.corpus += [completion for _, completion in self.demonstrations]


TASKS: dict[str, Callable[[dict[str, Any], int], Task]] = {}


def positive_int_option(
    value: Any, name: str, allow_none: bool = False, allow_zero: bool = False
) -> int | None:
    """``data.options.<name>`` as a positive integer (0 too if ``allow_zero``; not a bool or a float)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"data.options.{name} must be {kind} integer, got {value!r}")
    return value


def number_option(
    value: Any, name: str, *, low: float | None = None, high: float | None = None, positive: bool = False
) -> float:
    """``data.options.<name>`` as a finite number in ``[low, high]`` (and > 0 if ``positive``), or an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ValueError(f"data.options.{name} must be a finite number, got {value!r}"[:200])
    if (low is not None and value < low) or (high is not None and value > high) or (positive and value <= 0):
        if low is not None and high is not None:
            bounds = [f"in [{low:g}, {high:g}]"]
        else:
            bounds = [f">= {low:g}"] if low is not None else [f"<= {high:g}"] if high is not None else []
        bounds = (["positive"] if positive else []) + bounds
        raise ValueError(f"data.options.{name} must be {' and '.join(bounds)}, got {value!r}")
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return isfinite(value)
    except OverflowError:  # an integer beyond the float range (YAML reads 1000...0 exactly)
        return False


def bool_option(value: Any, name: str) -> bool:
    """``data.options.<name>`` as a boolean: YAML true/false, or the strings "true"/"false" (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"data.options.{name} must be true or false, got {value!r}")


def register_task(name: str):
    def decorator(factory):
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = factory
        return factory

    return decorator


def build_task(name: str, options: dict[str, Any], seed: int) -> Task:
    # Import the built-in task modules so that they register themselves.
    from gdpo.tasks import coding, math, tool_calling, toy  # noqa: F401

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name](dict(options), seed)
