"""GPU acceptance check (``make gpu-check``): does the trainer run on this machine's GPU, as planned?

Made for a single-GPU machine with CUDA PyTorch preinstalled and no network, where the project is not
installed (no ``make setup``): it runs with that machine's ``python3`` and ``PYTHONPATH`` set to the checkout;
missing pure-Python packages come as wheels from a local folder (docs/launching.md, "GPU check").

CPU-side checks: 2 training steps of the tiny model on CPU through the training command (without a GPU only:
beside one DeepSpeed would take it); the sampler's log-probs (``HFRollout``) against the trainer's
(``completion_logprobs``) for the same tokens, float32 and bfloat16; ``python -m gdpo.plan`` on the tiny config.

GPU checks (when CUDA sees a GPU): a few training steps of the tiny model and of SmolLM2-135M-Instruct (where it
can be found offline; ``--smollm2 PATH`` gives a local folder) with ZeRO 0 and ZeRO 3, bf16, the ``hf``
backend: step times, the measured peak memory (the trainer's ``memory/peak_gib``) against the plan's peak for
the same settings; sampler-vs-trainer log-probs on CUDA in float32 and bfloat16.

    PYTHONPATH=. python3 bench/gpu_check.py [--out bench/results] [--smollm2 PATH] [--cpu-only]

Writes ``<out>/gpu-check-<gpu>.json`` (``gpu-check-cpu.json`` without a GPU) and prints one line per check.
Exit code: 0 when every check that ran passed (without a GPU: after the CPU-side checks, saying so), 1 when a
check failed, 2 when a package it needs is missing (named, with how to add it).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TINY = REPO / "experiments/toy/configs/tiny.yaml"
SMOLLM2 = REPO / "experiments/toy/configs/smollm2.yaml"
TRAIN = REPO / "experiments/toy/train.py"

# Import names the check needs directly; the project's own imports are tried too (a dependency added later
# is then named by the ModuleNotFoundError it raises).
NEEDED = ("torch", "numpy", "yaml", "tqdm", "transformers", "tokenizers", "safetensors", "deepspeed")
PROJECT_MODULES = ("gdpo.trainer", "gdpo.plan", "gdpo.tasks.toy")
# The sampler's and the trainer's log-probs of the same tokens: the same arithmetic up to the order of
# floating-point operations (KV-cache decoding vs one forward) in float32; bfloat16 rounds each layer's
# output to 8 bits of mantissa (the tiny model on CPU: max 0.005, gpu-check-cpu.json), so there the bound only
# catches a wrong token, position or mask.
LOGPROB_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25}
# The tiny model's matrices are below ZeRO-3's default persistence threshold: partition them all.
ZERO3_PARTITION_ALL = "optim.deepspeed_config={zero_optimization: {stage3_param_persistence_threshold: 0}}"
RUN_SETTINGS = ["logging.progress=false", "logging.checkpoint_every=0", "logging.sample_every=0"]
CPU_RUN = ["device=cpu", "steps=2", "warm_start.enabled=false", "data.prompts_per_step=4"]
CPU_RUN += ["rollout.num_rollouts=4", "rollout.max_new_tokens=8", "optim.micro_batch_size=16"]
GPU_STEPS = 4  # the first is warm-up (CUDA kernels, allocator), left out of the median step time
TRAIN_TIMEOUT_S = 300


def missing_modules(names=NEEDED, project=PROJECT_MODULES) -> list[str]:
    """Import names among ``names`` that are not installed, then the first module each project module lacks."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        return missing
    for module in project:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing.append(f"{exc.name} (imported by {module})")
    return missing


def package_versions(names=NEEDED) -> dict[str, str | None]:
    """``__version__`` of each importable name (None where it has none or is missing)."""
    out = {}
    for name in names:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", None))
        except ImportError:
            out[name] = None
    return out


