"""Tool calling (the paper's ToolRL setup): the format and correctness rewards.

Both rewards take the completion as generated (no chat-template tokens) and the ground-truth answer text of
the training row, and never raise: any failure to read the completion scores as the rules say (format 0,
correctness -3). The rules follow ToolRL's scorer as verl-GDPO ships it (docs/paper-notes.md §6.1):

Format, in {0, 1}: the stripped completion must match, in full, the layout the ground truth calls for ("any"
spans newlines and matches shortest-first):

====================  ==========================================================================  ============
ground truth has      layout                                                                      tags once
====================  ==========================================================================  ============
<response> only       <think>any</think>\\n<response>any</response>                               response
<tool_call> only      <think>any</think>\\n<tool_call>\\nany\\n</tool_call>                           tool_call
both                  <think>any</think>\\n<tool_call>\\nany\\n</tool_call>\\n<response>any</response>   all four
neither               <think>any</think>                                                          none
====================  ==========================================================================  ============

Correctness, in [-3, 3]: 0 if the ground truth has no ``<tool_call>``; -3 if the completion lacks either
tool-call tag, or a line of its first tool-call block is empty, is not JSON, is not an object with a "name", or
lacks "parameters" while its name is one of the ground truth's; +3 if the parsed calls equal the ground
truth's (same order, Python equality); otherwise ``6 * S / S_max - 3`` where S adds the name overlap (a
frequency-aware Jaccard of the two name lists) and, for each ground-truth call in order, the best unused
prediction of the same name by (Jaccard of the parameter-name lists + number of ground-truth parameters whose
predicted value is equal), taken only if that total is > 0; ``S_max = 1 + sum(1 + #parameters)`` over the
ground-truth calls. The matching is greedy, as in the code (the paper's App. C calls it a matching). Values
compare with Python equality: "1" != 1, 1 == 1.0.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdpo.data.toolrl import is_raw_toolrl, load_toolrl, parse_ground_truth_calls, tool_call_lines

__all__ = [
    "correctness_reward",
    "format_reward",
    "render_system_prompt",
    "render_tools",
    "render_user_turn",
    "system_prompt_like",
]

_TAGS = ("<tool_call>", "</tool_call>", "<response>", "</response>")
_LAYOUTS = {
    # (has tool call, has response) -> (full-match pattern, tags that must occur exactly once)
    (False, True): (r"<think>.*?</think>\n<response>.*?</response>", _TAGS[2:]),
    (True, False): (r"<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>", _TAGS[:2]),
    (True, True): (r"<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>\n<response>.*?</response>", _TAGS),
    (False, False): (r"<think>.*?</think>", ()),
}
_COMPILED = {key: (re.compile(pattern, re.DOTALL), tags) for key, (pattern, tags) in _LAYOUTS.items()}
CORRECT_MAX, CORRECT_MIN = 3.0, -3.0


def format_reward(completion: str, ground_truth: str) -> float:
    """1.0 if the completion has exactly the layout the ground truth calls for, else 0.0."""
    try:
        answer = completion.strip()
        pattern, once = _COMPILED[("<tool_call>" in ground_truth, "<response>" in ground_truth)]
        if any(answer.count(tag) != 1 for tag in once):  # checked first: it also bounds the regex's work
            return 0.0
        return 1.0 if pattern.fullmatch(answer) else 0.0
    except Exception:
        return 0.0


def _list_jaccard(a: list, b: list) -> float:
    """ToolRL's overlap of two lists: 1 if identical, 0 if either is empty, else the multiset Jaccard."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    return common / (len(a) + len(b) - common)


def _predicted_calls(completion: str, truth_names: set[str]) -> list[dict[str, Any]] | None:
    """The completion's calls, or None where the rules score -3."""
    lines = tool_call_lines(completion)
    if lines is None:
        return None
    calls = []
    for line in lines:
        if not line.strip():
            return None
        call = json.loads(line)
        if not isinstance(call, dict) or "name" not in call:
            return None
        if call["name"] in truth_names and not isinstance(call.get("parameters"), dict):
            return None  # ToolRL reads .keys() of a same-name call's parameters: missing or not a dict fails
        calls.append(call)
    return calls


