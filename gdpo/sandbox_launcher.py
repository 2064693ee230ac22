"""PID 1 of a sandbox (``gdpo.sandbox`` sends this file's text with ``python -I -S -B -c``; never imported).

stdin: the job (marshalled): the program's source, its stdin inputs, the isolation (bwrap | rlimits), the work
dir and the limits; argv[1]: the report fd. It makes itself non-dumpable (no ``/proc/1/{mem,environ,fd}``) and
runs the inputs one by one: a fresh work dir (bwrap: a tmpfs it mounts, since bwrap cannot limit a tmpfs's
inodes) holding solution.py, the program forked on fresh pipes, its stdin fed and its output read (the first
``max_output_bytes`` of each stream kept) for at most the wall time, then every other process of the sandbox
killed and the verdict reported. Reports are marshalled ``(kind, value)``, each after its 8-byte length:
``ready``, then ``done`` (the fields of a ``SandboxResult``) per input, or ``error`` (why). The child drops
every capability (no_new_privs, set by bwrap, keeps them dropped), takes the rlimits and runs the source in
this interpreter like ``python solution.py``: ``__main__``, exit/quit builtins, no frame of this file.
"""

import builtins
import ctypes
import marshal
import os
import resource
import select
import sys
import time

try:  # CPython's `signal` without its enum import: start-up is paid on every run
    import _signal
except ImportError:  # another interpreter: the public module has the same functions
    import signal as _signal

REPORT, libc, job = int(sys.argv[1]), ctypes.CDLL(None, use_errno=True), {}


def send(kind, value):
    data = marshal.dumps((kind, value))
    data = memoryview(len(data).to_bytes(8, "little") + data)
    while data:
        data = data[os.write(REPORT, data) :]


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what + " failed")


class Capture:
    """One output stream: its first `max_output_bytes`, whether more came, and its last 4 KiB."""

    def __init__(self):
        self.data, self.truncated, self.tail = bytearray(), False, b""

    def add(self, chunk):
        room = job["max_output_bytes"] - len(self.data)
        self.data += chunk[: max(room, 0)]
        self.truncated |= len(chunk) > room
        self.tail = (self.tail + chunk)[-4096:]
        return chunk


def prepare(index):
    """A fresh work dir holding solution.py; returns its path."""
    path = job["workdir"]
    if job["isolation"] == "bwrap":
        if index:
            check(libc.umount2(path.encode(), 2), "umount " + path)  # MNT_DETACH
        size = job["disk_mb"]  # MB, and 128 inodes per MB (~1 KiB of kernel memory each)
        options = f"size={size}m,nr_inodes={128 * size},mode=0755".encode()
        check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", 6, options), "mount " + path)  # 6: nosuid, nodev
    else:
        path += "/" + str(index)
        os.mkdir(path)
    with open(path + "/solution.py", "wb") as handle:
        handle.write(job["code"])
    return path


def become_program(path, streams):
    """In the forked child: the program's identity, limits, standard streams and environment."""
    if job["isolation"] == "bwrap":  # capset(header v3, all sets empty)
        check(libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset")
    limits = {"CPU": job["cpu_s"], "AS": job["memory_mb"] << 20, "FSIZE": job["disk_mb"] << 20, "CORE": 0}
    limits.update(NPROC=job["max_processes"] + 1, NOFILE=64, MEMLOCK=0, MSGQUEUE=0, SIGPENDING=256)
    for name, value in limits.items():  # NPROC: this launcher runs as the same user
        kind = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(kind)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))
    for target, fd in enumerate(streams):
        os.dup2(fd, target)
    os.setpgid(0, 0)
    os.chdir(path)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", HOME=path, TMPDIR=path)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    os.closerange(3, 65536)
    job.clear()


