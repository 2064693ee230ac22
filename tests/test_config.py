"""Config loading: YAML + dotted overrides, type checks, errors that name the key and the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gdpo.config import ConfigError, TrainConfig, describe, from_dict, load_config, to_dict


def test_defaults_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "task: toy\nsteps: 7\nalgorithm:\n  method: grpo\n  clip_high: 0.28\noptim:\n  lr: 1e-6\n"
    )
    cfg = load_config(
        TrainConfig,
        path,
        ["algorithm.method=gdpo", "seed=3", "optim.betas=[0.9, 0.95]", "data.options={demo_noise: 0.25}"],
    )
    assert (cfg.task, cfg.steps, cfg.seed) == ("toy", 7, 3)
    assert cfg.algorithm.method == "gdpo" and cfg.algorithm.clip_high == 0.28
    assert cfg.optim.lr == 1e-6  # a number in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.data.options == {"demo_noise": 0.25}
    assert cfg.rollout.num_rollouts == 8  # untouched default
    assert isinstance(cfg.algorithm.eps, float)


def test_round_trip_through_dict():
    cfg = load_config(TrainConfig, None, ["algorithm.reward_weights={format: 0.5}", "logging.run_dir=/tmp/x"])
    again = load_config(TrainConfig, None, [])
    assert to_dict(cfg) != to_dict(again)
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algorithm.methd=grpo"],
            r"unknown config key 'algorithm.methd'; known keys under algorithm: \[.*'method'",
        ),
        (["nonsense=1"], r"unknown config key 'nonsense'"),
        (["seed=abc"], r"^seed must be an integer in \[0, 4294967295\], got 'abc'$"),
        (["steps=2.5"], r"^steps must be a positive integer, got 2.5$"),
        (["optim.lr=true"], r"^optim.lr must be a positive finite number, got True$"),
        (["optim.lr=fast"], r"^optim.lr must be a positive finite number, got 'fast'$"),
        (["optim.lr='1e-6'"], r"^optim.lr must be a positive finite number, got '1e-6'$"),
        (["optim.lr=.nan"], r"^optim.lr must be a finite number, got nan$"),
        (["steps=1:30"], r"^steps must be a positive integer, got '1:30'$"),  # YAML 1.1: 90 (base 60)
        (["seed=0x"], r"seed must be .*, got '0x'$"),
        (["optim.betas=[0.9"], r"^optim.betas: cannot parse '\[0.9' \(while parsing a flow sequence"),
        (["rollout.backend=sglang"], r"^rollout.backend must be 'hf' or 'vllm', got 'sglang'$"),
        (["optim.betas=0.9"], r"^optim.betas must be a list, got 0.9$"),
        (["optim.betas=[0.9, x]"], r"^optim.betas\[1\] must be a finite number in \[0, 1\), got 'x'$"),
        (
            ["algorithm.reward_weights={format: high}"],
            r"^algorithm.reward_weights.format must be a finite number, got 'high'$",
        ),
        (["algorithm=3"], r"^algorithm must be a mapping, got 3$"),
        (["novalue"], r"must look like key.subkey=value"),
        (["seed.x=3"], r"^override 'seed.x=3': 'seed' is not a section$"),
        (["data.options.x=1"], r"^unknown data.options for task 'toy': \['x'\]; known: \['demo_noise'"),
    ],
)
def test_bad_keys_and_types_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, overrides)


def test_command_line_values_take_the_type_of_their_field():
    cfg = load_config(
        TrainConfig,
        None,
        [
            "seed=010",  # ten: YAML 1.1 would read octal eight
            "steps=0x10",
            "preset=on",  # a string field takes the text verbatim (YAML 1.1: True)
            "logging.run_dir=runs/a #b",  # not a comment
            "model.chat_template={% for m in messages %}{{ m['content'] }}{% endfor %}",
            "rollout.backend=vllm",
            "optim.deepspeed_config={zero_optimization: {sub_group_size: 3, offload: no}}",
            "logging.profile_steps=[3, 4]",
            "algorithm.reward_weights={format: 1, correctness: 2.5}",
        ],
    )
    assert (cfg.seed, cfg.steps, cfg.preset, cfg.logging.run_dir) == (10, 16, "on", "runs/a #b")
    assert type(cfg.preset) is str  # a plain str, so the resolved config dumps to YAML
    assert cfg.model.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert cfg.rollout.backend == "vllm"
    assert cfg.optim.deepspeed_config == {"zero_optimization": {"sub_group_size": 3, "offload": "no"}}
    assert cfg.logging.profile_steps == [3, 4]
    assert cfg.algorithm.reward_weights == {"format": 1.0, "correctness": 2.5}
    # An optional field reads null as None; an empty value is the empty string.
    assert load_config(TrainConfig, None, ["logging.run_dir=null"]).logging.run_dir is None
    assert load_config(TrainConfig, None, ["logging.run_dir="]).logging.run_dir == ""
    # A YAML-quoted string is unquoted, with its escapes.
    assert load_config(TrainConfig, None, ['task="a\\nb #c"']).task == "a\nb #c"
    assert load_config(TrainConfig, None, ["task='it''s'"]).task == "it's"


def test_files_are_read_as_yaml_1_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 010\npreset: on\ntask: 2026-12-01\noptim:\n  lr: 1e-6\n  betas: [0.9, 0.95]\n")
    cfg = load_config(TrainConfig, path)
    assert (cfg.seed, cfg.preset, cfg.task, cfg.optim.lr) == (10, "on", "2026-12-01", 1e-6)
    path.write_text("steps: yes\n")
    with pytest.raises(ConfigError, match=r"run.yaml: steps must be a positive integer, got 'yes'$"):
        load_config(TrainConfig, path)


def test_an_empty_section_in_a_file_takes_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\nrollout:\n  num_rollouts: 4\n")
    cfg = load_config(TrainConfig, path, ["optim.lr=0.5"])
    assert (cfg.optim.lr, cfg.rollout.num_rollouts) == (0.5, 4)
    assert load_config(TrainConfig, path).optim == TrainConfig().optim


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  num_rolouts: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'rollout.num_rolouts'"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(TrainConfig, tmp_path / "list.yaml")
    # A repeated section would silently replace the first one: an error naming the key and its line.
    (tmp_path / "twice.yaml").write_text("algorithm:\n  method: grpo\nsteps: 3\nalgorithm:\n  kl_coef: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"(?s)twice.yaml: not valid YAML .*duplicate key 'algorithm'.*line 4"
    ):
        load_config(TrainConfig, tmp_path / "twice.yaml")
    (tmp_path / "broken.yaml").write_text("rollout: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_config(TrainConfig, tmp_path / "broken.yaml")


def test_a_section_set_whole_then_a_key_inside_it():
    cfg = load_config(
        TrainConfig,
        None,
        ["algorithm.reward_weights={format: 1, correct: 0.5}", "algorithm.reward_weights.correct=2"],
    )
    assert cfg.algorithm.reward_weights == {"format": 1.0, "correct": 2.0}
    # A section set to a scalar fails at once (before any key inside it is set).
    with pytest.raises(ConfigError, match=r"^algorithm.reward_weights must be a mapping, got 3$"):
        load_config(TrainConfig, None, ["algorithm.reward_weights=3", "algorithm.reward_weights.correct=2"])
    # A mapping set whole merges into the section, key by key (OmegaConf's merge): the file's keys stay.
    cfg = load_config(TrainConfig, None, ["algorithm={method: grpo}", "algorithm={clip_high: 0.28}"])
    assert (cfg.algorithm.method, cfg.algorithm.clip_high) == ("grpo", 0.28)
    deep = load_config(TrainConfig, None, ["optim.deepspeed_config.zero_optimization.sub_group_size=3"])
    assert deep.optim.deepspeed_config == {"zero_optimization": {"sub_group_size": 3}}


def test_overrides_do_not_mutate_their_input():
    data = {"algorithm": {"method": "grpo"}}
    out = from_dict(TrainConfig, data, ["algorithm.method=gdpo"])
    assert data == {"algorithm": {"method": "grpo"}} and out.algorithm.method == "gdpo"


def test_every_field_has_help_and_describe_lists_it():
    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{prefix}{f.name} has no help line"
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                yield from walk(type(getattr(cls(), f.name)), f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    keys = list(walk(TrainConfig))
    text = describe(TrainConfig)
    assert len(keys) > 50
    for key in keys:
        assert key in text, key
    assert "algorithm.batch_norm" in text and "GDPO batch step" in text


def test_all_shipped_configs_load():
    root = Path(__file__).resolve().parent.parent / "experiments"
    files = sorted(root.glob("*/configs/*.yaml"))
    assert files
    for path in files:
        load_config(TrainConfig, path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=.inf"], "optim.lr must be a finite number, got inf"),
        (["optim.lr=0"], "optim.lr must be positive, got 0.0"),
        (["rollout.temperature=.inf"], "rollout.temperature must be a finite number, got inf"),
        (["rollout.temperature=0"], "rollout.temperature must be positive, got 0.0"),
        (["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1], got 1.5"),
        (["algorithm.clip_low=.inf"], "algorithm.clip_low must be a finite number, got inf"),
        (["algorithm.clip_low=1"], "algorithm.clip_low must be in [0, 1), got 1.0"),
        (["algorithm.eps=-1"], "algorithm.eps must be positive, got -1.0"),
        (["algorithm.reward_weights={format: -.inf}"], "algorithm.reward_weights.format must be a finite number, got -inf"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas[1] must be in [0, 1), got 1.0"),
        (["optim.zero_stage=4"], "optim.zero_stage must be an integer in [0, 3], got 4"),
        (["steps=-5"], "steps must be a positive integer, got -5"),
        (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
        (["logging.checkpoint_every=-3"], "logging.checkpoint_every must be a non-negative integer, got -3"),
        (["logging.keep_checkpoints=0"], "logging.keep_checkpoints must be a positive integer, got 0"),
        (["rollout.num_rollouts=-4"], "rollout.num_rollouts must be a positive integer, got -4"),
        (["data.prompts_per_step=0"], "data.prompts_per_step must be a positive integer, got 0"),
        (["optim.micro_batch_size=0"], "optim.micro_batch_size must be a positive integer, got 0"),
        (["optim.lr=1" + "0" * 400], "optim.lr must be a finite number, got 100000000000000000...0000000000000000000"),
        (["task=math", "data.options.length_limit=-7"], "data.options.length_limit must be a positive integer, got -7"),
        (["task=coding", "data.options.timeout_s=.nan"], "data.options.timeout_s must be a finite number, got nan"),
        (["task=math", "data.options.recipe=gsm8k3", "data.options.conditioned_length=true"],
         "data.options ['conditioned_length'] apply only to recipe 'boxed'"),
    ],
)  # fmt: skip
def test_impossible_values_are_one_line_errors_naming_key_value_and_range(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, overrides)
    assert str(err.value) == message


def test_every_number_field_is_bounded_or_unbounded_on_purpose():
    """A new int/float field gets bounds, or is listed here: a sign or size that no run can use is an error."""
    import typing

    unbounded = []

    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif {int, float} & ({tp} | set(typing.get_args(tp))) and not f.metadata.get("bounds"):
                unbounded.append(f"{prefix}{f.name}")

    walk(TrainConfig)
    # finite is checked for every float; these take any finite value (or are a whole other helper's new field)
    assert set(unbounded) <= {
        "algorithm.reward_weights",
        "algorithm.entropy_coef",
        "algorithm.max_nonfinite_skips",
    }, unbounded


def _alias_bomb(levels: int = 9, key: str = "x") -> str:
    """The 'billion laughs' YAML: each level repeats the one before nine times (9**levels strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert len(bomb.read_bytes()) < 1000  # expanded, it would be 9**9 strings (gigabytes)
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, bomb)
    assert time.monotonic() - start < 1
    assert "bomb.yaml: not valid YAML (aliases (*name) are not allowed in a config" in str(err.value)
    assert "line 2" in str(err.value) and "\n" not in str(err.value)
    # Under a key the schema checks (a list bomb in seed:), the error is the same one line, not the expansion.
    (tmp_path / "seed.yaml").write_text("seed: &a [[1, 1, 1, 1], [1, 1, 1, 1]]\nsteps: *a\n")
    with pytest.raises(ConfigError, match=r"seed.yaml: not valid YAML \(aliases .*line 2"):
        load_config(TrainConfig, tmp_path / "seed.yaml")
    # An anchor with no alias is plain YAML.
    (tmp_path / "anchor.yaml").write_text("seed: &a 4\n")
    assert load_config(TrainConfig, tmp_path / "anchor.yaml").seed == 4


