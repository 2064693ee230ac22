"""analysis.runs on run folders with known values."""

from __future__ import annotations

import pytest

from analysis.runs import (
    final_steps,
    load_runs,
    plot_bands,
    seed_bands,
    seed_table,
    to_latex,
    to_markdown,
    write_frame,
    write_table,
)
from gdpo.runlog import RunLog

# reward/format/mean at steps 1..3 for seeds 0..3 of each method
VALUES = {
    "grpo": [[0.0, 0.1, 0.2], [0.0, 0.2, 0.4], [0.0, 0.3, 0.6], [0.0, 0.4, 0.8]],
    "gdpo": [[0.1, 0.5, 0.9], [0.1, 0.5, 0.7], [0.1, 0.5, 0.8], [0.1, 0.5, 1.0]],
}


@pytest.fixture
def root(tmp_path):
    for method, seeds in VALUES.items():
        for seed, values in enumerate(seeds):
            log = RunLog(tmp_path / "tool_calling" / "tiny" / method / f"seed{seed}")
            for step, value in enumerate(values, 1):
                log.log_metrics(step, {"reward/format/mean": value, "loss": float(seed)})
    (tmp_path / "tool_calling" / "tiny" / "grpo_no_std" / "seed0").mkdir(parents=True)
    (tmp_path / "tool_calling" / "tiny" / "grpo_no_std" / "seed0" / "metrics.jsonl").write_text("")
    return tmp_path


def test_load_runs(root):
    runs = load_runs(root, task="tool_calling")
    assert len(runs) == 2 * 4 * 3
    assert set(runs.columns) >= {"task", "preset", "method", "seed", "step", "reward/format/mean"}
    assert runs.attrs["skipped"] == [str(root / "tool_calling/tiny/grpo_no_std/seed0")]
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        load_runs(root, task="math")


def test_load_runs_and_summaries_of_named_runs_only(root):
    import json

    from analysis.runs import load_eval_summaries

    runs = load_runs(root, task="tool_calling", preset="tiny", runs=["gdpo/seed1", "grpo/seed3"])
    assert sorted(set(zip(runs["method"], runs["seed"]))) == [("gdpo", 1), ("grpo", 3)]
    assert list(runs[runs["method"] == "grpo"]["reward/format/mean"]) == [0.0, 0.4, 0.8]
    with pytest.raises(
        FileNotFoundError, match=r"1 of the requested runs have no metrics.jsonl: .*gdpo/seed9"
    ):
        load_runs(root, task="tool_calling", preset="tiny", runs=["gdpo/seed0", "gdpo/seed9"])
    with pytest.raises(ValueError, match="needs the task and the preset"):
        load_runs(root, runs=["gdpo/seed0"])
    for method, seed in (("gdpo", 0), ("grpo", 2)):
        summary = root / "tool_calling" / "tiny" / method / f"seed{seed}" / "eval" / "summary.json"
        summary.parent.mkdir()
        summary.write_text(json.dumps({"acc": 10.0 * seed}))
    rows = load_eval_summaries(root, "tool_calling", "tiny", lambda s: s, runs=["grpo/seed2"])
    assert rows.to_dict("records") == [{"method": "grpo", "seed": 2, "acc": 20.0}]
    assert len(load_eval_summaries(root, "tool_calling", "tiny", lambda s: s)) == 2


def test_seed_bands_median_and_iqr(root):
    bands = seed_bands(load_runs(root), "reward/format/mean").set_index(["method", "step"])
    # GRPO step 3 over seeds: 0.2, 0.4, 0.6, 0.8 -> median 0.5, q25 0.35, q75 0.65 (linear interpolation)
    assert bands.loc[("grpo", 3), "median"] == pytest.approx(0.5)
    assert bands.loc[("grpo", 3), "q25"] == pytest.approx(0.35)
    assert bands.loc[("grpo", 3), "q75"] == pytest.approx(0.65)
    assert bands.loc[("gdpo", 3), "median"] == pytest.approx(0.85)
    assert bands.loc[("gdpo", 2), "q25"] == bands.loc[("gdpo", 2), "q75"] == pytest.approx(0.5)
    assert bands.loc[("gdpo", 1), "seeds"] == 4
    with pytest.raises(KeyError, match="'nope'"):
        seed_bands(load_runs(root), "nope")


