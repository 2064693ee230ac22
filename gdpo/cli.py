"""Command line of the trainer: ``--config`` YAML, dotted overrides, ``--resume``, ``--describe``.

python experiments/toy/train.py --config experiments/toy/configs/tiny.yaml algorithm.method=gdpo seed=3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence

from gdpo.config import ConfigError, TrainConfig, describe, load_config

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
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.method=gdpo seed=3")
    args = parser.parse_args(argv)
    if args.describe:
        print(describe(TrainConfig))
        return
    overrides = ([f"task={task}"] if task else []) + args.overrides
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    from gdpo.trainer import train

    run_dir = train(cfg, resume=args.resume)
    print(f"run folder: {run_dir}")


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
