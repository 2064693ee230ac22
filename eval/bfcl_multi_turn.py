"""BFCL-v3 multi-turn: the model's calls run in BFCL's simulated APIs turn by turn, BFCL's own checker scores.

The four categories of BFCL-v3's Multi-turn column (``multi_turn_base``, ``_miss_func``, ``_miss_param``,
``_long_context``; 200 entries each in ``bfcl-eval==2025.6.8``) are played as BFCL's prompting-mode inference
loop plays them, with our prompt layout:

* The system turn lists the entry's functions: the docs of its API classes, less the functions that
  ``miss_func`` holds out. At a held-out turn the user message is those functions' docs (JSON) followed by
  BFCL's sentence "I have updated some more functions you can choose from. What about now?".
* Each step the model sees the dialogue so far as one user message in the ToolRL layout: ``<user> … </user>``
  for the user, its own completions as written, and ``<obs> … </obs>`` holding the results of its calls, one
  per line. A completion with a parseable, non-empty ``<tool_call>`` block is executed in the entry's
  environment (BFCL's executor, in the BFCL worker) and the turn goes on; anything else ends the turn.
* Limits as BFCL's: more than 20 steps in a turn (``MAXIMUM_STEP_LIMIT``) force-quits the entry, which then
  fails; a prompt longer than the model's limit ends the entry as failed (BFCL fails an entry whose inference
  errs), counted as ``skipped:prompt_too_long``.
* The verdict is BFCL's ``multi_turn_checker`` on the calls of every step (state and execution-result
  checks after every turn). The Multi-turn overall accuracy is the unweighted mean of the four categories'
  accuracies, as BFCL computes it.

The calls reach BFCL's executor only as ``method(key=literal, ...)`` texts built in the worker from a method of
the entry's API classes and JSON values (``eval/bfcl_worker.py``): model output is never evaluated as code.
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.bfcl_data import (
    BFCL_PYTHON,
    MULTI_TURN,
    REPO,
    SystemPrompt,
    parse_calls,
    read_package_jsonl,
    tools_of,
)
from gdpo.tasks.tool_calling import render_system_prompt

__all__ = [
    "ADDED_FUNCTIONS_PROMPT",
    "STEP_LIMIT",
    "BFCLWorker",
    "ground_truth_responder",
    "load_multi_turn",
    "play",
    "to_json_calls",
]

STEP_LIMIT = 20  # BFCL's MAXIMUM_STEP_LIMIT
ADDED_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"
FUNCTION_DOCS = {  # BFCL's MULTI_TURN_FUNC_DOC_FILE_MAPPING
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}

# A responder answers a batch of (entry id, chat messages) with one completion each, or None when the prompt
# does not fit the model (eval.bfcl.model_responder is the model's).
Responder = Callable[[list[tuple[str, list[dict]]]], list[str | None]]


def load_multi_turn(category: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Entries of a multi-turn category as BFCL's inference sees them: ``function`` (the docs offered at the
    start), ``missed_function`` (turn -> docs added at that turn), ``all_functions`` (every doc of the entry's
    classes, for reading ground-truth calls) and ``ground_truth`` (turn -> BFCL call texts)."""
    if category not in MULTI_TURN:
        raise ValueError(f"unknown multi-turn category {category!r}; known: {list(MULTI_TURN)}")
    entries = read_package_jsonl(f"bfcl_eval/data/BFCL_v3_{category}.json")[:limit]
    answers = {
        a["id"]: a["ground_truth"]
        for a in read_package_jsonl(f"bfcl_eval/data/possible_answer/BFCL_v3_{category}.json")
    }
    docs = {
        name: read_package_jsonl(f"bfcl_eval/data/multi_turn_func_doc/{file}")
        for name, file in FUNCTION_DOCS.items()
    }
    for entry in entries:
        if entry["id"] not in answers:
            raise ValueError(f"BFCL {category}: no possible answer for {entry['id']}")
        offered = [doc for cls in entry["involved_classes"] for doc in docs[cls]]
        entry["all_functions"] = list(offered)
        held_out = {}
        for turn, names in entry.get("missed_function", {}).items():
            held_out[turn] = [doc for doc in offered if doc["name"] in names]
            offered = [doc for doc in offered if doc["name"] not in names]
        entry.update(function=offered, missed_function=held_out, category=category)
        entry["ground_truth"] = answers[entry["id"]]
    return entries


