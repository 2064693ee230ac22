"""Rollout backends: generate G completions per prompt and return them as training-ready tensors.

Every completion is sampled with its own random stream, seeded by (prompt seed, rollout index): the same
prompt at the same step gives the same completions whatever the batch layout, the number of processes or
the point a run was resumed from. The trainer derives the prompt seeds from (run seed, step, prompt index).

Backends:
* ``hf``: an in-process sampling loop over the policy's own ``forward`` with a KV cache (the model being
  trained generates, so no weight sync is needed). Sampling draws exponential noise per row from the row's
  generator: argmax(p / q), q ~ Exp(1), is an exact sample from p.
* ``vllm``: not implemented yet (see the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gdpo.config import RolloutConfig

__all__ = ["HFRollout", "Rollouts", "encode_prompt", "forbidden_token", "make_rollout_backend", "row_seed"]


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of chat ``messages`` rendered by the tokenizer's chat template, ready for the assistant turn."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Rollouts:
    """``N = B * G`` sequences, prompt-major: rows ``b*G .. b*G+G-1`` belong to prompt ``b``.

    Attributes:
        input_ids: ``[N, P + T]`` left-padded prompt followed by the completion, right-padded.
        attention_mask: ``[N, P + T]`` 1 on real tokens.
        completion_mask: ``[N, T]`` True on completion tokens (up to and including the EOS token).
        prompt_width: ``P``, the padded prompt width.
        completions: decoded completion texts (special tokens removed).
        num_tokens: ``[N]`` completion lengths in tokens (EOS included).
        truncated: ``[N]`` True where generation stopped at ``max_new_tokens`` without EOS or a stop string.
        sample_logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the sampling distribution.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    completions: list[str]
    num_tokens: torch.Tensor
    truncated: torch.Tensor
    sample_logprobs: torch.Tensor


def forbidden_token(tokenizer) -> int | None:
    """The padding token, which is never a completion token, unless it doubles as EOS (as in SmolLM2)."""
    pad = tokenizer.pad_token_id
    return None if pad is None or pad == tokenizer.eos_token_id else pad


def row_seed(prompt_seed: int, rollout_index: int) -> int:
    """Seed of one completion's random stream."""
    return (prompt_seed * 1_000_003 + rollout_index) % (2**63 - 1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest prefix reaching top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


class HFRollout:
    """Sample from a transformers causal LM with a KV cache, one seeded random stream per completion."""

    def __init__(self, model, tokenizer, cfg: RolloutConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an EOS token for generation")

    def sync_weights(self, model) -> None:
        """Nothing to do: the policy generates itself."""
        self.model = model

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompt_seeds: Sequence[int],
        num_rollouts: int,
        greedy: bool = False,
    ) -> Rollouts:
        cfg, tok = self.cfg, self.tokenizer
        device = next(self.model.parameters()).device
        rows = [list(p) for p in prompt_ids for _ in range(num_rollouts)]
        seeds = [row_seed(s, g) for s in prompt_seeds for g in range(num_rollouts)]
        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

        was_training = self.model.training
        self.model.eval()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = positions[:, -1] + 1
        prompt_mask = mask
        tokens, logps, alive = [], [], []
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        for _ in range(cfg.max_new_tokens):
            token, logp = self._sample(logits, generators, greedy)
            token = torch.where(finished, torch.full_like(token, tok.pad_token_id), token)
            alive.append(~finished)
            tokens.append(token)
            logps.append(torch.where(finished, torch.zeros_like(logp), logp))
            finished = finished | token.eq(tok.eos_token_id) | self._hit_stop(tokens, alive, finished)
            if finished.all():
                break
            mask = torch.cat([mask, alive[-1].long()[:, None]], dim=1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=past,
                use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1].float()
            next_pos = next_pos + 1
        self.model.train(was_training)
        return self._package(ids, prompt_mask, tokens, logps, alive, finished, width)

    def _sample(self, logits: torch.Tensor, generators, greedy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        forbidden = forbidden_token(self.tokenizer)
        if forbidden is not None:
            logits = logits.clone()
            logits[:, forbidden] = -torch.inf
        if greedy or self.cfg.temperature == 0:
            logprobs = torch.log_softmax(logits, -1)
            token = logits.argmax(-1)
            return token, logprobs.gather(-1, token[:, None]).squeeze(-1)
        probs = _top_p_filter(torch.softmax(logits / self.cfg.temperature, -1), self.cfg.top_p)
        noise = torch.empty_like(probs)
        for row, gen in enumerate(generators):
            noise[row].exponential_(generator=gen)
        token = (probs / noise).argmax(-1)
        return token, probs.gather(-1, token[:, None]).squeeze(-1).log()

    def _hit_stop(
        self, tokens: list[torch.Tensor], alive: list[torch.Tensor], finished: torch.Tensor
    ) -> torch.Tensor:
        hit = torch.zeros_like(finished)
        if not self.cfg.stop:
            return hit
        so_far, live = torch.stack(tokens, 1), torch.stack(alive, 1)
        for row in (~finished).nonzero().flatten().tolist():
            text = self.tokenizer.decode(so_far[row][live[row]], skip_special_tokens=True)
            hit[row] = any(text.endswith(s) for s in self.cfg.stop)
        return hit

    def _package(self, prompt_ids, prompt_mask, tokens, logps, alive, finished, width) -> Rollouts:
        completion = torch.stack(tokens, 1)
        completion_mask = torch.stack(alive, 1)
        texts = [
            self.tokenizer.decode(row[keep], skip_special_tokens=True)
            for row, keep in zip(completion, completion_mask)
        ]
        return Rollouts(
            input_ids=torch.cat([prompt_ids, completion], 1),
            attention_mask=torch.cat([prompt_mask, completion_mask.long()], 1),
            completion_mask=completion_mask,
            prompt_width=width,
            completions=texts,
            num_tokens=completion_mask.sum(-1),
            truncated=~finished,
            sample_logprobs=torch.stack(logps, 1),
        )


def make_rollout_backend(cfg: RolloutConfig, model, tokenizer):
    if cfg.backend == "hf":
        return HFRollout(model, tokenizer, cfg)
    raise NotImplementedError(
        f"rollout.backend={cfg.backend!r} is not implemented yet; use rollout.backend=hf (see README: status)"
    )
