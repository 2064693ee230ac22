"""Typed run configuration: dataclasses with a help line per field, loaded from YAML, overridden by dotted keys.

    cfg = load_config(TrainConfig, "experiments/math/configs/tiny.yaml", ["algorithm.method=gdpo", "seed=3"])

Every field carries ``metadata={"help": ...}``; ``describe(TrainConfig)`` prints them all. Unknown keys and values
of the wrong type fail at load time with an error naming the dotted key (and the file).

Files are read with YAML 1.2's core schema, not PyYAML's YAML 1.1 one: ``010`` is ten (not octal eight), ``on``/``no``
are strings, ``1e-6`` is a number, and ``1:30`` or ``2026-12-01`` are strings. A command-line value is text until its
field's type is known: a ``str`` field takes it verbatim (``#``, ``{%``, ``on`` and ``010`` included) unless it is
quoted as a YAML string (``"Q:\\n"``, with escapes); other types parse it as YAML 1.2, lists, mappings and
``data.options`` values included (there, quote a string that holds `` #``). An override may set a whole section
(``algorithm.reward_weights={format: 1}``) and a later one a key inside it (``algorithm.reward_weights.correct=2``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "TrainConfig",
    "apply_overrides",
    "describe",
    "field_",
    "from_dict",
    "load_config",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key is unknown or has a value of the wrong type."""


def field_(
    default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A dataclass field with a mandatory help line."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML/JSON)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(where, unknown[0])
        raise ConfigError(
            f"unknown config key {key!r}; known keys under {where or 'the top level'}: {sorted(fields)}"
        )
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; build nested dataclasses; int -> float is allowed."""
    origin = typing.get_origin(tp)
    if isinstance(value, _CommandLineValue):
        if tp is str and _quoted(value):
            return _coerce(str, _parse_command_line(value, key), key)
        if tp is str or (origin is typing.Literal and str(value) in typing.get_args(tp)):
            return str(value)
        if origin not in (typing.Union, types.UnionType):
            return _coerce(tp, _parse_command_line(value, key), key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if isinstance(value, _CommandLineValue) and type(None) in options and value in _YAML_NULLS:
            return None
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(key_tp, k, key): _coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got NaN")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


_YAML_NULLS = ("null", "Null", "NULL", "~")


def _quoted(text: str) -> bool:
    """A YAML quoted scalar: ``"a\\nb"`` (escapes apply) or ``'it''s'``."""
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


class _CommandLineValue(str):
    """The text after ``=`` in an override; ``_coerce`` parses it once the field's type is known."""


def _parse_command_line(value: _CommandLineValue, key: str) -> Any:
    if value == "":
        return ""
    try:
        return yaml.load(str(value), Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse {str(value)!r} ({exc})") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict. The values stay text until ``from_dict`` knows their type."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node.get(part), _CommandLineValue):  # a section set whole by an earlier override
                node[part] = _parse_command_line(node[part], ".".join(parts[: depth + 1]))
            if node.get(part) is None:  # absent, or an empty section (``optim:`` with nothing under it)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _CommandLineValue(raw)
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars (PyYAML implements YAML 1.1)."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits.startswith(("0o", "0x")):
            return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
        return sign * int(digits)


_REPLACED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp", "value")}
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
):
    _Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _Yaml12Loader.construct_yaml_int)


class _Yaml12Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string that YAML 1.1 or 1.2 would read as something else.

    A saved config is read back with the YAML 1.2 loader (``--resume``), and by users with PyYAML's 1.1
    ``safe_load``: ``"1e5"`` is a float only under 1.2, ``"yes"`` a boolean only under 1.1.
    """

    def resolve(self, kind, value, implicit):
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and implicit[0] and tag == "tag:yaml.org,2002:str":
            under_1_2 = _YAML12_RESOLVER.resolve(kind, value, implicit)
            if under_1_2 != tag:
                return under_1_2
        return tag


_YAML12_RESOLVER = _Yaml12Loader("")  # resolves plain scalars as the config loader does


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that both YAML 1.1 and 1.2 readers load back unchanged (keys in their order)."""
    return yaml.dump(data, Dumper=_Yaml12Dumper, sort_keys=False)


def load_yaml(text: str) -> Any:
    """YAML text read with the YAML 1.2 core schema, as config files are."""
    return yaml.load(text, Loader=_Yaml12Loader)


class _UniqueKeyLoader(_Yaml12Loader):
    """The YAML 1.2 loader, except that a key repeated in one mapping is an error (PyYAML keeps the last one,
    so a second ``algorithm:`` section would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (optional), then apply dotted overrides; errors name the key and file."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


def describe(cls: type, prefix: str = "") -> str:
    """One line per field: dotted key, type, default, help."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, key))
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        )
        type_name = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"{key:<38} {type_name:<16} {default!r:<14} {f.metadata.get('help', '')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The run configuration, one dataclass per concern
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TinyModelConfig:
    """Shape of the embedded tiny model (used when ``model.name_or_path == "tiny"``)."""

    vocab_size: int = field_(384, help="BPE vocabulary size of the locally trained tokenizer")
    hidden_size: int = field_(
        192,
        help="transformer width (head_dim = width / heads = 32: vLLM's CPU attention needs one of 32, 64, 80, ...)",
    )
    num_layers: int = field_(3, help="number of decoder layers")
    num_heads: int = field_(6, help="attention heads")
    num_kv_heads: int = field_(2, help="key/value heads (grouped-query attention)")
    intermediate_size: int = field_(512, help="MLP hidden size")
    max_positions: int = field_(512, help="maximum sequence length (prompt + completion)")


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
    steps: int = field_(300, help="optimizer steps of supervised fine-tuning")
    batch_size: int = field_(32, help="examples per SFT step")
    lr: float = field_(3e-3, help="AdamW learning rate for SFT")


