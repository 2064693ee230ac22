"""Run untrusted Python programs (model-written code) in a sandbox.

The coding reward executes completions written by the policy. They are hostile input: a program may loop
forever, allocate without bound, fork-bomb, print gigabytes, open sockets, read the environment, write or
delete files, or try to kill its supervisor. This module runs such programs so that none of that reaches the
caller, its files, or other runs.

Public API
----------
``run_python(code, stdin="", *, timeout_s=5.0, memory_mb=512, ...) -> SandboxResult``
    Run one program on one input.
``run_tests(code, inputs, *, ...) -> list[SandboxResult]``
    Run one program on several inputs in one sandbox: a fresh interpreter and a fresh work dir per input,
    the sandbox set-up paid once. This is what a test-suite reward wants (see bench/bench_sandbox.py).
``run_many(jobs, *, max_workers=None, ...)`` / ``run_tests_many(programs, *, max_workers=None, ...)``
    Many runs at once on a thread pool, results in input order. A process never runs more sandboxes at a
    time than ``max_workers()`` (the CPUs it may use, or ``GDPO_SANDBOX_WORKERS``), however it calls.
``sandbox_info() -> dict``
    Which isolation is active (detected on first use), which interpreter runs the programs.

``SandboxResult.status`` is one of ``ok`` (exit 0), ``error`` (nonzero exit: exception, syntax error,
``sys.exit(n)``), ``timeout`` (wall-time limit, or CPU-time limit: SIGXCPU / the hard CPU limit),
``memory`` (MemoryError, or killed near the address-space limit), ``killed`` (any other signal).
``returncode`` is the exit code, or ``-signal`` when killed (the ``subprocess`` convention). Output beyond
``max_output_bytes`` per stream is read and dropped (``stdout_truncated`` / ``stderr_truncated``), so a huge
output neither blocks the program nor fills the caller's memory. `SandboxError` means the sandbox itself
failed, never the program.

How a run works
---------------
1. The caller creates a fresh work dir and, when it is root, claims a private uid for the run
   (``1600000000 + slot``, exclusive across processes through a lock file): no two runs share a uid.
2. It starts a *launcher* in a new session: the code between the ``sandbox launcher`` markers below,
   compiled once by the sandbox interpreter and sent marshalled on the launcher's stdin with the job
   (program, inputs, limits). The launcher sets up the isolation; for each input it forks, lowers
   privileges and limits in the child and executes ``python -I -S -B`` on ``solution.py``; it feeds stdin,
   captures stdout and stderr incrementally, enforces the wall-time limit, kills *every* process of the run
   when the program exits or times out, and replies with one header line plus the captured bytes per input.
3. The caller has a backstop deadline of its own (``timeout_s`` + 2 s per input + 10 s): past it, it kills
   the launcher's process group and every process left, and reports ``timeout``. It always removes the work
   dir before returning.

The program runs under the system Python (the caller's interpreter when the sandbox uid can execute it,
else ``/usr/bin/python3``; ``GDPO_SANDBOX_PYTHON`` overrides) with ``-I -S``: no site-packages, no user
site, no ``PYTHON*`` variables; coding tasks need only the standard library. It behaves like ``python
solution.py`` (``__main__``, script dir on ``sys.path``, ``exit``/``quit``, normal tracebacks). Limits set
with ``setrlimit`` in the child: CPU time (``ceil(timeout_s) + 1`` s, SIGXCPU, SIGKILL a second later),
address space (``memory_mb``), file size (``disk_mb``), processes (``max_processes``), open files (256),
core dumps (0). Its environment is ``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` (the last two: the work
dir), nothing of the caller's.

Isolation: what is guaranteed where
-----------------------------------
The path is chosen once per process: ``GDPO_SANDBOX_ISOLATION=auto`` (default) uses the namespace path when
a probe run succeeds, else the fallback, with a logged warning; ``namespace`` or ``fallback`` forces one.

**namespace** (Linux with user namespaces and util-linux ``unshare``). The launcher runs through ``unshare
--user --map-root-user --net --pid --mount --ipc --fork --kill-child`` (as the run's private uid when the caller is
root) and is PID 1 of a new PID namespace. It builds a minimal root on a tmpfs and ``pivot_root``s into it:
read-only binds of ``/usr``, ``/bin``, ``/sbin``, ``/lib*``, ``/etc`` (and the interpreter's prefix when it
lies elsewhere), ``/dev/{null,zero,full,random,urandom}``, a private ``/proc``, a private ``/dev/shm``
tmpfs, and the work dir ``/sandbox``, a fresh tmpfs of ``disk_mb`` for every input. Everything else
(``/tmp``, ``/home``, ``/root``, the repository, the caller's files) does not exist inside; a mount that
cannot be made read-only makes the probe fail, so this path is then not used. Guaranteed:

- every process of the run is gone when the call returns: the launcher kills the namespace (``kill(-1)``
  from PID 1) after each input, and the kernel kills a PID namespace whose PID 1 exits;
- the program cannot see or signal the caller or other runs; the launcher (PID 1) ignores signals from
  inside and is not dumpable (no ptrace, no ``/proc/1/{fd,mem,environ}``), so its reply cannot be forged;
- no network: a new network namespace (loopback down), and seccomp refuses ``socket(2)``;
- writes land only in the size-limited work dir and ``/dev/shm``, both private and gone afterwards;
- the program is uid 0 of the namespace without any capability (bounding set emptied, securebits locked,
  ``no_new_privs``); seccomp also refuses ``ptrace``, ``mount`` and the new mount API, namespace creation
  (``unshare``, ``clone`` with namespace flags, ``setns``), ``bpf``, ``perf_event_open``, ``userfaultfd``,
  keyrings and io_uring, SysV shared memory, semaphores and message queues, POSIX message queues and
  ``memfd_create`` (memory that the address-space limit does not count, or that would outlive the run), and
  makes ``clone3`` ENOSYS so libc falls back to ``clone``.

**fallback, caller is root** (no usable user namespaces). The launcher runs as root, as a child subreaper
(orphans stay its children); the program runs as the run's private uid (``setuid`` after ``fork``) in its
own session, with the same limits and seccomp filter, and dies with the launcher (``PDEATHSIG``). All
processes of the private uid are killed with ``kill(-1)`` from a helper running as that uid. Guaranteed:
every process is gone on return; the program cannot signal, ptrace or read the environment of the caller,
the launcher or other runs (other uids); no network (seccomp); it can modify only files it owns, so the
caller's files are untouched. Not guaranteed: it can read world-readable files and list host processes,
and it can create files in world-writable directories; those at the top of ``/tmp``, ``/var/tmp`` and
``/dev/shm`` are removed after the run, deeper ones are not.

**fallback, caller not root** (best effort: prefer a container). The program runs as the caller's uid with
the limits, the seccomp filter (so no network) and a subreaper launcher that kills all its descendants; the
work dir is removed afterwards. A hostile program can still read and modify whatever the caller's uid can,
read the caller's environment through ``/proc``, and kill the launcher to escape cleanup.

On every path: wall time, CPU time, address space per process, process count, size of each file written
and captured output are limited. Memory is limited per process, so the total is bounded by
``max_processes`` times ``memory_mb``, plus the files written to tmpfs (in the namespace path the work dir
and ``/dev/shm``, ``disk_mb`` each); files written are bounded in total only in the namespace path. The files
in ``/dev/shm`` (and, in the fallback, ``/tmp``) persist between the inputs of one ``run_tests`` call. On a
machine other than x86-64/aarch64 there is no seccomp filter: the fallback then blocks the network only
with a patched ``socket.socket`` in the program's interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import marshal
import math
import os
import resource
import select
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

STATUSES = ("ok", "error", "timeout", "memory", "killed")

# >>> sandbox launcher
# Everything between this line and the closing marker is also the launcher program: _launcher_source()
# cuts it out of this file and runs it in the sandbox interpreter. It may use only the modules named in
# _LAUNCHER_IMPORTS and names defined between the markers, and must run on Python >= 3.8.

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MNT_DETACH = 0x2
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock, and
# SECBIT_KEEP_CAPS_LOCKED: uid 0 inside the namespace can never regain capabilities through execve.
_SECUREBITS = 0xEF
_CAPABILITY_VERSION_3 = 0x20080522
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACE_FLAGS = 0x7E020000
_SANDBOX_DIR = "/sandbox"  # the work dir as the program sees it in the namespace path
_DRAIN_S = 1.0  # how long to wait for the pipes to close once every process of a run is dead
MAX_TIMEOUT_S = 3600  # the longest wall-time limit a run may ask for
_TAIL_BYTES = 4096  # end of stderr kept apart from the capped capture, to classify MemoryError

# What the seccomp filter needs per machine: the audit architecture and syscall numbers (x86_64, aarch64).
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {
    "socket": (41, 198),
    "clone": (56, 220),
    "clone3": (435, 435),
    "ptrace": (101, 117),
    "pivot_root": (155, 41),
    "mount": (165, 40),
    "umount2": (166, 39),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "unshare": (272, 97),
    "perf_event_open": (298, 241),
    "setns": (308, 268),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # Memory outside the address-space limit, which would outlive the run (SysV IPC) or escape RLIMIT_AS
    "shmget": (29, 194),
    "semget": (64, 190),
    "msgget": (68, 186),
    "mq_open": (240, 180),
    "memfd_create": (319, 279),
}
_REFUSED_SYSCALLS = (
    "socket",
    "ptrace",
    "pivot_root",
    "mount",
    "umount2",
    "add_key",
    "request_key",
    "keyctl",
    "unshare",
    "perf_event_open",
    "setns",
    "bpf",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "shmget",
    "semget",
    "msgget",
    "mq_open",
    "memfd_create",
)

# Started as `python -I -S -B -c _BOOT <block-net> solution.py`: behaves like `python solution.py` (script
# directory on sys.path, __main__ module, exit/quit builtins, traceback without this wrapper's frame).
_BOOT = """\
import sys, builtins
_block_net = sys.argv[1] == '1'
sys.argv = sys.argv[2:]
sys.path.insert(0, '')
def _exit(code=None):
    raise SystemExit(code)
