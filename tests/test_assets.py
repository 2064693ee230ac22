"""Package assets: wheels are cached whole or not at all, and members are extracted from them."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from gdpo import assets

WHEEL = "some_pkg-1.0-py3-none-any.whl"


def _fake_pip(monkeypatch, *, readable: bool, calls: list):
    """``pip download`` that writes a wheel (a real zip, or a truncated one) into its ``-d`` folder."""

    def run(cmd, **kwargs):
        folder = cmd[cmd.index("-d") + 1]
        calls.append(folder)
        path = f"{folder}/{WHEEL}"
        if readable:
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("some_pkg/data.txt", "the data")
        else:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 cut short")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", run)


def test_a_partial_wheel_in_the_cache_is_downloaded_again(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / WHEEL).write_bytes(b"PK\x03\x04 killed mid-copy")
    calls: list = []
    _fake_pip(monkeypatch, readable=True, calls=calls)
    member = assets.package_file("some-pkg", "1.0", "some_pkg/data.txt", cache=tmp_path)
    assert member.read_text() == "the data" and zipfile.is_zipfile(wheels / WHEEL)
    assert len(calls) == 1 and calls[0] != str(wheels)  # pip wrote into a private folder, not the cache
    assert sorted(p.name for p in wheels.iterdir()) == [WHEEL]  # the staging folder is gone


def test_an_unreadable_download_is_an_error_and_leaves_no_wheel(tmp_path, monkeypatch):
    _fake_pip(monkeypatch, readable=False, calls=[])
    with pytest.raises(FileNotFoundError, match=r"no readable wheel matches some_pkg-1.0-\*.whl"):
        assets.package_file("some-pkg", "1.0", "some_pkg/data.txt", cache=tmp_path)
    assert list((tmp_path / "wheels").iterdir()) == []


def test_folders_are_built_aside_and_renamed_into_place(tmp_path):
    from gdpo.assets import build_folder_once, replace_folder

    def writer(text):
        def build(tmp):
            (tmp / "config.json").write_text(text)

        return build

    target = tmp_path / "model"
    assert build_folder_once(target, writer("first")) == target
    build_folder_once(target, writer("second"))  # already built: kept
    assert (target / "config.json").read_text() == "first"
    replace_folder(target, writer("third"))  # made anew over what it held
    assert (target / "config.json").read_text() == "third"

    def failing(tmp):
        (tmp / "config.json").write_text("half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        replace_folder(target, failing)
    assert (target / "config.json").read_text() == "third"  # the old folder stands
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_a_folder_whose_replacement_cannot_be_renamed_in_is_put_back(tmp_path, monkeypatch):
    import os

    from gdpo import assets

    target = tmp_path / "final_model"
    assets.replace_folder(target, lambda tmp: (tmp / "config.json").write_text("old"))
    real_replace = os.replace

    def rename_in_fails(src, dst):
        if Path(src).name.startswith(".final_model-") and "-old-" not in str(src):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(assets.os, "replace", rename_in_fails)
    with pytest.raises(OSError, match="disk full"):
        assets.replace_folder(target, lambda tmp: (tmp / "config.json").write_text("new"))
    assert (target / "config.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final_model"]
