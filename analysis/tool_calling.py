"""Tool-calling results: eval summaries -> the paper's Table 1/2 columns; run logs -> Figure 4 and Figure 1b."""

from __future__ import annotations

import pandas as pd

from analysis.runs import eval_loader

__all__ = ["PAPER_TABLE1_1P5B", "TABLE_COLUMNS", "eval_row", "load_evals"]

# Paper Table 1 (Qwen2.5-Instruct-1.5B; GRPO w/o std from Table 2), in %: Live, Multi-turn, Non-live, Avg, Correct format.
PAPER_TABLE1_1P5B = pd.DataFrame(
    {
        "live": [37.89, 50.63, 47.19, 55.36],
        "multi_turn": [0.12, 2.04, 1.47, 2.50],
        "non_live": [15.63, 37.87, 39.11, 40.58],
        "avg": [17.88, 30.18, 29.26, 32.81],
        "correct_format": [4.74, 76.33, 0.0, 80.66],
    },
    index=["base", "grpo", "grpo_no_std", "gdpo"],
)
TABLE_COLUMNS = [
    "live",
    "multi_turn",
    "non_live",
    "avg",
    "avg_live_non_live",
    "correct_format",
    "test_format",
    "test_correctness",
    "test_format_sampled",
    "test_correctness_sampled",
]


def eval_row(summary: dict) -> dict:
    """One row of the table from an eval ``summary.json`` (BFCL in %, the synthetic test split's rewards:
    greedy, and sampled at the training temperature)."""
    bfcl, synthetic, sampled = summary["bfcl"], summary["synthetic"], summary["synthetic_sampled"]
    return {
        "live": bfcl["live"],
        "multi_turn": bfcl["multi_turn"],
        "non_live": bfcl["non_live"],
        "avg": bfcl["avg"],
        "avg_live_non_live": bfcl["avg_live_non_live"],
        "correct_format": bfcl["correct_format"],
        "test_format": 100 * synthetic["format/mean"],
        "test_correctness": synthetic["correctness/mean"],
        "test_format_sampled": 100 * sampled["format/mean"],
        "test_correctness_sampled": sampled["correctness/mean"],
    }


load_evals = eval_loader(
    "tool_calling",
    eval_row,
    "Rows (method, seed, table columns) for every evaluated run, plus the base model as method 'base'.",
)
