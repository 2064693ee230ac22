"""Command line of the trainer: ``--config`` YAML, dotted overrides, ``--resume``, ``--describe``.

python experiments/toy/train.py --config experiments/toy/configs/tiny.yaml algorithm.method=gdpo seed=3

A user's mistake (a config error: an unknown key, a value out of its bounds, a missing, unreadable or invalid
file, a malformed override) is one line on stderr and exit code 2, before torch is imported; a traceback means a
bug of ours.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from typing import NoReturn

from gdpo.config import ConfigError, TrainConfig, describe, load_config
from gdpo.tasks.options import TASK_OPTIONS

__all__ = ["main", "named_values"]


def main(argv: list[str] | None = None, *, task: str | None = None) -> None:
    parser = argparse.ArgumentParser(description="GRPO / GRPO w/o std / GDPO training run")
    parser.add_argument("--config", help="YAML config file (a preset)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in the run folder from its latest checkpoint"
    )
    parser.add_argument(
        "--describe", action="store_true", help="list every config key with its type, default and help"
    )
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        type=int,
        help="this process's rank on its node, as the deepspeed launcher passes it (the same as LOCAL_RANK)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.method=gdpo seed=3")
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        from gdpo.distributed import use_local_rank_flag

        try:
            use_local_rank_flag(args.local_rank)
        except ValueError as exc:
            user_error(str(exc))
    if args.describe:
        print(describe_all())
        return
    overrides = ([f"task={task}"] if task else []) + args.overrides
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
    except ConfigError as exc:
        user_error(f"config error: {exc}")
    from gdpo.trainer import train

    try:
        run_dir = train(cfg, resume=args.resume)
    except ConfigError as exc:  # a setting the trainer or a task refuses before training
        user_error(f"config error: {exc}")
    print(f"run folder: {run_dir}")


def user_error(message: str) -> NoReturn:
    """A user's mistake: ``message`` as one line on stderr, exit code 2."""
    print(" ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(2)


def describe_all() -> str:
    """``--describe``: every key of the run config, then the ``data.options`` of each built-in task."""
    parts = [describe(TrainConfig)]
    for name, options in TASK_OPTIONS.items():
        parts.append(f"\n# data.options of task {name!r}\n{describe(options, 'data.options')}")
    return "\n".join(parts)


def named_values(values: Sequence[str], flag: str, names: Collection[str] | None = None) -> dict[str, str]:
    """``["apps=data/apps", ...]`` -> ``{"apps": "data/apps"}``; a malformed item, or a name outside ``names``,
    exits with a message naming ``flag`` and the item."""
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {item!r}")
        if names is not None and name not in names:
            raise SystemExit(f"{flag}: unknown name {name!r} in {item!r}; known: {sorted(names)}")
        out[name] = value
    return out


if __name__ == "__main__":
    main()
