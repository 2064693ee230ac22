"""The README's paper-run commands: every preset they name exists, and every benchmark source they give is a
benchmark of the task under the hub name its loader reads by default."""

from __future__ import annotations

import re
import shlex

from experiments.coding.reproduce import PAPER_BENCHMARKS as CODE_BENCHMARKS
from experiments.reproduce import config_path
from gdpo.data.code_data import HUB_NAMES
from gdpo.data.math_data import HUB_DEFAULTS
from tests.conftest import REPO

TASK_OF_TARGET = {"tool": "tool_calling", "math": "math", "math-sweep": "math", "code": "coding"}
KNOWN_SOURCES = {
    "math": {name: HUB_DEFAULTS[name] for name in ("amc", "olympiad")},
    "coding": {name: HUB_NAMES[name] for name in CODE_BENCHMARKS if name in HUB_NAMES},
}


def test_paper_run_commands_name_real_presets_and_the_loaders_hub_sources():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(
        r"`((?:RAY_AUTH_MODE=token RAY_ADDRESS=auto )?make reproduce-[a-z-]+ PRESET=paper[^`]*)`", readme
    )
    on_cluster = [c for c in commands if c.startswith("RAY_AUTH_MODE=token RAY_ADDRESS=auto ")]
    assert len(on_cluster) >= 5
    for command in on_cluster:  # each with its one-node twin
        assert command.removeprefix("RAY_AUTH_MODE=token RAY_ADDRESS=auto ") in commands
    for command in commands:
        words = shlex.split(command)
        target = next(w for w in words if w.startswith("reproduce-")).removeprefix("reproduce-")
        task = TASK_OF_TARGET[target]
        preset = next(w for w in words if w.startswith("PRESET=")).split("=", 1)[1]
        assert config_path(task, preset).exists()
        args = next((w.split("=", 1)[1].split() for w in words if w.startswith("REPRODUCE_ARGS=")), [])
        for pair in (a for a in args if "=" in a):
            name, source = pair.split("=", 1)
            assert KNOWN_SOURCES[task][name] == source, command


def test_every_table_row_of_the_readme_has_its_headers_cells():
    wrong, width = [], None
    for number, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if not line.startswith("|"):
            width = None  # the next table starts with its header
            continue
        cells = len(line.strip().strip("|").split("|"))
        width = width or cells
        if cells != width:
            wrong.append((number, line[:60]))
    assert wrong == []