def test_final_table_and_markdown(root):
    final = final_steps(load_runs(root))
    assert sorted(final["step"].unique()) == [3]
    table = seed_table(final, ["reward/format/mean"])
    assert list(table.index) == ["grpo", "gdpo"]
    assert table.loc["gdpo", ("reward/format/mean", "mean")] == pytest.approx(0.85)
    assert table.loc["grpo", ("reward/format/mean", "std")] == pytest.approx(
        0.2581988897
    )  # sample std of .2,.4,.6,.8
    md = to_markdown(table, scale=100, digits=1)
    assert "| GRPO | 50.0 ± 25.8 | 4 |" in md and "| GDPO | 85.0 ± 12.9 | 4 |" in md


def test_seed_table_counts_rows_and_refuses_a_column_measured_for_some_seeds_only():
    import math

    import pandas as pd

    rows = pd.DataFrame(
        {
            "method": ["gdpo"] * 3 + ["base"],
            "a": [1.0, 2.0, 3.0, 5.0],
            "unmeasured": [math.nan] * 4,  # e.g. a benchmark no run was given: stays empty
        }
    )
    table = seed_table(rows, ["unmeasured", "a"])  # the count does not come from the first column
    assert table[("seeds", "")].to_dict() == {"base": 1, "gdpo": 3}
    assert "| GDPO | n/a | 2.00 ± 1.00 | 3 |" in to_markdown(table)
    rows["b"] = [1.0, math.nan, math.nan, 4.0]
    with pytest.raises(ValueError, match=r"method 'gdpo': 'b' has values for 1 of its 3 rows"):
        seed_table(rows, ["a", "b"])


def test_summaries_and_folders_that_make_no_row_are_named(root):
    from analysis.runs import load_eval_summaries

    summary = root / "tool_calling" / "tiny" / "gdpo" / "seed0" / "eval" / "summary.json"
    summary.parent.mkdir()
    summary.write_text('{"items": 0}')
    with pytest.raises(ValueError, match=r"gdpo/seed0/eval/summary.json: cannot make a table row .*'pass'"):
        load_eval_summaries(root, "tool_calling", "tiny", lambda s: {"pass": s["pass"]})
    (root / "tool_calling" / "tiny" / "gdpo" / "seed0_old").mkdir()
    (root / "tool_calling" / "tiny" / "gdpo" / "seed0_old" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=r"gdpo/seed0_old: a run folder is named seed<integer>"):
        load_runs(root, task="tool_calling")


