"""The vLLM rollout benchmark (bench/bench_vllm.py) at a tiny size: runs in the vLLM environment, `make test-vllm`.

Checks the structure of its result, not its speed target (that lives in bench/): both sides timed, the same
requests and the same sampled tokens on both sides, the ratio line printed last and equal to the recorded ratio.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # starts a vLLM engine in a subprocess (minutes here)


def test_benchmark_times_both_sides_on_the_same_requests(tmp_path, toy_model_dir, subprocess_env):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "bench.bench_vllm", "--model", str(toy_model_dir)]
    cmd += [
        "--prompts",
        "2",
        "--rollouts",
        "3",
        "--new-tokens",
        "6",
        "--repeats",
        "2",
        "--kv-cache-gib",
        "0.25",
    ]
    cmd += ["--out", str(out)]
    run = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(out.read_text())

    last = run.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"rollout/raw-vllm time ratio: (\d+\.\d{3})", last)
    assert match, last
    ours = result["ours_median_s"]
    assert float(match.group(1)) == round(ours["total_s"] / result["raw_median_s"], 3)

    assert len(result["ours"]) == len(result["raw"]) == 2  # the warm-up round is left out
    assert result["raw_median_s"] > 0 and ours["sync_weights_s"] > 0 and ours["llm_generate_s"] > 0
    assert ours["total_s"] == pytest.approx(ours["sync_weights_s"] + ours["generate_s"], rel=1e-6, abs=1e-4)
    assert ours["llm_collective_rpc_s"] > 0  # the weight reload went through the engine's RPC

    requests = result["requests"]
    assert requests["count"] == 6 and requests["max_tokens"] == 6 and requests["logprobs"] == 0
    assert len(set(requests["seeds"])) == 6  # one seed per completion
    assert result["ours_tokens"] == result["raw_tokens"]
    assert all(0 < t <= 6 * 6 for t in result["ours_tokens"])
    assert result["same_completions"] is True

    machine = result["machine"]
    assert machine["cores"] >= 1 and len(machine["load_average"]) == 3 and machine["device"]
