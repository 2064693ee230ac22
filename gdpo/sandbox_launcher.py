"""PID 1 of a sandbox run (``gdpo.sandbox`` sends this file's text with ``python -I -S -B -c``; never imported).

argv: report fd, job fd (the program's source), isolation (bwrap | rlimits), work dir, then the limits: CPU
seconds, address-space bytes, file-size bytes, processes, and the work dir's tmpfs bytes and inodes. It makes
itself non-dumpable (no ``/proc/1/{mem,environ,fd}``), mounts the work dir (bwrap cannot limit a tmpfs's
inodes), reports ``ready``, forks the program and reports ``done <wait status> <cpu s> <max rss KiB>`` once it
exits (``error <why>`` if it could not start it). The child drops every capability (no_new_privs, set by
bwrap, keeps them dropped), takes the rlimits and runs the source in this interpreter like
``python solution.py``: ``__main__``, exit/quit builtins, tracebacks without this file's frame.
"""

import _signal  # `signal` without its enum import: start-up is paid on every run
import ctypes
import os
import resource
import sys

report, job, isolation, workdir, cpu, memory, fsize, nproc, tmpfs, inodes = sys.argv[1:]
report, job, libc = int(report), int(job), ctypes.CDLL(None, use_errno=True)


def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what + " failed")


def start():
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    check(libc.prctl(4, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    if isolation == "bwrap":
        options = ("size=" + tmpfs + ",nr_inodes=" + inodes + ",mode=0755").encode()  # flags 6: nosuid, nodev
        check(libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", 6, options), "mount " + workdir)
    else:
        check(libc.prctl(36, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
    with open(workdir + "/solution.py", "wb") as handle:
        handle.write(b"".join(iter(lambda: os.read(job, 65536), b"")))
    os.write(report, b"ready\n")
    pid = os.fork()
    if pid == 0:
        if isolation == "bwrap":  # capset(header v3, all sets empty)
            check(libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset")
        limits = {"CPU": cpu, "AS": memory, "FSIZE": fsize, "NPROC": nproc, "NOFILE": 64, "CORE": 0}
        for name, value in {**limits, "MEMLOCK": 0, "MSGQUEUE": 0, "SIGPENDING": 256}.items():
            kind = getattr(resource, "RLIMIT_" + name)
            hard = resource.getrlimit(kind)[1]
            value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
            resource.setrlimit(kind, (value, value))
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", HOME=workdir, TMPDIR=workdir)
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        os.closerange(3, 65536)
    return pid


try:
    pid = start()
except BaseException as exc:
    os.write(report, ("error " + type(exc).__name__ + ": " + str(exc) + "\n").encode())
    os._exit(3)
if pid == 0:
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
else:
    while True:
        waited, status, usage = os.wait4(-1, 0)
        if waited == pid:
            break
    done = (status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
    os.write(report, ("done " + " ".join(map(str, done)) + "\n").encode())
