"""Memory plan of a training run per GPU, made before anything is loaded.

    python -m gdpo.plan --config experiments/math/configs/paper-r1-7b.yaml [--gpus 8] [--gpu-memory-gib 80]
        [key=value ...]

Prints, per GPU and per phase (generation, update): parameters, gradients and optimizer states (by ZeRO stage
and optimizer offload), ZeRO-3's gathered parameters and DeepSpeed's reduce bucket, activations of one
micro-batch (with and without gradient checkpointing), the log-prob working set, the reference model, the
rollout batch, the vLLM engine (its memory fraction while generating, asleep during the update) and a CUDA
context allowance; then the peak and a last line ``plan: fits (peak X GiB of M)`` (exit 0) or
``plan: does not fit (peak X GiB of M)`` (exit 1). Bad input is a one-line error (exit 2).

Model shapes come from ``config.json`` when ``model.name_or_path`` is a local folder, from ``model.tiny`` for
``tiny``, else from ``MODEL_TABLE`` (the public ``config.json`` values of the paper presets' models).
The formulas and assumptions are in docs/memory-plan.md; tests/test_plan.py checks them by hand arithmetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gdpo.config import ConfigError, TrainConfig, load_config

if TYPE_CHECKING:  # gdpo.trainer (torch, DeepSpeed glue) is imported only when a plan is made
    from gdpo.trainer import Layout

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "LOGIT_FP32_BUFFERS",
    "MODEL_TABLE",
    "MemoryPlan",
    "ModelShape",
    "PER_TOKEN_VECTORS",
    "PlanError",
    "Row",
    "VLLM_ASLEEP_BYTES",
    "activation_bytes",
    "activation_bytes_per_token_layer",
    "default_gpus",
    "largest_module",
    "layer_parameters",
    "logprob_working_set",
    "main",
    "make_plan",
    "model_shape",
    "parameter_count",
    "rollout_batch_bytes",
    "shape_from_hf_config",
]

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Allowances, not measurements (docs/memory-plan.md): CUDA context and cuBLAS/NCCL workspaces of one process;
# what a vLLM engine asleep at level 2 keeps (CUDA graphs, workspace).
CUDA_CONTEXT_BYTES = 1 * GIB
VLLM_ASLEEP_BYTES = GIB // 2
# fp32 [micro_batch, T] vectors of the loss live at once (log-probs, old/ref, ratio, KL, entropy, ... + grads)
PER_TOKEN_VECTORS = 16
# fp32 [chunk, V] buffers of one log-prob chunk live at once: log-softmax, its exp (entropy), two gradients
LOGIT_FP32_BUFFERS = 4
DEFAULT_REDUCE_BUCKET = 500_000_000  # DeepSpeed's zero_optimization.reduce_bucket_size default (elements)
PAPER_GPUS = 8  # the official scripts run one node of 8 GPUs (NVlabs/GDPO verl-GDPO/train_gdpo.sh)


class PlanError(ValueError):
    """A plan cannot be made: bad option, unknown model, or a layout the trainer refuses."""


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs of a decoder-only transformer (Llama / Qwen2 / Qwen3 layout)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    qkv_bias: bool = False  # Qwen2: biases on q, k, v
    o_bias: bool = False  # Llama/Qwen3 attention_bias=True: biases on q, k, v and o
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    source: str = ""


def _qwen2(h, layers, heads, kv, f, vocab, tied) -> ModelShape:
    return ModelShape(h, layers, heads, kv, h // heads, f, vocab, tied, qkv_bias=True)


# The paper presets' models: values of their public config.json on the Hugging Face hub (hub id = key).
MODEL_TABLE: dict[str, ModelShape] = {
    "Qwen/Qwen2.5-1.5B-Instruct": _qwen2(1536, 28, 12, 2, 8960, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": _qwen2(2048, 36, 16, 2, 11008, 151936, True),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _qwen2(1536, 28, 12, 2, 8960, 151936, False),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _qwen2(3584, 28, 28, 4, 18944, 152064, False),
    "Qwen/Qwen3-4B-Instruct-2507": ModelShape(2560, 36, 32, 8, 128, 9728, 151936, True, qk_norm=True),
    # The offline SmolLM2 alias (gdpo.assets) converts this model; its shape without converting it.
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(576, 30, 9, 3, 64, 1536, 49152, True),
}
ALIASES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def shape_from_hf_config(config, source: str = "config.json") -> ModelShape:
    """The shape of a transformers config (``AutoConfig``) of a Llama, Qwen2 or Qwen3 model."""
    kind = getattr(config, "model_type", None)
    if kind not in ("llama", "qwen2", "qwen3"):
        raise PlanError(f"{source}: model_type {kind!r} is not planned (known: llama, qwen2, qwen3)")
    if getattr(config, "mlp_bias", False):
        raise PlanError(f"{source}: mlp_bias=true is not planned")
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    bias = bool(getattr(config, "attention_bias", False))
    return ModelShape(
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=kind == "qwen2" or bias,
        o_bias=kind != "qwen2" and bias,
        qk_norm=kind == "qwen3",
        source=source,
    )


def model_shape(cfg: TrainConfig) -> ModelShape:
    """The policy's shape: the tiny model's settings, a local folder's config.json, or ``MODEL_TABLE``."""
    name = cfg.model.name_or_path
    if name == "tiny":
        t = cfg.model.tiny
        return ModelShape(
            t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.hidden_size // t.num_heads,
            t.intermediate_size, t.vocab_size, True, source="model.tiny settings",
        )  # fmt: skip
    if Path(name).is_dir():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise PlanError(f"model.name_or_path {name}: cannot read its config.json ({exc})") from None
        return shape_from_hf_config(config, f"{name}/config.json")
    key = ALIASES.get(name, name)
    if key in MODEL_TABLE:
        return dataclasses.replace(MODEL_TABLE[key], source="gdpo.plan's table of its hub config.json")
    raise PlanError(
        f"model.name_or_path {name!r} is unknown: not a local folder, not 'tiny' and not in gdpo.plan's "
        f"table ({', '.join(sorted(MODEL_TABLE))})"
    )