class BFCLWorker:
    """The BFCL worker (``eval/bfcl_worker.py``) kept running in the BFCL environment, one request at a time."""

    def __init__(self, python: Path = BFCL_PYTHON):
        if not Path(python).exists():
            raise FileNotFoundError(
                f"no BFCL environment at {python}: run `make setup-bfcl` (or set GDPO_BFCL_PYTHON)"
            )
        self.process = subprocess.Popen(
            [str(python), str(REPO / "eval" / "bfcl_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def request(self, op: str, **fields) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"BFCL worker stopped:\n{self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Episode:
    """One entry being played: its dialogue so far and the calls of every step, per turn."""

    entry: dict
    system: str
    history: list[str] = field(default_factory=list)
    decoded: list[list[list[str]]] = field(default_factory=list)
    turn: int = 0
    steps: int = 0
    error_type: str = ""
    done: bool = False

    def messages(self) -> list[dict]:
        dialogue = "**Dialogue Records History**\n" + "\n".join(self.history)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": dialogue}]

    def begin_turn(self) -> None:
        """Open turn ``self.turn`` with its user message, or finish when the entry has no turn left."""
        if self.turn == len(self.entry["question"]):
            self.done = True
            return
        added = self.entry["missed_function"].get(str(self.turn))
        if added:
            text = json.dumps(added) + "\n" + ADDED_FUNCTIONS_PROMPT
        else:
            text = "\n".join(m["content"] for m in self.entry["question"][self.turn])
        self.history.append(f"<user> {text} </user>")
        self.decoded.append([])
        self.steps = 0

    def fail(self, error_type: str) -> None:
        self.error_type, self.done = error_type, True


def play(
    entries: Sequence[dict],
    respond: Responder,
    *,
    system_prompt: SystemPrompt = render_system_prompt,
    python: Path = BFCL_PYTHON,
) -> list[dict]:
    """Play every entry to its end with ``respond`` and score it with BFCL's checker.

    Returns per entry: {id, category, correct, error_type, error, decoded (the executed calls per turn and
    step), transcript (the dialogue as the model last saw it)}.
    """
    episodes = [Episode(entry, system_prompt(tools_of(entry["function"]))) for entry in entries]
    records = []
    with BFCLWorker(python) as worker:
        for episode in episodes:
            e = episode.entry
            keys = ("category", "initial_config", "involved_classes")
            worker.request("start", id=e["id"], **{k: e[k] for k in keys})
            episode.begin_turn()
        while active := [ep for ep in episodes if not ep.done]:
            completions = respond([(ep.entry["id"], ep.messages()) for ep in active])
            for episode, completion in zip(active, completions):
                _step(episode, completion, worker)
        for episode in episodes:
            records.append(_verdict(episode, worker))
    return records


def _step(episode: Episode, completion: str | None, worker: BFCLWorker) -> None:
    """Take the model's completion for the current step: execute its calls, or end the turn."""
    if completion is None:
        episode.fail("skipped:prompt_too_long")
        return
    episode.history.append(completion.strip())
    calls = parse_calls(completion)
    if not calls:  # unparseable or empty: BFCL moves on to the next turn
        episode.turn += 1
        episode.begin_turn()
        return
    request = [{"name": name, "arguments": args} for call in calls for name, args in call.items()]
    reply = worker.request("execute", id=episode.entry["id"], calls=request)
    executed = [text for text in reply["calls"] if text is not None]  # refused calls are never replayed
    if executed:
        episode.decoded[-1].append(executed)
    episode.history.append("<obs>\n" + "\n".join(reply["results"]) + "\n</obs>")
    episode.steps += 1
    if episode.steps > STEP_LIMIT:
        episode.fail("multi_turn:force_terminated")


def _verdict(episode: Episode, worker: BFCLWorker) -> dict:
    e = episode.entry
    record = {"id": e["id"], "category": e["category"], "decoded": episode.decoded}
    if episode.error_type:
        record.update(correct=False, error_type=episode.error_type, error="")
    else:
        verdict = worker.request("check", id=e["id"], decoded=episode.decoded, ground_truth=e["ground_truth"])
        record.update(correct=verdict["valid"], error_type=verdict["error_type"], error=verdict["error"])
    record["transcript"] = episode.messages()[1]["content"]
    return record


# --------------------------------------------------------------------------------------------------
# BFCL's ground truth as a model's answers (the harness check of `python -m eval.bfcl --ground-truth`)
# --------------------------------------------------------------------------------------------------


def to_json_calls(call_texts: Sequence[str], functions: Sequence[dict]) -> list[dict]:
    """BFCL call texts (``sort('a.pdf')``, ``cd(folder='x')``) as our ``{"name", "parameters"}`` calls; a
    positional argument takes the name of the parameter at its place in the function's doc."""
    order = {f["name"]: list(f.get("parameters", {}).get("properties", {})) for f in functions}
    calls = []
    for text in call_texts:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError(f"not a BFCL call: {text!r}")
        name = node.func.id
        params = dict(zip(order.get(name, []), (ast.literal_eval(a) for a in node.args)))
        if len(params) != len(node.args):
            raise ValueError(f"{text!r}: more positional arguments than {name} has parameters")
        params.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
        calls.append({"name": name, "parameters": params})
    return calls


def answer(calls: Sequence[dict]) -> str:
    """A completion in the training layout: a short thought and one tool-call block (or a reply, no call)."""
    if not calls:
        return "<think>Nothing to call.</think>\n<response>Done.</response>"
    lines = "\n".join(json.dumps(c) for c in calls)
    return f"<think>Calling the tools.</think>\n<tool_call>\n{lines}\n</tool_call>"


def ground_truth_responder(entries: Sequence[dict], drop_last_call: bool = False) -> Responder:
    """A responder that answers each turn with BFCL's ground-truth calls in one step, then ends the turn.

    ``drop_last_call`` leaves out the last call of each entry's last non-empty turn (a near miss the checker
    must fail)."""
    scripts: dict[str, list[str]] = {}
    for entry in entries:
        turns = [list(t) for t in entry["ground_truth"]]
        if drop_last_call:
            last = max(i for i, t in enumerate(turns) if t)
            turns[last] = turns[last][:-1]
        script = []
        for calls in turns:
            if calls:
                script.append(answer(to_json_calls(calls, entry["all_functions"])))
            script.append(answer([]))
        scripts[entry["id"]] = script[::-1]

    def respond(batch: list[tuple[str, list[dict]]]) -> list[str | None]:
        return [scripts[entry_id].pop() for entry_id, _ in batch]

    return respond