@dataclasses.dataclass
class RolloutConfig:
    backend: typing.Literal["hf", "vllm"] = field_(
        "hf", help="generation engine: hf (in-process) or vllm (colocated)"
    )
    num_rollouts: int = field_(8, help="G, completions sampled per prompt")
    temperature: float = field_(1.0, help="sampling temperature (also used for training log-probs)")
    top_p: float = field_(1.0, help="nucleus sampling threshold (1 = off)")
    max_new_tokens: int = field_(64, help="completion length limit; longer completions are truncated")
    max_prompt_tokens: int = field_(384, help="prompts longer than this are an error")
    stop: list[str] = field_(
        default_factory=list, help="extra stop strings (the tokenizer's EOS always stops)"
    )
    mask_truncated: bool = field_(False, help="exclude completions that hit max_new_tokens from the loss")
    vllm_gpu_memory_utilization: float = field_(
        0.3, help="vLLM: fraction of device memory for the engine (host memory on vLLM's CPU backend)"
    )
    vllm_kv_cache_gib: float = field_(
        0.0,
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
    eps: float = field_(1e-6, help="added to every std in the advantage estimator")
    unbiased: bool = field_(True, help="sample std (N-1) if true, population std (N) if false")
    batch_norm: typing.Literal["sequence", "token", "none"] = field_("sequence", help="GDPO batch step")
    reward_weights: dict[str, float] = field_(
        default_factory=dict, help="weight per reward component name (default 1)"
    )
    clip_low: float = field_(0.2, help="PPO ratio clip below: 1 - clip_low")
    clip_high: float = field_(0.2, help="PPO ratio clip above: 1 + clip_high (0.28 = DAPO clip-higher)")
    num_iterations: int = field_(1, help="mu: policy updates per generation batch")
    kl_coef: float = field_(0.0, help="beta of the KL penalty to the frozen reference (0 loads no reference)")
    kl_estimator: typing.Literal["k1", "k3", "mse"] = field_("k3", help="per-token KL estimator")
    entropy_coef: float = field_(0.0, help="entropy bonus coefficient")
    loss_agg: str = field_("seq_mean_token_mean", help="loss aggregation (gdpo.losses.LOSS_AGGREGATIONS)")
    dynamic_sampling: typing.Literal["off", "any_component", "weighted_sum"] = field_(
        "off",
        help="DAPO dynamic sampling: drop groups without signal (no component varies / the weighted sum does "
        "not vary) and draw more prompts until the batch is full",
    )
    max_sampling_rounds: int = field_(
        4,
        help="dynamic sampling: generation rounds per step at most; then the batch is filled with dropped groups",
    )


@dataclasses.dataclass
class OptimConfig:
    lr: float = field_(1e-5, help="AdamW learning rate")
    weight_decay: float = field_(0.0, help="AdamW weight decay")
    betas: list[float] = field_(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    lr_schedule: typing.Literal["constant", "linear", "cosine"] = field_("constant", help="after warmup")
    warmup_steps: int = field_(0, help="linear warmup steps (optimizer steps)")
    grad_clip: float = field_(1.0, help="global gradient-norm clip (0 = off)")
    micro_batch_size: int = field_(16, help="sequences per forward/backward on one rank")
    mini_batches: int = field_(1, help="optimizer steps per pass over a generation batch")
    zero_stage: int = field_(0, help="DeepSpeed ZeRO stage 0-3")
    offload_optimizer: bool = field_(False, help="DeepSpeed: keep optimizer states on the CPU")
    precision: typing.Literal["fp32", "bf16"] = field_("fp32", help="DeepSpeed training precision")
    logprob_chunk_tokens: int = field_(
        1024,
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
        "e.g. {zero_optimization: {stage3_param_persistence_threshold: 0}}",
    )


@dataclasses.dataclass
class DataConfig:
    prompts_per_step: int = field_(8, help="B, prompts per generation batch (global, over all ranks)")
    shuffle: bool = field_(True, help="reshuffle the prompts every epoch (seeded)")
    options: dict[str, Any] = field_(
        default_factory=dict, help="task-specific data options (sizes, limits, ...)"
    )


@dataclasses.dataclass
class LoggingConfig:
    root: str = field_("runs", help="runs are written to <root>/<task>/<preset>/<method>/seed<k>/")
    run_dir: str | None = field_(None, help="explicit run folder (overrides root)")
    sample_every: int = field_(5, help="write sample completions every N steps (0 = never)")
    num_samples: int = field_(4, help="completions written per sampling step")
    checkpoint_every: int = field_(10, help="save a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = field_(2, help="checkpoints kept on disk (oldest removed)")
    dump_rollouts: bool = field_(
        False, help="write every rollout's rewards, advantage and length to rollouts.jsonl"
    )
    progress: bool = field_(True, help="progress bar with live metrics on the console")
    profile_steps: list[int] = field_(
        default_factory=list,
        help="steps to profile with the torch profiler, into <run>/profile/ (gdpo.profiling)",
    )
    tensorboard: bool = field_(False, help="also write TensorBoard scalars")
    wandb: bool = field_(False, help="also log to Weights & Biases (offline mode)")


@dataclasses.dataclass
class TrainConfig:
    task: str = field_("toy", help="task name (gdpo.tasks registry)")
    preset: str = field_("tiny", help="preset name, used in the run folder")
    seed: int = field_(0, help="seed of data order, sampling and initialisation")
    steps: int = field_(20, help="RL steps (generation batches)")
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