def gpu_slug(name: str) -> str:
    """A file-name part for a device name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


PLAN_LINE = re.compile(r"^plan: (fits|does not fit) \(peak ([0-9.]+) GiB of ([0-9.]+)\)$", re.MULTILINE)


def parse_plan(output: str) -> dict | None:
    """``{"fits", "peak_gib", "of_gib"}`` from the last line of ``python -m gdpo.plan``; None without it."""
    found = PLAN_LINE.findall(output)
    if not found:
        return None
    verdict, peak, total = found[-1]
    return {"fits": verdict == "fits", "peak_gib": float(peak), "of_gib": float(total)}


def child_env() -> dict[str, str]:
    """The environment of the check's subprocesses: the checkout importable, its parent's packages kept."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("RANK", None)  # each run is a world of one
    return env


def memory_plan(config: Path, overrides: list[str], gpu_gib: float) -> dict:
    """The plan's verdict for one GPU of ``gpu_gib`` (``python -m gdpo.plan``), or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "gdpo.plan", "--config", str(config), "--gpus", "1"]
    cmd += ["--gpu-memory-gib", f"{gpu_gib:g}", *overrides]
    try:
        result = subprocess.run(
            cmd, env=child_env(), capture_output=True, text=True, timeout=300, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "python -m gdpo.plan did not answer in 300 s"}
    parsed = parse_plan(result.stdout)
    if parsed is None:
        return {"error": (result.stderr or result.stdout).strip()[-500:] or f"exit code {result.returncode}"}
    return parsed


def summarise_metrics(rows: list[dict]) -> dict:
    """Step times (all, and the median after the first step), the largest ``memory/peak_gib``, the losses."""
    times = [row["time/step_s"] for row in rows]
    peaks = [row["memory/peak_gib"] for row in rows if "memory/peak_gib" in row]
    return {
        "steps": len(rows),
        "step_s": [round(t, 4) for t in times],
        "median_step_s_after_first": statistics.median(times[1:]) if len(times) > 1 else None,
        "peak_gib": max(peaks) if peaks else None,
        "loss": [row["loss"] for row in rows],
    }


def train_run(config: Path, overrides: list[str], run_dir: Path) -> dict:
    """Train through the training command in a subprocess; its metrics summarised, or the error's tail."""
    cmd = [sys.executable, str(TRAIN), "--config", str(config), *RUN_SETTINGS, *overrides]
    cmd.append(f"logging.run_dir={run_dir}")
    t0 = time.perf_counter()
    try:
        result = subprocess.run(
            cmd, env=child_env(), capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"overrides": overrides, "exit_code": None, "error": f"stopped after {TRAIN_TIMEOUT_S} s"}
    out = {
        "overrides": overrides,
        "wall_s": round(time.perf_counter() - t0, 2),
        "exit_code": result.returncode,
    }
    if result.returncode != 0:
        return {**out, "error": result.stderr.strip()[-2000:]}
    from gdpo.runlog import read_jsonl

    return {**out, **summarise_metrics(read_jsonl(run_dir / "metrics.jsonl"))}


def logprob_gap(config: Path, overrides: list[str], dtype: str, device: str, prompts: int = 4) -> dict:
    """Sample 4 completions of ``prompts`` toy prompts with the ``hf`` backend and compare the sampler's
    log-probs of the sampled tokens with the trainer's (``completion_logprobs``), on ``device`` in ``dtype``."""
    import torch

    from gdpo.config import TrainConfig, load_config
    from gdpo.rollout import HFRollout, encode_prompt, forbidden_token
    from gdpo.tasks import build_task
    from gdpo.trainer import completion_logprobs, load_policy, prepare_model

    cfg = load_config(TrainConfig, config, [*overrides, f"model.dtype={dtype}"])
    tokenizer, model = load_policy(cfg, prepare_model(cfg), torch.device(device))
    task = build_task(cfg.task, cfg.data.options, cfg.seed)
    ids = [encode_prompt(tokenizer, row["messages"]) for row in task.train[:prompts]]
    ro = HFRollout(model, tokenizer, cfg.rollout).generate(ids, list(range(prompts)), 4)
    with torch.no_grad():
        logp, _ = completion_logprobs(
            model, ro.to(device), slice(None), cfg.rollout.temperature, forbidden_token(tokenizer), False
        )
    width = logp.shape[1]
    mask = ro.completion_mask[:, :width]
    gap = (logp.float().cpu() - ro.sample_logprobs[:, :width])[mask].abs()
    return {
        "dtype": dtype,
        "device": device,
        "tokens": int(mask.sum()),
        "max_abs_diff": gap.max().item(),
        "mean_abs_diff": gap.mean().item(),
        "tolerance": LOGPROB_TOLERANCE[dtype],
    }


