"""The sandbox for model-written programs: statuses, limits and isolation against hostile code.

Every behaviour is checked on both isolation paths (the namespace path and the fallback), forced through
GDPO_SANDBOX_ISOLATION; a path this machine cannot provide is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from gdpo import sandbox
from gdpo.sandbox import SandboxError, run_many, run_python, run_tests, run_tests_many

REPO = Path(__file__).resolve().parent.parent
ISOLATIONS = ("namespace", "fallback")
_UNAVAILABLE: dict[str, str | None] = {}


def _unavailable(isolation: str) -> str | None:
    if isolation not in _UNAVAILABLE:
        previous = os.environ.get("GDPO_SANDBOX_ISOLATION")
        os.environ["GDPO_SANDBOX_ISOLATION"] = isolation
        try:
            sandbox.sandbox_info()
            _UNAVAILABLE[isolation] = None
        except SandboxError as exc:
            _UNAVAILABLE[isolation] = str(exc)
        finally:
            if previous is None:
                del os.environ["GDPO_SANDBOX_ISOLATION"]
            else:
                os.environ["GDPO_SANDBOX_ISOLATION"] = previous
    return _UNAVAILABLE[isolation]


@pytest.fixture(params=ISOLATIONS)
def isolation(request, monkeypatch) -> str:
    reason = _unavailable(request.param)
    if reason:
        pytest.skip(f"{request.param} isolation unavailable here: {reason}")
    monkeypatch.setenv("GDPO_SANDBOX_ISOLATION", request.param)
    return request.param


def _marker() -> str:
    return "sbx" + uuid.uuid4().hex[:10]  # fits the 15 characters of a process name


def _processes_named(name: str, zombies: bool = True) -> list[int]:
    """Pids whose process name (comm) is `name` (zombies, dead but not yet reaped, count unless told)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                    continue
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if zombies or state not in ("Z", "X"):
                found.append(int(pid))
    return found


SET_NAME = "import ctypes\nctypes.CDLL(None).prctl(15, {name!r}.encode(), 0, 0, 0)\n"


# ----- statuses -----


def test_ok_program_reads_stdin_and_writes_stdout(isolation):
    result = run_python("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", "1 2\n3\n")
    assert result.status == "ok"
    assert result.stdout == "6\n"
    assert result.stderr == ""
    assert result.returncode == 0
    assert 0 < result.duration_s < 5
    assert result.isolation == isolation
    assert not result.stdout_truncated and not result.stderr_truncated


def test_program_runs_like_python_solution_py(isolation):
    code = "import sys\nprint(__name__, __file__, sys.argv)\nprint(sys.flags.isolated, sys.flags.no_site)\nexit(0)"
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert result.stdout == "__main__ solution.py ['solution.py']\n1 1\n"


def test_syntax_error(isolation):
    result = run_python("def broken(:\n    pass\n")
    assert result.status == "error"
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr
    assert 'File "solution.py", line 1' in result.stderr
    assert "<string>" not in result.stderr  # the interpreter wrapper stays out of tracebacks


def test_runtime_exception_and_exit_codes(isolation):
    result = run_python("print('before')\n1 / 0\n")
    assert (result.status, result.returncode, result.stdout) == ("error", 1, "before\n")
    assert result.stderr.startswith('Traceback (most recent call last):\n  File "solution.py", line 2')
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    exited = run_python("import sys\nsys.exit(3)")
    assert (exited.status, exited.returncode) == ("error", 3)
    message = run_python("import sys\nsys.exit('bad input')")
    assert (message.status, message.returncode, message.stderr) == ("error", 1, "bad input\n")


def test_infinite_loop_times_out_at_the_limit(isolation):
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGKILL
    assert 1.0 <= result.duration_s < 3.0  # killed at the limit (a loaded machine adds teardown time)


def test_cpu_time_limit_is_a_timeout(isolation):
    code = "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True:\n    pass\n"
    result = run_python(code, timeout_s=5.0)
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGXCPU
    assert result.cpu_s >= 0.9 and result.duration_s < 4.0  # rusage counts in scheduler ticks


