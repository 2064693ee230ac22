"""Train and evaluate many runs of one preset, scheduled by Ray: the engine of ``make reproduce-<task>`` (the
``experiments/<task>/reproduce.py`` modules).

Each job trains one (method, seed, ...) run, or only evaluates a model (the base model), and then evaluates
with the task's own function. Every job is one Ray task. Ray places it on a node of the cluster at
``RAY_ADDRESS`` (``ray start`` on SLURM or Kubernetes nodes, docs/cluster.md) or, without one, of a local
Ray instance started on this machine for the reproduction and stopped after it.

* On CPUs (no GPU in the cluster), a job holds ``cpus / parallel`` of the largest node's CPUs and uses
  ``cpus // parallel`` threads, so ``parallel`` runs go at a time on such a node. It trains in the Ray
  worker process itself: Ray keeps its workers for the next task, so imports, DeepSpeed's set-up and the
  cached base model are paid once per worker rather than once per run (a tiny run lasts half a minute).
* On GPUs, a training job holds ``gpus_per_run`` GPUs of one node (default: all the GPUs of the largest
  node); with one it trains in the Ray worker, with more it starts its ranks there with torchrun on the
  GPUs Ray gave it. An evaluation-only job holds one GPU. The cluster's GPUs decide how many run at a time.

A run whose final model exists is not trained again; an interrupted one resumes from its last checkpoint;
an evaluation whose summary exists is not redone if it was made with the same settings (``settings.json``
beside it). What a job prints goes to ``reproduce.log`` in its run folder (its evaluation folder for an
evaluation-only job). A failed job is reported at once with its name and its error; the jobs not yet started
are dropped, those running finish (their runs resume on the next call), then the reproduction stops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

__all__ = [
    "REPO",
    "Job",
    "Placement",
    "StepFailed",
    "available_benchmarks",
    "config_path",
    "evaluation_scale",
    "plan_placement",
    "prepare_base",
    "ray_cluster",
    "reproduce_parser",
    "run_and_tabulate",
    "run_job",
    "run_jobs",
]

REPO = Path(__file__).resolve().parent.parent

# evaluate(model_dir, cfg, out_dir) -> dict; must be picklable (a module-level function or a partial of one).
Evaluate = Callable[..., dict]

LOG_NAME = "reproduce.log"  # what a job prints, in its run folder (or evaluation folder)
NOT_STARTED = "not started"  # what a job dropped after a failure returns
# The object store holds only the jobs' arguments and results (a few kB): the smallest Ray allows leaves memory
# to the runs on a small machine.
OBJECT_STORE_BYTES = 100 * 1024**2
# A process group's variables: a job is a world of its own, whatever started Ray (or this process) had.
WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class StepFailed(RuntimeError):
    """A step of a reproduction that failed, by name: ``base model``, ``training gdpo/seed0``, ``evaluation of
    base``, ``tables and figures`` (or ``job <name>`` when its worker died outside both)."""

    def __init__(self, step: str, reason: str):
        super().__init__(step, reason)  # both in args: Ray pickles the exception from a job's worker
        self.step, self.reason = step, reason

    def __str__(self) -> str:
        return f"step '{self.step}' failed: {self.reason}"


@contextmanager
def step(name: str) -> Iterator[None]:
    """Turn an error in the block into :class:`StepFailed` naming ``name`` (one that names a step stays)."""
    try:
        yield
    except StepFailed:
        raise
    except Exception as error:
        raise StepFailed(name, _reason(error)) from error


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

    @property
    def log_path(self) -> Path:
        """Where the job's output goes."""
        return (self.run_dir if self.run_dir is not None else self.eval_dir) / LOG_NAME


@dataclass(frozen=True)
class Placement:
    """What a job holds and how it trains.

    Attributes:
        num_cpus: Ray CPUs held (a fraction of a node's where ``parallel`` runs share its CPUs).
        num_gpus: Ray GPUs held, all on one node.
        threads: torch threads of the job's process (split between its ranks when it has several).
        ranks: training processes: 1 trains in the Ray worker, more are started with torchrun.
    """

    num_cpus: float
    num_gpus: int
    threads: int
    ranks: int


