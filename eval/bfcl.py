"""BFCL-v3 harness: questions and possible answers from ``bfcl-eval==2025.6.8``, verdicts from BFCL's own AST checker.

What is scored, and how (the paper does not say; docs/paper-notes.md §8.1):
* AST categories, checked by BFCL's ``ast_checker`` run in its own environment (``make setup-bfcl``) through
  ``eval/bfcl_worker.py``: non-live ``simple``, ``multiple``, ``parallel``, ``parallel_multiple``; live
  ``live_simple``, ``live_multiple``, ``live_parallel``, ``live_parallel_multiple``. Python only (no java/javascript).
* Irrelevance (``irrelevance``, ``live_irrelevance``): correct when the output contains no parseable tool call;
  relevance (``live_relevance``): correct when it contains at least one, as BFCL's relevance runner decides.
* Multi-turn (``multi_turn_base``, ``_miss_func``, ``_miss_param``, ``_long_context``): played turn by turn in
  BFCL's simulated APIs and scored by BFCL's multi-turn checker (``eval/bfcl_multi_turn.py``); Multi-turn is
  the unweighted mean of the four categories' accuracies.
* Non-Live / Live, as BFCL 2025.6.8 computes its overall accuracies: Non-Live is the unweighted mean of the
  non-live categories' accuracies (irrelevance included; BFCL's ``simple`` also averages java and javascript,
  not scored here), Live the mean over all live items, i.e. the categories weighted by their item counts
  (irrelevance and relevance included).
* Avg: the plain mean of Live, Non-Live and Multi-turn, as the paper and BFCL's overall accuracy;
  ``avg_live_non_live`` gives the mean of the first two (None where a part was not evaluated).
* Correct format: share of outputs with exactly the expected layout (``format_reward``): think + one tool-call
  block for call categories, think + response for irrelevance.

Prompts use the ToolRL structure (``render_system_prompt`` with the BFCL function docs as the tools). Completions
are parsed from the first ``<tool_call>`` block into BFCL's ``[{name: {param: value}}]``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from eval.bfcl_data import (
    AST_CATEGORIES,
    BFCL_PYTHON,
    IRRELEVANCE,
    LIVE,
    MULTI_TURN,
    NON_LIVE,
    RELEVANCE,
    REPO,
    SINGLE_TURN,
    SystemPrompt,
    parse_calls,
    read_package_jsonl,
    tools_of,
)
from eval.bfcl_multi_turn import ground_truth_responder, load_multi_turn, play
from eval.decontaminate import TrainingSet, decontaminate
from gdpo.tasks.tool_calling import format_reward, render_system_prompt, render_user_turn

__all__ = [
    "check",
    "generate_and_score",
    "ground_truth_check",
    "ground_truth_completion",
    "load_category",
    "messages_for",
    "model_responder",
    "score_category",
    "summarise",
    "user_text",
]


def load_category(category: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Items of a BFCL-v3 category (read line by line with json), with ``possible_answer`` where BFCL has one."""
    if category not in SINGLE_TURN:
        raise ValueError(
            f"unknown or multi-turn BFCL category {category!r}; single-turn: {list(SINGLE_TURN)} "
            "(multi-turn: eval.bfcl_multi_turn.load_multi_turn)"
        )
    items = read_package_jsonl(f"bfcl_eval/data/BFCL_v3_{category}.json")[:limit]
    if category in AST_CATEGORIES:
        answers = {
            a["id"]: a["ground_truth"]
            for a in read_package_jsonl(f"bfcl_eval/data/possible_answer/BFCL_v3_{category}.json")
        }
        for item in items:
            if item["id"] not in answers:
                raise ValueError(f"BFCL {category}: no possible answer for {item['id']}")
            item["possible_answer"] = answers[item["id"]]
    for item in items:
        item["category"] = category
    return items