def test_memory_bomb(isolation):
    at_once = run_python("x = bytearray(4 << 30)\nprint('allocated')", memory_mb=128)
    assert at_once.status == "memory"
    assert at_once.stdout == ""
    assert at_once.stderr.rstrip().endswith("MemoryError")
    growing = run_python("chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 20))", memory_mb=128)
    assert growing.status == "memory"
    assert growing.max_rss_mb < 128


def test_other_signal_is_killed(isolation):
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (result.status, result.returncode) == ("killed", -signal.SIGSEGV)


def test_large_stdin_and_unicode(isolation):
    data = "é✓ " * 500_000  # 3 MB, far beyond a pipe buffer
    result = run_python("import sys\ntext = sys.stdin.read()\nprint(len(text), text[:3])", data)
    assert result.status == "ok", result.stderr
    assert result.stdout == "1500000 é✓ \n"
    ignored = run_python("print('no stdin read')", data)  # a program that never reads its stdin
    assert (ignored.status, ignored.stdout) == ("ok", "no stdin read\n")


def test_caller_backstop_kills_a_launcher_that_overruns(isolation, monkeypatch):
    """If the launcher ever overran, the caller's own deadline still returns and kills every process."""
    monkeypatch.setattr(sandbox, "_STARTUP_GRACE_S", 0.0)
    monkeypatch.setattr(sandbox, "_PER_CASE_SLACK_S", -1.0)  # fire before the launcher's own timeout
    name = _marker()
    code = SET_NAME.format(name=name) + "import os\nos.fork()\nwhile True:\n    pass\n"
    result = run_python(code, timeout_s=2.0)
    assert (result.status, result.returncode) == ("timeout", None)
    assert 1.0 <= result.duration_s < 2.0
    # Killed, but in the fallback the killed launcher's orphans are reaped by init, maybe a moment later.
    assert _processes_named(name, zombies=isolation == "namespace") == []
    assert not Path(result.workdir).exists()


# ----- processes -----


