"""Train and evaluate many runs of one preset on one machine, several at a time: the engine of
``make reproduce-<task>`` (the ``experiments/<task>/reproduce.py`` modules).

Each job trains one (method, seed, ...) run, or only evaluates a model (the base model), and then evaluates
with the task's own function. Jobs go to ``parallel`` long-lived worker processes, each using
``cpu_count // parallel`` threads: imports, DeepSpeed's set-up and the cached base model are paid once per
worker rather than once per run, which matters when a tiny run lasts half a minute. A run whose final model
exists is not trained again; an interrupted one resumes from its last checkpoint; an evaluation whose
summary exists is not redone if it was made with the same settings (``settings.json`` beside it). A failed
job stops the reproduction with the job's name and its error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path

__all__ = [
    "REPO",
    "Job",
    "available_benchmarks",
    "config_path",
    "prepare_base",
    "reproduce_parser",
    "run_and_tabulate",
    "run_jobs",
]

REPO = Path(__file__).resolve().parent.parent

# evaluate(model_dir, cfg, out_dir) -> dict; must be picklable (a module-level function or a partial of one).
Evaluate = Callable[..., dict]


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes:
        name: shown in progress lines and errors, e.g. ``"gdpo/seed3"``.
        overrides: dotted config overrides on top of the preset (``algorithm.method=gdpo``, ``seed=3``).
        run_dir: where the run trains; None for an evaluation-only job.
        model_dir: the model an evaluation-only job evaluates (default: ``run_dir / "final_model"``).
        eval_dir: where the evaluation is written (default: ``run_dir / "eval"``).
    """

    name: str
    overrides: tuple[str, ...] = ()
    run_dir: Path | None = None
    model_dir: Path | None = None
    eval_dir: Path | None = None

    def __post_init__(self):
        if self.run_dir is None and (self.model_dir is None or self.eval_dir is None):
            raise ValueError(f"job {self.name!r}: an evaluation-only job needs model_dir and eval_dir")


def _init_worker(threads: int) -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.pop("RANK", None)  # a worker is a world of one, whatever launched the reproduction
    torch.set_num_threads(threads)


def _run_job(config: Path, job: Job, evaluate: Evaluate | None) -> tuple[str, float, str]:
    from gdpo.config import TrainConfig, load_config
    from gdpo.trainer import train

    start = time.perf_counter()
    overrides = list(job.overrides)
    if job.run_dir is not None:
        overrides += [f"logging.run_dir={job.run_dir}", "logging.progress=false"]
    cfg = load_config(TrainConfig, config, overrides)
    done = []
    if job.run_dir is not None and (job.run_dir / "final_model" / "config.json").exists():
        from gdpo.runlog import RunLog

        changed = RunLog(job.run_dir).config_changes(cfg)
        if changed:  # a finished run made with other settings must not stand in for this one
            raise ValueError(
                f"{job.run_dir} holds a finished run with other settings for {changed}; remove it or "
                "choose another --runs folder"
            )
    elif job.run_dir is not None:
        # Resuming with no checkpoint starts the run over (log lines of a run killed before its first
        # checkpoint are moved aside), so an interrupted run always continues.
        resumed = (job.run_dir / "checkpoints" / "latest").exists()
        train(cfg, resume=True)
        done.append("resumed" if resumed else "trained")
    model_dir = job.model_dir or job.run_dir / "final_model"
    eval_dir = job.eval_dir or job.run_dir / "eval"
    if evaluate is not None:
        from gdpo.runlog import atomic_write_text

        settings, recorded = evaluation_settings(evaluate, cfg), eval_dir / "settings.json"
        why = None
        if not (eval_dir / "summary.json").exists():
            why = "evaluated"
        elif not recorded.exists() or json.loads(recorded.read_text()) != settings:
            why = "re-evaluated (its summary was made with other settings)"
        if why is not None:
            # Gone until the new summary is written: a crash in between must not pair the old summary with it.
            recorded.unlink(missing_ok=True)
            evaluate(model_dir, cfg, eval_dir)
            atomic_write_text(recorded, json.dumps(settings, indent=2, sort_keys=True))
            done.append(why)
    return job.name, time.perf_counter() - start, " + ".join(done) or "done before"


def evaluation_settings(evaluate: Evaluate, cfg) -> dict:
    """What an evaluation summary depends on: the evaluation function and its options, and the job's config
    (``logging`` aside). Kept beside the summary, so that a summary made otherwise is not taken for this one
    (the base model's, shared by every ``--runs`` folder, or one from before a benchmark was added)."""
    from gdpo.config import to_dict

    func, args, options = evaluate, (), {}
    if isinstance(evaluate, partial):
        func, args, options = evaluate.func, evaluate.args, evaluate.keywords
    config = {key: value for key, value in to_dict(cfg).items() if key != "logging"}
    settings = {"evaluate": func.__qualname__, "args": args, "options": options, "config": config}
    return json.loads(json.dumps(settings, default=str, sort_keys=True))  # as it reads back from the file