def layer_parameters(s: ModelShape) -> int:
    """Parameters of one decoder layer: attention (GQA, biases, q/k norms), SwiGLU MLP, two RMSNorms."""
    q, kv, h = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.hidden_size
    attention = h * (q + 2 * kv) + q * h
    if s.qkv_bias or s.o_bias:
        attention += q + 2 * kv
    if s.o_bias:
        attention += h
    if s.qk_norm:
        attention += 2 * s.head_dim
    return attention + 3 * h * s.intermediate_size + 2 * h


def parameter_count(s: ModelShape) -> int:
    """Parameters of the model: embeddings, the decoder layers, the final RMSNorm, an untied LM head."""
    embeddings = s.vocab_size * s.hidden_size * (1 if s.tied_embeddings else 2)
    return embeddings + s.num_layers * layer_parameters(s) + s.hidden_size


def largest_module(s: ModelShape) -> int:
    """Parameters of the largest module ZeRO-3 gathers at once: a decoder layer, the embedding, the head."""
    return max(layer_parameters(s), s.vocab_size * s.hidden_size)


def activation_bytes_per_token_layer(s: ModelShape, dtype_bytes: int, attn: str, seq_len: int) -> int:
    """Bytes one token leaves saved for backward in one decoder layer (HF Llama/Qwen layer, no dropout).

    RMSNorm inputs in fp32 (2 x 4h); q/k/v inputs, MLP input (2 x h); q, k, v for attention; the attention
    output and o_proj's input (2 x q); the SwiGLU's gate, up, SiLU output and product (4 x intermediate), all
    in the model dtype; flash / memory-efficient SDPA keeps a fp32 log-sum-exp per head. Eager attention
    instead keeps the fp32 softmax and its model-dtype copy, ``heads x seq_len`` each (the s^2 term). Qwen3's
    q/k norms keep their fp32 inputs.
    """
    h, q, kv, f = s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size
    out = 2 * 4 * h + dtype_bytes * (2 * h + 2 * q + 2 * kv + 4 * f)  # q, k, v, o_proj input, MLP
    if attn == "eager":
        out += s.num_heads * seq_len * (4 + dtype_bytes)
    else:
        out += dtype_bytes * q + 4 * s.num_heads  # kernel output + log-sum-exp
    if s.qk_norm:
        out += 4 * (q + kv)
    return out


