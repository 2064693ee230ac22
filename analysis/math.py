"""Math results: eval summaries -> Table 3/4-style Acc/Exceed tables and the w_length sweep; the paper's numbers.

Run folders are named by variant (experiments/math/reproduce.py): ``grpo``, ``gdpo`` (R_length),
``grpo-condlen``, ``gdpo-condlen`` (R~_length, Eq. 8), and ``<variant>-w<weight>`` for the weight sweep.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.runs import eval_loader, paper_numbers, save_figure

__all__ = [
    "PAPER_BENCHMARKS",
    "load_evals",
    "paper_table",
    "parse_variant",
    "plot_sweep",
    "sweep_table",
    "table_columns",
]

# The paper's benchmarks MATH, AIME, AMC, Minerva, OlympiadBench under our benchmark names.
PAPER_BENCHMARKS = ("math500", "aime24", "amc", "minerva", "olympiad")
# Paper Table 3 (R_length) and Table 4's R~_length rows (DeepSeek-R1-7B only), in %, per preset: each row holds
# Acc, Exceed for each benchmark in PAPER_BENCHMARKS order. Minerva's R1-1.5B base Acc is printed "38.41.%".
_PAPER_ROWS = {
    "paper-r1-1.5b": {
        "base": [84.3, 35.0, 29.8, 91.5, 62.0, 67.5, 38.41, 51.4, 44.1, 70.1],
        "grpo": [83.6, 1.5, 23.1, 10.8, 64.5, 3.2, 43.5, 1.7, 44.3, 2.6],
        "gdpo": [86.2, 0.8, 29.4, 6.5, 69.0, 2.3, 44.0, 0.3, 46.6, 1.9],
    },
    "paper-r1-7b": {
        "base": [93.6, 26.0, 55.4, 85.6, 82.9, 57.2, 49.8, 41.8, 58.2, 60.6],
        "grpo": [94.1, 0.5, 50.2, 2.1, 83.8, 0.6, 53.2, 0.2, 60.2, 1.1],
        "gdpo": [93.9, 0.1, 53.1, 0.2, 84.0, 0.3, 53.8, 0.1, 59.7, 0.4],
        "grpo-condlen": [93.2, 2.7, 53.3, 29.2, 82.9, 8.6, 53.2, 2.5, 59.1, 10.3],
        "gdpo-condlen": [93.9, 1.4, 57.7, 12.3, 85.9, 3.8, 53.4, 1.0, 60.8, 6.2],
    },
    "paper-qwen3-4b": {
        "base": [94.6, 11.3, 63.7, 71.3, 84.5, 33.9, 50.7, 9.1, 65.7, 41.3],
        "grpo": [93.9, 0.8, 54.6, 2.5, 85.2, 0.7, 52.4, 0.3, 66.8, 1.6],
        "gdpo": [93.9, 0.1, 56.9, 0.1, 84.3, 0.1, 51.9, 0.1, 67.5, 1.0],
    },
}
_PAPER_CAPTIONS = {
    "paper-r1-1.5b": "The paper's Table 3, DeepSeek-R1-1.5B, 500 steps, in %",
    "paper-r1-7b": "The paper's Table 3 and Table 4 (R~_length rows), DeepSeek-R1-7B, 500 steps, in %",
    "paper-qwen3-4b": "The paper's Table 3, Qwen3-4B-Instruct, 500 steps, in %",
}


def paper_table(preset: str) -> tuple[str, pd.DataFrame]:
    """A caption and the paper's numbers for ``preset`` (Table 3, and Table 4's R~_length rows for R1-7B), with
    the columns of our tables. A preset the paper has no run of (``tiny``) gets R1-7B's, and the caption says so."""
    columns = table_columns(PAPER_BENCHMARKS)
    return paper_numbers(preset, _PAPER_ROWS, columns, _PAPER_CAPTIONS, fallback="paper-r1-7b")


_VARIANT = re.compile(r"^(?P<method>[a-z_]+?)(?P<cond>-condlen)?(?:-w(?P<weight>[0-9.]+))?$")


def parse_variant(name: str) -> dict:
    """``"gdpo-condlen-w0.5"`` -> method gdpo, conditioned True, weight 0.5 (1.0 when absent)."""
    match = _VARIANT.match(name)
    if not match:
        raise ValueError(f"not a math run variant: {name!r}")
    weight = match["weight"]
    return {"method": match["method"], "conditioned": bool(match["cond"]), "weight": float(weight or 1.0)}


def table_columns(benchmarks: Sequence[str]) -> list[str]:
    return [f"{b}_{metric}" for b in benchmarks for metric in ("acc", "exceed")]


def _row(summary: dict) -> dict:
    out = {}
    for bench, s in summary.items():
        out[f"{bench}_acc"], out[f"{bench}_exceed"] = s["acc"], s["exceed"]
    return out


load_evals = eval_loader(
    "math",
    _row,
    "Rows (method = variant folder, seed, ``<bench>_acc``, ``<bench>_exceed`` in %) of every evaluated run.",
)


FIGURE6_BENCHMARKS = ("math500", "aime24")  # the paper's Figure 6 plots averages over MATH and AIME


def sweep_table(evals: pd.DataFrame, benchmarks: Sequence[str]) -> pd.DataFrame:
    """Mean over seeds and benchmarks of Acc and Exceed per (method, conditioned, weight): Figure 6's points.

    The benchmarks averaged are MATH500 and AIME where ``benchmarks`` has them (as in the paper's figure),
    otherwise all of ``benchmarks`` (the tiny preset's synthetic set)."""
    benchmarks = [b for b in FIGURE6_BENCHMARKS if b in benchmarks] or list(benchmarks)
    rows = evals[evals["method"] != "base"].copy()
    parsed = pd.DataFrame([parse_variant(v) for v in rows["method"]], index=rows.index)
    rows = pd.concat([rows.drop(columns="method"), parsed], axis=1)
    rows["acc"] = rows[[f"{b}_acc" for b in benchmarks]].mean(axis=1)
    rows["exceed"] = rows[[f"{b}_exceed" for b in benchmarks]].mean(axis=1)
    grouped = rows.groupby(["method", "conditioned", "weight"])
    return grouped[["acc", "exceed"]].mean().join(grouped["seed"].nunique().rename("seeds")).reset_index()


def plot_sweep(sweep: pd.DataFrame, path: str | Path) -> Path:
    """Figure 6 style: Acc and Exceed against w_length, one line per (method, reward variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (method, conditioned), rows in sweep.groupby(["method", "conditioned"]):
        rows = rows.sort_values("weight")
        label = f"{method.upper()} ({'conditioned length' if conditioned else 'length'})"
        for ax, metric in zip(axes, ("acc", "exceed")):
            ax.plot(rows["weight"], rows[metric], marker="o", label=label)
    for ax, title in zip(axes, ("accuracy (%)", "exceed ratio (%)")):
        ax.set(title=title, xlabel="w_length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
