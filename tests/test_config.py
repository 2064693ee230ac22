"""Config loading: YAML + dotted overrides, type checks, errors that name the key and the file."""

from __future__ import annotations

import dataclasses

import pytest

from gdpo.config import ConfigError, TrainConfig, apply_overrides, describe, load_config, to_dict


def test_defaults_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "task: toy\nsteps: 7\nalgorithm:\n  method: grpo\n  clip_high: 0.28\noptim:\n  lr: 1e-6\n"
    )
    cfg = load_config(
        TrainConfig,
        path,
        ["algorithm.method=gdpo", "seed=3", "optim.betas=[0.9, 0.95]", "data.options={n: 2}"],
    )
    assert (cfg.task, cfg.steps, cfg.seed) == ("toy", 7, 3)
    assert cfg.algorithm.method == "gdpo" and cfg.algorithm.clip_high == 0.28
    assert cfg.optim.lr == 1e-6  # a number in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)
    assert cfg.optim.betas == [0.9, 0.95]
    assert cfg.data.options == {"n": 2}
    assert cfg.rollout.num_rollouts == 8  # untouched default
    assert isinstance(cfg.algorithm.eps, float)


def test_round_trip_through_dict():
    cfg = load_config(TrainConfig, None, ["algorithm.reward_weights={format: 0.5}", "logging.run_dir=/tmp/x"])
    again = load_config(TrainConfig, None, [])
    assert to_dict(cfg) != to_dict(again)
    from gdpo.config import from_dict

    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algorithm.methd=grpo"],
            r"unknown config key 'algorithm.methd'; known keys under algorithm: \[.*'method'",
        ),
        (["nonsense=1"], r"unknown config key 'nonsense'"),
        (["seed=abc"], r"seed: expected an integer, got str 'abc'"),
        (["steps=2.5"], r"steps: expected an integer, got float 2.5"),
        (["optim.lr=true"], r"optim.lr: expected a number, got bool True"),
        (["optim.lr=fast"], r"optim.lr: expected a number, got str 'fast'"),
        (["optim.lr='1e-6'"], r"optim.lr: expected a number, got str '1e-6'"),
        (["optim.lr=.nan"], r"optim.lr: expected a number, got NaN"),
        (["steps=1:30"], r"steps: expected an integer, got str '1:30'"),  # YAML 1.1: 90 (base 60)
        (["seed=0x"], r"seed: expected an integer, got str '0x'"),
        (["optim.betas=[0.9"], r"optim.betas: cannot parse '\[0.9'"),
        (["rollout.backend=sglang"], r"rollout.backend: 'sglang' is not one of \['hf', 'vllm'\]"),
        (["optim.betas=0.9"], r"optim.betas: expected a list"),
        (["algorithm.reward_weights={format: high}"], r"algorithm.reward_weights.format: expected a number"),
        (["algorithm=3"], r"algorithm: expected a mapping"),
        (["novalue"], r"must look like key.subkey=value"),
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
            "optim.deepspeed_config={zero_optimization: {stage: 3, offload: no}}",
            "logging.profile_steps=[3, 4]",
            "algorithm.reward_weights={format: 1, correctness: 2.5}",
        ],
    )
    assert (cfg.seed, cfg.steps, cfg.preset, cfg.logging.run_dir) == (10, 16, "on", "runs/a #b")
    assert type(cfg.preset) is str  # a plain str, so the resolved config dumps to YAML
    assert cfg.model.chat_template == "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert cfg.rollout.backend == "vllm"
    assert cfg.optim.deepspeed_config == {"zero_optimization": {"stage": 3, "offload": "no"}}
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
    with pytest.raises(ConfigError, match=r"run.yaml: steps: expected an integer, got str 'yes'"):
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
    with pytest.raises(ConfigError, match=r"'reward_weights' is not a section"):
        load_config(TrainConfig, None, ["algorithm.reward_weights=3", "algorithm.reward_weights.correct=2"])


def test_overrides_do_not_mutate_their_input():
    data = {"algorithm": {"method": "grpo"}}
    out = apply_overrides(data, ["algorithm.method=gdpo"])
    assert data["algorithm"]["method"] == "grpo" and out["algorithm"]["method"] == "gdpo"


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
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "experiments"
    files = sorted(root.glob("*/configs/*.yaml"))
    assert files
    for path in files:
        load_config(TrainConfig, path)
