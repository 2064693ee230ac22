"""Fuzzing the config loader: whatever the data, YAML text or overrides, it returns a config or raises one
ConfigError line of bounded length, within a bounded time (hypothesis deadline) and memory (tracemalloc peak)."""

from __future__ import annotations

import dataclasses
import string
import tempfile
import tracemalloc
import typing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdpo.config import ConfigError, TrainConfig, from_dict, load_config

MAX_MESSAGE = 1000  # characters in one error line
MAX_PEAK_BYTES = 64 << 20  # memory one load may allocate (tracemalloc peak)
FUZZ = settings(
    max_examples=40, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the run config, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _keys(hints[f.name], f"{key}.")
    return out


KEYS = _keys(TrainConfig)
OPTION_NAMES = ["source", "path", "length_limit", "num_train", "demo_noise", "objectives", "timeout_s", "x"]
NAMES = (
    st.sampled_from(sorted({k.split(".")[-1] for k in KEYS} | set(OPTION_NAMES)))
    | st.text(max_size=8)
    | st.just("k" * 3000)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(alphabet="${}.:?*&!|>'\"#\\\n", max_size=12)  # interpolation, YAML and escape characters
    | st.just("x" * 5000)
    | st.sampled_from(["???", "${seed}", "${nope}", "${", "true", "1e-6", "hf", "vllm", "math", "boxed"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES | st.integers(), inner, max_size=4),
    max_leaves=20,
)
SECTIONS = st.sampled_from(["model", "rollout", "algorithm", "optim", "data", "logging", "warm_start"])
DATA = st.dictionaries(
    NAMES | SECTIONS,
    VALUES | st.dictionaries(NAMES, VALUES, max_size=5) | st.fixed_dictionaries({"options": VALUES}),
    max_size=6,
)
OVERRIDE = st.builds(
    lambda key, value: f"{key}={value}",
    st.sampled_from(
        KEYS + [f"data.options.{n}" for n in OPTION_NAMES] + ["seed.x", "", "optim.deepspeed_config.a"]
    ),
    st.text(max_size=30)
    | st.sampled_from(["[1, 2", "{a: 1}", ".inf", ".nan", "-5", "0", "null", "*a", "&a 1"]),
) | st.text(max_size=20)
TASKS = st.sampled_from(["toy", "math", "coding", "tool_calling", "other"])


def _check(load) -> None:
    """Run ``load()``: a config or one bounded ConfigError line, and a bounded memory peak."""
    tracemalloc.start()
    try:
        cfg = load()
        assert isinstance(cfg, TrainConfig)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) <= MAX_MESSAGE, message[:2000]
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, peak


@FUZZ
@given(DATA, TASKS)
def test_any_data_gives_a_config_or_one_config_error_line(data, task):
    _check(lambda: from_dict(TrainConfig, {**data, "task": task} if task != "other" else data))


@FUZZ
@given(st.lists(OVERRIDE, max_size=6), TASKS)
def test_any_overrides_give_a_config_or_one_config_error_line(overrides, task):
    _check(lambda: from_dict(TrainConfig, {"task": task}, overrides))


def _anchored_yaml(draw) -> str:
    """YAML text with anchors, aliases (nested, as in an alias bomb), odd scalars and junk lines."""
    lines = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["anchor", "alias", "scalar", "junk", "section"]))
        key = draw(st.sampled_from(KEYS[:12] + [f"k{i}", "seed", "steps", "data"]))
        if kind == "anchor":
            lines.append(f"{key}: &a{i} [{', '.join(['lol'] * draw(st.integers(1, 9)))}]")
        elif kind == "alias":
            lines.append(f"{key}: [{', '.join(f'*a{draw(st.integers(0, max(i, 1)))}' for _ in range(9))}]")
        elif kind == "scalar":
            value = draw(
                st.sampled_from(["010", "0x1F", "1e5", ".inf", "-.nan", "on", "~", "'q'", "2026-12-01"])
            )
            lines.append(f"{key}: {value}")
        elif kind == "section":
            lines.append(f"{key}:\n  {draw(NAMES) or 'a'}: {draw(st.sampled_from(['1', '-3', 'x', '[1]']))}")
        else:
            lines.append(draw(st.text(alphabet=string.printable + "\x85\u2028\ufeff", max_size=30)))
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.composite(lambda draw: _anchored_yaml(draw))(), st.binary(max_size=8))
def test_any_yaml_text_gives_a_config_or_one_config_error_line(text, tail):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") + tail)
        _check(lambda: load_config(TrainConfig, path))
