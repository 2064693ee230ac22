"""Rows of a dataset, wherever they are: one reader for every task's data loaders.

A source is a local JSON / JSONL / parquet file, a folder holding ``<split>.jsonl``, ``<split>.json`` or
``<split>.parquet``, or a hub dataset ``owner/name[:config]`` (read with ``datasets``, for users with access).
A JSON file holds a list of rows or ``{"data": [...]}``. Parquet values come back as plain Python (lists,
None for null, integers as integers), so rows from every format compare and serialise alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["plain", "read_file", "read_records"]

SUFFIXES = (".jsonl", ".json", ".parquet")


def read_records(source: str | Path, split: str = "train") -> tuple[list[dict[str, Any]], str]:
    """The rows of ``source`` (its ``split`` for folders and hub datasets) and a name for error messages."""
    path = Path(source)
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in SUFFIXES if (path / f"{split}{ext}").exists()]
        if not found:
            raise FileNotFoundError(f"{path} holds none of {', '.join(split + ext for ext in SUFFIXES)}")
        path = found[0]
    if path.is_file():
        return read_file(path), str(path)
    if path.suffix in SUFFIXES or str(source).startswith((".", "/")):
        raise FileNotFoundError(f"no data file at {path}")
    from datasets import load_dataset  # hub access (tests reach it only with a stand-in load_dataset)

    name, _, config = str(source).partition(":")
    try:
        rows = load_dataset(name, config or None, split=split)
    except Exception as err:  # no network, no such dataset or split, a dataset script datasets no longer runs
        raise RuntimeError(
            f"cannot load hub dataset {source!r} split {split!r}: {err}; give a local file or folder instead"
        ) from err
    return [plain(dict(row)) for row in rows], f"{source}[{split}]"


def read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of one local JSON, JSONL or parquet file; a line or file that is not JSON is an error naming it."""
    if not path.exists():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Through arrow, not pandas: pandas turns a null into NaN and a nullable integer column into floats.
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} line {i + 1}: not JSON ({exc})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(data).__name__}"
        )
    return data


def plain(value: Any) -> Any:
    """numpy arrays and scalars (from parquet) -> lists and Python scalars, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
