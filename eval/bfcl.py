"""BFCL-v3 harness: questions and possible answers from ``bfcl-eval==2025.6.8``, verdicts from BFCL's own AST checker.

What is scored, and how (the paper does not say; docs/paper-notes.md §8.1):
* AST categories, checked by BFCL's ``ast_checker`` run in its own environment (``make setup-bfcl``) through
  ``eval/bfcl_worker.py``: non-live ``simple``, ``multiple``, ``parallel``, ``parallel_multiple``; live
  ``live_simple``, ``live_multiple``, ``live_parallel``, ``live_parallel_multiple``. Python only (no java/javascript).
* Irrelevance (``irrelevance``, ``live_irrelevance``): correct when the output contains no parseable tool call.
* Multi-turn: **not scored** (its checker executes stateful API simulations turn by turn); reported as None.
* Non-Live / Live, as BFCL 2025.6.8 computes its overall accuracies: Non-Live is the unweighted mean of the
  non-live categories' accuracies (irrelevance included; BFCL's ``simple`` also averages java and javascript,
  not scored here), Live the mean over all live items, i.e. the categories weighted by their item counts
  (irrelevance included; BFCL also counts ``live_relevance``, not scored here).
* Avg: the plain mean of Live, Non-Live and Multi-turn, as the paper; None while multi-turn is not scored, and
  ``avg_live_non_live`` gives the mean of the two scored ones.
* Correct format: share of outputs with exactly the expected layout (``format_reward``): think + one tool-call
  block for call categories, think + response for irrelevance.

Prompts use the ToolRL structure (``render_system_prompt`` with the BFCL function docs as the tools). Completions
are parsed from the first ``<tool_call>`` block into BFCL's ``[{name: {param: value}}]``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from gdpo.assets import package_file
from gdpo.tasks.tool_calling import _tool_call_lines, format_reward, render_system_prompt, render_user_turn

__all__ = [
    "AST_CATEGORIES",
    "IRRELEVANCE",
    "check",
    "ground_truth_completion",
    "load_category",
    "messages_for",
    "parse_calls",
    "score_category",
    "summarise",
]

VERSION = "2025.6.8"
NON_LIVE = ("simple", "multiple", "parallel", "parallel_multiple")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
AST_CATEGORIES = NON_LIVE + LIVE
IRRELEVANCE = ("irrelevance", "live_irrelevance")
REPO = Path(__file__).resolve().parent.parent
BFCL_PYTHON = Path(os.environ.get("GDPO_BFCL_PYTHON", REPO / ".venv-bfcl" / "bin" / "python"))


def _jsonl(member: str) -> list[dict]:
    path = package_file("bfcl-eval", VERSION, member)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_category(category: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Items of a BFCL-v3 category (read line by line with json), with ``possible_answer`` where BFCL has one."""
    if category not in AST_CATEGORIES + IRRELEVANCE:
        raise ValueError(
            f"unknown or unscored BFCL category {category!r}; scored: {list(AST_CATEGORIES + IRRELEVANCE)}"
        )
    items = _jsonl(f"bfcl_eval/data/BFCL_v3_{category}.json")[:limit]
    if category in AST_CATEGORIES:
        answers = {
            a["id"]: a["ground_truth"]
            for a in _jsonl(f"bfcl_eval/data/possible_answer/BFCL_v3_{category}.json")
        }
        for item in items:
            if item["id"] not in answers:
                raise ValueError(f"BFCL {category}: no possible answer for {item['id']}")
            item["possible_answer"] = answers[item["id"]]
    for item in items:
        item["category"] = category
    return items