builtins.exit = builtins.quit = _exit
if _block_net:
    import socket as _socket_module
    class _NoNetwork(_socket_module.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                raise PermissionError(1, 'network access is disabled in the sandbox')
            super().__init__(family, type, proto, fileno)
    _socket_module.socket = _socket_module.SocketType = _NoNetwork
_main = type(sys)('__main__')
_main.__file__ = 'solution.py'
_main.__builtins__ = builtins
sys.modules['__main__'] = _main
try:
    with open('solution.py', 'rb') as _source:
        _code = compile(_source.read(), 'solution.py', 'exec')
    exec(_code, _main.__dict__)
except SystemExit:
    raise
except BaseException as _exc:
    _exc = _exc.with_traceback(_exc.__traceback__.tb_next)  # hide this wrapper's frame
    sys.excepthook(type(_exc), _exc, _exc.__traceback__)
    sys.exit(1)
"""

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _c_call(name, *args):
    """Call a libc function; raise OSError (with errno) when it returns -1."""
    result = getattr(_libc(), name)(*args)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


def _prctl(option, arg2=0, arg3=0):
    ulong = ctypes.c_ulong
    return _c_call("prctl", ctypes.c_int(option), ulong(arg2), ulong(arg3), ulong(0), ulong(0))


def _encode_or_none(value):
    return None if value is None else os.fsencode(value)


def _mount(source, target, fstype, flags, data=None):
    _c_call(
        "mount",
        _encode_or_none(source),
        os.fsencode(target),
        _encode_or_none(fstype),
        ctypes.c_ulong(flags),
        _encode_or_none(data),
    )


def _read_until_eof(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _send(fd, kind, fields=(), payloads=()):
    """One reply message: a line `kind key=value ... payload=n1,n2`, then the payloads' bytes.

    Values are numbers or single words; free text goes in a payload. (No json: importing it costs more
    than the rest of the launcher's start-up.)
    """
    tokens = [kind] + [f"{key}={value}" for key, value in fields]
    tokens.append("payload=" + ",".join(str(len(payload)) for payload in payloads))
    _write_all(fd, " ".join(tokens).encode("ascii") + b"\n" + b"".join(payloads))


# ----- file system -----


def _empty_directory(path):
    """Delete everything inside `path` (not `path` itself) without recursion and without following links.

    A hostile program may nest directories deeper than the recursion limit or PATH_MAX allows and may remove
    its own permissions, so subdirectories are hoisted to the top level one level at a time and their
    permissions restored before they are read.
    """
    top = _open_directory(path)
    hoisted = 0
    try:
        while True:
            entries = list(os.scandir(top))
            if not entries:
                return
            names = {entry.name for entry in entries}
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=top)
                    continue
                sub = _open_directory(entry.name, top)
                try:
                    for inner in list(os.scandir(sub)):
                        if inner.is_dir(follow_symlinks=False):
                            while f".rm{hoisted}" in names:
                                hoisted += 1
                            names.add(f".rm{hoisted}")
                            os.rename(inner.name, f".rm{hoisted}", src_dir_fd=sub, dst_dir_fd=top)
                        else:
                            os.unlink(inner.name, dir_fd=sub)
                finally:
                    os.close(sub)
                os.rmdir(entry.name, dir_fd=top)
    finally:
        os.close(top)


def _open_directory(name, dir_fd=None):
    """Open a directory (never a link to one) with read, write and search permission for its owner.

    A program that ran as our uid may have taken our permissions away; we own what it left, so restore them.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, flags, dir_fd=dir_fd)
    os.fchmod(fd, 0o700)
    return fd


def _unescape_mount_path(text):
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text


def _mounts():
    """(mount point, per-mount options) for every mount of this process's mount namespace."""
    with open("/proc/self/mountinfo", "rb") as handle:
        lines = handle.read().decode("utf-8", "surrogateescape").splitlines()
    return [(_unescape_mount_path(f.split()[4]), f.split()[5].split(",")) for f in lines]


def _mirror(root, path):
    """Make `path` of the host appear read-only at the same place under `root` (links stay links)."""
    if os.path.islink(path):
        os.symlink(os.readlink(path), root + path)
    elif os.path.isdir(path):
        os.makedirs(root + path, exist_ok=True)
        # Recursive: a non-recursive bind of a mount with locked submounts is refused in a user namespace.
        _mount(path, root + path, None, _MS_BIND | _MS_REC)


def _make_dev(root, shm_mb):
    dev = root + "/dev"
    os.mkdir(dev, 0o755)
    for name in ("null", "zero", "full", "random", "urandom"):
        if os.path.exists("/dev/" + name):
            os.close(os.open(dev + "/" + name, os.O_WRONLY | os.O_CREAT, 0o666))
            _mount("/dev/" + name, dev + "/" + name, None, _MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
    ):
        os.symlink(target, dev + "/" + name)
    os.symlink("/proc/self/fd/2", dev + "/stderr")
    os.mkdir(dev + "/shm", 0o1777)
    _mount("tmpfs", dev + "/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={shm_mb}m,mode=1777")


def _make_read_only(root, writable):
    """Remount every mount under `root` read-only except `writable`, keeping flags the kernel locks.

    A mount that cannot be made read-only is an error: the namespace path is then not used at all.
    """
    for point, options in _mounts():
        if (point != root and not point.startswith(root + "/")) or point in writable:
            continue
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
        for option, flag in (("nosuid", _MS_NOSUID), ("nodev", _MS_NODEV), ("noexec", _MS_NOEXEC)):
            if option in options:
                flags |= flag
        try:
            _mount(None, point, None, flags)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot make {point[len(root) :] or '/'} read-only: {exc}") from exc


def _syscall_numbers():
    """Syscall numbers of this machine (name -> number); OSError on a machine not in _AUDIT_ARCH."""
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        raise OSError(errno.ENOSYS, f"no syscall table for machine {machine}")
    column = list(_AUDIT_ARCH).index(machine)
    return {name: numbers[column] for name, numbers in _SYSCALLS.items()}


def _pivot_root(root):
    os.chdir(root)
    _c_call("syscall", ctypes.c_long(_syscall_numbers()["pivot_root"]), b".", b".")
    _c_call("umount2", b".", ctypes.c_int(_MNT_DETACH))
    os.chdir("/")


def _build_namespace_root(job, warnings):
    """Replace the file system view with a minimal read-only root (runs as root of the new namespaces)."""
    root = job["workdir"]
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    mirrored = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
    for path in mirrored:
        _mirror(root, path)
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(job["python"])))
    if not any(prefix == path or prefix.startswith(path + "/") for path in mirrored):
        _mirror(root, prefix)
    _make_dev(root, job["disk_mb"])
    os.mkdir(root + "/proc", 0o555)
    try:
        _mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    except OSError as exc:  # e.g. the host /proc has masked paths: run without /proc rather than fail
        warnings.append(f"no /proc in the sandbox: {exc}")
    os.mkdir(root + "/tmp", 0o755)
    os.mkdir(root + _SANDBOX_DIR, 0o755)
    _make_read_only(root, (root + "/dev/shm",))
    _pivot_root(root)


