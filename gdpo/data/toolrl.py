"""ToolRL's data (rlla_4k: ToolACE 2k, Hammer 1k, xLAM 1k) as published, and its answers' tool-call blocks.

The answer format (read by the loader, the tool-calling rewards and the BFCL harness): a ``<tool_call>`` block
holds one JSON object ``{"name": ..., "parameters": {...}}`` per line, up to the next ``</tool_call>``
(:func:`tool_call_lines`, :func:`parse_ground_truth_calls`).

Forms read:
* the verl parquet files ``train.parquet`` / ``test.parquet`` (fields ``data_source``, ``prompt`` = [system,
  user] messages, ``ability``, ``reward_model`` = {style, ground_truth}, ``extra_info``), from a local file, a
  folder holding ``<split>.parquet``, or a URL (read through ``datasets``);
* the raw ``rlla_rl.json`` (a list of {instruction, input, output}): system = instruction, user = input,
  ground truth = output. A raw file holds one split, so every row is returned whichever split is asked for
  (ToolRL's own 2% hold-out is not reproduced): the tool_calling task takes such a file as its training source
  only with a different file as ``test_source``.

Each row becomes ``{"messages": [...], "ground_truth": str, "source": str, "index": int}``. Malformed rows are
errors that name the file and the row; nothing is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdpo.data.records import read_file

__all__ = ["is_raw_toolrl", "load_toolrl", "parse_ground_truth_calls", "tool_call_lines"]


def tool_call_lines(text: str) -> list[str] | None:
    """Lines between the first <tool_call> and the next </tool_call>, or None if either tag is missing."""
    start = text.find("<tool_call>")
    if start < 0:
        return None
    end = text.find("</tool_call>", start + len("<tool_call>"))
    if end < 0:
        return None
    return text[start + len("<tool_call>") : end].strip().split("\n")


def parse_ground_truth_calls(ground_truth: str) -> list[dict[str, Any]] | None:
    """The ground truth's tool calls (its first tool-call block, one JSON object per line); None if it has none.

    Raises ValueError naming the line when the ground truth itself is malformed (a data error).
    """
    if "<tool_call>" not in ground_truth:
        return None
    lines = tool_call_lines(ground_truth)
    if lines is None:
        raise ValueError("ground truth has <tool_call> but no closing </tool_call>")
    calls = []
    for i, line in enumerate(lines):
        try:
            call = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"ground-truth tool-call line {i + 1} is not JSON: {line[:80]!r} ({exc})"
            ) from None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("name"), str)
            or not isinstance(call.get("parameters", {}), dict)
        ):
            raise ValueError(
                f"ground-truth tool-call line {i + 1} is not a {{name, parameters}} object: {line[:80]!r}"
            )
        calls.append(call)
    return calls


def load_toolrl(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    source = str(source)
    if source.startswith(("http://", "https://", "hf://")):
        from datasets import load_dataset

        records = list(load_dataset("parquet", data_files={split: source}, split=split))
    else:
        path = Path(source)
        if path.is_dir():
            path = path / f"{split}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"no ToolRL data at {path}")
        records = read_file(path)
        if is_raw_toolrl(path):
            return [_from_raw(row, i, path) for i, row in enumerate(records)]
    return [_from_verl(row, i, source) for i, row in enumerate(records)]


def is_raw_toolrl(source: str | Path) -> bool:
    """Whether ``source`` is a raw ToolRL JSON file (one split) rather than verl parquet data."""
    return str(source).endswith(".json")


def _check(messages: Any, truth: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'prompt' must be a non-empty list of messages")
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(f"{where}: every message needs string 'role' and 'content', got {m!r}"[:300])
    if not isinstance(truth, str) or not truth.strip():
        raise ValueError(f"{where}: the ground truth must be a non-empty string")
    try:
        parse_ground_truth_calls(truth)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _from_verl(row: dict, i: int, source: str) -> dict[str, Any]:
    where = f"{source} row {i}"
    messages = row.get("prompt")
    if isinstance(messages, list):  # copies: the rows are the reader's
        messages = [dict(m) if isinstance(m, dict) else m for m in messages]
    truth = (row.get("reward_model") or {}).get("ground_truth")
    _check(messages, truth, where)
    index = (row.get("extra_info") or {}).get("index", i)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"{where}: 'extra_info.index' must be an integer, got {index!r}")
    return {
        "messages": messages,
        "ground_truth": truth,
        "source": row.get("data_source", "rlla"),
        "index": index,
    }


def _from_raw(row: dict, i: int, path: Path) -> dict[str, Any]:
    where = f"{path} row {i}"
    if not isinstance(row, dict) or not {"instruction", "input", "output"} <= set(row):
        raise ValueError(f"{where}: expected the fields instruction, input, output")
    messages = [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}]
    _check(messages, row["output"], where)
    return {"messages": messages, "ground_truth": row["output"], "source": "rlla", "index": i}
