"""The evaluation decoding of every benchmark harness: the paper's math protocol, applied to coding too.

The paper evaluates math with temperature 0.6, top_p 0.95 and 16 samples per question (max 32k new tokens), and
states no decoding for coding, while its Table 7 gives one set of training settings for both. Our reading: the
coding benchmarks are sampled the same way (``eval.code_bench``, the coding reproduction), k = 16 for the paper
presets; the tiny presets take fewer samples, which their table captions state. BFCL is answered greedily
(one deterministic answer per item, as BFCL's own leaderboard runs).
"""

from __future__ import annotations

__all__ = ["PAPER_SAMPLES", "PAPER_TEMPERATURE", "PAPER_TOP_P", "paper_rollout_config"]

PAPER_TEMPERATURE = 0.6
PAPER_TOP_P = 0.95
PAPER_SAMPLES = 16
PAPER_MAX_NEW_TOKENS = 32768


def paper_rollout_config(max_new_tokens: int = PAPER_MAX_NEW_TOKENS, max_prompt_tokens: int = 2048):
    """The paper's evaluation sampling as a rollout config: temperature 0.6, top_p 0.95 (max 32k new tokens)."""
    from gdpo.config import RolloutConfig

    return RolloutConfig(
        temperature=PAPER_TEMPERATURE,
        top_p=PAPER_TOP_P,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
    )
