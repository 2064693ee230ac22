"""The paper's advantage-collapse analysis: Figure 2 (toy example) and Figure 3 (distinct groups).

All numbers come from :mod:`gdpo.advantages` and :mod:`gdpo.diagnostics`; this module only arranges
them into tables and plots. The notebook ``analysis/notebooks/collapse.ipynb`` calls these functions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from analysis.runs import save_figure
from gdpo.advantages import compute_advantages
from gdpo.diagnostics import count_distinct_advantage_groups

METHODS = ("grpo", "grpo_no_std", "gdpo")
METHOD_LABELS = {"grpo": "GRPO", "grpo_no_std": "GRPO w/o std", "gdpo": "GDPO"}

# The paper's Figure 2 cases: two binary rewards, two rollouts; (r1, r2) of rollout 1 and rollout 2.
FIGURE2_CASES = {
    "totals (0,1)": ((0, 0), (1, 0)),
    "totals (0,2)": ((0, 0), (1, 1)),
    "totals (1,2)": ((1, 0), (1, 1)),
    "totals (1,1), same composition": ((1, 0), (1, 0)),
    "totals (1,1), (1,0)+(0,1)": ((1, 0), (0, 1)),
}

# Figure 3 as printed in the paper (read from the figure) and extended by enumeration beyond its
# plotted range (docs/paper-notes.md §3). ``PLOTTED_*`` give the last value the paper's plot shows.
PAPER_FIGURE3_ROLLOUTS = {  # two binary rewards, G = 2..16
    "grpo": [2, 4, 7, 11, 16, 22, 29, 37, 46, 56, 67, 79, 92, 106, 121],
    "grpo_no_std": [3, 6, 10, 15, 21, 28, 36, 45, 55, 66, 78, 91, 105, 120, 136],
    "gdpo": [3, 6, 14, 26, 38, 59, 81, 109, 145, 186, 230, 288, 350, 419, 497],
}
PAPER_FIGURE3_REWARDS = {  # G = 4 rollouts, n = 2..8 binary rewards
    "grpo": [7, 14, 23, 41, 56, 89, 119],
    "grpo_no_std": [10, 20, 35, 56, 84, 120, 165],
    "gdpo": [14, 45, 127, 318, 722, 1507, 2929],
}
PLOTTED_MAX_ROLLOUTS = {"grpo": 16, "grpo_no_std": 16, "gdpo": 11}
PLOTTED_MAX_REWARDS = {"grpo": 8, "grpo_no_std": 8, "gdpo": 6}


def figure2_table(*, eps: float = 1e-6, unbiased: bool = True) -> pd.DataFrame:
    """Advantages of the toy cases for every method, before GDPO's batch step (as the figure)."""
    rows = []
    for case, rollouts in FIGURE2_CASES.items():
        rewards = torch.tensor([rollouts], dtype=torch.float64)  # [1, 2, 2]
        for method in METHODS:
            adv = compute_advantages(rewards, method, eps=eps, unbiased=unbiased, batch_norm="none")[0]
            rows.append(
                {
                    "case": case,
                    "rollout1_rewards": str(rollouts[0]),
                    "rollout2_rewards": str(rollouts[1]),
                    "method": method,
                    "adv_rollout1": round(adv[0].item(), 4),
                    "adv_rollout2": round(adv[1].item(), 4),
                }
            )
    return pd.DataFrame(rows)


def figure3_counts(
    rollouts: range = range(2, 17), rewards: range = range(2, 9), methods: tuple[str, ...] = METHODS
) -> pd.DataFrame:
    """Distinct advantage groups: panel "rollouts" (n=2, G varies) and panel "rewards" (G=4, n varies).

    Columns: panel, G, n, method, count, paper (the paper's value where known), plotted (whether the
    paper's figure shows that point).
    """
    rows = []
    for method in methods:
        for g in rollouts:
            paper = _paper_value(PAPER_FIGURE3_ROLLOUTS, method, g - 2)
            rows.append(_count_row("rollouts", g, 2, method, paper, g <= PLOTTED_MAX_ROLLOUTS[method]))
        for n in rewards:
            paper = _paper_value(PAPER_FIGURE3_REWARDS, method, n - 2)
            rows.append(_count_row("rewards", 4, n, method, paper, n <= PLOTTED_MAX_REWARDS[method]))
    return pd.DataFrame(rows)


def _paper_value(table: dict[str, list[int]], method: str, index: int) -> int | None:
    values = table.get(method, [])
    return values[index] if 0 <= index < len(values) else None


def _count_row(panel: str, g: int, n: int, method: str, paper: int | None, plotted: bool) -> dict:
    count = count_distinct_advantage_groups(g, n, method)
    return {
        "panel": panel,
        "G": g,
        "n": n,
        "method": method,
        "count": count,
        "paper": paper,
        "plotted": plotted,
    }


def plot_figure2(table: pd.DataFrame, path: str | Path) -> Path:
    """Bar chart of the toy advantages: one panel per method, two bars (rollouts) per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(table["case"]))
    fig, axes = plt.subplots(1, len(METHODS), figsize=(14, 4.2), sharey=True)
    for ax, method in zip(axes, METHODS, strict=True):
        sub = table[table["method"] == method].set_index("case").loc[cases]
        x = range(len(cases))
        ax.bar([i - 0.2 for i in x], sub["adv_rollout1"], width=0.4, label="rollout 1")
        ax.bar([i + 0.2 for i in x], sub["adv_rollout2"], width=0.4, label="rollout 2")
        for i, pair in enumerate(zip(sub["adv_rollout1"], sub["adv_rollout2"], strict=True)):
            if pair == (0.0, 0.0):
                ax.annotate("0, 0", (i, 0.02), ha="center", va="bottom", fontsize=7)
                continue
            for offset, a in zip((-0.2, 0.2), pair, strict=True):
                ax.annotate(
                    f"{a:+.4f}", (i + offset, a), ha="center", va="bottom" if a >= 0 else "top", fontsize=7
                )
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(list(x), [c.replace(", ", ",\n") for c in cases], fontsize=7)
        ax.set_title(METHOD_LABELS[method])
    axes[0].set_ylabel("advantage (before batch step)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 2: two binary rewards, two rollouts")
    return save_figure(fig, path, dpi=150)


def plot_figure3(counts: pd.DataFrame, path: str | Path) -> Path:
    """Both panels of Figure 3: distinct advantage groups vs G (n=2) and vs n (G=4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        by_g = counts[(counts["panel"] == "rollouts") & (counts["method"] == method)]
        by_n = counts[(counts["panel"] == "rewards") & (counts["method"] == method)]
        left.plot(by_g["G"], by_g["count"], marker="o", label=METHOD_LABELS[method])
        right.plot(by_n["n"], by_n["count"], marker="o", label=METHOD_LABELS[method])
    left.set(xlabel="number of rollouts G (2 binary rewards)", ylabel="distinct advantage groups")
    right.set(xlabel="number of binary rewards n (G = 4)", ylabel="distinct advantage groups", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Figure 3: distinct advantage groups")
    return save_figure(fig, path, dpi=150)
