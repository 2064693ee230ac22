"""Task definitions: prompts, reward components, demonstrations for the tiny warm start.

A task is built by a registered factory ``factory(options: dict, seed: int) -> Task``; the trainer looks it up
by the config's ``task`` name. Each task issue adds its own module (tool_calling, math, coding). The options of
the built-in tasks are typed dataclasses in :mod:`gdpo.tasks.options`, checked when a config loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # gdpo.rewards imports torch; the config loader imports gdpo.tasks.options without it
    from gdpo.rewards import RewardSet

__all__ = [
    "TASKS",
    "Task",
    "build_task",
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