class Report:
    """Checks as they run: a line each on stdout, everything kept for the JSON file."""

    def __init__(self):
        self.checks: list[dict] = []
        self.details: dict[str, object] = {}

    def add(self, name: str, ok: bool | None, detail: str, data: object = None) -> None:
        """``ok`` None: skipped (with ``detail`` saying why)."""
        self.checks.append({"name": name, "ok": ok, "detail": detail})
        if data is not None:
            self.details[name] = data
        status = "skip" if ok is None else "ok" if ok else "FAIL"
        print(f"[{status:>4}] {name}: {detail}", flush=True)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if c["ok"] is False]


def check_run(report: Report, name: str, run: dict, plan: dict | None = None) -> None:
    """A training run passed when it finished its steps with finite losses and (on GPU) stayed within plan."""
    if "error" in run:
        report.add(name, False, f"exit code {run['exit_code']}: {run['error'].splitlines()[-1]}", run)
        return
    finite = all(math.isfinite(v) for v in run["loss"])
    ok, detail = finite, f"{run['steps']} steps, losses {'finite' if finite else 'NOT finite'}"
    if run["median_step_s_after_first"] is not None:
        detail += f", median step {run['median_step_s_after_first']:.3f} s"
    if plan is not None:
        run["plan"] = plan
        if "error" in plan:
            ok, detail = False, f"{detail}; plan failed: {plan['error'].splitlines()[-1]}"
        elif run["peak_gib"] is None:
            ok, detail = False, f"{detail}; the trainer logged no memory/peak_gib"
        else:
            within = run["peak_gib"] <= plan["peak_gib"]
            ok = ok and within
            detail += (
                f", peak {run['peak_gib']:.2f} GiB {'<=' if within else '>'} plan {plan['peak_gib']:.2f} GiB"
            )
    report.add(name, ok, detail, run)


def measured(report: Report, name: str, measure, *args):
    """``measure(*args)``, or None once its exception is recorded as the failed check ``name`` (the rest run)."""
    try:
        return measure(*args)
    except Exception as exc:  # noqa: BLE001 - any failure is this check's result
        report.add(name, False, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}")
        return None


def check_logprobs(report: Report, name: str, gap: dict | None) -> None:
    if gap is None:  # already reported by ``measured``
        return
    ok = gap["max_abs_diff"] <= gap["tolerance"]
    detail = (
        f"{gap['tokens']} tokens, max |diff| {gap['max_abs_diff']:.2e} (tolerance {gap['tolerance']:g}), "
    )
    report.add(name, ok, detail + f"mean {gap['mean_abs_diff']:.2e}", gap)


def cpu_checks(report: Report, work: Path, train: bool = True) -> None:
    """``train``: also the CPU training run (left out beside a GPU, where DeepSpeed would pick the GPU)."""
    if train:
        check_run(report, "cpu/train tiny 2 steps", train_run(TINY, CPU_RUN, work / "cpu-tiny"))
    else:
        report.add(
            "cpu/train tiny 2 steps", None, "skipped: the GPU runs below train through the same command"
        )
    for dtype in ("float32", "bfloat16"):
        name = f"cpu/logprobs tiny {dtype}"
        gap = measured(report, name, logprob_gap, TINY, ["warm_start.enabled=false"], dtype, "cpu")
        check_logprobs(report, name, gap)
    plan = memory_plan(TINY, CPU_RUN, 80.0)
    ok = "error" not in plan
    detail = f"peak {plan['peak_gib']:.2f} GiB of 80" if ok else plan["error"].splitlines()[-1]
    report.add("cpu/plan tiny", ok, detail, plan)


