"""Tool-calling results: eval summaries -> the paper's Table 1/2 columns; run logs -> Figure 4 and Figure 1b."""

from __future__ import annotations

import pandas as pd

from analysis.runs import eval_loader, paper_numbers

__all__ = ["TABLE_COLUMNS", "eval_row", "load_evals", "paper_table"]

# Paper Table 1 (GRPO w/o std from Table 2, 1.5B only), in %, per preset: Live, Multi-turn, Non-live, Avg,
# Correct format.
_PAPER_COLUMNS = ["live", "multi_turn", "non_live", "avg", "correct_format"]
_PAPER_ROWS = {
    "paper-qwen2.5-1.5b": {
        "base": [37.89, 0.12, 15.63, 17.88, 4.74],
        "grpo": [50.63, 2.04, 37.87, 30.18, 76.33],
        "grpo_no_std": [47.19, 1.47, 39.11, 29.26, 0.0],
        "gdpo": [55.36, 2.50, 40.58, 32.81, 80.66],
    },
    "paper-qwen2.5-3b": {
        "base": [63.57, 1.38, 30.75, 31.90, 58.37],
        "grpo": [69.23, 3.14, 45.24, 39.20, 81.64],
        "gdpo": [71.22, 4.59, 46.79, 40.87, 82.23],
    },
}
_PAPER_CAPTIONS = {
    "paper-qwen2.5-1.5b": "The paper's Table 1 (GRPO w/o std from Table 2), Qwen2.5-Instruct-1.5B, 100 steps, in %",
    "paper-qwen2.5-3b": "The paper's Table 1, Qwen2.5-Instruct-3B, 100 steps, in %",
}


def paper_table(preset: str) -> tuple[str, pd.DataFrame]:
    """A caption and the paper's Table 1 rows for ``preset`` (with Table 2's GRPO w/o std row for 1.5B), with
    the columns of our table. A preset the paper has no run of (``tiny``) gets 1.5B's, and the caption says so."""
    return paper_numbers(preset, _PAPER_ROWS, _PAPER_COLUMNS, _PAPER_CAPTIONS, fallback="paper-qwen2.5-1.5b")


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
