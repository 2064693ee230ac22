"""Execute an analysis notebook headlessly, papermill style.

The notebook's cell tagged ``parameters`` holds defaults; this runner inserts a cell right after it
that sets ``OUTPUT_DIR`` (and any ``--param NAME=VALUE``), runs every cell from the repository root,
stops at the first failing cell, and writes the executed notebook next to the outputs.

    python -m analysis.run_notebook analysis/notebooks/collapse.ipynb --output-dir results/collapse
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parent.parent


def _parameter_cell(params: dict[str, object]) -> nbformat.NotebookNode:
    source = "# Injected by analysis.run_notebook\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})


def run_notebook(
    notebook: str | Path, output_dir: str | Path, params: dict[str, object] | None = None, timeout: int = 1200
) -> Path:
    """Run ``notebook`` with ``OUTPUT_DIR=output_dir`` (plus ``params``); return the executed copy's path."""
    notebook, output_dir = Path(notebook), Path(output_dir).resolve()
    nb = nbformat.read(notebook, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError(f"{notebook}: no cell is tagged 'parameters'")
    nb.cells.insert(tagged[0] + 1, _parameter_cell({"OUTPUT_DIR": str(output_dir), **(params or {})}))
    output_dir.mkdir(parents=True, exist_ok=True)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}
    ).execute()
    executed = output_dir / f"{notebook.stem}.executed.ipynb"
    nbformat.write(nb, executed)
    return executed


def _parse_param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebook", type=Path)
    parser.add_argument(
        "--output-dir", type=Path, required=True, help="where the notebook writes its outputs"
    )
    parser.add_argument("--param", type=_parse_param, action="append", default=[], help="NAME=VALUE override")
    args = parser.parse_args(argv)
    executed = run_notebook(args.notebook, args.output_dir, dict(args.param))
    print(f"executed {args.notebook} -> {executed}")


if __name__ == "__main__":
    main()