def _fresh_workdir(job, ctx, index):
    """A clean work dir holding solution.py, for every input."""
    if ctx["kill"] == "namespace":
        if index > 0:
            _c_call("umount2", os.fsencode(_SANDBOX_DIR), ctypes.c_int(_MNT_DETACH))
        options = f"size={job['disk_mb']}m,nr_inodes=65536,mode=0700"
        _mount("tmpfs", _SANDBOX_DIR, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    elif index > 0:
        _empty_directory(ctx["cwd"])
    fd = os.open(os.path.join(ctx["cwd"], "solution.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if job["uid"] is not None:
            os.fchown(fd, job["uid"], job["uid"])
        _write_all(fd, job["code"].encode("utf-8", "surrogatepass"))
    finally:
        os.close(fd)


# ----- privileges, limits, seccomp (in the forked child) -----


# The structures below are built once per launcher, before any fork: the forked child only makes syscalls.


def _empty_capability_sets():
    """Arguments of capset(2) that clear the effective, permitted and inheritable sets."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]

    return Header(_CAPABILITY_VERSION_3, 0), (Data * 2)()


def _drop_capabilities(capability_sets):
    for cap in range(64):
        try:
            _prctl(_PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # past the last capability this kernel knows
                break
            raise
    _prctl(_PR_SET_SECUREBITS, _SECUREBITS)
    header, data = capability_sets
    _c_call("capset", ctypes.byref(header), ctypes.byref(data))


def _bpf(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


def _seccomp_program(arch, numbers):
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow = 0x7FFF0000
    eperm, enosys = 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS
    program = [_bpf(load, 4), _bpf(jeq, arch, 1, 0), _bpf(ret, eperm)]  # other ABIs (i386, x32): refused
    program += [_bpf(load, 0), _bpf(jge, 0x40000000, 0, 1), _bpf(ret, eperm)]  # x32 syscall numbers
    for name in _REFUSED_SYSCALLS:
        program += [_bpf(jeq, numbers[name], 0, 1), _bpf(ret, eperm)]
    program += [_bpf(jeq, numbers["clone3"], 0, 1), _bpf(ret, enosys)]  # libc falls back to clone
    program += [_bpf(jeq, numbers["clone"], 0, 3), _bpf(load, 16)]  # low 32 bits of the clone flags
    program += [_bpf(jset, _CLONE_NAMESPACE_FLAGS, 0, 1), _bpf(ret, eperm), _bpf(ret, allow)]
    return program


def _seccomp_filter():
    """The filter as a `struct sock_fprog` and the buffer it points to (keep both alive); or why not."""
    try:
        program = _seccomp_program(_AUDIT_ARCH.get(os.uname().machine), _syscall_numbers())
    except OSError as exc:
        return str(exc)
    buffer = ctypes.create_string_buffer(b"".join(program))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    return Program(len(program), ctypes.addressof(buffer)), buffer


def _install_seccomp(seccomp):
    if isinstance(seccomp, str):
        raise OSError(errno.ENOSYS, seccomp)
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(seccomp[0]))


def _count_processes_of(uid):
    """Processes whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as handle:
                line = next(line for line in handle if line.startswith(b"Uid:"))
        except (OSError, StopIteration):
            continue
        count += int(line.split()[1]) == uid
    return count


def _apply_limits(job, ctx):
    cpu = job["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize_bytes"], job["fsize_bytes"]))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    # RLIMIT_NPROC counts every process of the (real) uid: in a user namespace only those in it (the launcher
    # and `unshare`, which moved itself in, are two of them), for a private uid only the run's; for the
    # caller's own uid, all of the caller's.
    nproc = job["max_processes"]
    if ctx["kill"] == "namespace":
        nproc += 2
    elif ctx["kill"] == "tree":
        nproc += _count_processes_of(os.getuid())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:
        nproc = min(nproc, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _start_program(job, ctx, pipes):
    """In the forked child: isolate, lower privileges and limits, exec the interpreter. Never returns."""
    stdin_r, stdout_w, stderr_w, report_w = pipes
    try:
        os.setsid()
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        if report_w != 3:  # fd 3 is closed by a successful exec: the launcher then reads EOF
            os.dup2(report_w, 3, inheritable=False)
        os.closerange(4, 1 << 16)
        for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(ctx["cwd"])
        if ctx["kill"] == "namespace":
            _drop_capabilities(ctx["capability_sets"])
        elif job["uid"] is not None:
            os.setgroups([])
            os.setgid(job["uid"])
            os.setuid(job["uid"])
        os.umask(0o022)
        _apply_limits(job, ctx)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the launcher (fallback: no PID namespace)
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        block_net = "0"
        try:
            _install_seccomp(ctx["seccomp"])
        except OSError as exc:
            if ctx["kill"] != "namespace":  # the namespace path has no network anyway
                block_net = "1"
            _write_all(3, f"W:seccomp unavailable ({exc})\n".encode())
        argv = [job["python"], "-I", "-S", "-B", "-c", _BOOT, block_net, "solution.py"]
        os.execve(job["python"], argv, ctx["env"])
    except BaseException as exc:  # report why the program could not start; never run the launcher's code
        try:
            _write_all(3, f"E:{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(127)


# ----- supervision -----


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:  # already gone
        return


def _signal_everyone(ctx):
    """SIGKILL every process of the run except the launcher."""
    kind = ctx["kill"]
    if kind == "namespace":  # PID 1 of the namespace: kill(-1) reaches every other process in it
        _kill_quietly(-1)
    elif kind == "uid":  # a helper with the run's uid: kill(-1) reaches exactly the run's processes
        helper = os.fork()
        if helper == 0:
            try:
                os.setgroups([])
                os.setgid(ctx["uid"])
                os.setuid(ctx["uid"])
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
    else:  # our descendants (we are a subreaper, so orphans stay our children)
        children = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
        stack = list(children.get(os.getpid(), []))
        while stack:
            pid = stack.pop()
            _kill_quietly(pid)
            stack.extend(children.get(pid, []))


def _reap_children():
    """Collect exited children; True while some are still running."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _kill_all(ctx):
    deadline = time.monotonic() + 5.0
    while True:
        _signal_everyone(ctx)
        if not _reap_children() or time.monotonic() > deadline:
            return
        time.sleep(0.002)


class _Capture:
    """Output of one stream: the first `limit` bytes, whether more came, and the last few KiB."""

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.truncated = False
        self.tail = b""

    def add(self, chunk):
        room = self.limit - self.size
        if room > 0:
            self.chunks.append(chunk[:room])
            self.size += min(room, len(chunk))
        if len(chunk) > room:
            self.truncated = True
        self.tail = (self.tail + chunk)[-_TAIL_BYTES:]

    def data(self):
        return b"".join(self.chunks)


def _classify(status, timed_out, cpu_s, max_rss_kb, job, stderr_tail):
    """(status word, returncode) from the wait status and what the run left behind."""
    tail = stderr_tail.rstrip()
    last_line = tail.rsplit(b"\n", 1)[-1]
    out_of_memory = last_line.startswith(b"MemoryError") or b"Cannot allocate memory" in tail
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if timed_out or sig == signal.SIGXCPU or cpu_s >= job["cpu_s"]:
            return "timeout", -sig
        if out_of_memory or max_rss_kb * 1024 >= 0.9 * job["memory_bytes"]:
            return "memory", -sig
        return "killed", -sig
    code = os.WEXITSTATUS(status)
    if timed_out:
        return "timeout", code
    if code == 0:
        return "ok", 0
    return ("memory" if out_of_memory else "error"), code


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Python < 3.9 or Linux < 5.3: poll instead
        return -1


def _supervise(job, ctx, pid, stdin_w, stdout_r, stderr_r, data, started):
    """Feed stdin, capture output, enforce the wall-time limit; return the case fields and the output."""
    captures = {stdout_r: _Capture(job["output_limit"]), stderr_r: _Capture(job["output_limit"])}
    poller = select.poll()
    for fd in captures:
        poller.register(fd, select.POLLIN)
    pending = memoryview(data)
    if pending:
        os.set_blocking(stdin_w, False)
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
    pidfd = _pidfd(pid)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    deadline = started + job["timeout_s"]
    status = rusage = ended = None
    timed_out = False
    open_streams = 2
    while True:
        now = time.monotonic()
        if status is None:
            waited, wait_status, wait_usage = os.wait4(pid, os.WNOHANG)
            if waited == 0 and now >= deadline:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                waited, wait_status, wait_usage = os.wait4(pid, 0)
            if waited:
                status, rusage, ended = wait_status, wait_usage, time.monotonic()
                if pidfd >= 0:  # stays readable from now on
                    poller.unregister(pidfd)
                _kill_all(ctx)  # whatever the program left behind: daemons, fork-bomb children
                if pending:
                    poller.unregister(stdin_w)
                    os.close(stdin_w)
                    pending = memoryview(b"")
        if status is not None and (open_streams == 0 or now >= ended + _DRAIN_S):
            break
        if status is None:
            timeout = deadline - now if pidfd >= 0 else min(deadline - now, 0.01)
        else:
            timeout = ended + _DRAIN_S - now
        for fd, _event in poller.poll(max(int(timeout * 1000) + 1, 0)):
            if fd == pidfd:
                continue
            if fd == stdin_w:
                try:
                    pending = pending[os.write(stdin_w, pending[:65536]) :]
                except BlockingIOError:
                    continue
                except OSError:  # the program closed its stdin or exited
                    pending = memoryview(b"")
                if not pending:
                    poller.unregister(stdin_w)
                    os.close(stdin_w)
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                captures[fd].add(chunk)
            else:
                poller.unregister(fd)
                open_streams -= 1
    for fd in (stdout_r, stderr_r) + ((pidfd,) if pidfd >= 0 else ()):
        os.close(fd)
    out, err = captures[stdout_r], captures[stderr_r]
    cpu_s = rusage.ru_utime + rusage.ru_stime
    word, returncode = _classify(status, timed_out, cpu_s, rusage.ru_maxrss, job, err.tail)
    fields = [
        ("status", word),
        ("returncode", returncode),
        ("duration_s", repr(ended - started)),
        ("cpu_s", repr(cpu_s)),
        ("max_rss_kb", rusage.ru_maxrss),
        ("stdout_truncated", int(out.truncated)),
        ("stderr_truncated", int(err.truncated)),
    ]
    return fields, out.data(), err.data()


def _run_case(job, ctx, index, data):
    _fresh_workdir(job, ctx, index)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    report_r, report_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _start_program(job, ctx, (stdin_r, stdout_w, stderr_w, report_w))
    for fd in (stdin_r, stdout_w, stderr_w, report_w):
        os.close(fd)
    report = _read_until_eof(report_r).decode("utf-8", "replace")  # EOF as soon as the exec succeeded
    os.close(report_r)
    notes = [line[2:] for line in report.splitlines() if line.startswith("W:")]
    failures = [line[2:] for line in report.splitlines() if line.startswith("E:")]
    if failures:
        _kill_all(ctx)
        raise RuntimeError("the program could not be started: " + "; ".join(failures))
    fields, out, err = _supervise(job, ctx, pid, stdin_w, stdout_r, stderr_r, data, started)
    return [("index", index)] + fields, out, err, "\n".join(notes)


def _prepare(job):
    """Set up the isolation of this launcher; return the context the cases run in and any warnings."""
    warnings = []
    _prctl(_PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/mem or fd access to the launcher
    if job["isolation"] == "namespace":
        _build_namespace_root(job, warnings)
        cwd, kill = _SANDBOX_DIR, "namespace"
    else:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphaned descendants become our children, not init's
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the caller (the namespace path: --kill-child)
        cwd, kill = job["workdir"], ("uid" if job["uid"] is not None else "tree")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "TMPDIR": cwd}
    ctx = {"cwd": cwd, "kill": kill, "uid": job["uid"], "env": env, "seccomp": _seccomp_filter()}
    if kill == "namespace":
        ctx["capability_sets"] = _empty_capability_sets()
    if kill == "uid":
        _kill_all(ctx)  # leftovers of an earlier owner of this uid, if it crashed
    return ctx, warnings


def _launcher_main(job):
    """Entry point inside the sandbox: `job` comes from the caller (see _LAUNCHER_BOOT)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctx, warnings = _prepare(job)
        _send(1, "ready", (), ["\n".join(warnings).encode()])
        for index, text in enumerate(job["inputs"]):
            fields, out, err, notes = _run_case(job, ctx, index, text.encode("utf-8", "surrogatepass"))
            _send(1, "case", fields, [out, err, notes.encode()])
    except Exception as exc:
        _send(1, "error", (), [f"{type(exc).__name__}: {exc}".encode()])
        os._exit(3)
    os._exit(0)


# <<< sandbox launcher

# Modules of the launcher, all cheap to import (C extensions; `_signal` is `signal` without the enum
# import): start-up of the launcher is paid on every run.
_LAUNCHER_IMPORTS = ("ctypes", "errno", "os", "resource", "select", "struct", "time", "_signal as signal")
# The launcher's `-c` program: the caller sends its code object (compiled once by the sandbox interpreter,
# so the bytecode always matches) and the job, both marshalled, on stdin.
_LAUNCHER_BOOT = (
    "import marshal, sys\n"
    "_data = sys.stdin.buffer.read()\n"
    "_size = int.from_bytes(_data[:8], 'big')\n"
    "_job = marshal.loads(_data[8 + _size :])\n"
    "exec(marshal.loads(_data[8 : 8 + _size]))\n"
)
_COMPILE_LAUNCHER = (
    "import marshal, sys\n"
    "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.read(), '<sandbox launcher>', 'exec')))\n"
)
_LAUNCHER_BEGIN = "# >>> sandbox launcher"
_LAUNCHER_END = "# <<< sandbox launcher"
_ISOLATION_ENV = "GDPO_SANDBOX_ISOLATION"
_PYTHON_ENV = "GDPO_SANDBOX_PYTHON"
_WORKERS_ENV = "GDPO_SANDBOX_WORKERS"
_FIRST_UID = 1_600_000_000  # private uids for runs when the caller is root; far from any real account
_UID_SLOTS = 4096
_STARTUP_GRACE_S = 10.0  # caller-side backstop: launcher start-up under load
_PER_CASE_SLACK_S = 2.0  # caller-side backstop: per input, beyond timeout_s (drain, kill, reap)
_MESSAGE_BYTES = 64 * 1024  # bound on a reply message apart from the captured output (header, notes)
_LAUNCHER_STDERR_BYTES = 64 * 1024
_LAUNCHER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_STRAY_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): no isolation available, launcher crash, bad arguments."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program run on one input."""

    status: str  # ok | error | timeout | memory | killed
    stdout: str
    stderr: str
    returncode: int | None  # exit code, or -signal; None when the caller's backstop killed the run
    duration_s: float  # wall time of the program
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    isolation: str = ""  # namespace | fallback
    workdir: str = ""  # the caller-side work dir (already removed)

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
        if not (isinstance(self.memory_mb, int) and self.memory_mb >= 32):
            raise ValueError(
                f"memory_mb must be an int >= 32 (the interpreter needs ~20 MB), got {self.memory_mb!r}"
            )
        if not (isinstance(self.max_output_bytes, int) and self.max_output_bytes >= 0):
            raise ValueError(f"max_output_bytes must be an int >= 0, got {self.max_output_bytes!r}")
        if not (isinstance(self.max_processes, int) and self.max_processes >= 1):
            raise ValueError(f"max_processes must be an int >= 1, got {self.max_processes!r}")
        if not (isinstance(self.disk_mb, int) and self.disk_mb >= 1):
            raise ValueError(f"disk_mb must be an int >= 1, got {self.disk_mb!r}")


@dataclass(frozen=True)
class _Runtime:
    isolation: str  # namespace | fallback
    python: str
    private_uids: bool  # caller is root: each run gets its own uid
    launcher_code: bytes  # the launcher, compiled and marshalled by `python`
    unshare: str | None = None
    kill_child: bool = False
    setpriv: str | None = None
    notes: tuple[str, ...] = field(default=())


# ----- public API -----


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
    """Run `code` as ``python solution.py`` with `stdin`, isolated and limited (see the module docstring)."""
    limits = _Limits(timeout_s, memory_mb, max_output_bytes, max_processes, disk_mb)
    return _run(code, [stdin], limits)[0]


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
    """Run `code` once per stdin in `inputs`, in one sandbox: fresh interpreter and work dir per input.

    Limits apply per input. Cheaper than one ``run_python`` per input because the sandbox is set up once.
    """
    if isinstance(inputs, str):
        raise TypeError("inputs must be a sequence of stdin strings, not one string")
    limits = _Limits(timeout_s, memory_mb, max_output_bytes, max_processes, disk_mb)
    inputs = list(inputs)
    return _run(code, inputs, limits) if inputs else []


def run_many(
    jobs: Iterable[str | tuple[str, str] | Mapping[str, object]],
    *,
    max_workers: int | None = None,
    **defaults: object,
) -> list[SandboxResult]:
    """Many ``run_python`` calls at once; results in the order of `jobs`.

    A job is the code, a ``(code, stdin)`` pair, or a mapping of ``run_python`` arguments (``code``,
    ``stdin``, limits); `defaults` are ``run_python`` keyword arguments for every job. At most `max_workers`
    (default: the CPUs available) run at a time, and never more than ``max_workers()`` in this process.
    """
    calls = [_job_kwargs(job, defaults) for job in jobs]
    return _parallel_map(lambda kwargs: run_python(**kwargs), calls, max_workers)


def run_tests_many(
    programs: Iterable[tuple[str, Sequence[str]]],
    *,
    max_workers: int | None = None,
    **limits: object,
) -> list[list[SandboxResult]]:
    """``run_tests`` for many ``(code, inputs)`` programs at once; results in the order of `programs`."""
    calls = [(code, list(inputs)) for code, inputs in programs]
    return _parallel_map(lambda call: run_tests(call[0], call[1], **limits), calls, max_workers)


def max_workers() -> int:
    """Sandboxes this process runs at a time: the CPUs available, or ``GDPO_SANDBOX_WORKERS``."""
    configured = os.environ.get(_WORKERS_ENV, "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise SandboxError(f"{_WORKERS_ENV} must be a positive integer, got {configured!r}")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sandbox_info() -> dict[str, object]:
    """The isolation in use (detected on first call) and the interpreter that runs programs."""
    runtime = _runtime()
    return {
        "isolation": runtime.isolation,
        "python": runtime.python,
        "private_uids": runtime.private_uids,
        "max_workers": max_workers(),
        "notes": list(runtime.notes),
    }


# ----- running -----

_SLOTS_LOCK = threading.Lock()
_SLOTS: list[threading.BoundedSemaphore] = []


def _slots() -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        if not _SLOTS:
            _SLOTS.append(threading.BoundedSemaphore(max_workers()))
        return _SLOTS[0]


def _job_kwargs(job: object, defaults: Mapping[str, object]) -> dict[str, object]:
    if isinstance(job, str):
        return {**defaults, "code": job}
    if isinstance(job, tuple) and len(job) == 2:
        return {**defaults, "code": job[0], "stdin": job[1]}
    if isinstance(job, Mapping):
        return {**defaults, **job}
    raise TypeError(
        f"a job is code, (code, stdin) or a mapping of run_python arguments, got {type(job).__name__}"
    )


def _parallel_map(fn, items: list, workers: int | None) -> list:
    if not items:
        return []
    workers = min(workers or max_workers(), len(items))
    if workers == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(fn, items))


def _run(code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    for stdin in inputs:
        if not isinstance(stdin, str):
            raise TypeError(f"stdin must be a str, got {type(stdin).__name__}")
    runtime = _runtime()
    with _slots():
        return _execute(runtime, code, inputs, limits)


def _execute(runtime: _Runtime, code: str, inputs: list[str], limits: _Limits) -> list[SandboxResult]:
    lease = _UID_POOL.acquire() if runtime.private_uids else None
    uid = lease.uid if lease else None
    workdir = _make_workdir(uid)
    proc = None
    started = time.monotonic()
    try:
        job = _job(runtime, code, inputs, limits, str(workdir), uid)
        command, popen_kwargs = _command(runtime, uid)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=_LAUNCHER_ENV,
            start_new_session=True,
            **popen_kwargs,
        )
        deadline = started + _STARTUP_GRACE_S + len(inputs) * (limits.timeout_s + _PER_CASE_SLACK_S)
        reply_limit = len(inputs) * (2 * limits.max_output_bytes + _MESSAGE_BYTES) + _MESSAGE_BYTES
        code_size = len(runtime.launcher_code).to_bytes(8, "big")
        payload = code_size + runtime.launcher_code + marshal.dumps(job)
        reply, launcher_stderr, expired = _exchange(proc, payload, deadline, reply_limit)
        if expired:
            _kill_launcher(proc, runtime, uid)
        else:
            _wait_launcher(proc, runtime, uid)
        return _results(runtime, reply, launcher_stderr, proc.returncode, expired, inputs, started, workdir)
    finally:
        if proc is not None:
            if proc.poll() is None:
                _kill_launcher(proc, runtime, uid)
            _close_pipes(proc)
        _remove_workdir(workdir, uid if runtime.isolation == "fallback" else None)
        if lease:
            _UID_POOL.release(lease)


def _job(runtime: _Runtime, code: str, inputs: list[str], limits: _Limits, workdir: str, uid: int | None):
    return {
        "isolation": runtime.isolation,
        "python": runtime.python,
        "workdir": workdir,
        "uid": uid if runtime.isolation == "fallback" else None,  # in a namespace the uid is already set
        "code": code,
        "inputs": inputs,
        "timeout_s": float(limits.timeout_s),
        "cpu_s": math.ceil(limits.timeout_s) + 1,
        "memory_bytes": limits.memory_mb << 20,
        "fsize_bytes": limits.disk_mb << 20,
        "disk_mb": limits.disk_mb,
        "max_processes": limits.max_processes,
        "output_limit": limits.max_output_bytes,
    }


@lru_cache(maxsize=1)
def _launcher_source() -> str:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    try:
        body = lines[lines.index(_LAUNCHER_BEGIN) : lines.index(_LAUNCHER_END)]
    except ValueError as exc:
        raise SandboxError(f"{__file__} lost its launcher markers") from exc
    header = ["from __future__ import annotations", "import " + ", ".join(_LAUNCHER_IMPORTS)]
    return "\n".join([*header, *body, "_launcher_main(_job)", ""])


def _compile_launcher(python: str) -> bytes:
    """The launcher's code object, compiled by the interpreter that will run it, marshalled."""
    done = subprocess.run(
        [python, "-I", "-S", "-c", _COMPILE_LAUNCHER],
        input=_launcher_source().encode(),
        capture_output=True,
        timeout=60,
        env=_LAUNCHER_ENV,
    )
    if done.returncode != 0 or not done.stdout:
        raise SandboxError(
            f"{python} cannot compile the launcher: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    return done.stdout


def _command(runtime: _Runtime, uid: int | None) -> tuple[list[str], dict[str, object]]:
    command = [runtime.python, "-I", "-S", "-c", _LAUNCHER_BOOT]
    if runtime.isolation != "namespace":
        return command, {}  # the launcher stays the caller's uid; the program's uid is set after fork
    flags = ["--user", "--map-root-user", "--net", "--pid", "--mount", "--ipc", "--fork"]
    command = [runtime.unshare, *flags, *(["--kill-child"] if runtime.kill_child else []), *command]
    if uid is None:
        return command, {}
    if runtime.setpriv:  # lets subprocess use vfork: cheap even from a large caller (a trainer)
        return [runtime.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command], {}
    return command, {"user": uid, "group": uid, "extra_groups": []}


def _exchange(proc: subprocess.Popen, payload: bytes, deadline: float, reply_limit: int):
    """Send the job, collect the reply and the launcher's stderr; (reply, stderr, deadline_passed)."""
    reply, errors = bytearray(), bytearray()
    pending = memoryview(payload)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin_fd, selectors.EVENT_WRITE)
        selector.register(proc.stdout.fileno(), selectors.EVENT_READ, reply)
        selector.register(proc.stderr.fileno(), selectors.EVENT_READ, errors)
        readers = 2
        while readers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(reply), bytes(errors), True
            for key, _mask in selector.select(remaining):
                if key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except OSError:  # the launcher died before reading its job
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    readers -= 1
                elif key.data is reply:
                    reply += chunk
                    if len(reply) > reply_limit:
                        raise SandboxError("the sandbox launcher sent more data than the limits allow")
                elif len(errors) < _LAUNCHER_STDERR_BYTES:
                    errors += chunk
    return bytes(reply), bytes(errors), False


def _wait_launcher(proc: subprocess.Popen, runtime: _Runtime, uid: int | None) -> None:
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        _kill_launcher(proc, runtime, uid)
    _close_pipes(proc)


def _kill_launcher(proc: subprocess.Popen, runtime: _Runtime, uid: int | None) -> None:
    """Backstop: the launcher overran. Kill its process group and make sure no process of the run survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _close_pipes(proc)
    # The namespace path: PID 1 of the namespace is in this group; once it is dead the kernel has killed the
    # rest. The fallback: the program runs in its own session, so also kill by uid where it is private.
    _kill_matching(lambda info: info["pgrp"] == proc.pid)
    if uid is not None and runtime.isolation == "fallback":
        _kill_matching(lambda info: info["uid"] == uid)


def _close_pipes(proc: subprocess.Popen) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


def _processes() -> list[dict[str, int | str]]:
    """pid, real uid, process group and state of every process (zombies included)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/status", "rb") as handle:
                uid_line = next(line for line in handle if line.startswith(b"Uid:"))
            uid = int(uid_line.split()[1])
        except (OSError, IndexError, StopIteration, ValueError):
            continue
        found.append({"pid": int(name), "state": fields[0].decode(), "pgrp": int(fields[2]), "uid": uid})
    return found


def _kill_matching(predicate, timeout_s: float = 5.0) -> None:
    """SIGKILL every live process matching `predicate` until none is left (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in _processes() if p["state"] not in ("Z", "X") and predicate(p)]
        if not alive:
            return
        if time.monotonic() > deadline:
            pids = ", ".join(str(p["pid"]) for p in alive)
            raise SandboxError(f"sandbox processes survived SIGKILL for {timeout_s} s: {pids}")
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p["pid"], signal.SIGKILL)
        time.sleep(0.005)


def _results(runtime, reply, launcher_stderr, returncode, expired, inputs, started, workdir):
    messages = _parse_reply(reply)
    errors = [texts[0] for kind, _fields, texts in messages if kind == "error"]
    if errors:
        message = errors[0].decode("utf-8", "replace")
        raise SandboxError(f"the sandbox launcher failed: {message}{_stderr_note(launcher_stderr)}")
    cases = {}
    for kind, fields, payloads in messages:
        notes = payloads[0] if kind == "ready" else payloads[2] if kind == "case" else b""
        for note in notes.decode("utf-8", "replace").splitlines():
            _warn_once(note)
        if kind == "case":
            cases[int(fields["index"])] = (fields, payloads)
    results = []
    for index in range(len(inputs)):
        if index in cases:
            results.append(_result(runtime, *cases[index], str(workdir)))
            continue
        if not expired and (returncode is None or returncode >= 0):
            raise SandboxError(
                f"the sandbox launcher exited with code {returncode} without reporting input {index}"
                f"{_stderr_note(launcher_stderr)}"
            )
        # The backstop killed the launcher (timeout) or something else killed it.
        status = "timeout" if expired else "killed"
        duration = time.monotonic() - started
        results.append(
            SandboxResult(status, "", "", None, duration, isolation=runtime.isolation, workdir=str(workdir))
        )
    return results


def _result(runtime: _Runtime, fields: dict[str, str], payloads: list[bytes], workdir: str) -> SandboxResult:
    try:
        if fields["status"] not in STATUSES or len(payloads) != 3:
            raise ValueError(fields["status"])
        return SandboxResult(
            status=fields["status"],
            stdout=payloads[0].decode("utf-8", "replace"),
            stderr=payloads[1].decode("utf-8", "replace"),
            returncode=int(fields["returncode"]),
            duration_s=float(fields["duration_s"]),
            stdout_truncated=fields["stdout_truncated"] == "1",
            stderr_truncated=fields["stderr_truncated"] == "1",
            cpu_s=float(fields["cpu_s"]),
            max_rss_mb=int(fields["max_rss_kb"]) / 1024,
            isolation=runtime.isolation,
            workdir=workdir,
        )
    except (KeyError, ValueError) as exc:
        raise SandboxError(f"malformed reply from the sandbox launcher: {fields!r}") from exc


def _parse_reply(reply: bytes) -> list[tuple[str, dict[str, str], list[bytes]]]:
    """Complete messages of the reply (see _send): (kind, fields, payloads)."""
    messages, position = [], 0
    while True:
        newline = reply.find(b"\n", position)
        if newline < 0:
            return messages
        line = reply[position:newline].decode("ascii", "replace")
        try:
            kind, *tokens = line.split(" ")
            fields = dict(token.split("=", 1) for token in tokens)
            sizes = [int(size) for size in fields.pop("payload").split(",") if size]
        except (ValueError, KeyError) as exc:
            raise SandboxError(f"malformed reply from the sandbox launcher: {line[:200]!r}") from exc
        position = newline + 1
        if position + sum(sizes) > len(reply):
            return messages  # cut short by the backstop
        payloads = []
        for size in sizes:
            payloads.append(reply[position : position + size])
            position += size
        messages.append((kind, fields, payloads))


def _stderr_note(launcher_stderr: bytes) -> str:
    text = launcher_stderr.decode("utf-8", "replace").strip()
    return f"\nlauncher stderr:\n{text[-4000:]}" if text else ""


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("sandbox: %s", message)


# ----- work dirs and uids -----


def _secure_dir(path: Path, mode: int) -> None:
    """Create `path` (ours, not a link, exactly `mode`) or refuse one that someone else prepared."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SandboxError(f"{path} exists but is not a directory owned by uid {os.geteuid()}; remove it")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


@lru_cache(maxsize=1)
def _base_dir() -> Path:
    # /tmp is shared: a fixed name must be checked (owner, no link), and others need only traverse it.
    base = Path(tempfile.gettempdir()) / f"gdpo-sandbox-{os.geteuid()}"
    _secure_dir(base, 0o711)
    _secure_dir(base / "work", 0o711)
    _secure_dir(base / "uids", 0o700)
    return base


def _make_workdir(uid: int | None) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=_base_dir() / "work"))
    if uid is not None:
        os.chown(workdir, uid, uid)
    return workdir


