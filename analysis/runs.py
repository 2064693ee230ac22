"""Run logs -> pandas -> the paper's kind of tables and median/IQR curves. Shared by every task's notebook.

Run folders follow ``<root>/<task>/<preset>/<method>/seed<k>/metrics.jsonl`` (see gdpo.runlog).

    runs = load_runs("runs", task="tool_calling", preset="tiny")
    bands = seed_bands(runs, "reward/format/mean")            # median and IQR over seeds, per method and step
    plot_bands(runs, ["reward/format/mean", "reward/correctness/mean"], "fig4.png")
    table = seed_table(final_rows, ["format", "correctness"])  # mean ± std over seeds, per method
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from gdpo.runlog import read_jsonl

__all__ = [
    "METHOD_LABELS",
    "eval_loader",
    "final_steps",
    "load_eval_summaries",
    "load_runs",
    "paper_numbers",
    "plot_bands",
    "save_figure",
    "seed_bands",
    "seed_table",
    "to_latex",
    "to_markdown",
    "write_frame",
    "write_table",
]

METHOD_LABELS = {
    "base": "base model",
    "grpo": "GRPO",
    "grpo_no_std": "GRPO w/o std",
    "gdpo": "GDPO",
    "grpo-condlen": "GRPO (conditioned length)",
    "gdpo-condlen": "GDPO (conditioned length)",
    "grpo-3obj": "GRPO (3 objectives)",
    "gdpo-3obj": "GDPO (3 objectives)",
}
METHOD_ORDER = list(METHOD_LABELS)


def load_runs(
    root: str | Path,
    task: str | None = None,
    preset: str | None = None,
    runs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every step of every run under ``root`` (optionally one task/preset), one row per (run, step).

    ``runs``: only these ``"<method>/seed<k>"`` folders of the task and preset (a reproduction passes its jobs,
    so runs left on disk from other experiments stay out of its tables); a missing one is an error.
    Columns: task, preset, method, seed, step, and every metric. A folder without metrics is skipped with a
    note in ``DataFrame.attrs["skipped"]``; a corrupt log is an error naming the file.
    """
    root = Path(root)
    frames, skipped = [], []
    pattern = f"{task or '*'}/{preset or '*'}/*/seed*/metrics.jsonl"
    for path in _run_files(root, task, preset, runs, "metrics.jsonl"):
        run_task, run_preset, method = path.parts[-5:-2]
        rows = read_jsonl(path)
        if not rows:
            skipped.append(str(path.parent))
            continue
        frame = pd.DataFrame(rows)
        frame.insert(0, "seed", _seed(path.parent))
        frame.insert(0, "method", method)
        frame.insert(0, "preset", run_preset)
        frame.insert(0, "task", run_task)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no metrics.jsonl under {root / pattern}")
    out = pd.concat(frames, ignore_index=True)
    out.attrs["skipped"] = skipped
    return out


def _run_files(
    root: Path, task: str | None, preset: str | None, runs: Sequence[str] | None, name: str
) -> list[Path]:
    """``<root>/<task>/<preset>/<method>/seed<k>/<name>`` for every run on disk, or for ``runs`` only."""
    if runs is None:
        return sorted(root.glob(f"{task or '*'}/{preset or '*'}/*/seed*/{name}"))
    if task is None or preset is None:
        raise ValueError("selecting runs by name needs the task and the preset")
    paths = [root / task / preset / run / name for run in runs]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the requested runs have no {name}: {missing}")
    return paths