def test_files_that_are_not_yaml_text_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, tmp_path)
    assert str(err.value) == f"config file {tmp_path} is a directory, not a YAML file"
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("preset: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, latin1)
    assert str(err.value) == f"{latin1}: not UTF-8 text (byte 0xe9 at offset 11)"
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"huge.yaml is larger than 1048576 bytes$"):
        load_config(TrainConfig, huge)
    deep = tmp_path / "deep.yaml"
    deep.write_text("data:\n  options: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: not valid YAML \(nested too deeply\)$"):
        load_config(TrainConfig, deep)
    deep.write_text("optim:\n  deepspeed_config: {a: " + "[" * 40 + "]" * 40 + "}\n")
    with pytest.raises(
        ConfigError, match=r"deep.yaml: optim.deepspeed_config: nested more than 32 levels deep$"
    ):
        load_config(TrainConfig, deep)


def test_loading_a_config_imports_no_torch():
    """Config errors come before torch or any model: the loader and the task options import neither."""
    import subprocess
    import sys

    code = (
        "import sys; from gdpo.config import TrainConfig, load_config; "
        "load_config(TrainConfig, 'experiments/math/configs/paper-r1-7b.yaml', ['data.options.num_train=3']); "
        "print(sorted(m for m in ('torch', 'transformers', 'gdpo.rewards') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_describe_shows_bounds_and_literals():
    text = describe(TrainConfig)
    top_p = next(line for line in text.splitlines() if line.startswith("rollout.top_p "))
    assert top_p.endswith("nucleus sampling threshold (1 = off) [a finite number in (0, 1]]")
    backend = next(line for line in text.splitlines() if line.startswith("rollout.backend "))
    assert "'hf' or 'vllm'" in backend


def test_messages_stay_one_short_line_whatever_the_keys():
    """Found by the fuzz test: a 3000-character key inside a value made a 3000-character message."""
    cases = [
        {"algorithm": {"reward_weights": {"k" * 3000: "x"}}},
        {"algorithm": {"reward_weights": {"a\nb" * 500: float("inf")}}},
        {"data": {"options": {"a": ["${"]}}},
        {"warm_start": [[{"k" * 3000: ["${"]}]]},
    ]
    messages = []
    for data in cases:
        with pytest.raises(ConfigError) as err:
            from_dict(TrainConfig, data)
        messages.append(str(err.value))
    assert all(len(m) <= 500 and "\n" not in m for m in messages), [len(m) for m in messages]
    assert messages[0].startswith("algorithm.reward_weights.kkkk") and messages[0].endswith(
        "kkkk must be a finite number, got 'x'"
    )
    assert messages[2] == "data.options.a[0]: no viable alternative at input '${'"
    assert messages[3].startswith("warm_start must be a mapping, got [[{'kkk")


def test_deepspeed_config_cannot_set_what_the_optim_fields_set():
    """The trainer chooses its collectives (ZeRO-3's chunked head calls, the partitioned reference) and the batch
    layout from the optim fields: a DeepSpeed key that set them otherwise would make ranks disagree."""
    cfg = load_config(
        TrainConfig, None, ["optim.deepspeed_config={zero_optimization: {reduce_bucket_size: 5}}"]
    )
    assert cfg.optim.deepspeed_config == {"zero_optimization": {"reduce_bucket_size": 5}}
    for override, field in [
        (
            "optim.deepspeed_config.zero_optimization.stage=3",
            "zero_optimization.stage is set by optim.zero_stage",
        ),
        ("optim.deepspeed_config={bf16: {enabled: true}}", "bf16 is set by optim.precision"),
        ("optim.deepspeed_config.train_batch_size=64", "train_batch_size is set by data.prompts_per_step"),
    ]:
        with pytest.raises(ConfigError, match=f"^optim.deepspeed_config.{field}"):
            load_config(TrainConfig, None, [override])
