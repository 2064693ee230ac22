"""PID 1 of a sandbox (``gdpo.sandbox`` sends this file's text with ``python -I -S -B -c``; never imported).

argv: report, job and control fds, isolation (bwrap | rlimits), work dir, then the limits: CPU seconds,
address-space bytes, file-size bytes, processes, the work dir's tmpfs bytes and inodes, wall seconds. The job
(marshalled) is the program's source and its stdin inputs. It makes itself non-dumpable (no
``/proc/1/{mem,environ,fd}``) and runs the inputs one by one: a fresh work dir (bwrap: a tmpfs it mounts,
since bwrap cannot limit a tmpfs's inodes), ``start <i>``, the program forked, its stdin fed, its wall time
limited, then every other process of the sandbox killed, ``done <i> <wait status> <cpu s> <max rss KiB>
<seconds> <1 if the wall limit killed it>``, and a byte from the caller on the control pipe once it has read
that input's output. ``error <why>`` if it could not. The child drops every capability (no_new_privs, set by
bwrap, keeps them dropped), takes the rlimits and runs the source in this interpreter like ``python
solution.py``: ``__main__``, exit/quit builtins, tracebacks without this file's frame.
"""

import _signal  # `signal` without its enum import: start-up is paid on every run
import ctypes
import marshal
import os
import resource
import select
import sys
import time

report, job, control, isolation, workdir, cpu, memory, fsize, nproc, tmpfs, inodes, wall = sys.argv[1:]
report, job, control, libc = int(report), int(job), int(control), ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what + " failed")


def prepare(index, code):
    """A fresh work dir holding solution.py; returns its path."""
    if isolation == "bwrap":
        if index:
            check(libc.umount2(workdir.encode(), 2), "umount " + workdir)  # MNT_DETACH
        options = ("size=" + tmpfs + ",nr_inodes=" + inodes + ",mode=0755").encode()  # flags 6: nosuid, nodev
        check(libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", 6, options), "mount " + workdir)
        path = workdir
    else:
        path = workdir + "/" + str(index)
        os.mkdir(path)
    with open(path + "/solution.py", "wb") as handle:
        handle.write(code)
    return path


def become_program(path, stdin_r):
    """In the forked child: the program's identity, limits and environment."""
    if isolation == "bwrap":  # capset(header v3, all sets empty)
        check(libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset")
    limits = {"CPU": cpu, "AS": memory, "FSIZE": fsize, "NPROC": nproc, "NOFILE": 64, "CORE": 0}
    for name, value in {**limits, "MEMLOCK": 0, "MSGQUEUE": 0, "SIGPENDING": 256}.items():
        kind = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(kind)[1]
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(kind, (value, value))
    os.dup2(stdin_r, 0)
    os.chdir(path)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", HOME=path, TMPDIR=path)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    os.closerange(3, 65536)


def supervise(pid, stdin_w, data):
    """Feed stdin and wait for the program, at most `wall` seconds; (wait status, rusage, seconds, killed)."""
    started, pidfd, pending = time.monotonic(), os.pidfd_open(pid), memoryview(data)
    os.set_blocking(stdin_w, False)
    if not pending:  # end of input right away
        os.close(stdin_w)
        stdin_w = -1
    while True:
        left = started + float(wall) - time.monotonic()
        exited, writable, _ = select.select([pidfd], [stdin_w] if pending else [], [], max(left, 0))
        if exited or not writable:  # the program exited, or its wall time is up
            break
        try:
            pending = pending[os.write(stdin_w, pending[:65536]) :]
        except BlockingIOError:
            continue
        except OSError:  # the program closed its stdin
            pending = pending[:0]
        if not pending:
            os.close(stdin_w)
            stdin_w = -1
    if not exited:
        os.kill(pid, 9)
    _, status, usage = os.wait4(pid, 0)
    for fd in (pidfd, stdin_w):
        if fd >= 0:
            os.close(fd)
    if isolation == "bwrap":  # whatever it left behind: every process of the namespace but this one
        try:  # noqa: SIM105 (contextlib would cost start-up time)
            os.kill(-1, 9)
        except ProcessLookupError:  # there was none
            pass
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
    return status, usage, time.monotonic() - started, not exited


def start():
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    check(libc.prctl(4, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    if isolation != "bwrap":
        check(libc.prctl(36, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    code, inputs = marshal.loads(b"".join(iter(lambda: os.read(job, 65536), b"")))
    os.write(report, b"ready\n")
    for index, data in enumerate(inputs):
        path = prepare(index, code)
        stdin_r, stdin_w = os.pipe()
        os.write(report, ("start " + str(index) + "\n").encode())
        pid = os.fork()
        if pid == 0:
            become_program(path, stdin_r)
            return True
        os.close(stdin_r)
        status, usage, seconds, killed = supervise(pid, stdin_w, data)
        done = (index, status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, seconds, int(killed))
        os.write(report, ("done " + " ".join(map(str, done)) + "\n").encode())
        os.read(control, 1)  # the caller has read this input's output
    return False


try:
    is_program = start()
except BaseException as exc:
    os.write(report, ("error " + type(exc).__name__ + ": " + str(exc) + "\n").encode())
    os._exit(3)
if is_program:
    import builtins

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