def test_plot_bands_writes_a_png_and_a_vector_pdf(root, tmp_path):
    path = plot_bands(load_runs(root), ["reward/format/mean", "loss"], tmp_path / "fig" / "bands.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = path.with_suffix(".pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and b"/Subtype /Image" not in pdf  # vector paths, no embedded raster


def test_plot_bands_draws_the_median_and_the_interquartile_band(root, monkeypatch):
    """The curves are the median over seeds and the shaded band spans the 25th to 75th percentile, the same
    numbers as ``seed_bands`` (GRPO step 3: median 0.5, band 0.35 to 0.65)."""
    import matplotlib.pyplot as plt
    import numpy as np

    figures = []
    monkeypatch.setattr("analysis.runs.save_figure", lambda fig, path: figures.append(fig) or path)
    plot_bands(load_runs(root), ["reward/format/mean"], "unused.png")
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GRPO (n=4)", "GDPO (n=4)"]
    grpo, gdpo = [line for line in ax.get_lines() if len(line.get_ydata())]  # in the legend's order
    np.testing.assert_allclose(grpo.get_ydata(), [0.0, 0.25, 0.5])
    np.testing.assert_allclose(gdpo.get_ydata(), [0.1, 0.5, 0.85])
    bands = [c for c in ax.collections if len(c.get_paths()) and len(c.get_paths()[0].vertices) > 2]
    grpo_band = bands[0].get_paths()[0].vertices  # first method in the paper's order
    at_step_3 = sorted({round(y, 10) for x, y in grpo_band if x == 3})
    assert at_step_3 == pytest.approx([0.35, 0.65])
    plt.close(figures[0])


def test_tables_as_latex_booktabs_with_the_markdown_numbers(root, tmp_path):
    table = seed_table(final_steps(load_runs(root)), ["reward/format/mean"])
    assert to_latex(table, scale=100, digits=1, caption="Format 100% & more", label="tab:t").splitlines() == [
        "\\begin{table}[t]",
        "\\centering",
        "\\begin{tabular}{lcc}",
        "\\toprule",
        "Method & reward/format/mean & Seeds \\\\",
        "\\midrule",
        "GRPO & $50.0 \\pm 25.8$ & 4 \\\\",
        "GDPO & $85.0 \\pm 12.9$ & 4 \\\\",
        "\\bottomrule",
        "\\end{tabular}",
        "\\caption{Format 100\\% \\& more}",
        "\\label{tab:t}",
        "\\end{table}",
    ]
    markdown = write_table(table, tmp_path / "out" / "table1", scale=100, digits=1)
    assert (tmp_path / "out" / "table1.md").read_text() == markdown + "\n"
    assert "| GDPO | 85.0 ± 12.9 | 4 |" in markdown
    assert "\\label{tab:table1}" in (tmp_path / "out" / "table1.tex").read_text()
    assert (tmp_path / "out" / "table1.csv").read_text().splitlines()[0].startswith(",reward/format/mean")


def test_weight_sweep_averages_math_and_aime_as_the_paper_figure():
    import pandas as pd

    from analysis.math import sweep_table

    evals = pd.DataFrame(
        [
            {"method": "gdpo-w0.5", "seed": s, "math500_acc": 80.0 + s, "aime24_acc": 20.0, "minerva_acc": 0.0,
             "math500_exceed": 1.0, "aime24_exceed": 3.0, "minerva_exceed": 50.0}
            for s in (0, 2)
        ]
        + [{"method": "base", "seed": 0, "math500_acc": 0.0, "aime24_acc": 0.0, "minerva_acc": 0.0,
            "math500_exceed": 0.0, "aime24_exceed": 0.0, "minerva_exceed": 0.0}]
    )  # fmt: skip
    sweep = sweep_table(evals, ["math500", "aime24", "minerva"])
    assert len(sweep) == 1 and sweep["weight"].iloc[0] == 0.5 and sweep["seeds"].iloc[0] == 2
    assert sweep["acc"].iloc[0] == 50.5 and sweep["exceed"].iloc[0] == 2.0  # Minerva is left out
    only = sweep_table(evals, ["minerva"])  # no MATH/AIME (the tiny preset's case): all given benchmarks
    assert only["acc"].iloc[0] == 0.0 and only["exceed"].iloc[0] == 50.0


def test_paper_tables_per_preset_carry_the_papers_numbers_and_its_stated_gains():
    from analysis import math, tool_calling

    caption, r1 = math.paper_table("paper-r1-1.5b")
    assert caption == "The paper's Table 3, DeepSeek-R1-1.5B, 500 steps, in %"
    # §4.2: GDPO over GRPO on R1-1.5B, +2.6 MATH, +6.3 AIME, +2.3 Olympiad accuracy
    gains = r1.loc["gdpo"] - r1.loc["grpo"]
    assert [round(gains[c], 1) for c in ("math500_acc", "aime24_acc", "olympiad_acc")] == [2.6, 6.3, 2.3]
    _, r7 = math.paper_table("paper-r1-7b")
    # §4.2.1, with R~_length: +4.4 AIME Acc, -16.9 AIME Exceed, +3.0 AMC Acc, -4.8 AMC Exceed
    cond = r7.loc["gdpo-condlen"] - r7.loc["grpo-condlen"]
    assert [round(cond[c], 1) for c in ("aime24_acc", "aime24_exceed", "amc_acc", "amc_exceed")] == [
        4.4,
        -16.9,
        3.0,
        -4.8,
    ]
    assert list(math.paper_table("paper-qwen3-4b")[1].loc["base", ["aime24_acc", "aime24_exceed"]]) == [
        63.7,
        71.3,
    ]
    caption, tiny = math.paper_table("tiny")
    assert caption.endswith("(the paper has no run of preset 'tiny'; shown for comparison only)")
    assert tiny.equals(r7)
    caption, b3 = tool_calling.paper_table("paper-qwen2.5-3b")
    assert caption == "The paper's Table 1, Qwen2.5-Instruct-3B, 100 steps, in %"
    assert list(b3.index) == ["base", "grpo", "gdpo"] and b3.loc["gdpo", "avg"] == 40.87
    assert tool_calling.paper_table("tiny")[1].loc["grpo_no_std", "correct_format"] == 0.0


def test_plain_tables_as_csv_and_booktabs_latex(tmp_path):
    import pandas as pd

    write_frame(pd.DataFrame({"w_length": [0.5, 1.0], "MATH_acc": [81.25, 80.0]}), tmp_path / "t8", digits=1)
    assert (tmp_path / "t8.csv").read_text().splitlines() == ["w_length,MATH_acc", "0.5,81.25", "1.0,80.0"]
    tex = (tmp_path / "t8.tex").read_text().splitlines()
    assert tex[:3] == ["\\begin{tabular}{rr}", "\\toprule", "w\\_length & MATH\\_acc \\\\"]
    assert tex[4:7] == ["0.5 & 81.2 \\\\", "1.0 & 80.0 \\\\", "\\bottomrule"]
