"""Math benchmark harness: real MATH500 / AIME 2024 / Minerva data from packages, pass@1 and Exceed scoring, loaders
of the datasets no package ships (on hand-written fixtures), and an end-to-end run on a tiny random model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from eval import math_bench
from eval.math_bench import load_benchmark, score_samples
from gdpo.data import math_data
from gdpo.tasks.math import canonical_answer

FIXTURES = Path(__file__).parent / "fixtures" / "math"


def _boxed(answers):
    return [[f"Therefore the answer is $\\boxed{{{a}}}$."] for a in answers]


def _score(items, completions, tokens=10, limit=4000):
    return score_samples(items, completions, [[tokens] * len(c) for c in completions], limit)["summary"]


@pytest.fixture(scope="module")
def math500():
    return load_benchmark("math500")


def _wrong_answer(items, i):
    """A surely wrong answer for item i: its integer answer + 1, else a later item's answer of another form."""
    answer = items[i]["answer"]
    if re.fullmatch(r"-?\d+", answer):
        return str(int(answer) + 1)
    j = (i + 1) % len(items)
    # skip answers equal in form, and bare assignments ("x=5" verifies against "5")
    while canonical_answer(items[j]["answer"]) == canonical_answer(answer) or "=" in items[j]["answer"]:
        j = (j + 1) % len(items)
    return items[j]["answer"]


def test_math500_reference_answers_score_100_and_wrong_answers_0(math500):
    assert len(math500) == 500 and len({i["id"] for i in math500}) == 500
    assert all(i["source"] == "math500" and "\\boxed" in i["solution"] for i in math500)
    answers = [i["answer"] for i in math500]
    assert _score(math500, _boxed(answers))["acc"] == 100.0
    assert _score(math500, [[i["solution"]] for i in math500])["acc"] == 100.0  # full reference solutions
    wrong = [_wrong_answer(math500, i) for i in range(len(math500))]
    assert _score(math500, _boxed(wrong))["acc"] == 0.0


def test_aime24_reference_answers_score_100_and_wrong_answers_0():
    items = load_benchmark("aime24")
    assert len(items) == 30
    assert [i["id"] for i in items] == [f"aime24/{k}" for k in range(30)]
    assert all(re.fullmatch(r"\d{1,3}", i["answer"]) for i in items)
    assert items[0]["answer"] == "204"  # 2024 I problem 1 (Aya's walk)
    answers = [i["answer"] for i in items]
    assert _score(items, _boxed(answers))["acc"] == 100.0
    assert _score(items, _boxed([str(int(a) + 1) for a in answers]))["acc"] == 0.0


def test_minerva_gsm8k_and_math_train_counts():
    minerva = load_benchmark("minerva")
    assert len(minerva) == 272 and all(i["answer"] for i in minerva)
    assert _score(minerva, [[i["solution"]] for i in minerva])["acc"] == 100.0
    gsm_test = load_benchmark("gsm8k")
    assert len(gsm_test) == 1319 and gsm_test[0]["answer"] == "18"
    assert "####" not in gsm_test[0]["solution"]
    assert len(math_data.load_gsm8k("train")) == 7473
    with pytest.warns(UserWarning, match=r"skipped rows \[5341, 5343\]"):
        assert len(math_data.load_math_train()) == 7498


def test_pass_at_1_averages_over_samples_then_items():
    items = [{"id": "a", "answer": "3"}, {"id": "b", "answer": "\\frac{1}{2}"}]
    completions = [["\\boxed{3}", "\\boxed{4}", "\\boxed{3}", "none"], ["\\boxed{0.5}"] * 4]
    out = score_samples(items, completions, [[5] * 4, [5] * 4], 40)
    assert out["records"][0]["pass@1"] == 0.5 and out["records"][1]["pass@1"] == 1.0
    assert out["summary"]["acc"] == 75.0
    assert out["summary"]["samples_per_item"] == [4]
    assert [s["correct"] for s in out["records"][0]["samples"]] == [True, False, True, False]


def test_exceed_counts_responses_over_the_limit():
    items = [{"id": "a", "answer": "1"}, {"id": "b", "answer": "2"}]
    completions = [["\\boxed{1}"] * 3, ["\\boxed{2}"] * 3]
    out = score_samples(items, completions, [[10, 41, 40], [100, 0, 39]], length_limit=40)
    assert out["summary"]["exceed"] == pytest.approx(100 * 2 / 6)
    assert [r["exceed"] for r in out["records"]] == pytest.approx([1 / 3, 1 / 3])
    assert out["summary"]["mean_tokens"] == pytest.approx(230 / 6)
    skipped = score_samples(items, completions, [[99] * 3, [99] * 3], 40, skipped=[True, False])
    assert skipped["summary"]["acc"] == 50.0 and skipped["summary"]["exceed"] == 50.0
    assert skipped["summary"]["skipped_prompt_too_long"] == 1
    # Cut at a generation cap at or below the limit: it would have been longer, so it exceeds.
    cut = score_samples(
        items, completions, [[40] * 3, [5] * 3], 40, truncated_per_item=[[True, False, False]] * 2
    )
    assert [r["exceed"] for r in cut["records"]] == pytest.approx([1 / 3, 1 / 3])
    assert cut["records"][0]["samples"][0]["exceeds"] is True