def _score(predicted: list[dict], truth: list[dict]) -> float:
    score = _list_jaccard([c["name"] for c in predicted], [c["name"] for c in truth])
    used: set[int] = set()
    for gt in truth:
        gt_params = gt.get("parameters", {})
        best, best_index = 0.0, None
        for i, pred in enumerate(predicted):
            if i in used or pred["name"] != gt["name"]:
                continue
            params = pred["parameters"]
            total = _list_jaccard(list(params), list(gt_params))
            total += sum(1 for key, value in gt_params.items() if key in params and params[key] == value)
            if total > best:
                best, best_index = total, i
        if best_index is not None:
            used.add(best_index)
            score += best
    return score


def correctness_reward(completion: str, ground_truth: str) -> float:
    """ToolRL's tool-call correctness in [-3, 3] (see the module docstring)."""
    try:
        truth = parse_ground_truth_calls(ground_truth)
    except Exception:
        return CORRECT_MIN
    if truth is None:
        return 0.0
    try:
        predicted = _predicted_calls(completion, {c["name"] for c in truth})
        if predicted is None:
            return CORRECT_MIN
        if predicted == truth:
            return CORRECT_MAX
        max_score = 1 + sum(1 + len(c.get("parameters", {})) for c in truth)
        value = (CORRECT_MAX - CORRECT_MIN) * _score(predicted, truth) / max_score + CORRECT_MIN
        return float(min(CORRECT_MAX, max(CORRECT_MIN, value)))
    except Exception:
        return CORRECT_MIN


# --------------------------------------------------------------------------------------------------
# Prompt (the structure of ToolRL's prompt, paper App. B, in our own words) and the task
# --------------------------------------------------------------------------------------------------

_STEPS = """**Steps for Each Turn**
1. Think: work out what the user needs.
2. Decide on tool usage: call one or more tools, or none.
3. Respond appropriately to the user."""
_NOTES = """**Important Notes**
1. Always begin with <think>.
2. Give at least one of <tool_call> and <response>, or both; put several calls in one block, one per line.
3. A tool without arguments gets an empty "parameters" object.
4. Use the dialogue history, including tool results given in <obs>."""
_FORMAT = """**Output Format**
<think> your reasoning </think>
<tool_call>
{"name": "tool name", "parameters": {"argument name": "value"}}
</tool_call>
<response> your reply to the user </response>"""


def render_tools(tools: list[dict]) -> str:
    """The numbered tool list of a system turn: name, description, parameters as JSON, per tool."""
    return "\n".join(
        f"{i}. Name: {t['name']}\nDescription: {t.get('description', '')}\nParameters: {json.dumps(t.get('parameters', {}))}"
        for i, t in enumerate(tools, 1)
    )


def render_system_prompt(tools: list[dict], *, compact: bool = False) -> str:
    """The system turn: role, numbered tools (name, description, parameters as JSON), output format.

    ``compact`` leaves out the steps and notes sections (the tiny preset's context is short).
    """
    parts = [
        "You are a helpful multi-turn dialogue assistant that can use tools.",
        f"**Available Tools**\n{render_tools(tools)}",
    ]
    parts += [_FORMAT] if compact else [_STEPS, _FORMAT, _NOTES]
    return "\n\n".join(parts)


_TOOL_LIST = re.compile(r"^1\. Name: .*?(?=\n\n\*\*|\Z)", re.DOTALL | re.MULTILINE)


def system_prompt_like(system: str) -> Callable[[list[dict]], str]:
    """A renderer of system turns laid out as ``system``, a training row's system turn: its own text, with its
    numbered tool list (from "1. Name:" to the next "**" section) replaced by the given tools.

    Evaluation prompts (BFCL) then read exactly as the run's training prompts, whether they came from ToolRL's
    files (their wording kept verbatim) or from the synthetic task; the tool list is assumed to be laid out as
    :func:`render_tools` writes it."""
    match = _TOOL_LIST.search(system)
    if match is None:
        raise ValueError(
            f"a training system prompt without a numbered tool list ('1. Name: ...'): {system[:120]!r}"
        )
    head, tail = system[: match.start()], system[match.end() :]
    return lambda tools: head + render_tools(tools) + tail


def render_user_turn(request: str) -> str:
    """The user turn: the dialogue history, here a single user message."""
    return f"**Dialogue Records History**\n<user> {request} </user>"


def tool_calling_rewards():
    """The paper's two components, in the official code's order: format, then correctness."""
    from gdpo.rewards import RewardComponent, RewardSet

    return RewardSet(
        [
            RewardComponent("format", lambda r: format_reward(r["completion"], r["ground_truth"])),
            RewardComponent("correctness", lambda r: correctness_reward(r["completion"], r["ground_truth"])),
        ]
    )