def messages_for(item: dict, system_prompt: SystemPrompt = render_system_prompt) -> list[dict]:
    """Chat messages for a single-turn BFCL item, in the training prompts' layout: ``system_prompt`` renders the
    tools (``gdpo.tasks.tool_calling.system_prompt_like`` of a training row gives the run's own), the user turn
    is the dialogue history."""
    turns = item["question"][0]
    system_extra = "\n".join(t["content"] for t in turns if t["role"] == "system")
    system = system_prompt(tools_of(item["function"])) + (f"\n\n{system_extra}" if system_extra else "")
    dialogue = [t for t in turns if t["role"] != "system"]
    if len(dialogue) == 1:
        user = render_user_turn(dialogue[0]["content"])
    else:
        user = "**Dialogue Records History**\n" + "\n".join(
            f"<{t['role']}> {t['content']} </{t['role']}>" for t in dialogue
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def ground_truth_completion(item: dict) -> str:
    """A completion that states BFCL's first allowed value of every parameter (optional ones left out when "" is
    allowed first): what a perfect model would write. Used to check the harness end to end. An irrelevance item
    gets a reply without a call, a relevance item (no possible answer in BFCL) a call of its first function."""
    if item["category"] in IRRELEVANCE:
        return "<think>No tool fits the request.</think>\n<response>I cannot do that with these tools.</response>"
    if item["category"] in RELEVANCE:
        call = json.dumps({"name": item["function"][0]["name"], "parameters": {}})
        return f"<think>Calling the tool.</think>\n<tool_call>\n{call}\n</tool_call>"
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
        if item["category"] in RELEVANCE:
            record["well_formatted"] = format_reward(completion, "<tool_call>") == 1.0 and bool(calls)
            record["correct"] = bool(calls)
            record["error_type"] = "" if record["correct"] else "relevance:no_tool_call"
        elif not relevant:
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
    """Accuracy per category, Non-Live, Live, Multi-turn, Avg and the correct-format ratio, in %.

    Multi-turn records (from ``eval.bfcl_multi_turn.play``) count in Multi-turn only; the correct-format ratio
    is over the single-turn outputs (a multi-turn entry has many)."""
    by_category: dict[str, list[dict]] = {}
    for r in records:
        by_category.setdefault(r["category"], []).append(r)
    acc = {c: 100 * sum(r["correct"] for r in rs) / len(rs) for c, rs in by_category.items()}
    non_live = [acc[c] for c in NON_LIVE + ("irrelevance",) if c in acc]
    live = [r for c in LIVE + ("live_irrelevance", "live_relevance") for r in by_category.get(c, [])]
    multi_turn = [acc[c] for c in MULTI_TURN if c in acc]
    summary: dict[str, Any] = {"categories": acc, "items": {c: len(rs) for c, rs in by_category.items()}}
    summary["non_live"] = sum(non_live) / len(non_live) if non_live else None
    summary["live"] = 100 * sum(r["correct"] for r in live) / len(live) if live else None  # item-weighted
    summary["multi_turn"] = sum(multi_turn) / len(multi_turn) if multi_turn else None
    parts = (summary["live"], summary["non_live"], summary["multi_turn"])
    summary["avg"] = sum(parts) / 3 if None not in parts else None
    scored = [v for v in parts[:2] if v is not None]
    summary["avg_live_non_live"] = sum(scored) / len(scored) if scored else None
    single = [r for r in records if "well_formatted" in r]
    summary["correct_format"] = 100 * sum(r["well_formatted"] for r in single) / max(len(single), 1)
    return summary


def user_text(item: dict) -> str:
    """Every user message of a BFCL item or multi-turn entry, one per line (what decontamination compares)."""
    return "\n".join(m["content"] for turn in item["question"] for m in turn if m["role"] == "user")


def model_responder(model, tokenizer, rollout, batch_prompts: int = 8):
    """A responder (``eval.bfcl_multi_turn.Responder``): greedy completions of ``model`` through the rollout
    backend ``rollout.backend`` names (``model``: a transformers model, or its folder for ``vllm``), in groups of
    ``batch_prompts`` prompts for ``hf``; None for a prompt longer than ``rollout.max_prompt_tokens``."""
    from gdpo.rollout import encode_prompt, generation_chunks, make_rollout_backend

    backend = make_rollout_backend(rollout, model, tokenizer)

    def respond(batch: list[tuple[str, list[dict]]]) -> list[str | None]:
        prompts = [encode_prompt(tokenizer, messages) for _, messages in batch]
        texts: list[str | None] = [None] * len(batch)
        fits = [i for i, prompt in enumerate(prompts) if len(prompt) <= rollout.max_prompt_tokens]
        for chunk in generation_chunks(fits, batch_prompts, rollout):
            ro = backend.generate([prompts[i] for i in chunk], [0] * len(chunk), 1, greedy=True)
            for i, text in zip(chunk, ro.completions):
                texts[i] = text
        return texts

    return respond


def generate_and_score(
    model,
    tokenizer,
    rollout,
    categories=SINGLE_TURN + MULTI_TURN,
    *,
    limit: int | None = None,
    system_prompt: SystemPrompt = render_system_prompt,
    batch_prompts: int = 8,
    out_dir: Path | None = None,
    python: Path = BFCL_PYTHON,
    training: TrainingSet | None = None,
) -> dict[str, Any]:
    """Answer BFCL items with ``model`` (greedy, through ``model_responder``), score them, write the files.

    ``system_prompt`` renders an item's tools as the system turn: pass the run's training layout
    (``gdpo.tasks.tool_calling.system_prompt_like``), so that the model is asked as it was trained.

    With ``training`` (the run's training prompts), items whose question the run trained on are left out
    (``eval.decontaminate``; a multi-turn entry by any of its user turns) and counted per category in
    ``decontaminated``.

    Items whose prompt exceeds ``rollout.max_prompt_tokens`` are not generated: they count as wrong and
    badly formatted (irrelevance items too), and the summary lists how many were skipped per category (a
    multi-turn entry whose dialogue outgrows the limit fails at that step, counted the same way).
    Writes ``outputs.jsonl`` (per item: id, category, completion or transcript, verdict) and ``summary.json``
    to ``out_dir``.
    """
    respond = model_responder(model, tokenizer, rollout, batch_prompts)
    items, entries, decontaminated = [], [], {}
    for category in categories:
        multi = category in MULTI_TURN
        loaded = load_multi_turn(category) if multi else load_category(category)
        kept, dropped = decontaminate(loaded, training, user_text)
        (entries if multi else items).extend(kept[:limit])
        decontaminated[category] = len(dropped)
    completions = respond([(item["id"], messages_for(item, system_prompt)) for item in items])
    records = score_category(items, completions, python)
    records += play(entries, respond, system_prompt=system_prompt, python=python)
    summary = summarise(records)
    skipped: dict[str, int] = {}
    for r in records:
        if r["error_type"] == "skipped:prompt_too_long":
            skipped[r["category"]] = skipped.get(r["category"], 0) + 1
    summary["skipped_prompt_too_long"] = skipped
    summary["decontaminated"] = decontaminated
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ground_truth_check(categories=SINGLE_TURN + MULTI_TURN, limit: int | None = None, python=BFCL_PYTHON):
    """BFCL's own answers replayed through this harness as a model's completions: ``{category: (correct,
    total)}``. AST items answer with BFCL's first allowed values, irrelevance items with a reply and no call,
    relevance items with a call of their first function, multi-turn entries with each turn's ground-truth
    calls in one step."""
    out = {}
    for category in categories:
        if category in MULTI_TURN:
            entries = load_multi_turn(category, limit=limit)
            records = play(entries, ground_truth_responder(entries), python=python)
        else:
            items = load_category(category, limit=limit)
            records = score_category(items, [ground_truth_completion(item) for item in items], python)
        out[category] = (sum(r["correct"] for r in records), len(records))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="BFCL-v3 harness checks")
    parser.add_argument(
        "--ground-truth", action="store_true", help="replay BFCL's ground truth; one line per category"
    )
    parser.add_argument("--limit", type=int, default=None, help="items per category (default: all)")
    parser.add_argument("--categories", nargs="*", default=list(SINGLE_TURN + MULTI_TURN))
    args = parser.parse_args(argv)
    if not args.ground_truth:
        parser.error("nothing to do: pass --ground-truth")
    unknown = sorted(set(args.categories) - set(SINGLE_TURN + MULTI_TURN))
    if unknown:
        parser.error(f"unknown categories {unknown}; known: {list(SINGLE_TURN + MULTI_TURN)}")
    for category, (correct, total) in ground_truth_check(args.categories, args.limit).items():
        print(f"{category}: {correct}/{total}", flush=True)


if __name__ == "__main__":
    main()