def default_gpus(config_path: str | None) -> tuple[int, str]:
    """(GPU count, why): 8 for the paper presets (``paper-*.yaml``), else 1."""
    if config_path and Path(config_path).name.startswith("paper-"):
        return PAPER_GPUS, "default for paper-* presets: one node of 8 GPUs, as in the official GDPO scripts"
    return 1, "default for presets other than paper-*"


@dataclasses.dataclass(frozen=True)
class Row:
    """One memory item: bytes per GPU while generating and during the update (None: not held then).
    ``counted=False``: shown for comparison only (the activations of the checkpointing choice not taken)."""

    name: str
    generation: int | None
    update: int | None
    counted: bool = True


@dataclasses.dataclass
class MemoryPlan:
    """The items of a plan, notes and problems (a problem means it does not fit), and the GPU's memory."""

    rows: list[Row]
    notes: list[str]
    problems: list[str]
    gpu_bytes: float

    @property
    def generation(self) -> int:
        return sum(r.generation for r in self.rows if r.counted and r.generation is not None)

    @property
    def update(self) -> int:
        return sum(r.update for r in self.rows if r.counted and r.update is not None)

    @property
    def peak(self) -> int:
        return max(self.generation, self.update)

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_bytes and not self.problems


def _bytes_per_parameter(cfg: TrainConfig) -> tuple[int, int, int]:
    """(parameter and gradient bytes, optimizer-state bytes, bytes of ``model.dtype``) per parameter.

    DeepSpeed's bf16 mode casts the module to bf16 and keeps fp32 master weights + 2 AdamW moments (12 bytes);
    fp32 training keeps the 2 moments only.
    """
    model_bytes = DTYPE_BYTES[cfg.model.dtype]
    p_bytes = 2 if cfg.optim.precision == "bf16" else model_bytes
    return p_bytes, 12 if cfg.optim.precision == "bf16" else 2 * p_bytes, model_bytes


def activation_bytes(cfg: TrainConfig, shape: ModelShape, micro: int) -> tuple[int, int]:
    """(with gradient checkpointing, without) bytes of one micro-batch's activations, padded to
    ``max_prompt_tokens + max_new_tokens``, plus the padding mask transformers builds for SDPA (bool) or eager
    attention (model dtype), ``[micro, 1, S, S]``."""
    p_bytes, attn = _bytes_per_parameter(cfg)[0], cfg.model.attn_implementation
    seq, h = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens, shape.hidden_size
    per_layer = activation_bytes_per_token_layer(shape, p_bytes, attn, seq)
    outside = 4 * h + p_bytes * h  # the final norm's fp32 input and its output (read by the LM head chunks)
    mask = 0 if attn == "flash_attention_2" else micro * seq * seq * (p_bytes if attn == "eager" else 1)
    with_ckpt = micro * seq * (shape.num_layers * p_bytes * h + per_layer + outside) + mask
    without = micro * seq * (shape.num_layers * per_layer + outside) + mask
    return with_ckpt, without


def logprob_working_set(cfg: TrainConfig, shape: ModelShape, micro: int) -> tuple[int, int]:
    """(chunk tokens, bytes) of the chunked log-probs of one micro-batch (``gdpo.losses.token_logprobs``): one
    chunk's logits in the training dtype and ``LOGIT_FP32_BUFFERS`` fp32 ``[chunk, V]`` buffers, plus per
    completion token ``PER_TOKEN_VECTORS`` fp32 values and its gathered hidden state."""
    p_bytes = _bytes_per_parameter(cfg)[0]
    completion_tokens = micro * cfg.rollout.max_new_tokens
    chunk = min(cfg.optim.logprob_chunk_tokens, completion_tokens)
    logits = chunk * shape.vocab_size * (p_bytes + 4 * LOGIT_FP32_BUFFERS)
    return chunk, logits + completion_tokens * (4 * PER_TOKEN_VECTORS + p_bytes * shape.hidden_size)


