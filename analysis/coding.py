"""Coding results: eval summaries -> Table 5-style Pass / Exceed / Bug tables; the paper's numbers.

Run folders are named by variant (experiments/coding/reproduce.py): ``grpo``, ``gdpo`` (two objectives:
R_pass + R~_length) and ``grpo-3obj``, ``gdpo-3obj`` (plus R_bug).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.runs import eval_loader

__all__ = ["METRICS", "PAPER_TABLE5_R1_7B", "load_evals", "table_columns"]

METRICS = ("pass", "exceed", "bug")
# Paper Table 5 (DeepSeek-R1-7B), in %, Pass/Exceed/Bug per benchmark (docs/paper-notes.md §9.5; Taco's Exceed
# and Bug are not known: NaN).
_NAN = float("nan")
PAPER_TABLE5_R1_7B = pd.DataFrame(
    {
        "apps_pass": [28.1, 67.2, 68.3, 68.1, 67.8],
        "apps_exceed": [73.9, 5.2, 5.0, 11.2, 8.5],
        "apps_bug": [32.9, 25.0, 23.5, 20.3, 18.8],
        "codecontests_pass": [47.3, 63.2, 65.8, 65.6, 65.6],
        "codecontests_exceed": [83.0, 14.2, 14.3, 19.3, 15.8],
        "codecontests_bug": [29.7, 14.1, 13.2, 3.9, 2.5],
        "codeforces_pass": [46.5, 68.1, 71.2, 69.5, 69.4],
        "codeforces_exceed": [82.8, 18.1, 18.4, 16.9, 13.6],
        "codeforces_bug": [27.8, 7.0, 5.6, 2.5, 1.8],
        "taco_pass": [28.1, 45.1, 48.4, 44.4, 45.1],
        "taco_exceed": [_NAN] * 5,
        "taco_bug": [_NAN] * 5,
    },
    index=["base", "grpo", "gdpo", "grpo-3obj", "gdpo-3obj"],
)


def table_columns(benchmarks: Sequence[str]) -> list[str]:
    return [f"{b}_{metric}" for b in benchmarks for metric in METRICS]


def _row(summary: dict) -> dict:
    return {
        f"{bench}_{metric}": values[metric]
        for bench, values in summary.items()
        if bench != "settings"
        for metric in METRICS
    }


load_evals = eval_loader(
    "coding",
    _row,
    "Rows (method = variant folder, seed, ``<bench>_pass``, ``_exceed``, ``_bug`` in %) of every evaluated run.",
)
