"""Check the installed environment: a machine without a GPU must have a CPU build of torch.

Run by ``make setup`` (``python -m gdpo.envcheck``); exits non-zero with the reason when the check fails.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys


def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi`` lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


def cuda_packages() -> list[str]:
    """Installed distributions that belong to a CUDA build of torch (nvidia-*)."""
    names = {dist.metadata["Name"] or "" for dist in importlib.metadata.distributions()}
    return sorted(n for n in names if n.lower().startswith("nvidia-"))


def main() -> int:
    import torch

    problems = []
    if not has_nvidia_gpu():
        if torch.version.cuda is not None:
            problems.append(
                f"torch {torch.__version__} is a CUDA build (cuda {torch.version.cuda}) on a machine without a GPU"
            )
        extra = cuda_packages()
        if extra:
            problems.append(f"CUDA packages installed on a machine without a GPU: {', '.join(extra)}")
    if problems:
        print("environment check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"environment ok: torch {torch.__version__}, cuda={torch.version.cuda}, python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