def rollout_batch_bytes(cfg: TrainConfig, layout: Layout) -> int:
    """This GPU's rollouts: ids and attention mask (int64) per position; completion mask, sample log-probs and
    (when needed) old and reference log-probs per completion token; every round's with dynamic sampling."""
    from gdpo.trainer import in_reward_kl_coef, uses_reference

    a, new = cfg.algorithm, cfg.rollout.max_new_tokens
    seq = cfg.rollout.max_prompt_tokens + new
    rounds = max(1, a.max_sampling_rounds) if a.dynamic_sampling != "off" else 1
    updates = layout.sequences_per_rank // layout.sequences_per_mini_batch * a.num_iterations
    old = updates > 1 or in_reward_kl_coef(cfg) > 0  # the in-reward KL needs them before the update too
    per_row = seq * 16 + new * (1 + 4 + 4 * old + 4 * uses_reference(cfg))
    return rounds * layout.sequences_per_rank * per_row


def _vllm_rows(cfg, shape, gpu_gib, sync, notes, problems) -> list[Row]:
    """The colocated vLLM engine: its budget while generating, an allowance asleep (or all of it awake)."""
    r, model_bytes = cfg.rollout, DTYPE_BYTES[cfg.model.dtype]
    seq = r.max_prompt_tokens + r.max_new_tokens
    weights = parameter_count(shape) * model_bytes
    if r.vllm_kv_cache_gib > 0:
        engine = int(weights + r.vllm_kv_cache_gib * GIB)
        how = f"weights + vllm_kv_cache_gib {r.vllm_kv_cache_gib:g}"
    else:
        engine = int(r.vllm_gpu_memory_utilization * gpu_gib * GIB)
        how = f"gpu_memory_utilization {r.vllm_gpu_memory_utilization:g} x {gpu_gib:g} GiB"
    kv_cache = max(0, engine - weights)
    kv_tokens = kv_cache // (2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * model_bytes)
    notes.append(
        f"vLLM engine: {how}; weights {weights / GIB:.2f} GiB, KV cache {kv_cache / GIB:.2f} GiB "
        f"= {kv_tokens:,} tokens (one sequence: {seq:,})"
    )
    if kv_tokens < seq:
        problems.append(
            f"the vLLM engine's KV cache holds {kv_tokens:,} tokens, less than one sequence of {seq:,} "
            "(raise rollout.vllm_gpu_memory_utilization or rollout.vllm_kv_cache_gib)"
        )
    asleep = VLLM_ASLEEP_BYTES if r.vllm_sleep else engine
    return [
        Row("vLLM engine (weights + KV cache)", engine, asleep),
        Row("ZeRO-3 weight sync buffer", sync, None),
    ]


def _hf_rows(cfg: TrainConfig, shape: ModelShape, layout: Layout) -> list[Row]:
    """The policy sampling itself: all of this GPU's rows at once, a KV cache for prompt + completion."""
    r, p_bytes = cfg.rollout, _bytes_per_parameter(cfg)[0]
    seq, n_rows = r.max_prompt_tokens + r.max_new_tokens, layout.sequences_per_rank
    cache = n_rows * seq * 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * p_bytes
    logits = n_rows * shape.vocab_size * 4 * 2  # fp32 logits of the last position and their softmax
    per_layer = activation_bytes_per_token_layer(shape, p_bytes, cfg.model.attn_implementation, seq)
    prefill = layout.prompts_per_rank * r.max_prompt_tokens * per_layer  # one layer's transient intermediates
    return [
        Row("hf generation: KV cache", cache, None),
        Row("hf generation: logits + prefill", logits + prefill, None),
    ]


