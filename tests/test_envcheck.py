"""The setup-time environment check refuses a CUDA torch on a machine without a GPU."""

from __future__ import annotations

import torch

from gdpo import envcheck


def test_passes_on_this_environment():
    assert envcheck.main() == 0


def test_fails_for_cuda_torch_without_gpu(monkeypatch, capsys):
    monkeypatch.setattr(envcheck, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(envcheck, "cuda_packages", lambda: ["nvidia-cublas"])
    assert envcheck.main() == 1
    err = capsys.readouterr().err
    assert "is a CUDA build (cuda 13.0)" in err and "nvidia-cublas" in err


def test_cuda_torch_is_fine_with_a_gpu(monkeypatch):
    monkeypatch.setattr(envcheck, "has_nvidia_gpu", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert envcheck.main() == 0