def load_eval_summaries(
    runs_dir: str | Path,
    task: str,
    preset: str,
    row: Callable[[dict], dict],
    base_eval: str | Path | None = None,
    runs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows (method, seed, ``row(summary)``) for every ``<runs>/<task>/<preset>/<method>/seed<k>/eval/summary.json``
    (or for the ``"<method>/seed<k>"`` in ``runs`` only, see ``load_runs``), plus the base model's summary as method
    "base" (seed 0) when ``base_eval`` exists."""
    rows = []
    for path in _run_files(Path(runs_dir), task, preset, runs, "eval/summary.json"):
        rows.append({"method": path.parts[-4], "seed": _seed(path.parent.parent), **_summary_row(path, row)})
    if base_eval is not None and Path(base_eval).exists():
        rows.append({"method": "base", "seed": 0, **_summary_row(Path(base_eval), row)})
    if not rows:
        raise FileNotFoundError(f"no eval summaries under {runs_dir}/{task}/{preset}")
    return pd.DataFrame(rows)


def _summary_row(path: Path, row: Callable[[dict], dict]) -> dict:
    try:
        return row(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as err:  # a missing benchmark or field, a corrupt file
        raise ValueError(f"{path}: cannot make a table row of this summary: {err!r}") from err


def _seed(run_dir: Path) -> int:
    """k of a ``seed<k>`` run folder."""
    digits = run_dir.name.removeprefix("seed")
    if not digits.isdigit():
        raise ValueError(
            f"{run_dir}: a run folder is named seed<integer>; move other folders out of {run_dir.parent}"
        )
    return int(digits)


def eval_loader(task: str, row: Callable[[dict], dict], doc: str) -> Callable[..., pd.DataFrame]:
    """A task's ``load_evals(runs_dir, preset, base_eval=None, runs=None)``: ``load_eval_summaries`` with the
    task's folder and row function; ``doc`` says what its rows hold."""

    def load_evals(
        runs_dir: str | Path,
        preset: str,
        base_eval: str | Path | None = None,
        runs: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        return load_eval_summaries(runs_dir, task, preset, row, base_eval, runs)

    load_evals.__doc__ = doc
    return load_evals


def seed_bands(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per method and step: median, 25th and 75th percentile, mean and number of seeds of ``metric``."""
    if metric not in runs:
        raise KeyError(f"metric {metric!r} is not in the run logs")
    grouped = runs.groupby(["method", "step"])[metric]
    return pd.DataFrame(
        {
            "median": grouped.median(),
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
            "mean": grouped.mean(),
            "seeds": grouped.count(),
        }
    ).reset_index()


def final_steps(runs: pd.DataFrame) -> pd.DataFrame:
    """The last logged step of every run."""
    last = runs.groupby(["task", "preset", "method", "seed"])["step"].transform("max")
    return runs[runs["step"] == last].reset_index(drop=True)


def seed_table(rows: pd.DataFrame, columns: Sequence[str], by: str = "method") -> pd.DataFrame:
    """Mean and (sample) std over seeds of ``columns`` per ``by`` value, in the paper's method order.

    ``seeds`` counts the rows of each ``by`` value. A column measured for some of them only is an error naming
    it (its mean would stand for fewer seeds than the table says); one measured for none stays empty.
    """
    grouped = rows.groupby(by)[list(columns)]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.size()
    measured = grouped.count()
    incomplete = ((measured > 0) & measured.lt(count, axis=0)).stack()
    incomplete = incomplete[incomplete]
    if not incomplete.empty:
        group, column = incomplete.index[0]
        values = int(measured.loc[group, column])
        raise ValueError(
            f"{by} {group!r}: {column!r} has values for {values} of its {count[group]} rows; evaluate the rest or "
            "leave the column out"
        )
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1).sort_index(axis=1, level=0)
    table = table[[c for col in columns for c in [(col, "mean"), (col, "std")]]]
    table[("seeds", "")] = count
    order = [m for m in METHOD_ORDER if m in table.index] + [m for m in table.index if m not in METHOD_ORDER]
    return table.loc[order]


def paper_numbers(
    preset: str,
    rows: dict[str, dict[str, list[float]]],
    columns: Sequence[str],
    captions: dict[str, str],
    fallback: str,
) -> tuple[str, pd.DataFrame]:
    """The caption and rows (method -> values in ``columns`` order) of the paper's run that ``preset`` reproduces.
    A preset the paper has no run of (``tiny``) gets ``fallback``'s, and the caption says so."""
    key = preset if preset in rows else fallback
    caption = captions[key]
    if key != preset:
        caption += f" (the paper has no run of preset {preset!r}; shown for comparison only)"
    return caption, pd.DataFrame.from_dict(rows[key], orient="index", columns=list(columns))


def _cells(table: pd.DataFrame, scale: float, digits: int, pm: str, missing: str):
    """(columns, [(method label, ["mean ± std" cells], seeds)]) of a ``seed_table``, values times ``scale``."""
    columns = list(dict.fromkeys(c for c, _ in table.columns if c != "seeds"))
    rows = []
    for method, row in table.iterrows():
        cells = []
        for col in columns:
            mean, std = row[(col, "mean")] * scale, row[(col, "std")] * scale
            if pd.isna(mean):
                cells.append(missing)
                continue
            cells.append(f"{mean:.{digits}f}" + ("" if pd.isna(std) else f"{pm}{std:.{digits}f}"))
        rows.append((METHOD_LABELS.get(method, method), cells, int(row[("seeds", "")])))
    return columns, rows


def to_markdown(table: pd.DataFrame, scale: float = 1.0, digits: int = 2) -> str:
    """A ``seed_table`` as a Markdown table with "mean ± std" cells (values multiplied by ``scale``)."""
    columns, rows = _cells(table, scale, digits, " ± ", "n/a")
    lines = ["| method | " + " | ".join(columns) + " | seeds |", "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + f" | {seeds} |" for label, cells, seeds in rows]
    return "\n".join(lines)


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"}


def _latex_text(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def to_latex(
    table: pd.DataFrame, scale: float = 1.0, digits: int = 2, caption: str = "", label: str = ""
) -> str:
    """A ``seed_table`` as a LaTeX ``table`` with booktabs rules and "$mean \\pm std$" cells (needs
    ``\\usepackage{booktabs}``); the same numbers as :func:`to_markdown`."""
    columns, rows = _cells(table, scale, digits, " \\pm ", "n/a")
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\begin{tabular}{l" + "c" * len(columns) + "c}",
        "\\toprule",
        "Method & " + " & ".join(_latex_text(c) for c in columns) + " & Seeds \\\\",
        "\\midrule",
    ]
    for method, cells, seeds in rows:
        values = [c if c == "n/a" else f"${c}$" for c in cells]
        lines.append(f"{_latex_text(method)} & " + " & ".join(values) + f" & {seeds} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append(f"\\caption{{{_latex_text(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines.append("\\end{table}")
    return "\n".join(lines)


def write_table(
    table: pd.DataFrame, stem: str | Path, scale: float = 1.0, digits: int = 2, caption: str = ""
) -> str:
    """Write a ``seed_table`` as ``<stem>.csv`` (raw values), ``<stem>.md`` and ``<stem>.tex`` (booktabs, labelled
    ``tab:<name>``); returns the Markdown."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"))
    markdown = to_markdown(table, scale, digits)
    stem.with_suffix(".md").write_text(markdown + "\n")
    latex = to_latex(table, scale, digits, caption=caption, label=f"tab:{stem.name}")
    stem.with_suffix(".tex").write_text(latex + "\n")
    return markdown


def write_frame(frame: pd.DataFrame, stem: str | Path, digits: int = 2) -> None:
    """Write a plain table (one row per line, no seed statistics) as ``<stem>.csv`` and ``<stem>.tex`` (pandas'
    LaTeX writer, booktabs rules, numbers with ``digits`` decimals)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    latex = frame.to_latex(index=False, float_format=f"%.{digits}f", escape=True)
    stem.with_suffix(".tex").write_text(latex)


def plot_bands(
    runs: pd.DataFrame, metrics: Sequence[str], path: str | Path, titles: Sequence[str] | None = None
) -> Path:
    """One panel per metric: the median over seeds per method, with the interquartile range shaded (seaborn's
    median estimator with the 50 % percentile interval, i.e. the 25th to 75th percentile, as the paper's
    figures). Written as PNG and PDF (:func:`save_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = [m for m in METHOD_ORDER if m in set(runs["method"])] + sorted(
        set(runs["method"]) - set(METHOD_ORDER)
    )
    seeds = runs.groupby("method")["seed"].nunique()
    labels = {m: f"{METHOD_LABELS.get(m, m)} (n={seeds[m]})" for m in methods}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric, title in zip(axes[0], metrics, titles or metrics):
        if metric not in runs:
            raise KeyError(f"metric {metric!r} is not in the run logs")
        data = runs[["method", "step", metric]].dropna().assign(method=lambda d: d["method"].map(labels))
        sns.lineplot(
            data=data,
            x="step",
            y=metric,
            hue="method",
            hue_order=[labels[m] for m in methods],
            estimator="median",
            errorbar=("pi", 50),
            ax=ax,
        )
        ax.set(title=title, xlabel="step", ylabel="")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 130) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path. The figure is
    written twice: at ``path`` (a PNG for notebooks and docs) and beside it as a vector PDF (for a paper)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path
