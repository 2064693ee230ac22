"""Profile one training step with the torch profiler and say where its time went.

``logging.profile_steps=[k]`` profiles step ``k`` of a run and writes, in the run folder,

    profile/step<k>.trace.json   Chrome trace (open in chrome://tracing or https://ui.perfetto.dev)
    profile/step<k>.json         summary: the step's wall time, matrix-multiplication time (in all and in the
                                 generation and update phases), the top operators

The matrix-multiplication time is the self time of ``aten::mm``/``addmm``/``bmm``/``baddbmm``: the linear layers
of the model in generation, the forward and the backward (products inside fused attention kernels are not
counted). On a CPU it is close to the arithmetic a step cannot avoid at its dtype (fusing small products into
larger ones changes it a little), so ``step_s - matmul_s`` is about what engineering could still remove. The
benchmark (``bench/bench_trainer.py``) reads the same summary for our trainer and TRL's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["MATMUL_OPS", "PHASES", "op_summary", "profile_step"]

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
PHASES = ("generate", "update")  # ``torch.profiler.record_function`` names the trainer marks its step with


def op_summary(prof, *, on_device: bool = False, top: int = 15) -> dict:
    """Total matrix-multiplication time and the ``top`` operators by self time, in seconds.

    ``on_device`` reads the accelerator's kernel time instead of the host's (the host time of a CUDA
    operator is only its launch).
    """
    events = prof.key_averages()

    def self_s(event) -> float:
        micros = event.self_device_time_total if on_device else event.self_cpu_time_total
        return micros / 1e6

    ranked = sorted(events, key=self_s, reverse=True)
    return {
        "matmul_s": sum(self_s(e) for e in events if e.key in MATMUL_OPS),
        "matmul_s_by_phase": _matmul_by_phase(prof, self_s),
        "top_ops": [{"op": e.key, "calls": e.count, "self_s": self_s(e)} for e in ranked[:top]],
    }


def _matmul_by_phase(prof, self_s) -> dict[str, float]:
    """Matrix-multiplication time under each ``record_function`` phase in ``PHASES`` (outermost wins)."""
    totals = dict.fromkeys(PHASES, 0.0)
    for event in prof.events():
        if event.name not in MATMUL_OPS:
            continue
        phase, parent = None, event.cpu_parent
        while parent is not None:
            phase = parent.name if parent.name in totals else phase
            parent = parent.cpu_parent
        if phase is not None:
            totals[phase] += self_s(event)
    return totals


@contextlib.contextmanager
def profile_step(out_dir: Path | None, step: int, device: torch.device) -> Iterator[None]:
    """Profile the enclosed code as step ``step`` into ``out_dir`` (``None``: run it unprofiled)."""
    if out_dir is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
        if on_device:
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(out_dir / f"step{step}.trace.json"))
    summary = {"step": step, "device": str(device), "step_s": wall, **op_summary(prof, on_device=on_device)}
    (out_dir / f"step{step}.json").write_text(json.dumps(summary, indent=2) + "\n")
