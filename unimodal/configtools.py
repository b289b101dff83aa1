"""Building validated dataclass configs from dicts (YAML), and dotted command-line overrides.

`build(cls, data, where)` checks every key against the dataclass fields (recursing into nested
dataclass fields) and every value against the field's type, so a typo or a wrong type fails on
load with the full dotted name of the key (`train.max_stepz`), never later in a run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union, get_args, get_origin

import yaml


def check_value(value: Any, typ: Any, where: str) -> Any:
    """`value` converted to `typ` where lossless (int -> float, list -> tuple), else TypeError."""
    origin, args = get_origin(typ), get_args(typ)
    if typ is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, where)
            except TypeError:
                pass
        raise TypeError(f"{where}: {value!r} is not {typ}")
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(typ, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {value!r}")
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(typ, type) and isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise TypeError(f"{where}: expected {getattr(typ, '__name__', typ)}, got {value!r} ({type(value).__name__})")


def build(cls: type, data: dict[str, Any] | None, where: str) -> Any:
    """An instance of dataclass `cls` from `data`; unknown keys and ill-typed values are errors
    naming `where.key`. Missing keys take the defaults."""
    data = data or {}
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {[f'{where}.{k}' for k in unknown]}; known keys: {sorted(fields)}")
    kwargs = {k: check_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from e


def apply_overrides(data: dict[str, Any], overrides: list[str], form: str = "section.key=value") -> dict[str, Any]:
    """`a.b.c=value` strings applied to a nested dict (values parsed as YAML: 3, 1e-4, true, [1, 2]).
    `form` is how a malformed one is told to look."""
    result = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like {form}")
        node = result
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