def test_fork_bomb_returns_and_leaves_no_process(isolation):
    name = _marker()
    code = SET_NAME.format(name=name) + textwrap.dedent(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    started = time.monotonic()
    result = run_python(code, timeout_s=1.0)
    assert time.monotonic() - started < 5.0
    assert result.status == "timeout"
    assert _processes_named(name) == []


def test_process_count_is_limited(isolation):
    code = textwrap.dedent(
        """
        import os, time
        forked = 0
        for _ in range(50):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forked += 1
            except OSError:
                break
        print(forked)
        """
    )
    result = run_python(code, max_processes=8)
    assert result.status == "ok", result.stderr
    assert result.stdout == "7\n"  # the program itself is the 8th


def test_daemonised_grandchild_is_killed(isolation):
    name = _marker()
    code = textwrap.dedent(
        f"""
        import os, time
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {SET_NAME.format(name=name).replace(chr(10), "; ")}
                os.write(ready_w, b"x")
                time.sleep(60)
            os._exit(0)
        os.read(ready_r, 1)
        print("daemon-ready")
        """
    )
    result = run_python(code, timeout_s=5.0)
    assert result.status == "ok", result.stderr
    assert result.stdout == "daemon-ready\n"
    assert result.duration_s < 4.5  # the daemon (sleeping 60 s) holding stdout does not delay the result
    assert _processes_named(name) == []


def test_cannot_kill_the_caller(isolation):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        code = textwrap.dedent(
            f"""
            import os, signal
            for target in (os.getppid(), {os.getpid()}, {bystander.pid}, -1):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError as exc:
                    print(target, type(exc).__name__)
            print("alive")
            """
        )
        result = run_python(code)
        assert result.status == "ok", result.stderr
        assert result.stdout.endswith("alive\n")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_cannot_tamper_with_the_launcher_or_the_kernel(isolation):
    """The launcher's reply pipe, memory and environment are out of reach; so are ptrace, mounts, namespaces."""
    code = textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        launcher = os.getppid()

        def forge():
            with open(f"/proc/{launcher}/fd/1", "wb") as reply:
                reply.write(b"case index=0 status=ok returncode=0 payload=0,0,0\\n")

        def syscall(result):
            if result != 0:
                raise OSError(ctypes.get_errno(), "refused")

        attempts = {
            "forge-reply": forge,
            "launcher-memory": lambda: open(f"/proc/{launcher}/mem", "rb").read(1),
            "launcher-environ": lambda: open(f"/proc/{launcher}/environ", "rb").read(),
            "ptrace": lambda: syscall(libc.ptrace(16, launcher, 0, 0)),
            "new-user-namespace": lambda: syscall(libc.unshare(0x10000000)),
            "mount": lambda: syscall(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
            # memory outside RLIMIT_AS: SysV shared memory would even outlive the run
            "sysv-shm": lambda: syscall(0 if libc.shmget(0, 1 << 20, 0o1666) >= 0 else -1),
            "sysv-semaphore": lambda: syscall(0 if libc.semget(0, 1, 0o1666) >= 0 else -1),
            "sysv-queue": lambda: syscall(0 if libc.msgget(0, 0o1666) >= 0 else -1),
            "memfd": lambda: os.memfd_create("x"),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                print(name, "succeeded")
            except OSError as exc:
                print(name, "refused", type(exc).__name__)
        status = open("/proc/self/status").read()
        print([line.split()[1] for line in status.splitlines() if line.split()[0] in ("CapEff:", "NoNewPrivs:")])
        """
    )
    result = run_python(code)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["refused"] * 10, result.stdout
    assert lines[-1] == "['0000000000000000', '1']"  # no capabilities, no_new_privs


def test_os_system_is_contained(isolation, tmp_path):
    target = tmp_path / "from_shell"
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        code = (
            f"import os\nos.system('echo from-shell; touch {target}; kill -9 {bystander.pid} {os.getpid()}')"
        )
        result = run_python(code)
        assert result.status == "ok", result.stderr
        assert result.stdout.startswith("from-shell\n")
        assert not target.exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# ----- output, environment, network, files -----


def test_huge_output_is_capped(isolation):
    code = "import sys\nsys.stdout.write('x' * (20 << 20))\nsys.stderr.write('e' * (3 << 20))"
    result = run_python(code, max_output_bytes=1 << 20)
    assert result.status == "ok"
    assert result.stdout == "x" * (1 << 20)
    assert result.stderr == "e" * (1 << 20)
    assert result.stdout_truncated and result.stderr_truncated


def test_endless_output_times_out_capped(isolation):
    result = run_python("while True:\n    print('y' * 1000)", timeout_s=1.0, max_output_bytes=10_000)
    assert result.status == "timeout"
    assert len(result.stdout) == 10_000 and result.stdout_truncated


def test_caller_environment_is_not_visible(isolation, monkeypatch):
    secret = "secret-" + uuid.uuid4().hex
    monkeypatch.setenv("GDPO_TEST_SECRET_TOKEN", secret)
    code = textwrap.dedent(
        f"""
        import os
        print(sorted(os.environ))
        for pid in ({os.getpid()}, os.getppid(), 1):
            try:
                print(open(f"/proc/{{pid}}/environ", "rb").read())
            except OSError as exc:
                print(pid, type(exc).__name__)
        """
    )
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert result.stdout.splitlines()[0] == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    assert secret not in result.stdout + result.stderr


def test_no_network(isolation):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        code = textwrap.dedent(
            f"""
            import socket
            attempts = {{
                "connect-caller": lambda s: s.connect(("127.0.0.1", {port})),
                "connect-internet": lambda s: s.connect(("1.1.1.1", 53)),
                "bind-loopback": lambda s: s.bind(("127.0.0.1", 0)),
                "bind-any": lambda s: s.bind(("0.0.0.0", 0)),
            }}
            for name, attempt in attempts.items():
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.settimeout(1)
                    attempt(sock)
                    print(name, "succeeded")
                except OSError as exc:
                    print(name, "failed", type(exc).__name__)
            """
        )
        result = run_python(code)
        assert result.status == "ok", result.stderr
        lines = result.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["connect-caller", "failed"],
            ["connect-internet", "failed"],
            ["bind-loopback", "failed"],
            ["bind-any", "failed"],
        ]
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_writes_outside_the_work_dir_have_no_effect(isolation, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("original")
    in_tmp = Path("/tmp") / f"gdpo-sandbox-escape-{uuid.uuid4().hex}"
    in_repo = REPO / f"sandbox-escape-{uuid.uuid4().hex}"
    code = textwrap.dedent(
        f"""
        import os
        for path in ({str(precious)!r}, {str(tmp_path / "new.txt")!r}, {str(in_tmp)!r}, {str(in_repo)!r}):
            try:
                with open(path, "w") as handle:
                    handle.write("overwritten")
                print("wrote", path)
            except OSError as exc:
                print("blocked", path, type(exc).__name__)
        with open("local.txt", "w") as handle:
            handle.write("fine")
        print(sorted(os.listdir(".")))
        """
    )
    try:
        result = run_python(code)
        assert result.status == "ok", result.stderr
        assert result.stdout.splitlines()[-1] == "['local.txt', 'solution.py']"
        assert precious.read_text() == "original"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
        assert not in_tmp.exists() and not in_repo.exists()
        if isolation == "namespace" or os.geteuid() != 0:
            # Nothing outside the work dir is writable there; the fallback as root may create files in
            # world-writable /tmp while it runs (removed afterwards, checked above).
            assert result.stdout.count("blocked") == 4
    finally:
        in_tmp.unlink(missing_ok=True)
        in_repo.unlink(missing_ok=True)


def test_work_dir_is_fresh_and_removed(isolation):
    code = "import os\nprint(sorted(os.listdir('.')))\nopen('out.txt', 'w').write('x')\nprint(os.getcwd())"
    result = run_python(code)
    assert result.status == "ok", result.stderr
    listing, cwd = result.stdout.splitlines()
    assert listing == "['solution.py']"
    assert cwd == ("/sandbox" if isolation == "namespace" else result.workdir)
    assert result.workdir and not Path(result.workdir).exists()


def test_hostile_work_dir_contents_are_removed(isolation, tmp_path):
    """Deep nesting, removed permissions and links out of the work dir do not stop or misdirect cleanup."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    code = textwrap.dedent(
        f"""
        import os
        os.symlink({str(outside)!r}, "link-out")
        os.mkdir("locked")
        open("locked/file", "w").write("x")
        os.chmod("locked", 0)
        for _ in range(2000):  # deeper than the recursion limit
            os.mkdir("d")
            os.chdir("d")
        print("built")
        """
    )
    results = run_tests(code, ["", ""])  # the launcher empties the dir between inputs, the caller at the end
    assert [(r.status, r.stdout) for r in results] == [("ok", "built\n"), ("ok", "built\n")], results[
        0
    ].stderr
    assert not Path(results[0].workdir).exists()
    assert (outside / "keep.txt").read_text() == "keep"


# ----- several inputs, many programs -----


def test_run_tests_gives_each_input_a_fresh_interpreter_and_dir(isolation):
    code = textwrap.dedent(
        """
        import os
        line = input()
        print("fresh" if not os.path.exists("state") else "stale", flush=True)
        open("state", "w").write(line)
        if line == "loop":
            while True:
                pass
        a, b = map(int, line.split())
        print(a + b)
        """
    )
    results = run_tests(code, ["1 2", "loop", "3 4", "x y"], timeout_s=1.0)
    assert [r.status for r in results] == ["ok", "timeout", "ok", "error"]
    assert [r.stdout for r in results] == ["fresh\n3\n", "fresh\n", "fresh\n7\n", "fresh\n"]
    assert "ValueError" in results[3].stderr
    assert run_tests(code, []) == []


def test_run_many_keeps_the_order(isolation):
    jobs = [f"print({i} * {i})" for i in range(4)]
    jobs += [
        ("print(input() * 2)", "ab\n"),
        {"code": "import time\ntime.sleep(0.2)\nprint('slow')", "timeout_s": 2},
    ]
    results = run_many(jobs, max_workers=3)
    assert [r.stdout for r in results] == ["0\n", "1\n", "4\n", "9\n", "abab\n", "slow\n"]
    assert all(r.status == "ok" for r in results)


def test_run_tests_many(isolation):
    programs = [("print(int(input()) + 1)", ["1", "2"]), ("print(int(input()) * 10)", ["3"])]
    results = run_tests_many(programs)
    assert [[r.stdout for r in suite] for suite in results] == [["2\n", "3\n"], ["30\n"]]


# ----- arguments, configuration -----


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("print(1)", memory_mb=8)
    with pytest.raises(TypeError, match="code must be a str"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        run_tests("print(1)", "1 2")
    with pytest.raises(TypeError, match="a job is"):
        run_many([42])  # type: ignore[list-item]


def test_configuration_errors_are_clear(monkeypatch):
    monkeypatch.setenv("GDPO_SANDBOX_ISOLATION", "chroot")
    with pytest.raises(SandboxError, match="auto, namespace or fallback"):
        run_python("print(1)")
    monkeypatch.setenv("GDPO_SANDBOX_WORKERS", "zero")
    with pytest.raises(SandboxError, match="positive integer"):
        sandbox.max_workers()
    monkeypatch.setenv("GDPO_SANDBOX_WORKERS", "3")
    assert sandbox.max_workers() == 3


def test_sandbox_info(isolation):
    info = sandbox.sandbox_info()
    assert info["isolation"] == isolation
    assert Path(info["python"]).is_file()
    assert info["max_workers"] == len(os.sched_getaffinity(0))


# ----- a caller that is not root -----

UNPRIVILEGED_SCRIPT = """
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("sandbox_under_test", sys.argv[1])
sandbox = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sandbox)
daemon = '''
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import ctypes
        ctypes.CDLL(None).prctl(15, sys_name, 0, 0, 0)
        time.sleep(60)
    os._exit(0)
print("parent done")
'''.replace("sys_name", repr(sys.argv[2].encode()))
network = "import socket\\ntry:\\n    socket.socket().connect(('1.1.1.1', 53))\\nexcept OSError as e:\\n    print(type(e).__name__)"
locked = "import os\\nos.mkdir('locked')\\nos.chmod('locked', 0)\\nos.chmod('.', 0o500)\\nprint('locked')"
results = [sandbox.run_python(code, timeout_s=2) for code in ("print(6 * 7)", daemon, network, locked)]
outcome = [[r.status, r.stdout, os.path.exists(r.workdir)] for r in results]
print(json.dumps([sandbox.sandbox_info()["isolation"], outcome]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a caller with another uid")
@pytest.mark.parametrize("requested", ISOLATIONS)
def test_unprivileged_caller(requested):
    """The paths a non-root caller gets (no private uids) still run, clean up and block the network."""
    if not os.access(sandbox.__file__, os.R_OK) or not (os.stat(sandbox.__file__).st_mode & 0o004):
        pytest.skip("gdpo/sandbox.py is not world-readable")
    name = _marker()
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = {"PATH": "/usr/bin:/bin", "GDPO_SANDBOX_ISOLATION": requested, "TMPDIR": "/tmp"}
    done = subprocess.run(
        [python, "-I", "-c", UNPRIVILEGED_SCRIPT, sandbox.__file__, name],
        user=65534,
        group=65534,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )
    if done.returncode != 0 and "SandboxError" in done.stderr and requested == "namespace":
        pytest.skip(f"namespace isolation unavailable to an unprivileged caller: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr
    used, results = json.loads(done.stdout.splitlines()[-1])
    assert used == requested
    expected = ["42\n", "parent done\n", "PermissionError\n", "locked\n"]
    assert results == [["ok", stdout, False] for stdout in expected]
    assert _processes_named(name) == []