def make_plan(cfg: TrainConfig, shape: ModelShape, gpus: int, gpu_gib: float) -> MemoryPlan:
    """The per-GPU memory plan of ``cfg`` on ``gpus`` GPUs of ``gpu_gib`` GiB (see docs/memory-plan.md)."""
    from gdpo.trainer import plan_layout, uses_reference

    if gpus < 1:
        raise PlanError(f"--gpus must be >= 1 (got {gpus})")
    if not gpu_gib > 0:
        raise PlanError(f"--gpu-memory-gib must be > 0 (got {gpu_gib})")
    o, m = cfg.optim, cfg.model
    if o.offload_optimizer and o.zero_stage == 0:
        raise PlanError("optim.offload_optimizer needs optim.zero_stage >= 1 (DeepSpeed ZeRO-Offload)")
    try:
        layout = plan_layout(cfg, gpus)
    except ValueError as exc:
        raise PlanError(str(exc)) from None

    n_params, stage, world = parameter_count(shape), o.zero_stage, gpus
    p_bytes, opt_bytes, model_bytes = _bytes_per_parameter(cfg)

    def share(nbytes: int, from_stage: int) -> int:
        """Bytes per GPU of a state that ZeRO partitions over the GPUs from stage ``from_stage`` on."""
        return nbytes // world if stage >= from_stage else nbytes

    params, grads = share(n_params * p_bytes, 3), share(n_params * p_bytes, 2)
    optimizer = 0 if o.offload_optimizer else share(n_params * opt_bytes, 1)
    zero = o.deepspeed_config.get("zero_optimization", {})
    bucket_elements = min(int(zero.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET)), n_params)
    bucket = bucket_elements * p_bytes if stage else None  # gradients are reduced in the training dtype
    zero3 = stage == 3 and world > 1
    gathered = 2 * largest_module(shape) * p_bytes if zero3 else None
    act_ckpt, act_full = activation_bytes(cfg, shape, layout.micro_batch_size)
    chunk, logprob = logprob_working_set(cfg, shape, layout.micro_batch_size)
    # The reference loads in model.dtype; under ZeRO-3 it is a DeepSpeed engine (cast like the policy).
    ref_bytes = p_bytes if stage == 3 else model_bytes
    reference = share(n_params * ref_bytes, 3) if uses_reference(cfg) else None
    rollouts = rollout_batch_bytes(cfg, layout)

    notes, problems = [], []
    if cfg.rollout.backend == "vllm":
        sync = largest_module(shape) * p_bytes if zero3 else None
        engine_rows, gathered_generating = _vllm_rows(cfg, shape, gpu_gib, sync, notes, problems), None
    else:  # the hf policy's forward passes gather as in training
        engine_rows, gathered_generating = _hf_rows(cfg, shape, layout), gathered
    if o.offload_optimizer:
        notes.append(
            f"host memory for this GPU's optimizer states: {share(n_params * opt_bytes, 1) / GIB:.2f} GiB"
        )
    seq = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    notes.insert(
        0,
        f"micro-batch {layout.micro_batch_size} x {seq:,} tokens (prompt {cfg.rollout.max_prompt_tokens:,} "
        f"+ completion {cfg.rollout.max_new_tokens:,})",
    )
    ckpt = m.gradient_checkpointing
    rows = [
        Row(f"parameters ({n_params:,} x {p_bytes} B{_part(3, stage, world)})", params, params),
        Row(f"gradients ({p_bytes} B{_part(2, stage, world)})", grads, grads),
        Row(
            f"optimizer states ({opt_bytes} B{_part(1, stage, world)})"
            + (", offloaded to host" if o.offload_optimizer else ""),
            optimizer,
            optimizer,
        ),
        Row("ZeRO-3 gathered parameters (2 x largest module)", gathered_generating, gathered),
        Row("DeepSpeed reduce bucket", None, bucket),
        Row(f"activations, gradient checkpointing{'' if ckpt else ' (not used)'}", None, act_ckpt, ckpt),
        Row(f"activations, no checkpointing{' (not used)' if ckpt else ''}", None, act_full, not ckpt),
        Row(f"log-prob working set (chunk {chunk:,} x vocab {shape.vocab_size:,})", None, logprob),
        Row(f"reference model ({ref_bytes} B{_part(3, stage, world)})", reference, reference),
        Row(f"rollout batch ({layout.sequences_per_rank} rows{_rounds(cfg)})", rollouts, rollouts),
        *engine_rows,
        Row("CUDA context and workspaces", CUDA_CONTEXT_BYTES, CUDA_CONTEXT_BYTES),
    ]
    rows = [row for row in rows if (row.generation, row.update) != (None, None)]
    return MemoryPlan(rows, notes, problems, gpu_gib * GIB)