def find_smollm2(given: str | None) -> tuple[str | None, str]:
    """A local SmolLM2-135M-Instruct folder (``given``, else the project's offline alias), or None and why."""
    if given:
        return (
            (given, given)
            if (Path(given) / "config.json").exists()
            else (None, f"{given} has no config.json")
        )
    from gdpo.assets import resolve_model

    os.environ.setdefault("PIP_RETRIES", "0")  # no network: fail fast instead of retrying for minutes
    os.environ.setdefault("PIP_TIMEOUT", "10")
    try:
        path = resolve_model("smollm2-135m-instruct")
    except Exception as exc:  # noqa: BLE001 - any failure to build it offline means: not available here
        return (
            None,
            f"not available offline ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})",
        )
    return path, path


def gpu_checks(report: Report, work: Path, smollm2: str | None) -> None:
    import torch

    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    models = [("tiny", TINY, ["warm_start.enabled=false"])]
    path, why = find_smollm2(smollm2)
    if path is None:
        report.add("gpu/smollm2-135m", None, f"skipped: {why}; give a local folder with --smollm2 PATH")
    else:
        models.append(("smollm2-135m", SMOLLM2, [f"model.name_or_path={path}"]))
    for label, config, base in models:
        for stage in (0, 3):
            overrides = [*base, f"steps={GPU_STEPS}", "optim.precision=bf16", f"optim.zero_stage={stage}"]
            if stage == 3 and label == "tiny":
                overrides.append(ZERO3_PARTITION_ALL)
            run = train_run(config, overrides, work / f"{label}-zero{stage}")
            check_run(
                report, f"gpu/train {label} zero{stage} bf16", run, memory_plan(config, overrides, total_gib)
            )
        for dtype in ("float32", "bfloat16"):
            name = f"gpu/logprobs {label} {dtype}"
            gap = measured(report, name, logprob_gap, config, base, dtype, "cuda")
            check_logprobs(report, name, gap)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder of gpu-check-<gpu>.json")
    parser.add_argument("--smollm2", help="a local SmolLM2-135M(-Instruct) Hugging Face folder")
    parser.add_argument("--cpu-only", action="store_true", help="the CPU-side checks only, even with a GPU")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    missing = missing_modules()
    if missing:
        print(
            f"gpu-check: missing on this machine: {', '.join(missing)}. Add them as wheels "
            "(make gpu-wheels here, then make gpu-check WHEELS=.whl there; docs/launching.md)",
            file=sys.stderr,
        )
        return 2
    import torch

    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0 and not args.cpu_only
    device = torch.cuda.get_device_name(0) if has_gpu else None
    print(f"gpu-check on {device or 'CPU only: ' + ('--cpu-only' if args.cpu_only else 'no CUDA GPU found')}")
    report = Report()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cpu_checks(report, Path(tmp), train=not has_gpu)
        if has_gpu:
            gpu_checks(report, Path(tmp), args.smollm2)
    result = {
        "device": device or "cpu",
        "gpu_ran": has_gpu,
        "python": platform.python_version(),
        "packages": package_versions(),
        "cuda": torch.version.cuda,
        "checks": report.checks,
        "details": report.details,
        "ok": not report.failed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out) / f"gpu-check-{gpu_slug(device) if device else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = "passed" if result["ok"] else f"FAILED: {', '.join(report.failed)}"
    print(f"gpu-check {verdict} in {result['seconds']:.0f} s; wrote {out}")
    if not has_gpu:
        print("gpu-check: no GPU here, so only the CPU-side checks ran")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
