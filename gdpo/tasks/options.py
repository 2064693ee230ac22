"""The options of each built-in task (``data.options`` of a run config), as typed, bounded dataclasses.

``load_config`` checks a config's ``data.options`` against the options of the task it names, so a bad option is
an error when the config loads, before torch or any model; each task factory reads its options through
:func:`task_options` too. This module imports nothing heavy (no torch): the loader imports it.

A default that depends on the source (``length_limit``, ``timeout_s``, ``num_train``, ``num_test``) is None in
the schema and filled in from the source's defaults when the options are built.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from gdpo.schema import ConfigError, build, field_

__all__ = [
    "CODING_SOURCE_DEFAULTS",
    "TASK_OPTIONS",
    "CodingOptions",
    "MathOptions",
    "ToolCallingOptions",
    "ToyOptions",
    "task_options",
]


def _demo_noise(default: float, what: str = "a demonstration is broken") -> Any:
    return field_(default, help=f"warm start: probability that {what}", ge=0, le=1)


def _num_demonstrations() -> Any:
    return field_(2000, help="warm start: demonstrations generated for the tiny model (0 = none)", ge=0)


@dataclasses.dataclass
class ToyOptions:
    demo_noise: float = _demo_noise(
        0.5, "a demonstration has a wrong sum, and (independently) a broken format"
    )
    num_demonstrations: int = _num_demonstrations()


@dataclasses.dataclass
class ToolCallingOptions:
    source: str = field_(
        "synthetic",
        help='"synthetic" (generated offline) or ToolRL data: a folder of verl parquet files, a file or a URL',
    )
    test_source: str | None = field_(
        None, help="ToolRL test split when source is one file (it would otherwise be the training set again)"
    )
    compact_prompt: bool = field_(False, help="shorter system prompt (no 'Important Notes' section)")
    demo_format_noise: float = _demo_noise(0.6, "a demonstration skips the <think> block")
    demo_content_noise: float = _demo_noise(0.3, "a demonstration has a slip in its tool call")
    num_demonstrations: int = _num_demonstrations()
    train_size: int = field_(2000, help="synthetic training prompts", ge=1)
    test_size: int = field_(200, help="synthetic test prompts", ge=1)

    def __post_init__(self):
        if self.source == "synthetic" and self.test_source is not None:
            raise ConfigError(
                "data.options.test_source needs a ToolRL data.options.source, not the synthetic data"
            )


MATH_SOURCES = typing.Literal["synthetic", "gsm8k", "math", "deepscaler"]


@dataclasses.dataclass
class MathOptions:
    source: MATH_SOURCES = field_(
        "synthetic", help="synthetic (offline), gsm8k, math (MATH train / MATH500) or deepscaler (with path)"
    )
    path: str | None = field_(None, help="deepscaler: a local file or a hub dataset name")
    recipe: typing.Literal["boxed", "gsm8k3"] = field_(
        "boxed", help="boxed: correctness + length; gsm8k3: correctness, integer, format"
    )
    conditioned_length: bool = field_(
        False, help="recipe boxed: the length reward counts only for a correct answer (paper Table 4)"
    )
    length_weight: float = field_(1.0, help="recipe boxed: weight of the length reward (paper Figure 6)")
    answer_after_think: bool = field_(
        False,
        help="recipe boxed: read the answer only after </think>, as DeepScaleR-style scorers (a \\boxed{} while "
        "thinking does not count; no </think>, no answer); off: the last \\boxed{} anywhere",
    )
    length_limit: int | None = field_(
        None,
        help="tokens a completion may use for the length reward (default: 40 synthetic, else 4000)",
        ge=1,
    )
    num_train: int | None = field_(None, help="keep the first N training rows (default: all)", ge=1)
    num_test: int | None = field_(None, help="keep the first N test rows (default: all)", ge=1)
    demo_noise: float = _demo_noise(0.5)
    num_demonstrations: int = _num_demonstrations()

    def __post_init__(self):
        if self.path is not None and self.source != "deepscaler":
            raise ConfigError(f"data.options.path applies only to source 'deepscaler', not {self.source!r}")
        length_only = [name for name, value in (("conditioned_length", self.conditioned_length),
                                                 ("length_weight", self.length_weight != 1.0),
                                                 ("answer_after_think", self.answer_after_think)) if value]  # fmt: skip
        if length_only and self.recipe != "boxed":
            raise ConfigError(f"data.options {length_only} apply only to recipe 'boxed'")
        if self.length_limit is None:
            self.length_limit = 40 if self.source == "synthetic" else 4000


CODING_SOURCE_DEFAULTS = {  # length limit (tokens), timeout per test (s), train / test sizes (None = all)
    "synthetic": {"length_limit": 44, "timeout_s": 2.0, "num_train": 2000, "num_test": 200},
    "eurus": {"length_limit": 4000, "timeout_s": 5.0, "num_train": None, "num_test": None},
}


@dataclasses.dataclass
class CodingOptions:
    source: typing.Literal["synthetic", "eurus"] = field_("synthetic", help="synthetic (offline) or eurus")
    path: str | None = field_(
        None, help="eurus: a local folder with train.* and validation.* files, or a hub name"
    )
    objectives: typing.Literal[2, 3] = field_(2, help="2: pass rate + length; 3: also the bug reward")
    length_limit: int | None = field_(None, help="tokens for the length reward (default by source)", ge=1)
    timeout_s: float | None = field_(None, help="seconds per test (default by source)", gt=0)
    memory_mb: int = field_(512, help="memory limit of a test run (MB)", ge=1)
    workers: int | None = field_(None, help="processes running tests (default: the executor's)", ge=1)
    num_train: int | None = field_(None, help="training problems (default by source; eurus: all)", ge=1)
    num_test: int | None = field_(None, help="test problems (default by source; eurus: all)", ge=1)
    demo_noise: float = _demo_noise(0.5)
    num_demonstrations: int = _num_demonstrations()

    def __post_init__(self):
        if self.path is not None and self.source != "eurus":
            raise ConfigError("task 'coding': 'path' applies to source 'eurus' only")
        for name, default in CODING_SOURCE_DEFAULTS[self.source].items():
            if getattr(self, name) is None:
                setattr(self, name, default)


TASK_OPTIONS: dict[str, type] = {
    "toy": ToyOptions,
    "tool_calling": ToolCallingOptions,
    "math": MathOptions,
    "coding": CodingOptions,
}


def task_options(task: str, options: dict[str, Any] | None) -> Any:
    """The typed options of built-in ``task`` from its ``data.options`` mapping; a :class:`ConfigError` (one
    line naming the option) for an unknown option or a value out of its type or bounds."""
    cls = TASK_OPTIONS[task]
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ConfigError(f"data.options must be a mapping, got {type(options).__name__}")
    unknown = sorted(str(key)[:60] for key in options if key not in {f.name for f in dataclasses.fields(cls)})
    if unknown:
        known = [f.name for f in dataclasses.fields(cls)]
        raise ConfigError(f"unknown data.options for task {task!r}: {unknown[:10]}; known: {known}")
    return build(cls, options, prefix="data.options")
