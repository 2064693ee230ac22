"""The RL trainer: one loop for every task, method and scale.

Per step: take B prompts -> sample G completions each -> score every reward component -> advantages over the
global batch (``gdpo.advantages``, method from the config) -> clipped policy-gradient update on a DeepSpeed
engine -> one line of ``metrics.jsonl``.

Where this departs from the paper and the official codes (each is a config option; docs/paper-notes.md §4):
* The advantage is computed on the raw reward components only; a KL term, when on, is a loss term applied
  identically to every method (``algorithm.kl_coef``). verl-GDPO put an in-reward KL into GRPO but not GDPO:
  ``algorithm.kl_in_reward`` reproduces it (GRPO and GRPO w/o std only; preset paper-qwen2.5-1.5b-verl-grpo).
* Rollouts use one seeded random stream per completion, keyed by (seed, step, prompt position), so a run is
  independent of the number of processes and of where it was resumed. Exception: with dynamic sampling each
  rank fills its own share of the batch from its own prompts, so which groups are kept depends on the number
  of processes.
* Zero-variance, singleton and NaN handling follow ``gdpo.advantages`` (exact zeros, decided per component).
* Data parallelism: each rank takes a contiguous block of whole prompts (all G rollouts of a prompt on one
  rank); rewards are all-gathered so GDPO's batch statistics cover the global batch.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gdpo.advantages import compute_advantages, groups_with_signal
from gdpo.assets import resolve_model
from gdpo.checkpoint import Restored, restore_checkpoint, save_checkpoint
from gdpo.config import ConfigError, TrainConfig, to_dict
from gdpo.diagnostics import advantage_diagnostics
from gdpo.distributed import (
    all_gather_cat,
    all_reduce_sum,
    barrier,
    collective_device,
    init_distributed,
    world_size,
)
from gdpo.losses import aggregate, kl_penalty, policy_loss, token_logprobs
from gdpo.profiling import profile_step
from gdpo.rewards import ScoredBatch
from gdpo.rollout import Rollouts, encode_prompt, forbidden_token, make_rollout_backend, pack_rollouts
from gdpo.runlog import RunLog
from gdpo.tasks import Task, build_task

__all__ = ["prepare_model", "run_dir_for", "train"]

MODEL_SEED = 0  # the base model (tiny build + warm start) is shared by every RL seed, as in the paper
CACHE_ROOT = (
    Path(os.environ.get("GDPO_CACHE_DIR", Path(__file__).resolve().parent.parent / "data" / "cache"))
    / "models"
)


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.logging.run_dir:
        return Path(cfg.logging.run_dir)
    return Path(cfg.logging.root) / cfg.task / cfg.preset / cfg.algorithm.method / f"seed{cfg.seed}"


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU, else CPU. A CUDA device without an index is this process's GPU
    (``LOCAL_RANK``, as torchrun and the deepspeed launcher set it), so that every rank of a node gets its own;
    or the only GPU this process sees, for launchers that show each rank its own (``CUDA_VISIBLE_DEVICES``,
    SLURM ``--gpus-per-task``). More ranks on a node than GPUs it sees is an error, not two ranks on one GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if visible == 1:
            local_rank = 0
        elif local_rank >= visible > 1:
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but this process sees {visible} GPUs: launch at most one rank per GPU"
            )
        device = torch.device("cuda", local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_model(cfg: TrainConfig, cache_root: Path = CACHE_ROOT) -> str:
    """The policy's starting point: the tiny model (built and warm-started, cached) or a given path/hub id.

    The tiny base model depends on the task options and the model settings only, never on the RL seed: its
    tokenizer corpus and demonstrations come from the task built with ``MODEL_SEED``.
    """
    if cfg.model.name_or_path != "tiny":
        return resolve_model(cfg.model.name_or_path)
    from gdpo.tiny import build_tiny_model, warm_start

    task = build_task(cfg.task, cfg.data.options, MODEL_SEED)

    base = build_tiny_model(cfg.model.tiny, task.corpus, cache_root, seed=MODEL_SEED)
    if not cfg.warm_start.enabled:
        return str(base)
    return str(warm_start(base, task.demonstrations, cfg.warm_start, cache_root, seed=MODEL_SEED))


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def step_prompt_indices(num_prompts: int, batch: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the B prompts of ``step`` (1-based): consecutive slices of seeded per-epoch permutations."""
    start = (step - 1) * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), num_prompts)
        order = list(range(num_prompts))
        if shuffle:
            random.Random(seed * 100_003 + epoch).shuffle(order)
        out.extend(order[offset : offset + batch - len(out)])
    return out


def prompt_seed(seed: int, step: int, position: int) -> int:
    """Seed of the completions of the prompt at ``position`` in the global batch of ``step``."""
    return (seed * 7_919 + step) * 100_003 + position


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """How the global batch splits over ranks, mini-batches and micro-batches."""

    prompts_per_rank: int
    sequences_per_rank: int
    sequences_per_mini_batch: int
    micro_batch_size: int

    @property
    def grad_accumulation(self) -> int:
        return self.sequences_per_mini_batch // self.micro_batch_size


IN_REWARD_KL_METHODS = ("grpo", "grpo_no_std")  # the methods verl-GDPO's in-reward KL applies to


