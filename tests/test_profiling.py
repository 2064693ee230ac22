"""gdpo.profiling: matrix-multiplication time, split by the trainer's phases."""

import json

import torch

from gdpo.profiling import MATMUL_OPS, profile_step


def test_matmul_time_is_split_by_phase(tmp_path):
    a = torch.randn(256, 256)
    with profile_step(tmp_path, 7, torch.device("cpu")):
        with torch.profiler.record_function("generate"):
            a @ a
        with torch.profiler.record_function("update"):
            with torch.profiler.record_function("inner"):  # nested marks count for the outer phase
                a @ a
            a @ a
        a @ a  # outside both phases
        a + a
    summary = json.loads((tmp_path / "step7.json").read_text())
    assert (tmp_path / "step7.trace.json").stat().st_size > 0
    assert summary["step"] == 7 and summary["device"] == "cpu"
    calls = {op["op"]: op["calls"] for op in summary["top_ops"]}
    assert calls["aten::mm"] == 4 and calls["aten::add"] == 1
    phases = summary["matmul_s_by_phase"]
    assert set(phases) == {"generate", "update"} and phases["generate"] > 0 and phases["update"] > 0
    outside = summary["matmul_s"] - phases["generate"] - phases["update"]
    assert outside > 0  # the fourth product belongs to no phase
    assert summary["step_s"] >= summary["matmul_s"]
    assert "aten::mm" in MATMUL_OPS