def supervise(pid, stdin_w, pending, captures):
    """Feed stdin and read the output until the program exits or its wall time is up (then kill it); kill what
    is left; (wait status, rusage, seconds, killed at the wall time)."""
    started, pidfd, reading, exited = time.monotonic(), os.pidfd_open(pid), dict(captures), False
    while not exited:
        if not pending and stdin_w >= 0:  # end of input
            os.close(stdin_w)
            stdin_w = -1
        left = started + job["wall_s"] - time.monotonic()
        ready, writable, _ = select.select([pidfd, *reading], [stdin_w] if pending else [], [], max(left, 0))
        if not ready and not writable:
            break
        exited = pidfd in ready
        for fd in [fd for fd in reading if fd in ready]:
            if not reading[fd].add(os.read(fd, 65536)):
                del reading[fd]
        try:
            pending = pending[os.write(stdin_w, pending[:65536]) :] if writable else pending
        except BlockingIOError:
            pass
        except OSError:  # the program closed its stdin
            pending = pending[:0]
    if not exited:
        os.kill(pid, 9)
    _, status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    if stdin_w >= 0:
        os.close(stdin_w)
    # Whatever it left: every other process of the namespace, or (rlimits) of its group, whose orphans are ours.
    others = -1 if job["isolation"] == "bwrap" else -pid
    try:  # noqa: SIM105 (contextlib would cost start-up time)
        os.kill(others, 9)
    except ProcessLookupError:  # there was none
        pass
    while True:
        try:
            os.waitpid(others, 0)
        except ChildProcessError:
            break
    seconds = time.monotonic() - started
    # What was written before it ended (all of it with bwrap: a pipe holds 64 KiB, F_SETPIPE_SZ is refused).
    for fd in select.select(list(captures), [], [], 0)[0]:
        captures[fd].add(os.read(fd, 65536))
    for fd in captures:
        os.close(fd)
    return status, usage, seconds, not exited


def verdict(path, status, usage, seconds, killed, out, err):
    """The fields of a SandboxResult."""
    cpu_s, tail = usage.ru_utime + usage.ru_stime, err.tail.rstrip()
    out_of_memory = tail.rsplit(b"\n", 1)[-1].startswith(b"MemoryError") or b"Cannot allocate memory" in tail
    if killed:  # the wall-clock limit
        word, code = "timeout", None
    elif os.WIFSIGNALED(status):
        code = -os.WTERMSIG(status)  # rusage lags the kernel's CPU clock by a few per cent: 0.9
        timed_out = code == -_signal.SIGXCPU or (code == -_signal.SIGKILL and cpu_s >= 0.9 * job["cpu_s"])
        near_limit = out_of_memory or usage.ru_maxrss >= 0.9 * (job["memory_mb"] << 10)
        word = "timeout" if timed_out else "memory" if near_limit else "killed"
    else:
        code = os.WEXITSTATUS(status)
        word = "ok" if code == 0 else "memory" if out_of_memory else "error"
    stdout, stderr = (bytes(c.data).decode("utf-8", "replace") for c in (out, err))
    return dict(status=word, returncode=code, stdout=stdout, stderr=stderr, duration_s=seconds, workdir=path,
                stdout_truncated=out.truncated, stderr_truncated=err.truncated, cpu_s=cpu_s,
                max_rss_mb=usage.ru_maxrss / 1024)  # fmt: skip


def start():
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    check(libc.prctl(4, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    check(libc.prctl(36, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")  # rlimits: the programs' orphans
    job.update(marshal.loads(b"".join(iter(lambda: os.read(0, 65536), b""))))
    send("ready", None)
    for index, data in enumerate(job["inputs"]):
        path = prepare(index)
        (stdin_r, stdin_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            become_program(path, (stdin_r, out_w, err_w))
            return True
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        os.set_blocking(stdin_w, False)  # fed as the program reads it
        captures = {out_r: Capture(), err_r: Capture()}
        status, usage, seconds, killed = supervise(pid, stdin_w, memoryview(data), captures)
        send("done", verdict(path, status, usage, seconds, killed, *captures.values()))
    return False


try:
    is_program = start()
except BaseException as exc:
    send("error", type(exc).__name__ + ": " + str(exc))
    os._exit(3)
if not is_program:
    os._exit(0)  # the caller has every report


def _exit(code=None):
    raise SystemExit(code)


builtins.exit = builtins.quit = _exit
sys.argv, main = ["solution.py"], type(sys)("__main__")
sys.path.insert(0, "")
main.__file__, main.__builtins__, sys.modules["__main__"] = "solution.py", builtins, main
try:
    with open("solution.py", "rb") as source:
        code = compile(source.read(), "solution.py", "exec")
    exec(code, main.__dict__)
except SystemExit:
    raise
except BaseException as exc:
    exc = exc.with_traceback(exc.__traceback__.tb_next)
    sys.excepthook(type(exc), exc, exc.__traceback__)
    sys.exit(1)
