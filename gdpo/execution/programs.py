"""The answer format of the coding task and benchmarks: what the model is asked for, and the program its
completion holds.

Extraction (:func:`extract_program`): the body of the last fenced block tagged ``python`` (also ``py``,
``python3``, ``py3``; tags are case-insensitive, the first word of the info string counts); if there is none,
the last fenced block without a tag; blocks tagged with another language are ignored, as are blank blocks. A
fence opens at a line starting with three backticks and closes at the next line that is only three backticks;
an unclosed last block runs to the end of the text (a generation cut at the closing fence keeps its code).
A completion without any fenced block has **no program** (the judge scores every test ``no_code``): the
instruction asks for a fenced block and the demonstrations always give one. Indentation is kept as written,
except that a fence indented by n characters (a block inside a list item) removes up to n leading whitespace
characters from each line of its body, as in CommonMark.
"""

from __future__ import annotations

import re

__all__ = ["INSTRUCTION", "code_messages", "extract_program"]

INSTRUCTION = "Answer with a Python program in a ```python block."
_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})

_OPEN = re.compile(r"^([ \t]*)```[ \t]*([^`\n]*)$")
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")


def code_messages(question: str) -> list[dict]:
    """Chat messages for a problem statement: one user turn, the statement then the answer instruction."""
    return [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, body) of every fenced block, in order; an unclosed last block runs to the end."""
    blocks, tag, body, indent = [], None, [], 0
    for line in text.split("\n"):
        if tag is None:
            opened = _OPEN.match(line)
            if opened:
                words = opened.group(2).split()
                tag, body, indent = (words[0].lower() if words else ""), [], len(opened.group(1))
        elif _CLOSE.match(line):
            blocks.append((tag, "\n".join(body)))
            tag = None
        else:
            own = len(line) - len(line.lstrip(" \t"))
            body.append(line[min(indent, own) :])
    if tag is not None:
        blocks.append((tag, "\n".join(body)))
    return blocks


def extract_program(completion: str) -> str | None:
    """The program of a completion (see the module docstring), or None when it has none."""
    blocks = [(tag, body) for tag, body in _fenced_blocks(completion) if body.strip()]
    for wanted in (lambda t: t in _PYTHON_TAGS, lambda t: t == ""):
        chosen = [body for tag, body in blocks if wanted(tag)]
        if chosen:
            return chosen[-1]
    return None