def messages_for(item: dict, *, compact: bool = False) -> list[dict]:
    """ToolRL-style chat messages for a single-turn BFCL item."""
    tools = [
        {
            "name": f["name"],
            "description": f.get("description", ""),
            "parameters": f.get("parameters", {}).get("properties", {}),
        }
        for f in item["function"]
    ]
    turns = item["question"][0]
    system_extra = "\n".join(t["content"] for t in turns if t["role"] == "system")
    system = render_system_prompt(tools, compact=compact) + (f"\n\n{system_extra}" if system_extra else "")
    dialogue = [t for t in turns if t["role"] != "system"]
    if len(dialogue) == 1:
        user = render_user_turn(dialogue[0]["content"])
    else:
        user = "**Dialogue Records History**\n" + "\n".join(
            f"<{t['role']}> {t['content']} </{t['role']}>" for t in dialogue
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_calls(completion: str) -> list[dict] | None:
    """BFCL's model output ``[{name: {param: value}}]`` from the first tool-call block; None if unparseable."""
    try:
        lines = _tool_call_lines(completion)
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


def ground_truth_completion(item: dict) -> str:
    """A completion that states BFCL's first allowed value of every parameter (optional ones left out when "" is
    allowed first): what a perfect model would write. Used to check the harness end to end."""
    calls = []
    for answer in item["possible_answer"]:
        ((name, params),) = answer.items()
        chosen = {k: v[0] for k, v in params.items() if v and v[0] != ""}
        calls.append(json.dumps({"name": name, "parameters": chosen}))
    return "<think>Calling the tools.</think>\n<tool_call>\n" + "\n".join(calls) + "\n</tool_call>"


def check(requests: list[dict], python: Path = BFCL_PYTHON) -> list[dict]:
    """Run BFCL's AST checker on ``requests`` ({id, category, function, model_output, possible_answer}) in the worker."""
    if not requests:
        return []
    if not Path(python).exists():
        raise FileNotFoundError(
            f"no BFCL environment at {python}: run `make setup-bfcl` (or set GDPO_BFCL_PYTHON)"
        )
    payload = "".join(json.dumps(r) + "\n" for r in requests)
    result = subprocess.run(
        [str(python), str(REPO / "eval" / "bfcl_worker.py")],
        input=payload,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"BFCL worker failed:\n{result.stderr[-3000:]}")
    verdicts = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if [v["id"] for v in verdicts] != [r["id"] for r in requests]:
        raise RuntimeError("BFCL worker returned verdicts that do not match the requests")
    return verdicts


def score_category(
    items: list[dict], completions: list[str | None], python: Path = BFCL_PYTHON
) -> list[dict]:
    """Per-item verdicts: {id, category, correct, well_formatted, error_type, completion}.

    A completion of ``None`` means the item was not answered (its prompt did not fit the model): it is wrong and
    badly formatted in every category, irrelevance included (an empty answer would otherwise pass as "no call").
    """
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    out, requests, positions = [], [], []
    for item, completion in zip(items, completions):
        record = {
            "id": item["id"],
            "category": item["category"],
            "completion": completion or "",
            "well_formatted": False,
            "correct": False,
            "error_type": "",
        }
        if completion is None:
            record["error_type"] = "skipped:prompt_too_long"
            out.append(record)
            continue
        calls = parse_calls(completion)
        relevant = item["category"] in AST_CATEGORIES
        layout = "<tool_call>" if relevant else "<response>"
        record["well_formatted"] = format_reward(completion, layout) == 1.0 and (
            calls is not None or not relevant
        )
        if not relevant:
            record["correct"] = calls is None or calls == []
            record["error_type"] = "" if record["correct"] else "irrelevance:called_a_tool"
        elif calls is None:
            record["error_type"] = "format:no_parseable_tool_call"
        else:
            positions.append(len(out))
            requests.append(
                {
                    "id": item["id"],
                    "category": item["category"],
                    "function": item["function"],
                    "model_output": calls,
                    "possible_answer": item["possible_answer"],
                }
            )
        out.append(record)
    for position, verdict in zip(positions, check(requests, python)):
        out[position]["correct"] = verdict["valid"]
        out[position]["error_type"] = verdict["error_type"]
    return out


def summarise(records: list[dict]) -> dict[str, Any]:
    """Accuracy per category, Non-Live, Live, Multi-turn (None), Avg and the correct-format ratio, in %."""
    by_category: dict[str, list[dict]] = {}
    for r in records:
        by_category.setdefault(r["category"], []).append(r)
    acc = {c: 100 * sum(r["correct"] for r in rs) / len(rs) for c, rs in by_category.items()}
    non_live = [acc[c] for c in NON_LIVE + ("irrelevance",) if c in acc]
    live = [r for c in LIVE + ("live_irrelevance",) for r in by_category.get(c, [])]
    summary: dict[str, Any] = {"categories": acc, "items": {c: len(rs) for c, rs in by_category.items()}}
    summary["non_live"] = sum(non_live) / len(non_live) if non_live else None
    summary["live"] = 100 * sum(r["correct"] for r in live) / len(live) if live else None  # item-weighted
    summary["multi_turn"] = None  # not scored: see the module docstring
    summary["avg"] = None
    scored = [v for v in (summary["live"], summary["non_live"]) if v is not None]
    summary["avg_live_non_live"] = sum(scored) / len(scored) if scored else None
    summary["correct_format"] = 100 * sum(r["well_formatted"] for r in records) / max(len(records), 1)
    return summary


def generate_and_score(
    model,
    tokenizer,
    rollout,
    categories=AST_CATEGORIES + IRRELEVANCE,
    *,
    limit: int | None = None,
    compact: bool = False,
    batch_prompts: int = 8,
    out_dir: Path | None = None,
    python: Path = BFCL_PYTHON,
) -> dict[str, Any]:
    """Answer BFCL items with ``model`` (greedy, through the hf rollout backend), score them, write the files.

    Items whose prompt exceeds ``rollout.max_prompt_tokens`` are not generated: they count as wrong and
    badly formatted (irrelevance items too), and the summary lists how many were skipped per category.
    Writes ``outputs.jsonl`` (per item: id, category, completion, verdict) and ``summary.json`` to ``out_dir``.
    """
    from gdpo.rollout import HFRollout, encode_prompt

    backend = HFRollout(model, tokenizer, rollout)
    items, completions, skipped = [], [], {}
    for category in categories:
        for item in load_category(category, limit=limit):
            prompt = encode_prompt(tokenizer, messages_for(item, compact=compact))
            items.append((item, prompt))
    for start in range(0, len(items), batch_prompts):
        chunk = items[start : start + batch_prompts]
        fits = [i for i, (_, prompt) in enumerate(chunk) if len(prompt) <= rollout.max_prompt_tokens]
        texts: list[str | None] = [None] * len(chunk)  # None: not generated, scored as wrong
        if fits:
            ro = backend.generate([chunk[i][1] for i in fits], [0] * len(fits), 1, greedy=True)
            for i, text in zip(fits, ro.completions):
                texts[i] = text
        for item, prompt in chunk:
            if len(prompt) > rollout.max_prompt_tokens:
                skipped[item["category"]] = skipped.get(item["category"], 0) + 1
        completions.extend(texts)
    records = score_category([item for item, _ in items], completions, python)
    summary = summarise(records)
    summary["skipped_prompt_too_long"] = skipped
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
