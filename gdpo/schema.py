"""Typed configuration schema: dataclass fields with a help line and bounds, filled and type-checked by OmegaConf.

A field is declared once, with everything that is checked about it::

    lr: float = field_(1e-5, help="AdamW learning rate", gt=0)

``build(cls, data, overrides)`` makes an instance of dataclass ``cls`` from nested data (a YAML file's mapping),
then from dotted ``key=value`` overrides. OmegaConf structured configs do the merging and the type checks
(unknown keys, wrong types, bad literals). On top of OmegaConf's checks:

* text is not taken for a number, nor a number for text: ``lr: '1e-6'`` (a quoted string) and ``task: 3`` are
  errors where OmegaConf would convert them; a boolean is ``true``/``false`` (as YAML or as text), never ``1``;
* every float is finite and every number lies within its field's bounds (``ge``/``gt``/``le``/``lt``, applied to
  each item of a list or value of a mapping as well);
* every error is one :class:`ConfigError` line naming the key, the value and what is allowed.

A command-line value is text until its field's type is known: a ``str`` field (or a literal of strings) takes it
verbatim (``#``, ``{%``, ``on`` and ``010`` included) unless it is quoted as a YAML string (``"Q:\\n"``, with
escapes); other fields parse it as YAML 1.2, lists and mappings included. ``null`` (or ``~``) sets an optional
field to None. A mapping merges into a section or a mapping field key by key, as OmegaConf merges.

YAML is read with the 1.2 core schema (``010`` is ten, ``on``/``no``/``1:30``/``2026-12-01`` are strings, ``1e-6``
is a number), with no aliases (``*name``: an alias bomb expands exponentially before any key is checked), no
repeated keys, and nesting at most :data:`MAX_DEPTH` deep. Files are UTF-8 text of at most
:data:`MAX_FILE_BYTES`. OmegaConf's ``${...}`` interpolations work in values (``logging.run_dir=runs/${preset}``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import KeyValidationError, OmegaConfBaseException, UnsupportedValueType, ValidationError

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_MESSAGE",
    "ConfigError",
    "allowed",
    "build",
    "check_bounds",
    "describe",
    "dump_yaml",
    "field_",
    "load_yaml",
    "read_yaml_file",
]

T = TypeVar("T")
MAX_DEPTH = 32  # nesting of mappings and lists in a config value (OmegaConf recurses once per level)
MAX_FILE_BYTES = 1 << 20  # a config file (the shipped presets are about 2 KB)
MAX_MESSAGE = 500  # characters of a ConfigError
_BOUND_NAMES = ("ge", "gt", "le", "lt")
_YAML_NULLS = ("null", "Null", "NULL", "~")


class ConfigError(ValueError):
    """A configuration key is unknown, or its value is not allowed; the message is one line naming the key, of
    at most :data:`MAX_MESSAGE` characters whatever the keys and values in it (a longer one keeps its start and
    end)."""

    def __init__(self, message: str):
        line = " ".join(str(message).splitlines())
        if len(line) > MAX_MESSAGE:
            line = f"{line[: MAX_MESSAGE - 125]} ... {line[-120:]}"
        super().__init__(line)


def field_(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a mandatory help line and optional bounds on its numbers: ``ge``/``gt`` (at least /
    above) and ``le``/``lt`` (at most / below); for a list or mapping they bound every item."""
    bounds = {name: value for name, value in zip(_BOUND_NAMES, (ge, gt, le, lt)) if value is not None}
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"help": help, "bounds": bounds}
    )


