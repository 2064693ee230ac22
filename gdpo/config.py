"""The run configuration: one dataclass per concern, every field with a help line and, for numbers, its bounds.

    cfg = load_config(TrainConfig, "experiments/math/configs/tiny.yaml", ["algorithm.method=gdpo", "seed=3"])

``load_config`` reads a YAML preset, applies dotted overrides and checks everything before any model or torch is
loaded: unknown keys, types, bounds (finite floats; positive sizes, steps and intervals; probabilities in range)
and the options of the task the config names (``gdpo.tasks.options``). Every problem is one
:class:`~gdpo.schema.ConfigError` line naming the key (and the file). How values are read (YAML 1.2, command-line
text, merging, aliases refused) is described in :mod:`gdpo.schema`, which builds the config on OmegaConf
structured configs; ``describe(TrainConfig)`` lists every key (``--describe``).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from gdpo.schema import ConfigError, build, describe, field_, read_yaml_file
from gdpo.tasks.options import TASK_OPTIONS, task_options

__all__ = [
    "ConfigError",
    "TrainConfig",
    "describe",
    "field_",
    "from_dict",
    "load_config",
    "to_dict",
]

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, overrides: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a nested dict (``to_dict``'s output, a saved config.yaml) and dotted
    overrides, checking every key, type and bound, and a run config's task options."""
    cfg = build(cls, data, overrides or [])
    _check_task_options(cfg)
    return cfg


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (optional), then apply dotted overrides; errors name the key and file."""
    data = read_yaml_file(path) if path is not None else {}
    try:
        return from_dict(cls, data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def _check_task_options(cfg: Any) -> None:
    """A run config's ``data.options`` checked against the options of its task, if the task is a built-in one
    (a task registered elsewhere checks its own options when it is built)."""
    if isinstance(cfg, TrainConfig) and cfg.task in TASK_OPTIONS:
        task_options(cfg.task, cfg.data.options)


# --------------------------------------------------------------------------------------------------
# The run configuration, one dataclass per concern
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TinyModelConfig:
    """Shape of the embedded tiny model (used when ``model.name_or_path == "tiny"``)."""

    vocab_size: int = field_(384, help="BPE vocabulary size of the locally trained tokenizer", ge=1)
    hidden_size: int = field_(
        192,
        ge=1,
        help="transformer width (head_dim = width / heads = 32: vLLM's CPU attention needs one of 32, 64, 80, ...)",
    )
    num_layers: int = field_(3, help="number of decoder layers", ge=1)
    num_heads: int = field_(6, help="attention heads", ge=1)
    num_kv_heads: int = field_(2, help="key/value heads (grouped-query attention)", ge=1)
    intermediate_size: int = field_(512, help="MLP hidden size", ge=1)
    max_positions: int = field_(512, help="maximum sequence length (prompt + completion)", ge=1)


@dataclasses.dataclass
class ModelConfig:
    name_or_path: str = field_(
        "tiny",
        help='"tiny" (built offline), "smollm2-135m-instruct" (offline, from a package), a local folder or a hub id',
    )
    chat_template: str | None = field_(
        None, help="override the tokenizer's chat template: a Jinja string or the path of a .jinja file"
    )
    dtype: typing.Literal["float32", "bfloat16", "float16"] = field_(
        "float32", help="parameter dtype when loading"
    )
    attn_implementation: str = field_(
        "sdpa", help="transformers attention implementation (eager, sdpa, flash_attention_2)"
    )
    gradient_checkpointing: bool = field_(
        False, help="recompute activations in the backward pass to save memory"
    )
    tiny: TinyModelConfig = field_(default_factory=TinyModelConfig, help="shape of the tiny model")


@dataclasses.dataclass
class WarmStartConfig:
    """Supervised warm start of the tiny model on task demonstrations (cached by its settings)."""

    enabled: bool = field_(True, help="fine-tune the tiny model on task demonstrations before RL")
    steps: int = field_(300, help="optimizer steps of supervised fine-tuning", ge=1)
    batch_size: int = field_(32, help="examples per SFT step", ge=1)
    lr: float = field_(3e-3, help="AdamW learning rate for SFT", gt=0)


@dataclasses.dataclass
class RolloutConfig:
    backend: typing.Literal["hf", "vllm"] = field_(
        "hf", help="generation engine: hf (in-process) or vllm (colocated)"
    )
    num_rollouts: int = field_(8, help="G, completions sampled per prompt", ge=1)
    temperature: float = field_(1.0, help="sampling temperature (also used for training log-probs)", gt=0)
    top_p: float = field_(1.0, help="nucleus sampling threshold (1 = off)", gt=0, le=1)
    max_new_tokens: int = field_(64, help="completion length limit; longer completions are truncated", ge=1)
    max_prompt_tokens: int = field_(
        384,
        ge=1,
        help="prompts longer than this are dropped before training or refused (data.overlong_prompts)",
    )
    stop: list[str] = field_(
        default_factory=list, help="extra stop strings (the tokenizer's EOS always stops)"
    )
    mask_truncated: bool = field_(False, help="exclude completions that hit max_new_tokens from the loss")
    vllm_gpu_memory_utilization: float = field_(
        0.3,
        gt=0,
        le=1,
        help="vLLM: fraction of device memory for the engine (host memory on vLLM's CPU backend)",
    )
    vllm_kv_cache_gib: float = field_(
        0.0,
        ge=0,
        help="vLLM: KV cache size in GiB, overriding the memory fraction when > 0 (on vLLM's CPU backend the "
        "fraction also counts the process's own memory, so a small fraction can leave nothing for the cache)",
    )
    vllm_sleep: bool = field_(
        True, help="vLLM: put the engine to sleep during the policy update where supported"
    )


@dataclasses.dataclass
class AlgorithmConfig:
    method: str = field_(
        "gdpo", help="advantage estimator: grpo, grpo_no_std, gdpo (gdpo.advantages registry)"
    )
    eps: float = field_(1e-6, help="added to every std in the advantage estimator", gt=0)
    unbiased: bool = field_(True, help="sample std (N-1) if true, population std (N) if false")
    batch_norm: typing.Literal["sequence", "token", "none"] = field_("sequence", help="GDPO batch step")
    reward_weights: dict[str, float] = field_(
        default_factory=dict, help="weight per reward component name (default 1)"
    )
    clip_low: float = field_(0.2, help="PPO ratio clip below: 1 - clip_low", ge=0, lt=1)
    clip_high: float = field_(0.2, help="PPO ratio clip above: 1 + clip_high (0.28 = DAPO clip-higher)", ge=0)
    clip_ratio_c: float | None = field_(
        None,
        help="dual clip of negative advantages (verl's clip_ratio_c, e.g. 3.0): where A < 0 the token loss is "
        "capped at -A * clip_ratio_c; null = off, as in the paper's presets",
        gt=1,
    )
    num_iterations: int = field_(1, help="mu: policy updates per generation batch", ge=1)
    kl_coef: float = field_(
        0.0, help="beta of the KL penalty to the frozen reference (0 loads no reference)", ge=0
    )
    kl_estimator: typing.Literal["k1", "k3", "mse"] = field_("k3", help="per-token KL estimator")
    kl_in_reward: float = field_(
        0.0,
        help="beta of verl's in-reward KL: beta * sum_t (log pi_old - log pi_ref) over a completion is subtracted "
        "from its reward before the advantage; applies to grpo and grpo_no_std only (gdpo ignores it), as in "
        "verl-GDPO's runs (0.001); 0 = off",
        ge=0,
    )
    entropy_coef: float = field_(0.0, help="entropy bonus coefficient")
    loss_agg: str = field_("seq_mean_token_mean", help="loss aggregation (gdpo.losses.LOSS_AGGREGATIONS)")
    dynamic_sampling: typing.Literal["off", "any_component", "weighted_sum"] = field_(
        "off",
        help="DAPO dynamic sampling: drop groups without signal (no component varies / the weighted sum does "
        "not vary) and draw more prompts until the batch is full",
    )
    max_sampling_rounds: int = field_(
        4,
        ge=1,
        help="dynamic sampling: generation rounds per step at most; then the batch is filled with dropped groups",
    )
    on_nonfinite: typing.Literal["skip", "stop"] = field_(
        "skip",
        help="an update whose loss or gradient is not finite is never applied; skip: log the step and go on "
        "(stop after max_nonfinite_skips such steps in a row), stop: stop the run at the first",
    )
    max_nonfinite_skips: int = field_(
        3,
        ge=1,
        help="on_nonfinite=skip: the run stops after this many consecutive steps with a skipped update",
    )


GENERATED_DEEPSPEED_KEYS = {  # DeepSpeed config key -> the field the trainer makes it from
    ("zero_optimization", "stage"): "optim.zero_stage",
    ("zero_optimization", "offload_optimizer"): "optim.offload_optimizer",
    ("train_micro_batch_size_per_gpu",): "optim.micro_batch_size",
    ("gradient_accumulation_steps",): "optim.mini_batches and optim.micro_batch_size",
    ("train_batch_size",): "data.prompts_per_step, rollout.num_rollouts and optim.mini_batches",
    ("gradient_clipping",): "optim.grad_clip",
    ("bf16",): "optim.precision",
}


@dataclasses.dataclass
class OptimConfig:
    lr: float = field_(1e-5, help="AdamW learning rate", gt=0)
    weight_decay: float = field_(0.0, help="AdamW weight decay", ge=0)
    betas: list[float] = field_(default_factory=lambda: [0.9, 0.999], help="AdamW betas", ge=0, lt=1)
    lr_schedule: typing.Literal["constant", "linear", "cosine"] = field_("constant", help="after warmup")
    warmup_steps: int = field_(0, help="linear warmup steps (optimizer steps)", ge=0)
    grad_clip: float = field_(1.0, help="global gradient-norm clip (0 = off)", ge=0)
    micro_batch_size: int = field_(16, help="sequences per forward/backward on one rank", ge=1)
    mini_batches: int = field_(1, help="optimizer steps per pass over a generation batch", ge=1)
    zero_stage: int = field_(0, help="DeepSpeed ZeRO stage 0-3", ge=0, le=3)
    offload_optimizer: bool = field_(False, help="DeepSpeed: keep optimizer states on the CPU")
    precision: typing.Literal["fp32", "bf16"] = field_("fp32", help="DeepSpeed training precision")
    logprob_chunk_tokens: int = field_(
        1024,
        ge=1,
        help="log-probs and entropies are computed from the final hidden states this many completion tokens "
        "at a time (the LM head and an fp32 log-softmax over the vocabulary per chunk, recomputed in the "
        "backward pass), so no [n, T, V] logits are ever held",
    )
    share_prompt_forward: bool = field_(
        True,
        help="run each prompt's forward pass once per group and feed its KV cache to the G completions "
        "(same log-probs and gradients up to float rounding, fewer FLOPs); needs a model with use_cache. Off "
        "under ZeRO-3 on several processes, where every forward is a collective and ranks must run as many",
    )
    deepspeed_config: dict[str, typing.Any] = field_(
        default_factory=dict,
        help="extra DeepSpeed config keys, merged over the generated config (nested mappings merge key by key), "
        "e.g. {zero_optimization: {stage3_param_persistence_threshold: 0}}; not the keys the optim fields set",
    )

    def __post_init__(self):
        # The trainer decides its own collectives and batch layout from these fields: a DeepSpeed config that
        # set them differently would make ranks disagree (a hang) or the layout wrong.
        for path, field in GENERATED_DEEPSPEED_KEYS.items():
            node = self.deepspeed_config
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                raise ConfigError(
                    f"optim.deepspeed_config.{'.'.join(path)} is set by {field}; set that field instead"
                )


@dataclasses.dataclass
class DataConfig:
    prompts_per_step: int = field_(8, help="B, prompts per generation batch (global, over all ranks)", ge=1)
    shuffle: bool = field_(True, help="reshuffle the prompts every epoch (seeded)")
    options: dict[str, Any] = field_(
        default_factory=dict, help="task-specific data options (sizes, limits, ...)"
    )
    overlong_prompts: typing.Literal["drop", "error"] = field_(
        "drop",
        help="training prompts longer than rollout.max_prompt_tokens: drop them (counted in the log and "
        "metadata.json) or refuse the run",
    )


@dataclasses.dataclass
class LoggingConfig:
    root: str = field_("runs", help="runs are written to <root>/<task>/<preset>/<method>/seed<k>/")
    run_dir: str | None = field_(None, help="explicit run folder (overrides root)")
    sample_every: int = field_(5, help="write sample completions every N steps (0 = never)", ge=0)
    num_samples: int = field_(4, help="completions written per sampling step", ge=0)
    checkpoint_every: int = field_(10, help="save a checkpoint every N steps (0 = only at the end)", ge=0)
    keep_checkpoints: int = field_(2, help="checkpoints kept on disk (oldest removed)", ge=1)
    dump_rollouts: bool = field_(
        False, help="write every rollout's rewards, advantage and length to rollouts.jsonl"
    )
    progress: bool = field_(True, help="progress bar with live metrics on the console")
    profile_steps: list[int] = field_(
        default_factory=list,
        ge=0,
        help="steps to profile with the torch profiler, into <run>/profile/ (gdpo.profiling)",
    )
    tensorboard: bool = field_(False, help="also write TensorBoard scalars")
    wandb: bool = field_(False, help="also log to Weights & Biases (offline mode)")


@dataclasses.dataclass
class TrainConfig:
    task: str = field_("toy", help="task name (gdpo.tasks registry)")
    preset: str = field_("tiny", help="preset name, used in the run folder")
    seed: int = field_(0, help="seed of data order, sampling and initialisation", ge=0, le=2**32 - 1)
    steps: int = field_(20, help="RL steps (generation batches)", ge=1)
    device: str = field_("auto", help="auto, cpu or cuda")
    model: ModelConfig = field_(default_factory=ModelConfig, help="policy model")
    warm_start: WarmStartConfig = field_(
        default_factory=WarmStartConfig, help="SFT warm start of the tiny model"
    )
    rollout: RolloutConfig = field_(default_factory=RolloutConfig, help="generation")
    algorithm: AlgorithmConfig = field_(default_factory=AlgorithmConfig, help="advantages and loss")
    optim: OptimConfig = field_(default_factory=OptimConfig, help="optimizer and DeepSpeed")
    data: DataConfig = field_(default_factory=DataConfig, help="prompts")
    logging: LoggingConfig = field_(default_factory=LoggingConfig, help="run logs and checkpoints")
