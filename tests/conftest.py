"""Shared fixtures: the toy task and a warm-started tiny model (built once, cached under data/cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Short warm start for tests; subprocess runs pass the same override so they hit the same cache entry.
TEST_OVERRIDES = ["warm_start.steps=100", "logging.progress=false"]


@pytest.fixture(scope="session")
def toy_task():
    from gdpo.tasks import build_task

    return build_task("toy", {}, 0)


@pytest.fixture(scope="session")
def toy_model_dir(toy_task) -> Path:
    from gdpo.config import TrainConfig, load_config
    from gdpo.trainer import prepare_model

    cfg = load_config(TrainConfig, REPO / "experiments/toy/configs/tiny.yaml", TEST_OVERRIDES)
    return Path(prepare_model(cfg))


@pytest.fixture(scope="session")
def toy_policy(toy_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir)
    return model, tokenizer


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None)
    return env
