"""Math results: eval summaries -> Table 3/4-style Acc/Exceed tables and the w_length sweep; the paper's numbers.

Run folders are named by variant (experiments/math/reproduce.py): ``grpo``, ``gdpo`` (R_length),
``grpo-condlen``, ``gdpo-condlen`` (R~_length, Eq. 8), and ``<variant>-w<weight>`` for the weight sweep.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.runs import eval_loader, save_figure

__all__ = ["PAPER_TABLE4_R1_7B", "load_evals", "parse_variant", "plot_sweep", "sweep_table", "table_columns"]

# Paper Table 4 (DeepSeek-R1-7B), in %: Acc and Exceed per benchmark; the R_length columns are Table 3's.
PAPER_TABLE4_R1_7B = pd.DataFrame(
    {
        "math_acc": [93.6, 94.1, 93.9, 93.2, 93.9],
        "math_exceed": [26.0, 0.5, 0.1, 2.7, 1.4],
        "aime_acc": [55.4, 50.2, 53.1, 53.3, 57.7],
        "aime_exceed": [85.6, 2.1, 0.2, 29.2, 12.3],
        "amc_acc": [82.9, 83.8, 84.0, 82.9, 85.9],
        "amc_exceed": [57.2, 0.6, 0.3, 8.6, 3.8],
        "minerva_acc": [49.8, 53.2, 53.8, 53.2, 53.4],
        "minerva_exceed": [41.8, 0.2, 0.1, 2.5, 1.0],
        "olympiad_acc": [58.2, 60.2, 59.7, 59.1, 60.8],
        "olympiad_exceed": [60.6, 1.1, 0.4, 10.3, 6.2],
    },
    index=["base", "grpo", "gdpo", "grpo-condlen", "gdpo-condlen"],
)
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