# --------------------------------------------------------------------------------------------------
# What a field allows, in words
# --------------------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _item_type(tp: Any) -> Any:
    """The type of a list's items or a mapping's values (``Any`` otherwise)."""
    tp = _unwrap(tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list and args:
        return args[0]
    if typing.get_origin(tp) is dict and len(args) == 2:
        return args[1]
    return Any


_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_words(bounds: dict[str, float]) -> str:
    """``{"gt": 0}`` -> "positive", ``{"ge": 0, "le": 1}`` -> "in [0, 1]", ``{"ge": 2}`` -> ">= 2"."""
    low = [(k, v) for k, v in bounds.items() if k in ("ge", "gt")]
    high = [(k, v) for k, v in bounds.items() if k in ("le", "lt")]
    if low and high:
        (low_kind, low_value), (high_kind, high_value) = low[0], high[0]
        opening, closing = "[" if low_kind == "ge" else "(", "]" if high_kind == "le" else ")"
        return f"in {opening}{_number(low_value)}, {_number(high_value)}{closing}"
    words = {(("gt", 0),): "positive", (("ge", 0),): "non-negative"}
    return words.get(tuple(bounds.items())) or " and ".join(
        f"{_SIGNS[k]} {_number(v)}" for k, v in bounds.items()
    )


def allowed(tp: Any, bounds: dict[str, float] | None = None) -> str:
    """What a field of type ``tp`` with ``bounds`` accepts, in words ("a positive integer", "'hf' or 'vllm'")."""
    tp, bounds = _unwrap(tp), bounds or {}
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        values = [repr(v) for v in typing.get_args(tp)]
        return " or ".join(values) if len(values) <= 2 else f"one of [{', '.join(values)}]"
    if tp is int:
        words = {(("ge", 1),): "a positive integer", (("ge", 0),): "a non-negative integer"}
        return words.get(tuple(bounds.items())) or " ".join(["an integer", _range_words(bounds)]).strip()
    if tp is float:
        words = _range_words(bounds)
        return (
            f"a {words} finite number"
            if words in ("positive", "non-negative")
            else f"a finite number {words}".strip()
        )
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return "any value"


_REPR = reprlib.Repr()  # Python 3.11's Repr takes no arguments
for _name, _limit in (("maxlevel", 3), ("maxstring", 60), ("maxother", 60), ("maxlong", 40), ("maxlist", 6)):
    setattr(_REPR, _name, _limit)
_REPR.maxdict = 6


def _show(value: Any) -> str:
    """A short repr: error messages stay one bounded line whatever the value."""
    return _REPR.repr(value)


def _join(prefix: str, name: Any) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


@functools.cache
def _schema(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    """Field name -> (resolved type, field) of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------------------------------
# Building a dataclass instance from data and overrides
# --------------------------------------------------------------------------------------------------


def build(cls: type[T], data: Any = None, overrides: Sequence[str] = (), *, prefix: str = "") -> T:
    """An instance of dataclass ``cls`` from nested ``data`` (None: defaults) and then ``key=value``
    ``overrides``; every value type-checked and bounded. Errors are :class:`ConfigError` lines whose keys start
    with ``prefix`` (the place of ``cls`` in a larger config, e.g. ``data.options``)."""
    node = OmegaConf.structured(cls)
    _merge_section(node, cls, {} if data is None else data, prefix, prefix)
    for item in overrides:
        _override(node, cls, item, prefix)
    try:
        obj = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        key = _join(prefix, exc.full_key) if exc.full_key else prefix or "config"
        raise ConfigError(f"{key}: {_first_line(exc.msg)}") from None
    check_bounds(obj, prefix)
    return obj


def _first_line(text: Any, limit: int = 300) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else "invalid"
    return line if len(line) <= limit else line[:limit] + "..."


def _unknown(key: str, section: str, cls: type) -> ConfigError:
    return ConfigError(
        f"unknown config key {_show(key)}; "
        f"known keys under {section or 'the top level'}: {sorted(_schema(cls))}"
    )


def _merge_section(node: Any, cls: type, data: Any, path: str, prefix: str) -> None:
    """Merge mapping ``data`` into the section ``node`` (of dataclass ``cls``) at dotted ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the config'} must be a mapping, got {_show(data)}")
    schema = _schema(cls)
    for key, value in data.items():
        if key not in schema:
            raise _unknown(_join(path, key) if isinstance(key, str) else key, path, cls)
        tp, field = schema[key]
        if dataclasses.is_dataclass(tp):  # a section; empty (None) keeps its defaults
            _merge_section(node[key], tp, {} if value is None else value, _join(path, key), prefix)
        else:
            _set(node, key, value, tp, field, _join(path, key), prefix)


def _set(node: Any, key: str, value: Any, tp: Any, field: dataclasses.Field, path: str, prefix: str) -> None:
    """Merge ``{key: value}`` into ``node``; OmegaConf checks the type, we check text vs non-text and depth."""
    bounds = field.metadata.get("bounds", {})
    _check_depth(value, path)
    _check_kind(tp, value, path, bounds)
    try:
        node.merge_with({key: value})
    except OmegaConfBaseException as exc:
        failing = _failing_key(path, key, prefix, exc.full_key)
        if isinstance(exc, KeyValidationError):
            raise ConfigError(f"{failing}: keys must be strings, got {_show(exc.key)}") from None
        if isinstance(exc, UnsupportedValueType):
            raise ConfigError(f"{failing}: unsupported value {_show(getattr(exc, 'value', value))}") from None
        if not isinstance(exc, ValidationError):  # e.g. a malformed ${...} interpolation
            raise ConfigError(f"{failing}: {_first_line(exc.msg)}") from None
        item_tp = tp if failing == path else _item_type(tp)
        got = getattr(exc, "value", value) if failing != path else value
        raise ConfigError(f"{failing} must be {allowed(item_tp, bounds)}, got {_show(got)}") from None
    except OverflowError:  # an integer beyond the float range for a float field
        raise ConfigError(f"{path} must be a finite number, got {_show(value)}") from None


def _failing_key(path: str, key: str, prefix: str, full_key: Any) -> str:
    """The dotted key an OmegaConf error in field ``key`` (at ``path``) is about: OmegaConf counts its
    ``full_key`` from the root for some errors and from the merged node for others."""
    full = str(full_key or "")
    relative = path[len(prefix) + 1 :] if prefix else path
    for start in (relative, key):
        if full.startswith(start):
            return path + full[len(start) :]
    return path


def _check_depth(value: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep")
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        _check_depth(item, path, depth + 1)


def _check_kind(tp: Any, value: Any, path: str, bounds: dict[str, float]) -> None:
    """Text only for text fields: OmegaConf would read ``'1e-6'`` as a float and ``3`` as ``"3"``."""
    tp = _unwrap(tp)
    if value is None:
        return
    origin = typing.get_origin(tp)
    if origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            _check_kind(_item_type(tp), item, f"{path}[{i}]", bounds)
        return
    if origin is dict and isinstance(value, dict):
        for key, item in value.items():
            _check_kind(_item_type(tp), item, _join(path, key), bounds)
        return
    text = isinstance(value, str)
    if text and "${" in value:  # an OmegaConf interpolation: checked once resolved
        return
    wrong = (tp is str and not text and isinstance(value, (bool, int, float))) or (
        (tp in (int, float) and text) or (tp is bool and not isinstance(value, (bool, str)))
    )
    if wrong:
        raise ConfigError(f"{path} must be {allowed(tp, bounds)}, got {_show(value)}")


def _text_field(tp: Any) -> bool:
    """A field whose command-line value is taken verbatim: ``str`` or a literal of strings."""
    tp = _unwrap(tp)
    literal = typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))
    return tp is str or literal


def _quoted(text: str) -> bool:
    """A YAML quoted scalar: ``"a\\nb"`` (escapes apply) or ``'it''s'``."""
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def _parse_text(text: str, tp: Any, path: str) -> Any:
    """A command-line value for a field of type ``tp`` (see the module docstring)."""
    if _unwrap(tp) is not tp and text in _YAML_NULLS:
        return None
    if _text_field(tp) and not _quoted(text):
        return text
    if text == "":
        return ""
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse {_show(text)} ({_yaml_problem(exc)})") from None


def _override(node: Any, cls: type, item: str, prefix: str) -> None:
    """Apply one ``a.b.c=value`` override to the OmegaConf ``node`` of dataclass ``cls``."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {_show(item)} must look like key.subkey=value")
    parts = key.split(".")
    section, section_cls, path = node, cls, prefix
    for i, part in enumerate(parts):
        schema = _schema(section_cls)
        if part not in schema:
            raise _unknown(_join(path, part), path, section_cls)
        tp, field = schema[part]
        here, rest = _join(path, part), parts[i + 1 :]
        if not rest:
            value = _parse_text(text, tp, here)
            if dataclasses.is_dataclass(tp):
                _merge_section(section[part], tp, value, here, prefix)
            else:
                _set(section, part, value, tp, field, here, prefix)
            return
        if dataclasses.is_dataclass(tp):
            section, section_cls, path = section[part], tp, here
            continue
        if typing.get_origin(_unwrap(tp)) is not dict:
            raise ConfigError(f"override {_show(item)}: {part!r} is not a section")
        value = _parse_text(text, _item_type(tp) if len(rest) == 1 else Any, _join(here, ".".join(rest)))
        for name in reversed(rest):  # a key inside a mapping field: merged into it
            value = {name: value}
        _set(section, part, value, tp, field, here, prefix)
        return


# --------------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------------


def check_bounds(obj: Any, prefix: str = "") -> None:
    """Every float of dataclass instance ``obj`` (nested ones too) finite, every number within its bounds."""
    for name, (tp, field) in _schema(type(obj)).items():
        value, key = getattr(obj, name), _join(prefix, name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, key)
            continue
        for item_key, number, number_tp in _numbers(key, value, tp):
            _check_number(item_key, number, number_tp, field.metadata.get("bounds", {}))


def _numbers(key: str, value: Any, tp: Any) -> list[tuple[str, Any, type]]:
    """(key, number, type) of a number field, or of each number of a list or mapping of numbers."""
    tp = _unwrap(tp)
    if tp in (int, float):
        return [(key, value, tp)]
    item_tp = _unwrap(_item_type(tp))
    if item_tp not in (int, float):
        return []
    if isinstance(value, dict):
        return [(_join(key, k), v, item_tp) for k, v in value.items()]
    return [(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]


def _check_number(key: str, value: Any, tp: type, bounds: dict[str, float]) -> None:
    if value is None:
        return
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {_show(value)}")
    ok = {
        "ge": lambda b: value >= b,
        "gt": lambda b: value > b,
        "le": lambda b: value <= b,
        "lt": lambda b: value < b,
    }
    if not all(ok[name](bound) for name, bound in bounds.items()):
        rule = allowed(tp, bounds) if tp is int else _range_words(bounds)
        raise ConfigError(f"{key} must be {rule}, got {_show(value)}")


# --------------------------------------------------------------------------------------------------
# --describe
# --------------------------------------------------------------------------------------------------


def describe(cls: type, prefix: str = "") -> str:
    """One line per field: dotted key, type, default, help, and what values it allows when bounded."""
    lines = []
    for name, (tp, f) in _schema(cls).items():
        key = _join(prefix, name)
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        literal = typing.get_origin(tp) is typing.Literal
        type_name = allowed(tp) if literal else getattr(tp, "__name__", str(tp).replace("typing.", ""))
        bounds = f.metadata.get("bounds")
        rule = (
            f" [{allowed(_item_type(tp) if typing.get_origin(_unwrap(tp)) in (list, dict) else tp, bounds)}]"
        )
        help_text = f.metadata.get("help", "") + (rule if bounds else "")
        lines.append(f"{key:<38} {type_name:<16} {default!r:<14} {help_text}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# YAML 1.2, safely
# --------------------------------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars (PyYAML implements YAML 1.1), no
    aliases and no repeated keys."""

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits.startswith(("0o", "0x")):
            return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
        return sign * int(digits)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):  # refused before it is expanded: an alias bomb costs nothing
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        # A key repeated in one mapping is an error (PyYAML keeps the last one, so a second ``algorithm:``
        # section would silently replace the first).
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: PyYAML's own check below names it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


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
    """PyYAML's safe dumper, quoting every string that YAML 1.1 or 1.2 would read as something else, and
    writing no aliases (the loader refuses them).

    A saved config is read back with the YAML 1.2 loader (``--resume``), and by users with PyYAML's 1.1
    ``safe_load``: ``"1e5"`` is a float only under 1.2, ``"yes"`` a boolean only under 1.1.
    """

    def ignore_aliases(self, data):
        return True

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
    """YAML text read as config files are: YAML 1.2 core schema, no aliases, no repeated keys.

    Raises ``yaml.YAMLError`` (nesting too deep for the parser included)."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line (PyYAML's spans several, with the offending line quoted)."""
    return _first_line(" ".join(str(exc).split())) if str(exc) else type(exc).__name__


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of YAML file ``path``; a missing, unreadable, oversized, non-UTF-8 or invalid file
    is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a YAML file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {_show(data)}")
    return data
