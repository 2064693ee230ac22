"""The RL trainer: one loop for every task, method and scale.

Per step: take B prompts -> sample G completions each -> score every reward component -> advantages over the
global batch (``gdpo.advantages``, method from the config) -> clipped policy-gradient update on a DeepSpeed
engine -> one line of ``metrics.jsonl``.

Where this departs from the paper and the official codes (each is a config option; see README):
* The advantage is computed on the raw reward components only; a KL term, when on, is a loss term applied
  identically to every method (``algorithm.kl_coef``). verl-GDPO put an in-reward KL into GRPO but not GDPO.
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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gdpo.advantages import compute_advantages, groups_with_signal
from gdpo.assets import resolve_model
from gdpo.checkpoint import load_checkpoint, save_checkpoint
from gdpo.config import TrainConfig, to_dict
from gdpo.diagnostics import advantage_diagnostics
from gdpo.distributed import all_gather_cat, all_reduce_sum, barrier, init_distributed
from gdpo.losses import aggregate, entropy_from_logits, kl_penalty, policy_loss
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


def check_training_settings(cfg: TrainConfig) -> None:
    """Values a training run cannot use, as errors naming the field (checked before anything is loaded)."""
    r = cfg.rollout
    problems = [
        (r.temperature > 0, f"rollout.temperature must be > 0 for training (got {r.temperature}): the loss needs "
         "the sampling distribution's log-probs, and greedy completions give them no gradient"),
        (0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1] (got {r.top_p})"),
        (r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1 (got {r.max_new_tokens})"),
        (r.num_rollouts >= 1, f"rollout.num_rollouts must be >= 1 (got {r.num_rollouts})"),
        (cfg.data.prompts_per_step >= 1, f"data.prompts_per_step must be >= 1 (got {cfg.data.prompts_per_step})"),
        (cfg.algorithm.num_iterations >= 1, f"algorithm.num_iterations must be >= 1 (got {cfg.algorithm.num_iterations})"),
        (cfg.optim.mini_batches >= 1, f"optim.mini_batches must be >= 1 (got {cfg.optim.mini_batches})"),
        (cfg.optim.micro_batch_size >= 1, f"optim.micro_batch_size must be >= 1 (got {cfg.optim.micro_batch_size})"),
        (cfg.logging.keep_checkpoints >= 1, f"logging.keep_checkpoints must be >= 1 (got "
         f"{cfg.logging.keep_checkpoints}): the checkpoint just written would be deleted"),
    ]  # fmt: skip
    for ok, message in problems:
        if not ok:
            raise ValueError(message)


def plan_layout(cfg: TrainConfig, world: int) -> Layout:
    b, g = cfg.data.prompts_per_step, cfg.rollout.num_rollouts
    if b % world:
        raise ValueError(f"data.prompts_per_step={b} must be divisible by the number of processes ({world})")
    per_rank = (b // world) * g
    if per_rank % cfg.optim.mini_batches:
        raise ValueError(
            f"optim.mini_batches={cfg.optim.mini_batches} must divide the {per_rank} sequences per rank "
            f"(prompts_per_step/world x num_rollouts)"
        )
    mini = per_rank // cfg.optim.mini_batches
    micro = min(cfg.optim.micro_batch_size, mini)
    if mini % micro:
        raise ValueError(
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


def _completion_logits_shared(model, ids, mask, positions, width: int):
    """Logits predicting the completion tokens, with each distinct prompt run through the model once.

    The prompt pass keeps its KV cache (with gradients); every row then reads its prompt's cache while the
    completions run. Returns None when the model gives no cache (e.g. gradient checkpointing in training).
    """
    first, owner = _group_rows(ids[:, :width])
    out = model(
        input_ids=ids[first, :width],
        attention_mask=mask[first, :width],
        position_ids=positions[first, :width],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.past_key_values
    if cache is None:
        return None
    head = out.logits[owner, -1:]  # predicts each row's first completion token
    if ids.shape[1] - width == 1:
        return head
    cache.batch_select_indices(owner)
    rest = model(
        input_ids=ids[:, width:-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, width:-1],
        past_key_values=cache,
        use_cache=True,
    ).logits
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
):
    """Log-probs ``[n, T]`` of the completion tokens (and their entropies) under ``model``, temperature-scaled."""
    ids, mask = ro.input_ids[rows], ro.attention_mask[rows]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = None
    if share_prompt:
        logits = _completion_logits_shared(model, ids, mask, positions, ro.prompt_width)
    if logits is None:
        # The LM head runs on the positions that predict completion tokens only.
        keep = ids.shape[1] - ro.prompt_width + 1
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep
        ).logits[:, :-1]
    logits = logits.float() / max(temperature, 1e-6)
    if forbidden is not None:
        logits[..., forbidden] = -torch.inf  # as in sampling: padding is never a completion token
    completion_mask = ro.completion_mask[rows]
    targets = ids[:, ro.prompt_width :].masked_fill(~completion_mask, 0)  # padding would gather -inf
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1).masked_fill(~completion_mask, 0.0)
    entropy = None
    if with_entropy and entropy_grad:  # finite logits keep the gradient finite at the forbidden token
        entropy = entropy_from_logits(logits.masked_fill(torch.isinf(logits), -1e9))
    elif with_entropy:  # for the logs only: no graph (entr(0) = 0 handles the forbidden token)
        with torch.no_grad():
            entropy = torch.special.entr(logp_all.exp()).sum(-1)
    return logp, entropy


def shares_prompt_forward(cfg: TrainConfig, world: int) -> bool:
    """``optim.share_prompt_forward``, except under ZeRO-3 on several processes.

    There every forward gathers the partitioned parameters (a collective), so every rank must run as many
    forwards; the shared path runs one or two per micro-batch depending on the rank's completion lengths.
    """
    return cfg.optim.share_prompt_forward and not (cfg.optim.zero_stage == 3 and world > 1)


def policy_update(
    engine,
    ref_model,
    ro: Rollouts,
    advantages: torch.Tensor,
    cfg: TrainConfig,
    layout: Layout,
    forbidden: int | None,
):
    """mu passes over the batch, each in mini-batches of micro-batches; returns averaged statistics."""
    a, world = cfg.algorithm, torch.distributed.get_world_size()
    loss_mask = ro.completion_mask
    if cfg.rollout.mask_truncated:
        loss_mask = loss_mask & ~ro.truncated[:, None]
    temp, share = cfg.rollout.temperature, shares_prompt_forward(cfg, world)
    n = advantages.shape[0]

    def micro_slices(start: int, stop: int) -> list[slice]:
        return [slice(i, i + layout.micro_batch_size) for i in range(start, stop, layout.micro_batch_size)]

    old_logprobs = ref_logprobs = None
    updates = a.num_iterations * (n // layout.sequences_per_mini_batch)
    lr = engine.get_lr()[0]  # the rate of this step's first update (DeepSpeed steps the scheduler after it)
    with torch.no_grad():
        # After the first update the policy has moved: later mini-batches and passes need the behaviour
        # policy's log-probs for the ratio (with one update, the detached current log-probs are the same).
        if updates > 1:
            old_logprobs = torch.cat(
                [
                    completion_logprobs(engine, ro, s, temp, forbidden, False, share)[0]
                    for s in micro_slices(0, n)
                ]
            )
        if a.kl_coef > 0:
            ref_logprobs = torch.cat(
                [
                    completion_logprobs(ref_model, ro, s, temp, forbidden, False, share)[0]
                    for s in micro_slices(0, n)
                ]
            )

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
    for _ in range(a.num_iterations):
        for start in range(0, n, layout.sequences_per_mini_batch):
            stop = start + layout.sequences_per_mini_batch
            norm = {
                "num_tokens": all_reduce_sum(loss_mask[start:stop].sum().item()),
                "num_sequences": all_reduce_sum(stop - start),
                "max_tokens": cfg.rollout.max_new_tokens,
            }
            for rows in micro_slices(start, stop):
                logp, entropy = completion_logprobs(
                    engine,
                    ro,
                    rows,
                    temp,
                    forbidden,
                    with_entropy=True,
                    share_prompt=share,
                    entropy_grad=a.entropy_coef != 0,
                )
                old = old_logprobs[rows] if old_logprobs is not None else logp.detach()
                pg, clip_low, clip_high = policy_loss(
                    logp, old, advantages[rows], clip_low=a.clip_low, clip_high=a.clip_high
                )
                token_loss = pg - a.entropy_coef * entropy
                kl = (
                    kl_penalty(logp, ref_logprobs[rows], a.kl_estimator)
                    if ref_logprobs is not None
                    else torch.zeros_like(logp)
                )
                token_loss = token_loss + a.kl_coef * kl
                mask = loss_mask[rows]
                loss = aggregate(token_loss, mask, a.loss_agg, **norm)
                # DeepSpeed averages gradients over ranks; the normalisers already cover all ranks.
                engine.backward(loss * world, scale_wrt_gas=False)
                if engine.is_gradient_accumulation_boundary():
                    grad_norms.append(_grad_norm(engine))
                engine.step()
                m = mask.float()
                sums["loss"] += loss.item()
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


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, resume: bool = False, task: Task | None = None) -> Path:
    """Run (or resume) an RL run; returns the run folder."""
    check_training_settings(cfg)
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
    if cfg.algorithm.kl_coef > 0:
        ref_model = load_policy(cfg, model_path, device)[1].eval().requires_grad_(False)
    engine = build_engine(cfg, model, layout, world)
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
    too_long = [i for i, p in enumerate(prompts) if len(p) > cfg.rollout.max_prompt_tokens]
    if too_long:
        raise ValueError(
            f"train prompt {too_long[0]} has {len(prompts[too_long[0]])} tokens > rollout.max_prompt_tokens"
        )

    start = 0
    if resume:
        start = load_checkpoint(run.dir / "checkpoints", engine)
        moved = run.rewind_to(start)
        if rank == 0 and start:
            print(f"resumed {run.dir} at step {start} ({moved} log lines past the checkpoint moved aside)")
    run.write_config(cfg)
    run.add_writers(
        tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb, name=str(run.dir), config=to_dict(cfg)
    )
    run.write_metadata(device=str(device), world_size=world, model_path=model_path, resumed_from_step=start)

    progress = _progress(cfg, start, rank)
    for step in range(start + 1, cfg.steps + 1):
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
            adv = compute_advantages(
                all_rewards,
                a.method,
                weights=scored.weights,
                eps=a.eps,
                unbiased=a.unbiased,
                batch_norm=a.batch_norm,
                lengths=all_lengths,
            )
            local_adv = adv[first : first + layout.prompts_per_rank].reshape(-1).to(device)
            t2 = time.perf_counter()

            with torch.profiler.record_function("update"):
                stats, train_tokens = policy_update(
                    engine, ref_model, ro, local_adv, cfg, layout, forbidden_token(tokenizer)
                )
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
        }
        run.log_metrics(step, metrics)
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