def test_score_samples_rejects_mismatched_inputs():
    items = [{"id": "a", "answer": "1"}]
    with pytest.raises(ValueError, match="must match"):
        score_samples(items, [["x"], ["y"]], [[1], [1]], 40)
    with pytest.raises(
        ValueError, match=r"item 0 \(a\): 2 completions, 1 token counts and 2 truncation flags"
    ):
        score_samples(items, [["x", "y"]], [[1]], 40)


def test_benchmark_registry():
    assert set(math_bench.BENCHMARKS) == {
        "math500",
        "aime24",
        "amc",
        "minerva",
        "olympiad",
        "gsm8k",
        "synthetic",
    }
    with pytest.raises(ValueError, match="unknown math benchmark"):
        load_benchmark("aime25")
    with pytest.raises(ValueError, match="takes no data source"):
        load_benchmark("math500", source="x.json")
    assert len(load_benchmark("synthetic")) == 200


# --------------------------------------------------------------------------------------------------
# Loaders of data that ships in no package: local fixtures of the expected schemas
# --------------------------------------------------------------------------------------------------


def test_amc_loader_on_both_layouts():
    items = load_benchmark("amc", source=str(FIXTURES / "amc_deepscaler.json"))
    assert [i["answer"] for i in items] == ["12", "28", "\\frac{5}{2}"]
    assert items[0]["id"] == "amc/0" and items[0]["source"] == "amc"
    aimo = math_data.load_amc(FIXTURES / "amc_aimo.jsonl")
    assert [(i["id"], i["answer"]) for i in aimo] == [("amc/0", "9"), ("amc/1", "53")]  # floats lose ".0"
    assert _score(aimo, _boxed(["9", "53"]))["acc"] == 100.0


def test_olympiad_loader_on_both_layouts():
    deepscaler = math_data.load_olympiad(FIXTURES / "olympiad_deepscaler.json")
    assert [i["answer"] for i in deepscaler] == ["2", "4"]
    original = math_data.load_olympiad(FIXTURES / "olympiad_original.jsonl")
    assert [i["answer"] for i in original] == ["3", "-3, 3"]  # final_answer lists, $ stripped, joined
    assert original[0]["id"] == "olympiad/1606"
    assert original[1]["problem"].startswith("Find all integers")


def test_deepscaler_loader_json_lines_and_parquet(tmp_path):
    items = math_data.load_deepscaler(FIXTURES / "deepscaler.jsonl")
    assert [i["answer"] for i in items] == ["56", "\\frac{5}{2}", "4"]
    assert all(i["solution"] and i["source"] == "deepscaler" for i in items)
    parquet = tmp_path / "train.parquet"
    pd.DataFrame([{k: i[k] for k in ("problem", "answer", "solution")} for i in items]).to_parquet(parquet)
    assert [i["answer"] for i in math_data.load_deepscaler(parquet)] == ["56", "\\frac{5}{2}", "4"]
    task_rows = math_data.load_deepscaler(str(parquet))
    assert _score(task_rows, [[i["solution"]] for i in task_rows])["acc"] == 100.0


def test_deepscaler_task_source_reads_a_local_path():
    from gdpo.tasks import build_task

    task = build_task(
        "math", {"source": "deepscaler", "path": str(FIXTURES / "deepscaler.jsonl"), "num_test": 3}, 0
    )
    assert [r["answer"] for r in task.train] == ["56", "\\frac{5}{2}", "4"]
    assert task.train[0]["length_limit"] == 4000 and len(task.test) == 3
    assert len(task.demonstrations) == 2000


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"problem": "p", "answer": "1"}, {"problem": "q"}], r"bad\.json row 1: no field 'answer'"),
        ([{"problem": "p", "answer": "1"}, {"problem": "", "answer": "2"}], r"bad\.json row 1: no non-empty"),
        ([{"problem": "p", "answer": "  "}], r"bad\.json row 0: field 'answer' is empty"),
        ([{"problem": "p", "answer": True}], r"bad\.json row 0: field 'answer' is missing or not"),
        (["just a string"], r"bad\.json row 0: expected a JSON object"),
        ({"problem": "p"}, r"bad\.json: expected a JSON list"),
    ],
)
def test_bad_rows_name_the_file_row_and_field(tmp_path, rows, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=message):
        math_data.load_amc(path)


