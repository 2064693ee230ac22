"""The collapse analysis: Figure 2 table values, and the notebook executed headlessly end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.collapse import figure2_table
from analysis.run_notebook import REPO_ROOT, run_notebook


def test_figure2_table_values():
    table = figure2_table().set_index(["case", "method"])
    assert table.loc[("totals (0,2)", "gdpo"), "adv_rollout2"] == 1.4142
    assert table.loc[("totals (0,2)", "grpo"), "adv_rollout2"] == 0.7071
    assert table.loc[("totals (0,2)", "grpo_no_std"), "adv_rollout2"] == 1.0
    assert table.loc[("totals (0,1)", "grpo_no_std"), "adv_rollout1"] == -0.5
    assert (table.loc["totals (1,1), (1,0)+(0,1)", ["adv_rollout1", "adv_rollout2"]] == 0).all().all()
    # GRPO collapses (0,1), (0,2), (1,2) onto one pattern; GDPO keeps two.
    nontrivial = table.loc[["totals (0,1)", "totals (0,2)", "totals (1,2)"]].reset_index()
    distinct = nontrivial.groupby("method")["adv_rollout2"].nunique()
    assert distinct.to_dict() == {"gdpo": 2, "grpo": 1, "grpo_no_std": 2}


def test_collapse_notebook_runs_headlessly_and_writes_outputs(tmp_path):
    executed = run_notebook(REPO_ROOT / "analysis/notebooks/collapse.ipynb", tmp_path)
    assert executed.exists()
    for name in ("figure2_toy_advantages.png", "figure3_distinct_groups.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    counts = pd.read_csv(tmp_path / "figure3_distinct_groups.csv")
    assert len(counts) == 3 * (15 + 7)
    assert (counts["count"] == counts["paper"]).all()
    gdpo16 = counts[(counts["panel"] == "rollouts") & (counts["G"] == 16) & (counts["method"] == "gdpo")]
    assert gdpo16["count"].item() == 497
    toy = pd.read_csv(tmp_path / "figure2_toy_advantages.csv")
    assert len(toy) == 15


def test_notebook_without_parameters_cell_is_rejected(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "plain.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="no cell is tagged 'parameters'"):
        run_notebook(path, tmp_path / "out")
