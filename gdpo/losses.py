"""Policy-gradient loss pieces as small pure tensor functions, registered by name, and the token log-probs.

* ``policy_loss``: the PPO clipped surrogate with separate low/high clip (DAPO's clip-higher), per token.
* ``KL_ESTIMATORS``: per-token KL(pi || pi_ref) estimators ``k1`` (log-ratio), ``k3`` (Schulman's unbiased,
  non-negative estimator, TRL/NeMo-RL default) and ``mse`` (0.5·log-ratio², verl's "mse"/k2).
* ``LOSS_AGGREGATIONS``: how per-token losses become one number:
  ``seq_mean_token_mean`` (paper Eq. 3: mean over each sequence's tokens, then over sequences),
  ``token_mean`` (DAPO / verl token-mean / TRL "bnpo": every token of the batch weighs the same),
  ``seq_mean_token_sum_norm`` (Dr. GRPO: token sum divided by a constant length, then mean over sequences).
* ``token_logprobs``: log-probs and entropies of the completion tokens from final hidden states, the output
  head and the fp32 log-softmax applied a chunk of tokens at a time and recomputed in the backward pass.

Aggregations take explicit normalisers (``num_tokens``, ``num_sequences``, ``max_tokens``) so that a loss split
over micro-batches and ranks adds up to exactly the loss of the whole mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "aggregate",
    "kl_penalty",
    "policy_loss",
    "token_logprobs",
]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate ``max(-A·r, -A·clip(r, 1-clip_low, 1+clip_high))``.

    ``clip_ratio_c`` (> 1) adds the dual clip of negative advantages (Ye et al. 2020, verl's ``clip_ratio_c``):
    where A < 0 the loss is also capped at ``-A·clip_ratio_c``, so a token whose ratio has grown far beyond
    the clip range no longer pushes its probability down without bound.

    Args:
        logprobs, old_logprobs: ``[N, T]`` log-probs of the taken tokens under the current / behaviour policy.
        advantages: ``[N]`` one advantage per sequence, broadcast over its tokens.

    Returns ``(loss [N, T], clipped_low [N, T], clipped_high [N, T])``; the masks mark tokens whose gradient
    the clip removed: ratio below 1-clip_low with A < 0 (low), ratio above 1+clip_high with A > 0 or, with the
    dual clip, loss capped at -A·clip_ratio_c with A < 0 (high: the ratio is too large either way).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clipped_low = (ratio < 1 - clip_low) & (adv < 0)
    clipped_high = (ratio > 1 + clip_high) & (adv > 0)
    if clip_ratio_c is not None:
        cap = -adv * clip_ratio_c
        dual = (adv < 0) & (loss > cap)
        loss = torch.where(dual, cap.expand_as(loss), loss)
        clipped_high = clipped_high | dual
    return loss, clipped_low, clipped_high


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # Each maps the log-ratio d = log pi - log pi_ref of the sampled token to a per-token estimate.
    "k1": lambda d: d,
    "k3": lambda d: torch.exp(-d) + d - 1,
    "mse": lambda d: 0.5 * d * d,
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; known: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logprobs - ref_logprobs)


# The padding token's logit, as a finite number: exp(-1e9 - max) is exactly 0 in fp32, so the log-softmax of
# the other tokens is the same as with -inf, and the entropy's p * log p and its gradient stay 0 (not NaN).
FORBIDDEN_LOGIT = -1e9


def token_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    *,
    temperature: float,
    forbidden: int | None,
    chunk_tokens: int,
    with_entropy: bool,
    entropy_grad: bool = True,
    num_chunks: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets [M]`` (and the entropies of their distributions) from final hidden states
    ``hidden [M, H]``, with the output ``head`` applied ``chunk_tokens`` tokens at a time.

    Each chunk's logits ``[chunk, V]`` are divided by ``temperature`` in fp32, the ``forbidden`` token (padding,
    never sampled) gets no probability, and the log-softmax runs over the vocabulary. When a gradient is needed,
    each chunk runs under activation checkpointing and is recomputed in the backward pass: only the chunk's
    input hidden states are kept, so the logits in memory are one chunk's (a few ``[chunk, V]`` fp32 buffers:
    logits, log-probs and their gradients), never ``[M, V]``. ``entropy_grad=False`` gives entropies without a
    graph (for the logs only).

    ``num_chunks`` (at least ``ceil(M / chunk_tokens)``) makes the head run exactly that many times, forward
    and backward, the tokens split evenly and padded with dummy rows if there are fewer tokens than chunks:
    under ZeRO-3 on several processes every call of the head gathers its weight (a collective), so every rank
    must make as many calls.
    """
    if chunk_tokens < 1:
        raise ValueError(f"optim.logprob_chunk_tokens must be >= 1 (got {chunk_tokens})")
    count = hidden.shape[0]
    if num_chunks is not None and num_chunks < -(-count // chunk_tokens):
        raise ValueError(f"{num_chunks} chunks cannot hold {count} tokens of at most {chunk_tokens} each")
    if num_chunks is None:
        parts = list(zip(hidden.split(chunk_tokens), targets.split(chunk_tokens)))
    else:
        short = max(0, num_chunks - count)  # dummy rows, so that no chunk is empty
        padded = torch.cat([hidden, hidden.new_zeros(short, hidden.shape[1])])
        padded_targets = torch.cat([targets, targets.new_zeros(short)])
        parts = list(zip(padded.tensor_split(num_chunks), padded_targets.tensor_split(num_chunks)))
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    logps, entropies = [], []
    for part in parts:
        options = (head, temperature, forbidden, with_entropy)
        if recompute:
            logp, entropy = checkpoint(_chunk_logprobs, *part, *options, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*part, *options)
        logps.append(logp)
        entropies.append(entropy if entropy_grad else entropy.detach())
    if not logps:  # no completion token at all
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if with_entropy else None
    # Sliced after the concatenation: the dummy rows get a zero gradient, so every chunk is recomputed.
    return torch.cat(logps)[:count], torch.cat(entropies)[:count] if with_entropy else None


def _chunk_logits(head, hidden: torch.Tensor, temperature: float, forbidden: int | None) -> torch.Tensor:
    logits = head(hidden).float() / max(temperature, 1e-6)
    if forbidden is not None:
        logits[:, forbidden] = FORBIDDEN_LOGIT
    return logits


def _entropy(logp_all: torch.Tensor) -> torch.Tensor:
    return -(logp_all.exp() * logp_all).sum(-1)


def _chunk_logprobs(hidden, targets, head, temperature, forbidden, with_entropy):
    """One chunk's (log-probs of its targets, entropies or an empty tensor)."""
    logp_all = torch.log_softmax(_chunk_logits(head, hidden, temperature, forbidden), -1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    return logp, _entropy(logp_all) if with_entropy else logp.new_zeros(0)


def _seq_mean_token_mean(values, mask, *, num_tokens, num_sequences, max_tokens):
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_sequences


def _token_mean(values, mask, *, num_tokens, num_sequences, max_tokens):
    return (values * mask).sum() / max(num_tokens, 1)


def _seq_mean_token_sum_norm(values, mask, *, num_tokens, num_sequences, max_tokens):
    return (values * mask).sum() / (max_tokens * num_sequences)


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq_mean_token_mean": _seq_mean_token_mean,
    "token_mean": _token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: int,
    num_sequences: int,
    max_tokens: int,
) -> torch.Tensor:
    """Aggregate per-token ``values [N, T]`` over ``mask``, normalised by the whole mini-batch's counts.

    ``num_tokens`` and ``num_sequences`` count the mini-batch (all micro-batches, all ranks), so summing this
    over the micro-batches of every rank gives the mini-batch loss. A sequence whose tokens are all masked
    (``rollout.mask_truncated``) still counts in ``num_sequences``: it adds 0 to the sum and dilutes the
    others, as in TRL's ``mask_truncated_completions`` (verl's ``seq-mean-token-mean`` leaves it out).
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {mode!r}; known: {sorted(LOSS_AGGREGATIONS)}")
    mask = mask.to(values.dtype)
    return LOSS_AGGREGATIONS[mode](
        values, mask, num_tokens=num_tokens, num_sequences=num_sequences, max_tokens=max_tokens
    )
