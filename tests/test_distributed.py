"""Process-group set-up (``gdpo.distributed``) as seen from processes that start other processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

REPORT = "import json, os, torch; from gdpo.distributed import init_distributed; "
REPORT += 'print(json.dumps([init_distributed(torch.device("cpu")), os.environ["MASTER_PORT"]]))'


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_child_of_a_process_with_a_world_of_one_starts_its_own(subprocess_env):
    # A notebook that ran ``train`` and then starts a train.py: the child inherits RANK, MASTER_PORT, ...; it
    # must not take them for a launcher's and try to listen on the port its parent's world holds.
    parent = textwrap.dedent(
        f"""
        import json, os, subprocess, sys, torch
        from gdpo.distributed import init_distributed
        world = init_distributed(torch.device("cpu"))
        child = subprocess.run([sys.executable, "-c", {REPORT!r}], capture_output=True, text=True)
        assert child.returncode == 0, child.stderr[-3000:]
        print(json.dumps([world, os.environ["MASTER_PORT"], json.loads(child.stdout.splitlines()[-1])]))
        """
    )
    result = _python(parent, subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    world, port, (child_world, child_port) = json.loads(result.stdout.splitlines()[-1])
    assert world == child_world == [0, 1]
    assert child_port != port


def test_a_launchers_settings_are_kept_even_beside_an_inherited_mark(subprocess_env):
    # torchrun started from such a process: its RANK/MASTER_PORT win over the mark the parent left.
    from gdpo.distributed import LONE_WORLD_ENV, _free_port

    port = str(_free_port())
    env = dict(
        subprocess_env,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        **{LONE_WORLD_ENV: "1"},  # the parent's (another) port
    )
    result = _python(REPORT, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [[0, 1], port]