def plan_placement(
    cpus: int, gpus: int, parallel: int, gpus_per_run: int | None, cpu_ranks: int = 1
) -> tuple[Placement, Placement]:
    """The placements of a training job and of an evaluation-only job on a cluster whose largest node has
    ``cpus`` CPUs and ``gpus`` GPUs.

    Without GPUs, ``parallel`` jobs share a node's CPUs (each holds ``cpus / parallel`` of them, rounded down
    to Ray's 1e-4 precision, and uses ``cpus // parallel`` threads); a training job trains with ``cpu_ranks``
    processes (torchrun over gloo, sharing its threads; the CPU dress rehearsal's two ranks). With GPUs, a training job holds
    ``gpus_per_run`` GPUs (default: all of a node's) and the CPUs' share of those GPUs as threads; an
    evaluation-only job holds one GPU. Each holds one Ray CPU there: the GPUs decide how many run at a time."""
    if parallel < 1:
        raise ValueError(f"--parallel must be at least 1, got {parallel}")
    if cpu_ranks < 1:
        raise ValueError(f"--cpu-ranks must be at least 1, got {cpu_ranks}")
    if gpus == 0:
        if gpus_per_run:
            raise ValueError(f"--gpus-per-run {gpus_per_run}: the Ray cluster has no GPU")
        share = Placement(math.floor(cpus / parallel * 10_000) / 10_000, 0, max(1, cpus // parallel), 1)
        return replace(share, ranks=cpu_ranks), share
    if cpu_ranks != 1:
        raise ValueError(
            f"--cpu-ranks {cpu_ranks}: the Ray cluster has GPUs (ranks are its GPUs: --gpus-per-run)"
        )
    per_run = gpus if gpus_per_run is None else gpus_per_run
    if not 1 <= per_run <= gpus:
        raise ValueError(f"--gpus-per-run {per_run}: a run takes 1 to {gpus} GPUs (the most a node has)")
    per_gpu = max(1, cpus // gpus)
    return Placement(1, per_run, per_gpu * per_run, per_run), Placement(1, 1, per_gpu, 1)


@contextmanager
def ray_cluster() -> Iterator[None]:
    """Ray for the jobs: the cluster at ``RAY_ADDRESS`` (``auto``: the one ``ray start`` made on this node)
    or, when it is unset, a local instance on this machine with its CPUs, stopped at the end. A process
    already connected (a test's fixture) keeps its connection."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    local = {}
    if address == "local":
        local = {
            "num_cpus": os.cpu_count(),
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES,
        }
    # The jobs' output goes to their reproduce.log; the console keeps one line per job.
    ray.init(address=address, log_to_driver=False, **local)
    try:
        yield
    finally:
        ray.shutdown()


def largest_node() -> tuple[int, int]:
    """The most CPUs and the most GPUs a live node of the connected Ray cluster has."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return max(int(r.get("CPU", 0)) for r in nodes), max(int(r.get("GPU", 0)) for r in nodes)


def run_jobs(
    config: Path,
    jobs: Sequence[Job],
    *,
    evaluate: Evaluate | None = None,
    parallel: int = 2,
    gpus_per_run: int | None = None,
    cpu_ranks: int = 1,
    log: Callable[[str], None] = print,
) -> None:
    """Run ``jobs`` as Ray tasks (``plan_placement`` says what each holds); ``log`` gets one line per job as it
    finishes.

    The first failure drops the jobs not yet started and is raised, as :class:`StepFailed` naming the job and
    its step (training or evaluation), once the running ones end (their runs resume on the next call)."""
    import ray

    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique: {names}")
    started = time.perf_counter()
    with ray_cluster():
        training, evaluation = plan_placement(*largest_node(), parallel, gpus_per_run, cpu_ranks)
        gate = ray.remote(num_cpus=0)(_Gate).remote()
        # A failed run is reported, not silently run again. A GPU job gets a fresh worker (max_calls=1): a reused
        # one would keep the CUDA context and process group of the GPUs it had before.
        task = ray.remote(max_retries=0, max_calls=1 if training.num_gpus else 0)(_job_task)
        pending = {}
        for job in jobs:
            place = training if job.run_dir is not None else evaluation
            options = {"num_cpus": place.num_cpus, "num_gpus": place.num_gpus}
            call = task.options(**options).remote(str(config), job, evaluate, place, gate, os.getcwd())
            pending[call] = job
        failed: tuple[Job, BaseException] | None = None
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                name, seconds, what = ray.get(ref)
            except Exception as error:
                log(f"[{time.perf_counter() - started:6.0f}s] {job.name}: FAILED: {_reason(error)}")
                if failed is None:
                    failed = job, error
                    gate.close.remote()
                continue
            if what != NOT_STARTED:
                log(f"[{time.perf_counter() - started:6.0f}s] {name}: {what} ({seconds:.0f}s)")
    if failed is not None:
        job, error = failed
        cause = getattr(error, "cause", None)
        if isinstance(cause, StepFailed):
            raise StepFailed(cause.step, f"{cause.reason} (its output: {job.log_path})") from error
        raise StepFailed(f"job {job.name}", f"{_reason(error)} (its output: {job.log_path})") from error


def _reason(error: BaseException) -> str:
    """The error a job raised, on one line (Ray wraps it, with its remote traceback, in a RayTaskError)."""
    cause = getattr(error, "cause", None)
    return " ".join(str(cause if cause is not None else error).split())


class _Gate:
    """Lets jobs start until the first failure: a Ray actor every job asks before it starts."""

    def __init__(self):
        self.open = True

    def admit(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False


def _job_task(
    config: str, job: Job, evaluate: Evaluate | None, place: Placement, gate, cwd: str
) -> tuple[str, float, str]:
    """One job, in a Ray worker process, its output appended to the job's log. It runs in the driver's working
    directory ``cwd``: a relative path in a preset or override (ToolRL's ``ToolRL/dataset/rlla_4k``) means there
    what it means to the user, whichever folder the worker's node was started from."""
    import ray

    if not ray.get(gate.admit.remote()):
        return job.name, 0.0, NOT_STARTED
    _prepare_process(place.threads)
    with _output_to(job.log_path):
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} job {job.name} on {os.uname().nodename}", flush=True)
        try:
            if not os.path.isdir(cwd):
                raise FileNotFoundError(
                    f"{os.uname().nodename} has no {cwd}, the folder the reproduction was started from: every "
                    "node needs the checkout at the same path (docs/cluster.md)"
                )
            os.chdir(cwd)
            return run_job(Path(config), job, evaluate, ranks=place.ranks, threads=place.threads)
        except BaseException:
            traceback.print_exc()  # the whole story beside the run; the console gets one line
            raise


def _prepare_process(threads: int) -> None:
    """A Ray worker's settings for the next job: ``threads`` torch threads, and no process group inherited
    from whatever started Ray (the world of one a previous job of this worker made stays: DeepSpeed keeps
    using it)."""
    import torch

    from gdpo.distributed import LONE_WORLD_ENV

    own = os.environ.get(LONE_WORLD_ENV)
    if own is None or own != os.environ.get("MASTER_PORT"):  # not the world of one of a job run here before
        for name in (*WORLD_VARIABLES, LONE_WORLD_ENV):
            os.environ.pop(name, None)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so a child process's too) appended to
    ``path`` until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def run_job(
    config: Path, job: Job, evaluate: Evaluate | None, *, ranks: int = 1, threads: int = 1
) -> tuple[str, float, str]:
    """Train ``job``'s run (in this process, or in ``ranks`` torchrun processes of this node) unless it is
    finished, then evaluate its model unless an evaluation with the same settings exists. Returns the job's
    name, its seconds and what was done."""
    from gdpo.config import TrainConfig, load_config

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
        with step(f"training {job.name}"):
            if ranks == 1:
                from gdpo.trainer import train

                train(cfg, resume=True)
            else:
                train_ranks(config, overrides, ranks, threads)
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
            with step(f"evaluation of {job.name}"):
                evaluate(model_dir, cfg, eval_dir)
            atomic_write_text(recorded, json.dumps(settings, indent=2, sort_keys=True))
            done.append(why)
    return job.name, time.perf_counter() - start, " + ".join(done) or "done before"


def train_ranks(config: Path, overrides: Sequence[str], ranks: int, threads: int) -> None:
    """Train (or resume) one run with ``ranks`` processes on this node: torchrun on a free port, each rank on
    one of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``, which Ray sets for the task), with
    ``threads // ranks`` threads. Its output goes where this process's goes."""
    from gdpo.distributed import LONE_WORLD_ENV

    env = {k: v for k, v in os.environ.items() if k not in (*WORLD_VARIABLES, LONE_WORLD_ENV)}
    env["OMP_NUM_THREADS"] = str(max(1, threads // ranks))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous of this node's processes on a free port
        f"--nproc_per_node={ranks}",
        "-m",
        "gdpo.cli",
        "--config",
        str(config),
        "--resume",
        *overrides,
    ]
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        raise RuntimeError(f"training with {ranks} processes (torchrun) exited with code {code}")


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


def available_benchmarks(
    benchmarks: Sequence[str], sources: dict[str, str], needs_source: Sequence[str], flag: str
) -> tuple[str, ...]:
    """``benchmarks`` without those in ``needs_source`` that were given no ``flag NAME=...`` source (each skip
    is printed). Evaluation and the tables both use the result, so a skipped benchmark has no empty column."""
    for name in benchmarks:
        if name in needs_source and name not in sources:
            print(f"skipping {name}: no {flag} {name}=FILE_OR_HUB_NAME given", flush=True)
    return tuple(b for b in benchmarks if b not in needs_source or b in sources)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def evaluation_scale(args: argparse.Namespace, items: int | None, samples: int, max_new_tokens: int | None):
    """``(items, samples, max_new_tokens)`` of an evaluation: the task's defaults for its preset, each replaced
    by ``--eval-items``, ``--eval-samples``, ``--eval-max-new-tokens`` where given."""
    return tuple(
        default if given is None else given
        for given, default in (
            (args.eval_items, items),
            (args.eval_samples, samples),
            (args.eval_max_new_tokens, max_new_tokens),
        )
    )


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
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="runs at a time on a node without GPUs, sharing its CPUs (with GPUs, the GPUs decide)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        default=None,
        help="GPUs of one node a training run holds, one rank each (default: all of a node's)",
    )
    parser.add_argument(
        "--cpu-ranks",
        type=int,
        default=1,
        help="on a cluster without GPUs, training processes per run (torchrun over gloo; default 1)",
    )
    # The evaluation's scale (the CPU dress rehearsal's few items); by default each task's, per preset.
    parser.add_argument(
        "--eval-items", type=_positive, default=None, help="items per benchmark (BFCL: per category)"
    )
    parser.add_argument("--eval-samples", type=_positive, default=None, help="completions sampled per item")
    parser.add_argument(
        "--eval-max-new-tokens", type=_positive, default=None, help="completion limit of the evaluation"
    )
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
    parser.add_argument(
        "--backend",
        choices=("hf", "vllm"),
        default=None,
        help="rollout.backend of every run's training and evaluation (default: the preset's; vllm: the vLLM "
        "environment, docs/generation.md)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. steps=10")
    return parser


def prepare_base(config: Path, overrides: Sequence[str], started: float):
    """The preset's resolved config and its starting model (built and warm-started once, then cached)."""
    from gdpo.config import TrainConfig, load_config
    from gdpo.trainer import prepare_model

    with step("base model"):
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
    gpus_per_run: int | None = None,
    cpu_ranks: int = 1,
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

    run_jobs(
        config, jobs, evaluate=evaluate, parallel=parallel, gpus_per_run=gpus_per_run, cpu_ranks=cpu_ranks
    )
    _progress(started, f"trained and evaluated {len(jobs)} jobs")
    runs = [f"{job.run_dir.parent.name}/{job.run_dir.name}" for job in jobs if job.run_dir is not None]
    with step("tables and figures"):
        run_notebook(notebook, results, {**params, "RUNS": runs})
    _progress(started, f"tables and figures in {results}")


def _progress(started: float, what: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {what}", flush=True)