def _remove_workdir(workdir: Path, uid: int | None) -> None:
    try:
        _empty_directory(str(workdir))
        os.rmdir(workdir)
    except FileNotFoundError:
        pass
    if uid is not None:
        _remove_stray_files(uid)


def _remove_stray_files(uid: int) -> None:
    """Fallback as root: files the run's uid created at the top of world-writable directories."""
    for directory in _STRAY_DIRS:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _empty_directory(entry.path)
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                _warn_once(f"could not remove {entry.path} left by a sandboxed program: {exc}")


@dataclass(frozen=True)
class _UidLease:
    uid: int
    fd: int


class _UidPool:
    """Private uids for runs when the caller is root, exclusive across processes through flock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[int] = set()

    def acquire(self) -> _UidLease:
        directory = _base_dir() / "uids"
        start = (os.getpid() * 64) % _UID_SLOTS  # different processes start at different slots
        for step in range(_UID_SLOTS):
            uid = _FIRST_UID + (start + step) % _UID_SLOTS
            with self._lock:
                if uid in self._held:
                    continue
                self._held.add(uid)
            fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _UidLease(uid, fd)
            except BlockingIOError:
                os.close(fd)
                with self._lock:
                    self._held.discard(uid)
        raise SandboxError(f"all {_UID_SLOTS} sandbox uids are in use")

    def release(self, lease: _UidLease) -> None:
        os.close(lease.fd)  # drops the flock
        with self._lock:
            self._held.discard(lease.uid)


_UID_POOL = _UidPool()


# ----- detecting what this machine supports -----

_RUNTIMES: dict[str, _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _runtime() -> _Runtime:
    requested = os.environ.get(_ISOLATION_ENV, "auto").strip().lower() or "auto"
    if requested not in ("auto", "namespace", "fallback"):
        raise SandboxError(f"{_ISOLATION_ENV} must be auto, namespace or fallback, got {requested!r}")
    with _RUNTIMES_LOCK:
        if requested not in _RUNTIMES:
            _RUNTIMES[requested] = _detect(requested)
        return _RUNTIMES[requested]


def _detect(requested: str) -> _Runtime:
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"the sandbox needs Linux (rlimits, /proc, seccomp); this is {sys.platform}")
    private_uids = os.geteuid() == 0
    pythons = _python_candidates(private_uids)
    if not pythons:
        raise SandboxError(
            "no Python interpreter the sandbox can execute (as root, every directory above it must be "
            f"world-searchable); set {_PYTHON_ENV}"
        )
    failures = []
    compiled: dict[str, bytes] = {}

    def code_for(python: str) -> bytes:
        if python not in compiled:
            compiled[python] = _compile_launcher(python)
        return compiled[python]

    if requested in ("auto", "namespace"):
        unshare = shutil.which("unshare", path=_LAUNCHER_ENV["PATH"])
        if unshare is None:
            failures.append("namespace: no `unshare` binary (util-linux)")
        else:
            kill_child = _supports_kill_child(unshare)
            setpriv = shutil.which("setpriv", path=_LAUNCHER_ENV["PATH"])
            for python in pythons:
                runtime = _Runtime(
                    "namespace", python, private_uids, code_for(python), unshare, kill_child, setpriv
                )
                problem = _probe(runtime)
                if problem is None:
                    return runtime
                failures.append(f"namespace with {python}: {problem}")
        if requested == "namespace":
            raise SandboxError("namespace isolation is not available:\n" + "\n".join(failures))
    for python in pythons:
        notes = tuple(failures)
        runtime = _Runtime("fallback", python, private_uids, code_for(python), notes=notes)
        problem = _probe(runtime)
        if problem is None:
            if requested == "auto":
                strength = "private uid" if private_uids else "same uid as the caller: best effort only"
                logger.warning(
                    "sandbox: namespace isolation unavailable, using the fallback (%s):\n%s",
                    strength,
                    "\n".join(failures),
                )
            return runtime
        failures.append(f"fallback with {python}: {problem}")
    raise SandboxError("no working sandbox on this machine:\n" + "\n".join(failures))


def _python_candidates(private_uids: bool) -> list[str]:
    configured = os.environ.get(_PYTHON_ENV)
    names = [configured] if configured else [sys.executable, getattr(sys, "_base_executable", None)]
    if not configured:
        names += ["/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")]
    found: list[str] = []
    for name in names:
        if not name or not os.path.isfile(name):
            continue
        real = os.path.realpath(name)
        if real in found or (private_uids and not _others_can_execute(real)):
            continue
        found.append(real)
    return found


def _others_can_execute(path: str) -> bool:
    """Whether a uid that is neither owner nor group can reach and execute `path` (the sandbox uid can)."""
    current = Path(path)
    if not os.stat(current).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in current.parents)


def _supports_kill_child(unshare: str) -> bool:
    try:
        help_text = subprocess.run(
            [unshare, "--help"], capture_output=True, text=True, timeout=10, env=_LAUNCHER_ENV
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--kill-child" in help_text


def _probe(runtime: _Runtime) -> str | None:
    """Run a tiny program with `runtime`: None when it works, else what went wrong."""
    try:
        result = _execute(runtime, "print(6 * 7)", [""], _Limits(timeout_s=10.0, memory_mb=256))[0]
    except (SandboxError, OSError) as exc:
        return str(exc)
    if result.status != "ok" or result.stdout != "42\n":
        return (
            f"probe program gave status {result.status!r}, stdout {result.stdout!r}, stderr {result.stderr!r}"
        )
    return None