def in_reward_kl_coef(cfg: TrainConfig) -> float:
    """``algorithm.kl_in_reward`` where it applies: to GRPO and GRPO w/o std, whose rewards verl-GDPO penalises;
    0 for GDPO, whose official branch normalises the raw components (the same preset serves every method)."""
    return cfg.algorithm.kl_in_reward if cfg.algorithm.method in IN_REWARD_KL_METHODS else 0.0


def uses_reference(cfg: TrainConfig) -> bool:
    """Whether a run loads the frozen reference model: a KL loss term, or an in-reward KL that applies."""
    return cfg.algorithm.kl_coef > 0 or in_reward_kl_coef(cfg) > 0


def plan_layout(cfg: TrainConfig, world: int) -> Layout:
    """How the global batch splits over ``world`` ranks; a split that does not divide is a config error."""
    b, g = cfg.data.prompts_per_step, cfg.rollout.num_rollouts
    if b % world:
        raise ConfigError(f"data.prompts_per_step={b} must be divisible by the number of processes ({world})")
    per_rank = (b // world) * g
    if per_rank % cfg.optim.mini_batches:
        raise ConfigError(
            f"optim.mini_batches={cfg.optim.mini_batches} must divide the {per_rank} sequences per rank "
            f"(prompts_per_step/world x num_rollouts)"
        )
    mini = per_rank // cfg.optim.mini_batches
    micro = min(cfg.optim.micro_batch_size, mini)
    if mini % micro:
        raise ConfigError(
            f"optim.micro_batch_size={micro} must divide the {mini} sequences of a mini-batch per rank"
        )
    return Layout(b // world, per_rank, mini, micro)


def lr_lambda(cfg: TrainConfig, total_updates: int):
    warmup, schedule = cfg.optim.warmup_steps, cfg.optim.lr_schedule

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (update - warmup) / max(1, total_updates - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def merge_config(base: dict, extra: dict) -> dict:
    """``base`` updated with ``extra``; where both hold a mapping under a key, they merge recursively."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = merge_config(out[key], value) if both else value
    return out


def build_engine(cfg: TrainConfig, model, layout: Layout, world: int):
    import deepspeed

    o = cfg.optim
    ds_config = {
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.grad_accumulation,
        "train_batch_size": layout.micro_batch_size * layout.grad_accumulation * world,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": o.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": o.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    total_updates = cfg.steps * cfg.algorithm.num_iterations * o.mini_batches
    if o.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's own CPU Adam (JIT-compiled on first use), built from the config.
        ds_config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        ds_config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": list(o.betas), "weight_decay": o.weight_decay},
        }
        optimizer = None
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
    ds_config = merge_config(ds_config, o.deepspeed_config)
    model.train()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters() if optimizer is None else None,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_updates)),
        config=ds_config,
    )
    return engine


def build_reference(cfg: TrainConfig, model, layout: Layout):
    """The frozen reference policy for the KL term: the model itself, or under ZeRO-3 an inference-only
    DeepSpeed engine (no optimizer) that partitions its parameters over the ranks as the policy's are, rather
    than a full copy on every GPU."""
    model = model.eval().requires_grad_(False)
    if cfg.optim.zero_stage != 3:
        return model
    import deepspeed

    ds_config = {
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": cfg.optim.precision == "bf16"},
        "steps_per_print": 10**9,
    }
    zero = merge_config(
        ds_config["zero_optimization"], cfg.optim.deepspeed_config.get("zero_optimization", {})
    )
    zero.pop("offload_optimizer", None)  # there is no optimizer
    engine, _, _, _ = deepspeed.initialize(model=model, config={**ds_config, "zero_optimization": zero})
    engine.eval()  # DeepSpeed's eval() returns None, not the engine
    return engine


def load_policy(cfg: TrainConfig, path: str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if cfg.model.chat_template:
        template = cfg.model.chat_template
        tokenizer.chat_template = Path(template).read_text() if template.endswith(".jinja") else template
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer of {path} has no chat template; set model.chat_template")
    dtype = getattr(torch, cfg.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=cfg.model.attn_implementation
    )
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return tokenizer, model.to(device)


# --------------------------------------------------------------------------------------------------
# Policy update
# --------------------------------------------------------------------------------------------------


def _group_rows(prompt_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of each run of identical consecutive prompts, run index of every row)."""
    starts = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    starts[1:] = (prompt_ids[1:] != prompt_ids[:-1]).any(-1)
    return starts.nonzero().squeeze(-1), starts.cumsum(0) - 1


def unwrap(model):
    """The Hugging Face model inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def forward_hidden(model, **inputs):
    """``(final hidden states [n, L, H], the model's output)`` of one forward pass of ``model``.

    The model runs whole (through a DeepSpeed engine's ``forward`` where there is one, so that ZeRO-3 gathers
    and releases parameters as in any forward) and is asked for the last position's logits only; the hidden
    states are the decoder's output, read by a forward hook. That last position's logits are checked against
    the output head applied to its hidden state: a model that transforms the logits after its head (a logit
    scale or soft-capping) is refused, since the chunked log-probs apply the head alone.
    """
    captured = []
    decoder = unwrap(model).get_decoder()
    handle = decoder.register_forward_hook(
        lambda module, args, out: captured.append(out[0] if isinstance(out, tuple) else out.last_hidden_state)
    )
    try:
        out = model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    (hidden,) = captured
    with torch.no_grad():
        expected = unwrap(model).get_output_embeddings()(hidden[:, -1:]).float()
        if not torch.allclose(out.logits.float(), expected, rtol=1e-3, atol=1e-3):
            raise ValueError(
                f"{type(unwrap(model)).__name__}'s logits are not its output head applied to its decoder's "
                "hidden states; the trainer's chunked log-probs do not support this model"
            )
    return hidden, out


def _completion_hidden_shared(model, ids, mask, positions, width: int):
    """Hidden states that predict the completion tokens, with each distinct prompt run through the model once.

    The prompt pass keeps its KV cache (with gradients); every row then reads its prompt's cache while the
    completions run. Returns None when the model gives no cache (e.g. gradient checkpointing in training).
    """
    first, owner = _group_rows(ids[:, :width])
    hidden, out = forward_hidden(
        model,
        input_ids=ids[first, :width],
        attention_mask=mask[first, :width],
        position_ids=positions[first, :width],
        use_cache=True,
    )
    cache = out.past_key_values
    if cache is None:
        return None
    head = hidden[owner, -1:]  # predicts each row's first completion token
    if ids.shape[1] - width == 1:
        return head
    cache.batch_select_indices(owner)
    rest, _ = forward_hidden(
        model,
        input_ids=ids[:, width:-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, width:-1],
        past_key_values=cache,
        use_cache=True,
    )
    return torch.cat([head, rest], 1)


def completion_logprobs(
    model,
    ro: Rollouts,
    rows: slice,
    temperature: float,
    forbidden: int | None,
    with_entropy: bool,
    share_prompt: bool = False,
    entropy_grad: bool = True,
    chunk_tokens: int = 1024,
    same_chunks_on_all_ranks: bool = False,
):
    """Log-probs ``[n, T']`` of the completion tokens of ``rows`` (and their entropies) under ``model``,
    temperature-scaled; 0 on padding.

    The rows are cut to their own longest prompt and completion first (``Rollouts.micro_batch``), so ``T'`` is
    the longest completion of these rows. The model gives final hidden states; the output head and the
    log-softmax run over the completion tokens ``chunk_tokens`` at a time (``gdpo.losses.token_logprobs``).
    ``same_chunks_on_all_ranks`` (ZeRO-3 on several processes, where each call of the head is a collective):
    every rank makes as many chunks as the rank with the most completion tokens (a collective itself).
    """
    mb = ro.micro_batch(rows)
    ids, mask, width = mb.input_ids, mb.attention_mask, mb.prompt_width
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = None
    if share_prompt:
        hidden = _completion_hidden_shared(model, ids, mask, positions, width)
    if hidden is None:
        hidden, _ = forward_hidden(
            model, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
        )
        hidden = hidden[:, width - 1 : -1]  # the positions that predict completion tokens
    completion_mask = mb.completion_mask
    num_chunks = None
    if same_chunks_on_all_ranks:
        mine = torch.tensor([-(-int(completion_mask.sum()) // chunk_tokens)], device=collective_device())
        num_chunks = max(1, int(all_gather_cat(mine).max()))
    logp, entropy = token_logprobs(
        hidden[completion_mask],
        unwrap(model).get_output_embeddings(),
        ids[:, width:][completion_mask],
        temperature=temperature,
        forbidden=forbidden,
        chunk_tokens=chunk_tokens,
        with_entropy=with_entropy,
        entropy_grad=entropy_grad,
        num_chunks=num_chunks,
    )
    return _spread(completion_mask, logp), _spread(completion_mask, entropy) if entropy is not None else None


def _spread(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` of the True positions of ``mask``, in row-major order, as a tensor of ``mask``'s shape."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask, values)


def shares_prompt_forward(cfg: TrainConfig, world: int) -> bool:
    """``optim.share_prompt_forward``, except under ZeRO-3 on several processes.

    There every forward gathers the partitioned parameters (a collective), so every rank must run as many
    forwards; the shared path runs one or two per micro-batch depending on the rank's completion lengths.
    """
    return cfg.optim.share_prompt_forward and not (cfg.optim.zero_stage == 3 and world > 1)


def step_logprobs(model, rows: slice, *, ro: Rollouts, cfg: TrainConfig, forbidden: int | None, **kwargs):
    """Log-probs (and entropies) of ``rows`` of a step's rollouts under ``model``, as the update computes them."""
    world = world_size()
    return completion_logprobs(
        model,
        ro,
        rows,
        cfg.rollout.temperature,
        forbidden,
        share_prompt=shares_prompt_forward(cfg, world),
        chunk_tokens=cfg.optim.logprob_chunk_tokens,
        same_chunks_on_all_ranks=cfg.optim.zero_stage == 3 and world > 1,
        **kwargs,
    )


@torch.no_grad()
def behaviour_logprobs(
    engine,
    ref_model,
    ro: Rollouts,
    cfg: TrainConfig,
    layout: Layout,
    forbidden: int | None,
    *,
    old: bool,
    ref: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``[n, T]`` log-probs of the step's completions under the policy before its update (``old``) and under
    the reference model (``ref``), on the engine's device; None for the one not asked for."""
    ro = ro.to(engine.device)
    n, width = ro.completion_mask.shape
    rows = [slice(i, i + layout.micro_batch_size) for i in range(0, n, layout.micro_batch_size)]

    def all_rows(model) -> torch.Tensor:  # each micro-batch's [n, T'] padded back to [n, T]
        parts = [
            step_logprobs(model, r, ro=ro, cfg=cfg, forbidden=forbidden, with_entropy=False)[0] for r in rows
        ]
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])

    return (all_rows(engine) if old else None), (all_rows(ref_model) if ref else None)


def in_reward_kl(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's in-reward KL of each sequence: the k1 estimate ``log pi_old - log pi_ref`` summed over its
    completion tokens (``[n]``)."""
    return ((old_logprobs - ref_logprobs) * mask).sum(-1)


def policy_update(
    engine,
    ref_model,
    ro: Rollouts,
    advantages: torch.Tensor,
    cfg: TrainConfig,
    layout: Layout,
    forbidden: int | None,
    guard: NonFiniteGuard | None = None,
    before: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
):
    """mu passes over the batch, each in mini-batches of micro-batches; returns averaged statistics, with
    ``rollout/logprob_gap`` (``_max``): the mean (largest) |sampler - trainer| log-prob of the completion tokens
    under the pre-update policy.

    The rollouts and advantages move to the engine's device first, once: the masks and the old and reference
    log-probs are then made there (or come as ``before``, from :func:`behaviour_logprobs`). With a ``guard``,
    an update whose loss (on any rank) or gradients are not finite is skipped; ``nonfinite/skipped`` counts the
    skipped updates.
    """
    a, world = cfg.algorithm, world_size()
    ro, advantages = ro.to(engine.device), advantages.to(engine.device)
    loss_mask = ro.completion_mask
    if cfg.rollout.mask_truncated:
        loss_mask = loss_mask & ~ro.truncated[:, None]
    n = advantages.shape[0]
    logprobs = partial(step_logprobs, ro=ro, cfg=cfg, forbidden=forbidden)

    def micro_slices(start: int, stop: int) -> list[slice]:
        return [slice(i, i + layout.micro_batch_size) for i in range(start, stop, layout.micro_batch_size)]

    updates = a.num_iterations * (n // layout.sequences_per_mini_batch)
    lr = engine.get_lr()[0]  # the rate of this step's first update (DeepSpeed steps the scheduler after it)
    # After the first update the policy has moved: later mini-batches and passes need the behaviour policy's
    # log-probs for the ratio (with one update, the detached current log-probs are the same).
    old_logprobs, ref_logprobs = before or behaviour_logprobs(
        engine, ref_model, ro, cfg, layout, forbidden, old=updates > 1, ref=a.kl_coef > 0
    )

    # The sampler's log-probs against the trainer's, for the same tokens and weights (vLLM's kernels, bf16, a
    # weight sync gone wrong): |difference| over the completion tokens, from the pre-update log-probs.
    gap = {"sum": 0.0, "max": 0.0, "tokens": 0.0}

    def add_gap(trainer_logprobs: torch.Tensor, rows: slice) -> None:
        t = trainer_logprobs.shape[1]
        diff = (trainer_logprobs.detach() - ro.sample_logprobs[rows, :t]).abs()[ro.completion_mask[rows, :t]]
        gap["sum"] += diff.sum().item()
        gap["max"] = max(gap["max"], diff.max().item() if diff.numel() else 0.0)
        gap["tokens"] += diff.numel()

    if old_logprobs is not None:
        add_gap(old_logprobs, slice(None))

    sums = {
        "loss": 0.0,
        "pg_loss": 0.0,
        "kl": 0.0,
        "entropy": 0.0,
        "clip_frac/low": 0.0,
        "clip_frac/high": 0.0,
    }
    tokens_seen = 0.0
    grad_norms = []
    skipped, nonfinite_loss = 0, False
    for _ in range(a.num_iterations):
        for start in range(0, n, layout.sequences_per_mini_batch):
            stop = start + layout.sequences_per_mini_batch
            norm = {
                "num_tokens": all_reduce_sum(loss_mask[start:stop].sum().item()),
                "num_sequences": all_reduce_sum(stop - start),
                "max_tokens": cfg.rollout.max_new_tokens,
            }
            for rows in micro_slices(start, stop):
                logp, entropy = logprobs(engine, rows, with_entropy=True, entropy_grad=a.entropy_coef != 0)
                t = logp.shape[1]  # this micro-batch's longest completion
                if old_logprobs is None:  # one update: these are the pre-update log-probs
                    add_gap(logp, rows)
                old = old_logprobs[rows, :t] if old_logprobs is not None else logp.detach()
                pg, clip_low, clip_high = policy_loss(
                    logp,
                    old,
                    advantages[rows],
                    clip_low=a.clip_low,
                    clip_high=a.clip_high,
                    clip_ratio_c=a.clip_ratio_c,
                )
                token_loss = pg - a.entropy_coef * entropy
                kl = (
                    kl_penalty(logp, ref_logprobs[rows, :t], a.kl_estimator)
                    if ref_logprobs is not None
                    else torch.zeros_like(logp)
                )
                token_loss = token_loss + a.kl_coef * kl
                mask = loss_mask[rows, :t]
                loss = aggregate(token_loss, mask, a.loss_agg, **norm)
                loss_value = loss.item()
                nonfinite_loss |= not math.isfinite(loss_value)
                # DeepSpeed averages gradients over ranks; the normalisers already cover all ranks.
                engine.backward(loss * world, scale_wrt_gas=False)
                boundary = engine.is_gradient_accumulation_boundary()
                if boundary:
                    grad_norms.append(_grad_norm(engine))
                    if guard is not None:
                        guard.begin_update(loss_nonfinite=all_reduce_sum(nonfinite_loss) > 0)
                    nonfinite_loss = False
                engine.step()
                if boundary and guard is not None:
                    skipped += guard.end_update()
                m = mask.float()
                sums["loss"] += loss_value
                sums["pg_loss"] += aggregate(pg.detach(), mask, a.loss_agg, **norm).item()
                for key, value in (
                    ("kl", kl),
                    ("entropy", entropy),
                    ("clip_frac/low", clip_low),
                    ("clip_frac/high", clip_high),
                ):
                    sums[key] += (value.detach().float() * m).sum().item()
                tokens_seen += m.sum().item()
    # Each rank's loss is normalised by global counts, so the global loss is the sum over ranks.
    stats = {key: all_reduce_sum(sums[key]) / updates for key in ("loss", "pg_loss")}
    for key in ("kl", "entropy", "clip_frac/low", "clip_frac/high"):
        stats[key] = all_reduce_sum(sums[key]) / max(all_reduce_sum(tokens_seen), 1.0)
    grad_norms = [g for g in grad_norms if g is not None]
    stats["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
    stats["lr"] = lr
    stats["nonfinite/skipped"] = skipped
    stats["rollout/logprob_gap"] = all_reduce_sum(gap["sum"]) / max(all_reduce_sum(gap["tokens"]), 1.0)
    if world > 1:
        gap["max"] = all_gather_cat(torch.tensor([gap["max"]], device=collective_device())).max().item()
    stats["rollout/logprob_gap_max"] = gap["max"]
    return stats, all_reduce_sum(tokens_seen) / a.num_iterations


def _grad_norm(engine) -> float | None:
    """Global gradient norm before clipping, read at the accumulation boundary (after the all-reduce).

    With ZeRO stage 0 the averaged gradients sit in ``param.grad``; with ZeRO >= 1 they are partitioned
    inside DeepSpeed's optimizer and we report DeepSpeed's own norm of the previous step (None before it).
    """
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if grads:
        return torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
        ).item()
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def all_finite(tensors) -> bool:
    """Whether every element of every tensor is finite (True for none)."""
    checks = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(checks).all()) if checks else True


class NonFiniteGuard:
    """Skips an optimizer update whose loss or gradients are not finite, on every rank alike, and notes an
    update that made a parameter non-finite.

    It wraps the ``step`` of the optimizer that DeepSpeed drives (``engine.basic_optimizer``): DeepSpeed's
    ZeRO and bf16 wrappers reduce and clip the gradients, hand them to this optimizer's parameters (the model's
    own, or fp32 partitions of them) and copy its parameters back into the model afterwards. A skipped inner
    step leaves the parameters and the Adam states as they were; DeepSpeed's counters (micro-steps, the LR
    schedule) move on as after any update. Every rank takes the same decision (the flags are summed over
    ranks). Under ZeRO-3 the inner step runs once per parameter sub-group and each is decided alone: with
    gradient clipping on, one non-finite gradient makes the global norm, and so every clipped gradient,
    non-finite, and all sub-groups are skipped.

    The trainer calls ``begin_update`` before ``engine.step()`` at an accumulation boundary and
    ``end_update`` after it.
    """

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.corrupted = False  # an applied update left a parameter non-finite (it cannot be undone)
        self._step = optimizer.step
        self._loss_nonfinite = self._skipped = False
        optimizer.step = self._guarded_step

    def _tensors(self, attribute: str) -> list[torch.Tensor]:
        params = (p for group in self.optimizer.param_groups for p in group["params"])
        return [t for t in (getattr(p, attribute) for p in params) if t is not None]

    def _guarded_step(self, *args, **kwargs):
        bad = self._loss_nonfinite or not all_finite(self._tensors("grad"))
        if all_reduce_sum(bad) > 0:
            self._skipped = True
            return None
        out = self._step(*args, **kwargs)
        if all_reduce_sum(not all_finite(self._tensors("data"))) > 0:
            self.corrupted = True
        return out

    def begin_update(self, loss_nonfinite: bool) -> None:
        """The coming update: skip it if ``loss_nonfinite`` (decided over all ranks) or its gradients are."""
        self._loss_nonfinite, self._skipped = loss_nonfinite, False

    def end_update(self) -> int:
        """1 if the update just made was skipped, else 0."""
        return int(self._skipped)


def reset_peak_memory(device: torch.device) -> None:
    """Start a step's measure of peak GPU memory (nothing to do off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """``memory/peak_gib``: the most GPU memory allocated by tensors since ``reset_peak_memory``, the largest
    over ranks, in GiB (to compare with the memory plan); empty off CUDA."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    if world_size() > 1:
        peak = all_gather_cat(torch.tensor([peak], device=collective_device())).max().item()
    return {"memory/peak_gib": peak}


# --------------------------------------------------------------------------------------------------
# Sampling a step's groups
# --------------------------------------------------------------------------------------------------


def take_groups(tokenizer, parts: list[tuple[Rollouts, int]], g: int) -> Rollouts:
    """One :class:`Rollouts` holding group ``i`` of ``ro`` for each ``(ro, i)`` in ``parts``, in order."""
    prompts, completions, logprobs, truncated = [], [], [], []
    for ro, i in parts:
        for row in range(i * g, (i + 1) * g):
            prompt_keep = ro.attention_mask[row, : ro.prompt_width].bool()
            keep = ro.completion_mask[row]
            prompts.append(ro.input_ids[row, : ro.prompt_width][prompt_keep].tolist())
            completions.append(ro.input_ids[row, ro.prompt_width :][keep].tolist())
            logprobs.append(ro.sample_logprobs[row][keep].tolist())
            truncated.append(bool(ro.truncated[row]))
    return pack_rollouts(tokenizer, prompts, completions, logprobs, truncated)


def check_no_forbidden_token(ro: Rollouts, forbidden: int | None) -> None:
    """The update gives the padding token log-prob -inf: a completion holding it would make the loss NaN."""
    if forbidden is None:
        return
    rows = ((ro.input_ids[:, ro.prompt_width :] == forbidden) & ro.completion_mask).any(-1).nonzero()
    if len(rows):
        raise ValueError(
            f"completion {rows[0].item()} of this step contains the padding token {forbidden}, which the trainer "
            "forbids (gdpo.rollout.forbidden_token); the rollout backend must never emit it"
        )


def sample_groups(
    cfg: TrainConfig, step: int, backend, tokenizer, prompts, task: Task, rewards, first: int, layout: Layout
):
    """This rank's groups for ``step``: (rollouts, rollout dicts, scores, sampling metrics).

    Without dynamic sampling: one generation round over the step's prompts. With it, groups without signal
    (``gdpo.advantages.groups_with_signal``) are set aside and further rounds are drawn until every rank
    holds ``prompts_per_rank`` groups with signal, or ``max_sampling_rounds`` is reached; the batch is then
    filled with set-aside groups, in order. Round ``r`` reads the prompts of step ``step + r * steps``, so
    the draw depends only on (seed, step): resumed runs sample the same. Each rank fills its own share.
    """
    a, g, per_rank = cfg.algorithm, cfg.rollout.num_rollouts, layout.prompts_per_rank
    test = "any_component" if a.dynamic_sampling == "off" else a.dynamic_sampling
    kept, dropped, generated, with_signal, score_s = [], [], 0, 0, 0.0
    for round_ in range(max(1, a.max_sampling_rounds) if a.dynamic_sampling != "off" else 1):
        virtual_step = step + round_ * cfg.steps
        batch = step_prompt_indices(
            len(prompts), cfg.data.prompts_per_step, virtual_step, cfg.seed, cfg.data.shuffle
        )
        mine = range(first, first + per_rank)
        ro = backend.generate(
            [prompts[batch[p]] for p in mine],
            [prompt_seed(cfg.seed, virtual_step, p) for p in mine],
            g,
        )
        check_no_forbidden_token(ro, forbidden_token(tokenizer))
        groups = [
            [
                dict(
                    task.train[batch[p]],
                    completion=ro.completions[i * g + j],
                    num_tokens=int(ro.num_tokens[i * g + j]),
                )
                for j in range(g)
            ]
            for i, p in enumerate(mine)
        ]
        t0 = time.perf_counter()
        scored = rewards.score(groups)
        score_s += time.perf_counter() - t0
        # Logged in every mode; used to filter only with dynamic sampling.
        signal = groups_with_signal(scored.rewards, scored.weights, test, unbiased=a.unbiased)
        with_signal += int(signal.sum())
        for i in range(per_rank):
            keep = bool(signal[i]) or a.dynamic_sampling == "off"
            (kept if keep else dropped).append((ro, i, groups[i], scored.raw[i], scored.rewards[i]))
        generated += per_rank
        if all_reduce_sum(len(kept) < per_rank) == 0:
            break
    chosen = (kept + dropped)[:per_rank]
    metrics = {
        "sampling/rounds": round_ + 1,  # the same on every rank: the loop ends on a global condition
        "sampling/signal_frac": all_reduce_sum(with_signal) / all_reduce_sum(generated),
        "time/score_s": score_s,
    }
    if any(c[0] is not ro or c[1] != i for i, c in enumerate(chosen)):
        ro = take_groups(tokenizer, [(c[0], c[1]) for c in chosen], g)
    scored = ScoredBatch(
        raw=torch.stack([c[3] for c in chosen]),
        rewards=torch.stack([c[4] for c in chosen]),
        names=scored.names,
        weights=scored.weights,
    )
    return ro, [c[2] for c in chosen], scored, metrics


def kept_prompts(prompts: list[list[int]], limit: int, mode: str) -> list[int]:
    """Indices of the prompts of at most ``limit`` tokens; with ``mode="error"`` a longer one is an error."""
    kept = [i for i, p in enumerate(prompts) if len(p) <= limit]
    if mode == "error" and len(kept) < len(prompts):
        first = next(i for i, p in enumerate(prompts) if len(p) > limit)
        raise ValueError(
            f"train prompt {first} has {len(prompts[first])} tokens > rollout.max_prompt_tokens={limit} "
            f"({len(prompts) - len(kept)} such prompts; data.overlong_prompts=drop leaves them out)"
        )
    if not kept:
        raise ValueError(f"every training prompt is longer than rollout.max_prompt_tokens={limit}")
    return kept


def check_finite_step(cfg: TrainConfig, step: int, stats: dict, consecutive: int, corrupted: bool, rank: int):
    """Stop the run (before any checkpoint of the step) where ``algorithm.on_nonfinite`` says so.

    ``consecutive`` counts the steps in a row, this one included, with a skipped update. An applied update
    that left a parameter non-finite always stops the run: the model cannot be restored without a copy.
    """
    a = cfg.algorithm
    if corrupted:
        raise RuntimeError(
            f"step {step}: an update made the policy's parameters non-finite; stopped before any checkpoint of "
            "them (the last checkpoint holds the previous parameters)"
        )
    skipped = stats["nonfinite/skipped"]
    if not skipped:
        return
    what = (
        f"step {step}: {skipped} update(s) skipped for a non-finite loss or gradient (loss {stats['loss']})"
    )
    if a.on_nonfinite == "stop":
        raise RuntimeError(f"{what}; algorithm.on_nonfinite=stop")
    if consecutive >= a.max_nonfinite_skips:
        raise RuntimeError(
            f"{what}; {consecutive} steps in a row, algorithm.max_nonfinite_skips={a.max_nonfinite_skips}"
        )
    if rank == 0:
        print(f"warning: {what}; its rewards and advantages are in metrics.jsonl", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, resume: bool = False, task: Task | None = None) -> Path:
    """Run (or resume) an RL run; returns the run folder."""
    device = pick_device(cfg.device)
    rank, world = init_distributed(device)
    seed_everything(cfg.seed)
    task = task or build_task(cfg.task, cfg.data.options, cfg.seed)
    layout = plan_layout(cfg, world)
    run = RunLog(run_dir_for(cfg), is_main=rank == 0)
    if run.has_progress() and not resume:
        raise FileExistsError(
            f"{run.dir} already holds a run; pass --resume to continue it or choose logging.run_dir"
        )
    changed = run.config_changes(cfg) if resume else []
    if changed:  # the resumed steps would not continue the run that was started
        raise ValueError(
            f"{run.dir} was started with other settings for {changed}; resume it with its config.yaml, "
            "or choose logging.run_dir"
        )

    model_path = prepare_model(cfg) if rank == 0 else None
    barrier()
    model_path = model_path or prepare_model(cfg)  # other ranks find the cached folder
    tokenizer, model = load_policy(cfg, model_path, device)
    ref_model = None
    if uses_reference(cfg):
        ref_model = build_reference(cfg, load_policy(cfg, model_path, device)[1], layout)
    engine = build_engine(cfg, model, layout, world)
    guard = NonFiniteGuard(engine.basic_optimizer)
    rewards = task.rewards.with_weights(cfg.algorithm.reward_weights)
    backend = make_rollout_backend(
        cfg.rollout,
        engine.module,
        tokenizer,
        model_path=model_path,
        dtype=cfg.model.dtype,
        seed=cfg.seed,
        synced=cfg.optim.zero_stage == 3 and world > 1,  # ZeRO-3's forward is a collective
    )
    prompts = [encode_prompt(tokenizer, row["messages"]) for row in task.train]
    kept = kept_prompts(prompts, cfg.rollout.max_prompt_tokens, cfg.data.overlong_prompts)
    overlong = len(prompts) - len(kept)
    if overlong:
        prompts = [prompts[i] for i in kept]
        task = replace(task, train=[task.train[i] for i in kept])
        if rank == 0:
            print(
                f"dropped {overlong} of {overlong + len(kept)} training prompts longer than "
                f"rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens} (data.overlong_prompts=drop)"
            )

    restored = restore_checkpoint(run.dir / "checkpoints", engine) if resume else Restored(0)
    start = restored.step
    if resume:
        moved = run.rewind_to(start)
        if rank == 0 and start:
            print(f"resumed {run.dir} at step {start} ({moved} log lines past the checkpoint moved aside)")
    run.write_config(cfg)
    run.add_writers(
        tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb, name=str(run.dir), config=to_dict(cfg)
    )
    run.write_metadata(
        device=str(device),
        world_size=world,
        model_path=model_path,
        resumed_from_step=start,
        skipped_checkpoints=restored.skipped,  # damaged newer checkpoints a resume fell back from
        overlong_prompts_dropped=overlong,
    )

    progress = _progress(cfg, start, rank)
    nonfinite_steps = 0  # consecutive steps with a skipped update
    kl_in_reward = in_reward_kl_coef(cfg)  # 0 where it does not apply
    for step in range(start + 1, cfg.steps + 1):
        reset_peak_memory(device)
        profiled = rank == 0 and step in cfg.logging.profile_steps
        with profile_step(run.dir / "profile" if profiled else None, step, device):
            t0 = time.perf_counter()
            backend.sync_weights(engine.module)  # vLLM: push the current policy (also right after a resume)
            first = rank * layout.prompts_per_rank
            with torch.profiler.record_function("generate"):
                ro, groups, scored, sampling = sample_groups(
                    cfg, step, backend, tokenizer, prompts, task, rewards, first, layout
                )
            backend.release()  # vLLM on GPU: sleep during scoring and the update
            t1 = time.perf_counter()
            g = cfg.rollout.num_rollouts
            all_rewards = all_gather_cat(scored.rewards.to(device)).cpu()
            all_lengths = all_gather_cat(ro.num_tokens.view(-1, g).to(device)).cpu()
            a = cfg.algorithm
            before, penalised, weights = None, all_rewards, list(scored.weights)
            if kl_in_reward > 0:  # verl-GDPO's GRPO: reward - beta * sum_t KL_t, before the group step
                before = behaviour_logprobs(
                    engine, ref_model, ro, cfg, layout, forbidden_token(tokenizer), old=True, ref=True
                )
                kl = in_reward_kl(*before, ro.to(device).completion_mask).view(-1, g)
                all_kl = all_gather_cat(kl).cpu()
                penalised = torch.cat([all_rewards, -all_kl[..., None].to(all_rewards.dtype)], -1)
                weights.append(kl_in_reward)
            adv = compute_advantages(
                penalised,
                a.method,
                weights=weights,
                eps=a.eps,
                unbiased=a.unbiased,
                batch_norm=a.batch_norm,
                lengths=all_lengths,
            )
            local_adv = adv[first : first + layout.prompts_per_rank].reshape(-1).to(device)
            t2 = time.perf_counter()

            with torch.profiler.record_function("update"):
                stats, train_tokens = policy_update(
                    engine, ref_model, ro, local_adv, cfg, layout, forbidden_token(tokenizer), guard, before
                )
            if kl_in_reward > 0:
                stats["kl_in_reward/seq_mean"] = all_kl.mean().item()
            t3 = time.perf_counter()

        all_truncated = all_gather_cat(ro.truncated.to(device)).cpu()
        metrics = {
            **advantage_diagnostics(all_rewards, adv, list(scored.names), weights=list(scored.weights)),
            "reward/weighted_sum/mean": float(
                (torch.nan_to_num(all_rewards) * torch.tensor(scored.weights)).sum(-1).mean()
            ),
            **stats,
            "sampling/rounds": sampling["sampling/rounds"],
            "sampling/signal_frac": sampling["sampling/signal_frac"],
            "completion/len_mean": all_lengths.float().mean().item(),
            "completion/len_min": all_lengths.min().item(),
            "completion/len_max": all_lengths.max().item(),
            "completion/truncated_frac": all_truncated.float().mean().item(),
            "time/generate_s": t1 - t0 - sampling["time/score_s"],
            "time/score_s": sampling["time/score_s"] + t2 - t1,
            "time/update_s": t3 - t2,
            "time/step_s": t3 - t0,
            "throughput/rollout_tokens_per_s": all_lengths.sum().item()
            / max(t1 - t0 - sampling["time/score_s"], 1e-9),
            "throughput/train_tokens_per_s": train_tokens * a.num_iterations / max(t3 - t2, 1e-9),
            **peak_memory(device),
        }
        run.log_metrics(step, metrics)
        nonfinite_steps = nonfinite_steps + 1 if stats["nonfinite/skipped"] else 0
        check_finite_step(cfg, step, stats, nonfinite_steps, guard.corrupted, rank)
        if cfg.logging.dump_rollouts:
            run.log_rollouts(step, all_rewards, adv, all_lengths)
        if cfg.logging.sample_every and step % cfg.logging.sample_every == 0:
            run.log_samples(step, _samples(groups, scored, local_adv, cfg.logging.num_samples, g))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(_postfix(metrics, scored.names))
        if (cfg.logging.checkpoint_every and step % cfg.logging.checkpoint_every == 0) or step == cfg.steps:
            save_checkpoint(run.dir / "checkpoints", step, engine, keep=cfg.logging.keep_checkpoints)
    if progress is not None:
        progress.close()
    run.close()
    save_final_model(engine, tokenizer, run.dir / "final_model", rank)
    barrier()
    return run.dir


def save_final_model(engine, tokenizer, out: Path, rank: int) -> None:
    """The trained policy as a Hugging Face folder, written by rank 0.

    Under ZeRO-3 the parameters are partitioned over ranks (a rank holds empty placeholders): every rank takes
    part in gathering them, layer by layer, into rank 0's full state dict.
    """
    state_dict = None
    if engine.zero_optimization_partition_weights():
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective; None on ranks > 0
    if rank == 0:  # written aside and renamed: a reproduction takes final_model/ as "this run is finished"
        from gdpo.assets import replace_folder

        def write(tmp: Path) -> None:
            engine.module.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)

        replace_folder(out, write)


def _progress(cfg: TrainConfig, start: int, rank: int):
    if rank != 0 or not cfg.logging.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.steps,
        initial=start,
        desc=f"{cfg.task}/{cfg.algorithm.method}/seed{cfg.seed}",
        dynamic_ncols=True,
    )


def _postfix(metrics: dict, names) -> dict:
    out = {name: f"{metrics.get(f'reward/{name}/mean', float('nan')):.3f}" for name in names}
    out["adv0"] = f"{metrics['adv/zero_frac']:.2f}"
    out["loss"] = f"{metrics['loss']:.4f}"
    return out


def _samples(groups, scored, local_adv, count, g) -> list[dict]:
    out = []
    for i in range(min(count, len(groups) * g)):
        p, j = divmod(i, g)
        out.append(
            {
                "prompt": groups[p][j]["messages"][-1]["content"],
                "completion": groups[p][j]["completion"],
                "num_tokens": groups[p][j]["num_tokens"],
                "rewards": dict(zip(scored.names, scored.rewards[p, j].tolist())),
                "advantage": local_adv[i].item(),
            }
        )
    return out
