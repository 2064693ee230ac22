"""BFCL-v3 multi-turn: BFCL's own simulated APIs and checker (in its environment), played by scripted models."""

from __future__ import annotations

import json

import pytest

from eval.bfcl import main, summarise
from eval.bfcl_data import BFCL_PYTHON, MULTI_TURN
from eval.bfcl_multi_turn import (
    ADDED_FUNCTIONS_PROMPT,
    STEP_LIMIT,
    BFCLWorker,
    ground_truth_responder,
    load_multi_turn,
    play,
    to_json_calls,
)

pytestmark = pytest.mark.skipif(not BFCL_PYTHON.exists(), reason="BFCL environment missing: make setup-bfcl")


def test_entries_as_bfcl_inference_sees_them():
    (entry,) = load_multi_turn("multi_turn_miss_func", limit=1)
    assert entry["id"] == "multi_turn_miss_func_0" and len(entry["question"]) == 5
    assert entry["question"][3] == []  # the turn where the held-out function comes back
    assert [f["name"] for f in entry["missed_function"]["3"]] == ["sort"]
    offered = {f["name"] for f in entry["function"]}
    assert "sort" not in offered and {"cd", "mkdir", "mv", "grep", "diff"} <= offered
    assert entry["ground_truth"][3] == ["sort('final_report.pdf')"]
    assert [len(load_multi_turn(c)) for c in MULTI_TURN] == [200, 200, 200, 200]
    with pytest.raises(ValueError, match="unknown multi-turn category 'simple'"):
        load_multi_turn("simple")


def test_ground_truth_calls_read_as_our_tool_calls():
    (entry,) = load_multi_turn("multi_turn_miss_func", limit=1)
    calls = to_json_calls(["sort('final_report.pdf')", "cd(folder='..')"], entry["all_functions"])
    assert calls == [
        {"name": "sort", "parameters": {"file_name": "final_report.pdf"}},
        {"name": "cd", "parameters": {"folder": ".."}},
    ]
    with pytest.raises(ValueError, match="not a BFCL call"):
        to_json_calls(["os.system('x')"], entry["all_functions"])


def test_the_ground_truth_replayed_passes_every_entry_and_a_dropped_call_fails():
    """BFCL's checker passes its own ground truth; ours must too (200/200 per category), and with the last call
    of the last non-empty turn dropped every entry must fail."""
    for category in MULTI_TURN:
        entries = load_multi_turn(category)
        records = play(entries, ground_truth_responder(entries))
        assert sum(r["correct"] for r in records) == 200, category
        dropped = play(entries, ground_truth_responder(entries, drop_last_call=True))
        assert sum(r["correct"] for r in dropped) == 0, category
    assert summarise(records)["multi_turn"] == 100.0  # one category only: its own accuracy


def test_the_dialogue_feeds_results_back_and_reveals_held_out_functions():
    (entry,) = load_multi_turn("multi_turn_miss_func", limit=1)
    seen, script = [], ground_truth_responder([entry])

    def respond(batch):
        seen.append(batch[0][1])
        return script(batch)

    (record,) = play([entry], respond)
    assert record["correct"] and len(record["decoded"]) == 5
    assert record["decoded"][0] == [
        [
            "cd(folder='document')",
            "mkdir(dir_name='temp')",
            "mv(source='final_report.pdf', destination='temp')",
        ]
    ]
    assert record["decoded"][2] == [] and record["decoded"][3] == [["sort(file_name='final_report.pdf')"]]
    system, user = seen[0]
    assert "Name: sort" not in system["content"] and "Name: mkdir" in system["content"]
    second_step = seen[1][1]["content"]
    assert second_step.startswith("**Dialogue Records History**\n<user> Move 'final_report.pdf'")
    assert second_step.endswith(
        '<obs>\n{"current_working_directory": "document"}\nNone\n'
        "{\"result\": \"'final_report.pdf' moved to 'temp/final_report.pdf'\"}\n</obs>"
    )  # the results of cd, mkdir (nothing) and mv, one per line
    held_out_turn = next(m[1]["content"] for m in seen if ADDED_FUNCTIONS_PROMPT in m[1]["content"])
    assert '"name": "sort"' in held_out_turn.split("<user>")[-1]


def test_limits_end_entries_as_bfcl_does():
    (entry,) = load_multi_turn("multi_turn_base", limit=1)
    cd = '<think>t</think>\n<tool_call>\n{"name": "ls", "parameters": {}}\n</tool_call>'
    calls = []

    def forever(batch):
        calls.append(1)
        return [cd] * len(batch)

    (record,) = play([entry], forever)
    assert not record["correct"] and record["error_type"] == "multi_turn:force_terminated"
    assert len(calls) == STEP_LIMIT + 1 and len(record["decoded"][0]) == STEP_LIMIT + 1
    (record,) = play([entry], lambda batch: [None] * len(batch))
    assert record["error_type"] == "skipped:prompt_too_long" and not record["correct"]


def test_the_worker_runs_only_the_entrys_methods():
    (entry,) = load_multi_turn("multi_turn_base", limit=1)
    with BFCLWorker() as worker:
        keys = ("category", "initial_config", "involved_classes")
        methods = worker.request("start", id=entry["id"], **{k: entry[k] for k in keys})["methods"]
        assert {"ls", "cd", "mkdir"} <= set(methods) and "open" not in methods
        reply = worker.request(
            "execute",
            id=entry["id"],
            calls=[
                {"name": "open", "arguments": {"file": "/tmp/x", "mode": "w"}},
                {"name": "__import__", "arguments": {"name": "os"}},
                {"name": "ls", "arguments": {"a": False}},
            ],
        )
    assert reply["results"][:2] == [
        "Error during execution: name 'open' is not defined",
        "Error during execution: name '__import__' is not defined",
    ]
    assert reply["calls"][2] == "ls(a=False)" and json.loads(reply["results"][2])["current_directory_content"]


def test_ground_truth_command_prints_a_line_per_category(capsys):
    main(["--ground-truth", "--limit", "5", "--categories", "multi_turn_base", "live_relevance", "simple"])
    assert capsys.readouterr().out.splitlines() == [
        "multi_turn_base: 5/5",
        "live_relevance: 5/5",
        "simple: 5/5",
    ]


def test_a_refused_call_is_never_run_not_even_when_the_checker_replays_the_calls(tmp_path):
    """BFCL's checker evals every call text it replays: a name that is no method of the entry must not reach it."""
    (entry,) = load_multi_turn("multi_turn_base", limit=1)
    probe = tmp_path / "created_by_the_model"
    name = f"__import__('os').makedirs({str(probe)!r})#"
    hostile = json.dumps({"name": name, "parameters": {}})
    answers = iter([f"<think>t</think>\n<tool_call>\n{hostile}\n</tool_call>"])

    def respond(batch):
        return [next(answers, "<think>done</think>\n<response>ok</response>") for _ in batch]

    (record,) = play([entry], respond)
    assert not probe.exists()
    assert not record["correct"] and record["decoded"][0] == []  # nothing executed in the first turn
    assert f"Error during execution: name {name!r} is not defined" in record["transcript"]
