"""The run folder: resolved config, metadata, append-only metrics and samples.

``runs/<task>/<preset>/<method>/seed<k>/``
    config.yaml          the resolved configuration
    metadata.json        git commit, package versions, device, world size, command line, start time
    metrics.jsonl        one JSON object per step (the source of truth; flushed and fsynced per line)
    samples.jsonl        sample completions with their rewards and advantages every N steps
    rollouts.jsonl       (logging.dump_rollouts) every rollout's rewards, advantage and length
    checkpoints/         see gdpo.checkpoint

On resume, lines for steps after the restored checkpoint (written after it, before the crash) are moved to
``metrics.discarded.jsonl`` / ``samples.discarded.jsonl``: those steps are recomputed, and nothing is lost.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from gdpo.config import to_dict
from gdpo.schema import dump_yaml, load_yaml

__all__ = ["RunLog", "append_lines", "atomic_write_text", "git_state", "read_jsonl"]

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "deepspeed",
    "accelerate",
    "trl",
    "vllm",
    "numpy",
    "math-verify",
)


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args):
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a torn last line (crash mid-write) is ignored, a bad line elsewhere is an error naming
    the file and line: bytes that are not UTF-8, text that is not JSON, JSON nested too deep to read."""
    from gdpo.data.records import parse_json

    if not path.exists():
        return []
    lines = path.read_bytes().split(
        b"\n"
    )  # b"\n" only: a JSON string may hold U+2028, which splitlines() cuts
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path} line {i + 1}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
                ) from None
            rows.append(parse_json(text, path, i + 1))
        except ValueError:
            if i == len(lines) - 1:
                break  # the last line, cut short by a crash
            raise
    return rows


def _clean(value: Any) -> Any:
    """JSON-safe value: non-finite floats become null, inside mappings and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunLog:
    def __init__(self, run_dir: str | Path, is_main: bool = True):
        self.dir = Path(run_dir)
        self.is_main = is_main
        self.writers: list = []
        if is_main:
            self.dir.mkdir(parents=True, exist_ok=True)

    def add_writers(self, *, tensorboard: bool, wandb: bool, name: str, config: dict) -> None:
        """Mirror metrics to TensorBoard (``<run>/tensorboard``) and/or W&B in offline mode (``<run>/wandb``)."""
        if not self.is_main:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    "logging.tensorboard=true needs the tensorboard package (pip install tensorboard)"
                ) from exc
            self.writers.append(_TensorBoard(SummaryWriter(str(self.dir / "tensorboard"))))
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as exc:
                raise RuntimeError("logging.wandb=true needs the wandb package (pip install wandb)") from exc
            run = wandb_module.init(
                mode="offline", dir=str(self.dir), name=name, config=config, resume="allow"
            )
            self.writers.append(_WandB(run))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def samples_path(self) -> Path:
        return self.dir / "samples.jsonl"

    @property
    def rollouts_path(self) -> Path:
        return self.dir / "rollouts.jsonl"

    def has_progress(self) -> bool:
        """Anything written to metrics.jsonl, even a line torn by a crash (``--resume`` moves it aside)."""
        return self.metrics_path.exists() and self.metrics_path.stat().st_size > 0

    def config_changes(self, cfg) -> list[str]:
        """Dotted keys whose value in ``cfg`` differs from the run's saved config.yaml (``logging.*`` aside:
        where and how a run logs does not change what it computes; keys only one side has, i.e. options added
        or removed since the run was made, are not compared); [] when nothing was saved yet."""
        path = self.dir / "config.yaml"
        if not path.exists():
            return []
        text = path.read_text()
        saved = _flatten(load_yaml(text) or {})
        current = _flatten(load_yaml(dump_yaml(to_dict(cfg))))
        keys = sorted(k for k in set(saved) & set(current) if not k.startswith("logging."))
        changed = [k for k in keys if saved[k] != current[k]]
        if changed:  # a config.yaml from before it was written for YAML 1.2 may hold '1e5' unquoted
            import yaml

            as_yaml_1_1 = _flatten(yaml.safe_load(text) or {})
            changed = [k for k in changed if as_yaml_1_1.get(k) != current[k]]
        return changed

    def write_config(self, cfg) -> None:
        if self.is_main:
            atomic_write_text(self.dir / "config.yaml", dump_yaml(to_dict(cfg)))

    def write_metadata(self, **extra: Any) -> None:
        if not self.is_main:
            return
        meta = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": sys.argv,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "hostname": platform.node(),
            "git": git_state(Path(__file__).resolve().parent.parent),
            "packages": _versions(),
            **extra,
        }
        name = (
            "metadata.json"
            if not (self.dir / "metadata.json").exists()
            else f"metadata.resume-{meta['started'][:19].replace(':', '')}.json"
        )
        atomic_write_text(self.dir / name, json.dumps(meta, indent=2, default=str))

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self._append(self.metrics_path, {"step": step, **{k: _clean(v) for k, v in metrics.items()}})
        scalars = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        for writer in self.writers:
            writer.log(step, scalars)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for sample in samples:  # a reward that does not apply is NaN: written as null (strict JSON)
            self._append(self.samples_path, {"step": step, **_clean(sample)})

    def log_rollouts(self, step: int, rewards, advantages, lengths) -> None:
        """One line per step with the global batch's rewards [B][G][K] (NaN as null), advantages and lengths."""
        self._append(
            self.rollouts_path,
            {
                "step": step,
                "rewards": _clean(rewards.tolist()),
                "advantages": advantages.tolist(),
                "num_tokens": lengths.tolist(),
            },
        )

    def rewind_to(self, step: int) -> int:
        """Keep log lines of steps <= ``step``; move later ones to ``*.discarded.jsonl``. Returns lines moved."""
        if not self.is_main:
            return 0
        moved = 0
        for path in (self.metrics_path, self.samples_path, self.rollouts_path):
            if not path.exists():
                continue
            rows = read_jsonl(path)  # also drops a torn last line
            drop = [r for r in rows if r["step"] > step]
            if drop:  # durable in the discarded file before they leave the log
                append_lines(path.with_suffix(".discarded.jsonl"), [json.dumps(r) for r in drop])
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
            moved += len(drop)
        return moved

    def _append(self, path: Path, row: dict) -> None:
        if self.is_main:
            append_lines(path, [json.dumps(row, default=str)])


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run):
        self.run = run

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def append_lines(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to ``path``, durable once this returns (the file, and its folder entry when new)."""
    new = not path.exists()
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    if new:
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a unique temporary file and a rename: readers see all or nothing, and
    the new content survives a power loss once this returns (file and folder are synced)."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it, say) durable."""
    _fsync_path(folder)


def fsync_tree(folder: Path) -> None:
    """Sync every file and folder under ``folder``, then ``folder`` itself."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                _fsync_path(os.path.join(dirpath, name))
            except FileNotFoundError:  # another rank's temporary file, renamed meanwhile: it syncs its own
                continue
        fsync_dir(Path(dirpath))
