"""Benchmark decontamination: leave out the benchmark items that the evaluated run trained on.

An item is contaminated when its normalised statement appears, as whole words, inside a normalised training
prompt of the run (training prompts wrap the statement in instructions, so equality would miss it), or when
its id is the id of a training row. Normalisation: Unicode NFKC, case folded, every run of characters that are
not letters or digits made one space. A statement shorter than ``MIN_CHARS`` normalised characters is matched
only when it equals a whole training user turn: a short statement ("2 + 2") would otherwise be found inside
unrelated prompts. Each harness reports how many items it dropped (``decontaminated`` in its summary).

Codeforces problems, for example, are both a coding benchmark and part of Eurus-2-RL's training data.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["MIN_CHARS", "TrainingSet", "decontaminate", "decontamination_wanted", "normalise"]

MIN_CHARS = 40
_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """``text`` folded for comparison: NFKC, casefold, non-alphanumeric runs as one space, stripped."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class TrainingSet:
    """The user turns and ids of a run's training rows, ready for containment checks."""

    def __init__(self, rows: Iterable[dict[str, Any]]):
        turns, self.ids = [], set()
        for row in rows:
            turns += [normalise(m["content"]) for m in row.get("messages", []) if m.get("role") == "user"]
            if row.get("id") is not None:
                self.ids.add(str(row["id"]))
        self.turns = set(turns)
        self._text = " " + " \n ".join(turns) + " "  # one string: a containment check is one C-level scan

    def __contains__(self, item: tuple[str, str | None]) -> bool:
        statement, item_id = item
        if item_id is not None and str(item_id) in self.ids:
            return True
        text = normalise(statement)
        if not text:
            return False
        if len(text) < MIN_CHARS:
            return text in self.turns
        return f" {text} " in self._text


def decontaminate(
    items: Sequence[dict], training: TrainingSet | None, statement: Callable[[dict], str]
) -> tuple[list[dict], list[str]]:
    """(items the run did not train on, ids of those left out); every item is kept when ``training`` is None."""
    if training is None:
        return list(items), []
    kept, dropped = [], []
    for item in items:
        if (statement(item), item.get("id")) in training:
            dropped.append(str(item.get("id")))
        else:
            kept.append(item)
    return kept, dropped


def decontamination_wanted(preset: str, flag: bool | None) -> bool:
    """A reproduction's ``--decontaminate`` flag, by default on for the paper presets (``paper-*``) and off for
    the others, whose benchmarks are synthetic."""
    return preset.startswith("paper-") if flag is None else flag