def run_jobs(
    config: Path,
    jobs: Sequence[Job],
    *,
    evaluate: Evaluate | None = None,
    parallel: int = 2,
    log: Callable[[str], None] = print,
) -> None:
    """Run ``jobs`` on ``parallel`` worker processes; ``log`` gets one line per job as it finishes.

    The first failure cancels the jobs not yet started and is raised once the running ones end (their runs
    resume on the next call)."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    threads = max(1, (os.cpu_count() or 1) // parallel)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    with ProcessPoolExecutor(
        parallel, mp_context=context, initializer=_init_worker, initargs=(threads,)
    ) as pool:
        futures = {pool.submit(_run_job, Path(config), job, evaluate): job for job in jobs}
        for future in as_completed(futures):
            try:
                name, seconds, what = future.result()
            except Exception as error:
                log(f"[{time.perf_counter() - started:6.0f}s] {futures[future].name}: FAILED: {error}")
                for other in futures:
                    other.cancel()
                raise RuntimeError(f"job {futures[future].name!r} failed: {error}") from error
            log(f"[{time.perf_counter() - started:6.0f}s] {name}: {what} ({seconds:.0f}s)")


def available_benchmarks(
    benchmarks: Sequence[str], sources: dict[str, str], needs_source: Sequence[str], flag: str
) -> tuple[str, ...]:
    """``benchmarks`` without those in ``needs_source`` that were given no ``flag NAME=...`` source (each skip
    is printed). Evaluation and the tables both use the result, so a skipped benchmark has no empty column."""
    for name in benchmarks:
        if name in needs_source and name not in sources:
            print(f"skipping {name}: no {flag} {name}=FILE_OR_HUB_NAME given", flush=True)
    return tuple(b for b in benchmarks if b not in needs_source or b in sources)


def config_path(task: str, preset: str) -> Path:
    """``experiments/<task>/configs/<preset>.yaml``, or an error listing the presets there are."""
    folder = REPO / "experiments" / task / "configs"
    path = folder / f"{preset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SystemExit(f"no preset {preset!r} for {task}: {path} does not exist; presets: {known}")
    return path


def reproduce_parser(description: str, seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> argparse.ArgumentParser:
    """The options every ``experiments/<task>/reproduce.py`` shares."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--parallel", type=int, default=2, help="worker processes (runs at a time)")
    # Absolute: the notebook that makes the tables runs from the repository root, not from the caller's folder.
    absolute = lambda text: Path(text).resolve()  # noqa: E731
    parser.add_argument("--runs", type=absolute, default=REPO / "runs", help="root of the run folders")
    parser.add_argument("--results", type=absolute, default=None, help="default results/<task>/<preset>")
    parser.add_argument(
        "--decontaminate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out benchmark items the run trained on (eval/decontaminate.py); default: on for paper-* presets",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. steps=10")
    return parser


def prepare_base(config: Path, overrides: Sequence[str], started: float):
    """The preset's resolved config and its starting model (built and warm-started once, then cached)."""
    from gdpo.config import TrainConfig, load_config
    from gdpo.trainer import prepare_model

    cfg = load_config(TrainConfig, config, list(overrides))
    base = Path(prepare_model(cfg))
    _progress(started, f"base model: {base}")
    return cfg, base


def run_and_tabulate(
    config: Path,
    jobs: Sequence[Job],
    evaluate: Evaluate,
    *,
    parallel: int,
    notebook: Path,
    results: Path,
    params: dict,
    started: float,
) -> None:
    """Run ``jobs``, then execute the task's analysis notebook headlessly on their runs; it writes the tables and
    figures under ``results``.

    The notebook reads the runs of ``jobs`` only (``RUNS``): other runs of the preset left on disk (more seeds,
    other variants) would otherwise enter the tables unannounced."""
    from analysis.run_notebook import run_notebook

    run_jobs(config, jobs, evaluate=evaluate, parallel=parallel)
    _progress(started, f"trained and evaluated {len(jobs)} jobs")
    runs = [f"{job.run_dir.parent.name}/{job.run_dir.name}" for job in jobs if job.run_dir is not None]
    run_notebook(notebook, results, {**params, "RUNS": runs})
    _progress(started, f"tables and figures in {results}")


def _progress(started: float, what: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {what}", flush=True)
