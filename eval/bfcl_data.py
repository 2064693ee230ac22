"""BFCL-v3's data as the harnesses read it: the categories, the files inside the ``bfcl-eval`` wheel, the
function docs as prompt tools, and our completions' tool calls in BFCL's form. Shared by ``eval.bfcl`` (single-turn
categories, the summary) and ``eval.bfcl_multi_turn``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from gdpo.assets import package_file
from gdpo.data.toolrl import tool_call_lines

__all__ = [
    "AST_CATEGORIES",
    "BFCL_PYTHON",
    "IRRELEVANCE",
    "LIVE",
    "MULTI_TURN",
    "NON_LIVE",
    "RELEVANCE",
    "SINGLE_TURN",
    "VERSION",
    "SystemPrompt",
    "parse_calls",
    "read_package_jsonl",
    "tools_of",
]

VERSION = "2025.6.8"
NON_LIVE = ("simple", "multiple", "parallel", "parallel_multiple")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
AST_CATEGORIES = NON_LIVE + LIVE
IRRELEVANCE = ("irrelevance", "live_irrelevance")
RELEVANCE = ("live_relevance",)
SINGLE_TURN = AST_CATEGORIES + IRRELEVANCE + RELEVANCE
REPO = Path(__file__).resolve().parent.parent
SystemPrompt = Callable[[list[dict]], str]  # tools -> the system turn
BFCL_PYTHON = Path(os.environ.get("GDPO_BFCL_PYTHON", REPO / ".venv-bfcl" / "bin" / "python"))


def read_package_jsonl(member: str) -> list[dict]:
    """The JSON lines of a data file inside the ``bfcl-eval`` wheel (``bfcl_eval/data/...``)."""
    path = package_file("bfcl-eval", VERSION, member)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tools_of(functions: list[dict]) -> list[dict]:
    """BFCL function docs as the prompt's tools: name, description, the parameters' properties."""
    return [
        {
            "name": f["name"],
            "description": f.get("description", ""),
            "parameters": f.get("parameters", {}).get("properties", {}),
        }
        for f in functions
    ]


def parse_calls(completion: str) -> list[dict] | None:
    """BFCL's model output ``[{name: {param: value}}]`` from the first tool-call block; None if unparseable."""
    try:
        lines = tool_call_lines(completion)
        if lines is None:
            return None
        calls = []
        for line in lines:
            call = json.loads(line)
            if (
                not isinstance(call, dict)
                or not isinstance(call.get("name"), str)
                or not isinstance(call.get("parameters", {}), dict)
            ):
                return None
            calls.append({call["name"]: call.get("parameters", {})})
        return calls
    except Exception:
        return None