def _rounds(cfg: TrainConfig) -> str:
    a = cfg.algorithm
    return f" x {max(1, a.max_sampling_rounds)} sampling rounds" if a.dynamic_sampling != "off" else ""


def _part(from_stage: int, stage: int, world: int) -> str:
    return f", 1/{world} by ZeRO-{stage}" if stage >= from_stage and world > 1 else ""


def _gib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / GIB:.2f}"


def render(plan: MemoryPlan, header: list[str]) -> str:
    """The plan as text: header lines, the per-GPU table, notes, problems, peak and the verdict line."""
    width = max(len(r.name) for r in plan.rows)
    lines = [*header, "", f"{'per GPU, GiB':<{width}}  {'generation':>10}  {'update':>10}"]
    for r in plan.rows:
        g, u = (_gib(r.generation), _gib(r.update)) if r.counted else ("", f"({_gib(r.update)})")
        lines.append(f"{r.name:<{width}}  {g:>10}  {u:>10}")
    lines.append(f"{'total':<{width}}  {_gib(plan.generation):>10}  {_gib(plan.update):>10}")
    lines += ["", *plan.notes, *(f"problem: {p}" for p in plan.problems)]
    phase = "generation" if plan.generation >= plan.update else "update"
    gpu = f"{plan.gpu_bytes / GIB:g}"
    lines.append(f"peak: {phase} phase")
    verdict = "fits" if plan.fits else "does not fit"
    lines.append(f"plan: {verdict} (peak {plan.peak / GIB:.2f} GiB of {gpu})")
    return "\n".join(lines)


def _positive(text: str, flag: str, kind: type):
    """``text`` as a finite ``kind`` (int or float) > 0, else a ``PlanError`` naming ``flag``."""
    try:
        value = kind(text)
    except ValueError:
        raise PlanError(
            f"{flag} must be a positive {'integer' if kind is int else 'number'} (got {text!r})"
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise PlanError(f"{flag} must be a finite number > 0 (got {text!r})")
    return value


def main(argv: list[str] | None = None) -> int:
    """Print the plan; returns 0 when it fits, 1 when not, 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m gdpo.plan", description="per-GPU memory plan of a run")
    parser.add_argument("--config", help="YAML config file (a preset)")
    parser.add_argument("--gpus", help="number of GPUs (processes); default 8 for paper-* presets, else 1")
    parser.add_argument("--gpu-memory-gib", default="80", help="memory of one GPU in GiB (default 80)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for train.py")
    args = parser.parse_args(argv)
    try:
        if args.gpus is None:
            gpus, why = default_gpus(args.config)
        else:
            gpus, why = _positive(args.gpus, "--gpus", int), "--gpus"
        gpu_gib = _positive(args.gpu_memory_gib, "--gpu-memory-gib", float)
        cfg = load_config(TrainConfig, args.config, args.overrides)
        shape = model_shape(cfg)
        plan = make_plan(cfg, shape, gpus, gpu_gib)
    except (ConfigError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    o, r = cfg.optim, cfg.rollout
    from gdpo.trainer import uses_reference

    header = [
        f"memory plan of {args.config or 'the default config'}",
        f"model: {cfg.model.name_or_path} ({shape.source}), {parameter_count(shape):,} parameters, "
        f"{cfg.model.dtype}",
        f"gpus: {gpus} ({why}), {gpu_gib:g} GiB each",
        f"training: ZeRO-{o.zero_stage}, {o.precision}, "
        f"optimizer {'offloaded' if o.offload_optimizer else 'on GPU'}, "
        f"gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}, "
        f"KL {'on (reference model)' if uses_reference(cfg) else 'off'}",
        f"rollout: {r.backend}"
        + (f", sleep {'on' if r.vllm_sleep else 'off'} during the update" if r.backend == "vllm" else ""),
    ]
    print(render(plan, header))
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