def _row(tools: list[dict], request: str, ground_truth: str, compact: bool) -> dict:
    system = render_system_prompt(tools, compact=compact)
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": render_user_turn(request)},
        ],
        "ground_truth": ground_truth,
    }


def skip_think(truth: str) -> str:
    """The format habit of the warm start: the answer without its ``<think>`` block (format reward 0)."""
    return truth.split("</think>\n", 1)[1]


def slip_content(rng, truth: str) -> str:
    """A content mistake on an answer with tool calls: a wrong function name or a wrong parameter value."""
    calls = parse_ground_truth_calls(truth)
    if not calls:
        return truth
    call = json.loads(json.dumps(calls[0]))
    if rng.random() < 0.5 or not call["parameters"]:
        call["name"] = call["name"] + "_v2"
    else:
        key = rng.choice(sorted(call["parameters"]))
        call["parameters"][key] = "unknown"
    head = truth.split("<tool_call>", 1)[0]
    return head + "<tool_call>\n" + "\n".join(json.dumps(c) for c in [call, *calls[1:]]) + "\n</tool_call>"


def demonstration(rng, truth: str, format_noise: float, content_noise: float) -> str:
    """A warm-start target: the ground truth, with a content slip (prob. ``content_noise``) and the format
    habit (prob. ``format_noise``), drawn independently.

    One consistent habit, not a spread of different format errors, mirrors an instruct model that answers
    without reasoning tags: greedy decoding follows the habit (a low format ratio at evaluation) while
    sampling still finds the right format in a share of rollouts, which is what RL learns from.
    """
    if rng.random() < content_noise:
        truth = slip_content(rng, truth)
    if rng.random() < format_noise:
        truth = skip_think(truth)
    return truth


def _build_tool_calling_task(options: dict, seed: int):
    import random

    from gdpo.schema import ConfigError
    from gdpo.tasks import Task
    from gdpo.tasks.options import task_options

    opts = task_options("tool_calling", options)
    source, test_source, compact = opts.source, opts.test_source, opts.compact_prompt
    format_noise, content_noise = opts.demo_format_noise, opts.demo_content_noise
    num_demos, train_size, test_size = opts.num_demonstrations, opts.train_size, opts.test_size
    if source == "synthetic":
        from gdpo.data.synthetic_tools import generate_split, split_functions

        train_fns, test_fns = split_functions(seed=0)  # the data is fixed; the run seed only orders it
        train = [
            _row(s.tools, s.request, s.ground_truth, compact)
            for s in generate_split(train_fns, train_size, seed=1)
        ]
        test = [
            _row(s.tools, s.request, s.ground_truth, compact)
            for s in generate_split(test_fns, test_size, seed=2)
        ]
    else:
        test_source = source if test_source is None and _is_folder(source) else test_source
        if test_source is None or _same_file(source, test_source):
            kind = "a raw ToolRL JSON file" if is_raw_toolrl(source) else "one file"
            raise ConfigError(
                f"data.options.source {source} is {kind}, one split only: as the test set too it "
                "would be the training set again; set data.options.test_source to a different file, or give "
                "the folder of the verl parquet files (train.parquet, test.parquet)"
            )
        train, test = load_toolrl(source, "train"), load_toolrl(test_source, "test")
    rng = random.Random(seed)
    demos = []
    for _ in range(num_demos if train else 0):
        row = rng.choice(train)
        truth = row["ground_truth"]
        demos.append((row["messages"], demonstration(rng, truth, format_noise, content_noise)))
    return Task("tool_calling", train, test, tool_calling_rewards(), demos)


def _is_folder(source: str) -> bool:
    """A local folder of split files (``<split>.parquet``), not a file or a URL."""
    return "://" not in source and Path(source).is_dir()


def _same_file(a: str, b: str) -> bool:
    """Whether two sources name one file: one URL, or local paths to one file (``r.json``, ``./r.json``, a link
    to it). A folder holds one file per split, so it may be both."""
    if "://" in a or "://" in b:
        return a == b
    return not _is_folder(a) and Path(a).resolve() == Path(b).resolve()


def _register() -> None:
    from gdpo.tasks import TASKS, register_task

    if "tool_calling" not in TASKS:
        register_task("tool_calling")(_build_tool_calling_task)


_register()
