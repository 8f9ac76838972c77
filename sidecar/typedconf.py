"""Typed configuration from plain data: frozen dataclasses built by their type hints.

Strategy: :func:`build` walks a dataclass's fields and converts each value by
its annotation (nested dataclasses, ``Literal`` options, ``tuple[str, ...]``,
``dict[str, str]``, optional values, and the unit-carrying ``Duration`` and
``Size``), so every key is declared once and every error names its path and
value. Nothing here knows sse-sidecar's keys; sidecar/config.py does.

Durations accept ``ms``, ``s``, ``m``, ``h`` (``15s``, ``1h``, ``250ms``) or a
number of seconds; sizes accept ``B``, ``KiB``, ``MiB``, ``GiB``, ``KB``, ``MB``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sidecar.errors import ConfigError


class _Unit:
    """Marks a field whose value may carry a unit (duration or size)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


Duration = Annotated[float, _Unit("duration")]
Size = Annotated[int, _Unit("size")]


# --- parsing of values -------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
}  # fmt: skip


def parse_duration(value: object, key: str = "value") -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 15s, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigError(f"{key}: a duration must be a finite number >= 0, got {value!r}")
        return seconds
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{key}: expected a duration like 250ms, 15s, 5m or 1h, got {value!r}")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(value: object, key: str = "value") -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like 1MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: a size cannot be negative, got {value!r}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{key}: expected a size like 64KiB or 1MiB, got {value!r}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


class EnvValue(str):
    """A value from an environment variable: text, read as YAML only where the key is not text.

    So ``SSE_SIDECAR_ADMIN__TOKEN='#s3cret'`` stays a string instead of
    becoming a YAML comment (None), and ``...__PORT=8081`` is still a number.
    """

    __slots__ = ()


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if isinstance(value, EnvValue):
        is_text = tp is str or (origin in (Union, types.UnionType) and str in get_args(tp))
        try:
            value = str(value) if is_text else yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: not a valid value {str(value)!r}: {exc}") from None
    if origin is Annotated:
        base, *marks = get_args(tp)
        unit = next((m for m in marks if isinstance(m, _Unit)), None)
        if unit is not None:
            return parse_duration(value, key) if unit.kind == "duration" else parse_size(value, key)
        return _convert(base, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = (o for o in options if o is not type(None))
        return _convert(inner, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(map(str, get_args(tp)))
            raise ConfigError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if tp is Any:
        return value  # free-form (a JSON template); its user validates it
    if origin is dict:
        key_type, value_type = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {
            _convert(key_type, k, key): _convert(value_type, v, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin is tuple:
        (inner, _) = get_args(tp)
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a bug here, not the user's


def build(cls: Any, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from mappings, naming ``key.path`` in every error."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = f"{key}.{name}" if key else name
        if name in data:
            kwargs[f.name] = _convert(hints[f.name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}: required key is missing")
    return cls(**kwargs)
