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

__all__ = ["decode_utf8", "parse_json", "plain", "read_file", "read_records"]

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
    """Rows of one local JSON, JSONL or parquet file. Bytes that are not UTF-8, text that is not JSON and JSON
    nested too deeply for the parser are errors naming the file and line."""
    if not path.exists():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Through arrow, not pandas: pandas turns a null into NaN and a nullable integer column into floats.
        return pq.read_table(path).to_pylist()
    text = decode_utf8(path)
    if (
        path.suffix == ".jsonl"
    ):  # split on "\n" only: JSON strings may hold U+2028 and others splitlines() cuts at
        return [parse_json(line, path, i + 1) for i, line in enumerate(text.split("\n")) if line.strip()]
    data = parse_json(text, path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(data).__name__}"
        )
    return data


def decode_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the file, line and column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(
            f"{path} line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}: {exc.reason})"
        ) from None


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """``json.loads(text)``, the whole file or its ``line``; an error names the file and line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:  # its message gives the line and column within ``text``
        raise ValueError(f"{path}{f' line {line}' if line else ''}: not JSON ({exc})") from None
    except RecursionError:  # the stdlib parser recurses once per level: about 1000 levels at most
        depth, deepest_line = _deepest(text)
        raise ValueError(
            f"{path} line {line or deepest_line}: JSON nested {depth} levels deep, too deep to read"
        ) from None


def _deepest(text: str) -> tuple[int, int]:
    """Deepest nesting of arrays and objects in JSON ``text`` (brackets in strings aside) and its first line."""
    depth = deepest = 0
    line = deepest_line = 1
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif ch in "]}":
            depth -= 1
        elif ch == "\n":
            line += 1
    return deepest, deepest_line


def plain(value: Any) -> Any:
    """numpy arrays and scalars (from parquet) -> lists and Python scalars, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
