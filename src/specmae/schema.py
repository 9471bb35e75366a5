"""Typed configurations: one generic way to read, write and check the dataclass configs.

Every component has one dataclass config (front-end, encoder, decoder, masking, training, ...),
nested into a run config. `from_dict` builds any of them from plain data (YAML, JSON, a
checkpoint's config.json) and checks, field by field, that the keys are known and the values
have the declared type; `to_dict` writes them back as JSON-ready data. Checks that relate
several fields live in each config's `validate()`; `from_dict` calls it.

Errors are `ConfigError` and name the dotted path of the field, the value and what is allowed:

    ConfigError: train.batch_size: expected a positive integer, got 0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field, the value and what is allowed."""


def to_dict(cfg) -> dict[str, Any]:
    """A dataclass config (nested ones too) -> JSON-ready dict; tuples become lists."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return plain(cfg)


def from_dict(klass: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `klass` from `data` (a mapping), checking keys and value types, then validate().

    Fields missing from `data` keep their defaults; nested dataclass fields are read recursively.
    `where` is the dotted path of `data` in the enclosing config, for messages.
    """
    label = where or klass.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of fields, got {_show(data)}")
    hints = typing.get_type_hints(klass)
    known = {f.name: f for f in dataclasses.fields(klass) if f.init}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{label}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(known))}")
    values = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name)
              for name, value in data.items()}
    cfg = klass(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _coerce(tp, value: Any, where: str):
    """`value` as type `tp` (int, float, bool, str, X | None, tuple[...], list[...], a dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must be set, got null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where}: expected {' or '.join(_name(o) for o in options)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp!r}")


def _name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


# Range checks shared by the configs' validate() methods.

def positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")


def non_negative(name: str, value) -> None:
    if not value >= 0:
        raise ConfigError(f"{name}: expected a number >= 0, got {value!r}")


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, allowed))}")


def key_value(item: str, flag: str, keys=None, example: str = "") -> tuple[str, str]:
    """One `KEY=VALUE` command-line item -> (key, value), the value as written. `flag` names the
    option in messages; `keys`, when given, are the keys allowed."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or (keys is not None and key not in keys):
        allowed = f" with KEY one of {', '.join(keys)}" if keys is not None else ""
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE{allowed}{', e.g. ' + example if example else ''}")
    return key, value
