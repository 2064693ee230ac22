"""The GPU acceptance check (``bench/gpu_check.py``): its parsing and verdicts on crafted inputs, and (slow) its
CPU path end to end, as it runs on a machine without a GPU."""

from __future__ import annotations

import json

import pytest

from bench.gpu_check import (
    Report,
    check_logprobs,
    check_run,
    gpu_slug,
    main,
    measured,
    missing_modules,
    parse_plan,
    summarise_metrics,
)

PLAN_OUTPUT = "memory plan of x.yaml\n...\npeak: update phase\nplan: fits (peak 1.32 GiB of 80)\n"


def test_parse_plan_reads_the_last_line():
    assert parse_plan(PLAN_OUTPUT) == {"fits": True, "peak_gib": 1.32, "of_gib": 80.0}
    assert parse_plan("plan: does not fit (peak 91.5 GiB of 79.6)") == {
        "fits": False,
        "peak_gib": 91.5,
        "of_gib": 79.6,
    }
    assert parse_plan("error: model.name_or_path 'x' is not a folder") is None


def test_gpu_slug_names_the_result_file():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_slug("NVIDIA H200") == "nvidia-h200"


def test_missing_modules_are_named():
    assert missing_modules(("json", "surely_not_installed_xyz"), ()) == ["surely_not_installed_xyz"]
    assert missing_modules(("json",), ("gdpo.config",)) == []


ROWS = [
    {"time/step_s": 3.0, "memory/peak_gib": 2.0, "loss": 0.5},
    {"time/step_s": 1.0, "memory/peak_gib": 2.5, "loss": -0.25},
    {"time/step_s": 2.0, "memory/peak_gib": 2.25, "loss": 0.0},
]


def test_metrics_summary_leaves_out_the_first_step_of_the_median():
    summary = summarise_metrics(ROWS)
    assert summary == {
        "steps": 3,
        "step_s": [3.0, 1.0, 2.0],
        "median_step_s_after_first": 1.5,
        "peak_gib": 2.5,
        "loss": [0.5, -0.25, 0.0],
    }
    assert summarise_metrics(ROWS[:1])["median_step_s_after_first"] is None


def test_a_run_over_its_plan_fails_and_one_within_passes(capsys):
    report = Report()
    check_run(report, "within", summarise_metrics(ROWS), {"fits": True, "peak_gib": 3.0, "of_gib": 80.0})
    check_run(report, "over", summarise_metrics(ROWS), {"fits": True, "peak_gib": 2.4, "of_gib": 80.0})
    check_run(report, "no peak", summarise_metrics([{"time/step_s": 1.0, "loss": 0.1}]), {"peak_gib": 1.0})
    check_run(report, "crashed", {"exit_code": 1, "error": "Traceback\nRuntimeError: CUDA out of memory"})
    assert [c["ok"] for c in report.checks] == [True, False, False, False]
    assert report.failed == ["over", "no peak", "crashed"]
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0] == "[  ok] within: 3 steps, losses finite, median step 1.500 s, peak 2.50 GiB <= plan 3.00 GiB"
    )
    assert out[1].endswith("peak 2.50 GiB > plan 2.40 GiB")
    assert out[2].endswith("the trainer logged no memory/peak_gib")
    assert out[3] == "[FAIL] crashed: exit code 1: RuntimeError: CUDA out of memory"


def test_logprob_gap_is_judged_by_its_tolerance():
    report = Report()
    gap = {"tokens": 10, "max_abs_diff": 2e-3, "mean_abs_diff": 1e-4, "tolerance": 1e-3}
    check_logprobs(report, "fp32", gap)
    check_logprobs(report, "bf16", dict(gap, tolerance=0.25))
    assert report.failed == ["fp32"]


def test_a_check_that_raises_is_a_failed_check_and_the_others_go_on(capsys):
    def out_of_memory(dtype):
        raise RuntimeError(f"CUDA out of memory in {dtype}\n(tried to allocate 2 GiB)")

    report = Report()
    assert measured(report, "gpu/logprobs x", out_of_memory, "bfloat16") is None
    check_logprobs(report, "gpu/logprobs x", None)  # nothing more to add
    assert measured(report, "sum", sum, [1, 2]) == 3
    assert report.checks == [
        {"name": "gpu/logprobs x", "ok": False, "detail": "RuntimeError: CUDA out of memory in bfloat16"}
    ]


@pytest.mark.slow
def test_the_cpu_path_runs_its_checks_and_says_there_is_no_gpu(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--cpu-only"]) == 0
    out = capsys.readouterr().out
    assert "only the CPU-side checks ran" in out
    result = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert result["gpu_ran"] is False and result["ok"] is True
    assert [c["name"] for c in result["checks"]] == [
        "cpu/train tiny 2 steps",
        "cpu/logprobs tiny float32",
        "cpu/logprobs tiny bfloat16",
        "cpu/plan tiny",
    ]
    assert result["details"]["cpu/train tiny 2 steps"]["steps"] == 2
    assert result["details"]["cpu/logprobs tiny float32"]["max_abs_diff"] < 1e-3
    assert result["details"]["cpu/plan tiny"]["fits"] is True