def test_a_missing_number_in_a_parquet_answer_column_is_an_error(tmp_path):
    path = tmp_path / "amc.parquet"
    pd.DataFrame({"problem": ["p", "q"], "answer": [3.0, None]}).to_parquet(path)  # a null (not NaN)
    with pytest.raises(ValueError, match=r"amc\.parquet row 1: no field 'answer'"):
        math_data.load_amc(path)
    pd.DataFrame({"problem": ["p"], "answer": [float("inf")]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"row 0: field 'answer' is missing or not finite \(inf\)"):
        math_data.load_amc(path)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        math_data.load_olympiad(tmp_path / "nope.json")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "p", "answer": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl line 2: not JSON"):
        math_data.load_deepscaler(broken)


# --------------------------------------------------------------------------------------------------
# End to end: generation through the rollout backend, files, CLI
# --------------------------------------------------------------------------------------------------


def test_cli_runs_a_tiny_model_and_writes_records_and_summaries(tmp_path):
    from gdpo.config import TinyModelConfig
    from gdpo.tasks import build_task
    from gdpo.tiny import build_tiny_model

    task = build_task("math", {"num_train": 200, "num_test": 5, "num_demonstrations": 100}, 0)
    folder = build_tiny_model(TinyModelConfig(), task.corpus, tmp_path / "models", seed=0)
    out = tmp_path / "out"
    argv = ["--model", str(folder), "--benchmarks", "synthetic", "--k", "2", "--limit", "3"]
    math_bench.main(argv + ["--max-new-tokens", "12", "--out-dir", str(out), "--device", "cpu"])
    summary = json.loads((out / "synthetic" / "summary.json").read_text())
    assert summary["items"] == 3 and summary["responses"] == 6 and summary["samples_per_item"] == [2]
    assert summary["temperature"] == 0.6 and summary["top_p"] == 0.95 and summary["length_limit"] == 40
    records = [json.loads(line) for line in (out / "synthetic" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"synthetic/test/{k}" for k in range(3)]
    assert all(1 <= s["num_tokens"] <= 12 for r in records for s in r["samples"])
    assert json.loads((out / "summary.json").read_text()) == {"synthetic": summary}


def test_a_row_of_the_aime_file_that_is_not_an_object_is_an_error(monkeypatch):
    aime = {"data_source": "AIME2024", "question": "What is 1+1?", "answer": "2"}
    rows = [{"data_source": "AIME2025", "question": "q", "answer": "1"}, aime, ["not", "a", "row"]]
    monkeypatch.setattr(math_data, "_jsonl_package", lambda *_: (Path("en.json"), rows))
    with pytest.raises(ValueError, match=r"en.json row 2: not a JSON object"):
        math_data.load_aime24()
    rows.pop()  # other benchmarks' rows are left out by design
    assert [item["answer"] for item in math_data.load_aime24()] == ["2"]


def test_items_the_run_trained_on_are_left_out_and_counted(tmp_path, toy_policy):
    from eval.decontaminate import TrainingSet
    from gdpo.config import RolloutConfig

    model, tokenizer = toy_policy
    seen = math_bench.load_benchmark("synthetic")[:2]
    training = TrainingSet([{"messages": [{"role": "user", "content": item["problem"]}]} for item in seen])
    rollout = RolloutConfig(temperature=0.6, top_p=0.95, max_new_tokens=4, max_prompt_tokens=256)
    summary = math_bench.run_benchmark(
        model, tokenizer, "synthetic", rollout, k=1, limit=3, out_dir=tmp_path, training=training
    )
    assert summary["decontaminated"] == 2 and summary["items"] == 3
    records = [
        json.loads(line) for line in (tmp_path / "synthetic" / "records.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in records] == [f"synthetic/test/{k}" for k in (2, 3, 4)]
    assert (
        math_bench.run_benchmark(model, tokenizer, "synthetic", rollout, k=1, limit=1)["decontaminated"] == 0
    )


def test_the_answer_is_read_after_the_thinking_when_the_run_was_rewarded_so():
    items = [{"id": "q", "answer": "7"}]
    completions = [["<think>\\boxed{7}</think> so it is 7", "<think>hmm</think> \\boxed{7}"]]
    plain = math_bench.score_samples(items, completions, [[5, 5]], length_limit=10)
    strict = math_bench.score_samples(items, completions, [[5, 5]], length_limit=10, answer_after_think=True)
    assert plain["records"][0]["pass@1"] == 1.0 and strict["records"][0]["pass@1"] == 0.5
