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
    assert cfg.optim.lr == 1e-6  # YAML 1.1 reads 1e-6 as a string; float fields accept it
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
