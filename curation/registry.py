"""Step registry: YAML names to step classes, and typed construction from config mappings."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from curation.step import Step

STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    """Class decorator: makes a step available to configs under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in STEPS and STEPS[cls.name] is not cls:
        raise ValueError(f"two steps are named {cls.name!r}: {STEPS[cls.name]} and {cls}")
    STEPS[cls.name] = cls
    return cls


def build_config(config_cls: type, values: dict[str, Any], where: str) -> Any:
    """Builds dataclass ``config_cls`` from ``values``, rejecting unknown keys and wrong types.

    ``where`` names the place in the config file for error messages (``pipeline[2]``).
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                         f"{', '.join(sorted(fields)) or '(none)'}")
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args or (Any, Any)
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return build_config(hint, value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float, bool, str):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def build_step(spec: dict[str, Any], where: str) -> Step:
    """Builds a step from ``{"step": name, **options}``."""
    if not isinstance(spec, dict) or "step" not in spec:
        raise ValueError(f"{where}: each pipeline entry needs a 'step' key naming one of: "
                         f"{', '.join(sorted(STEPS))}")
    name = spec["step"]
    if name not in STEPS:
        raise ValueError(f"{where}: unknown step {name!r}; available steps: "
                         f"{', '.join(sorted(STEPS))}")
    cls = STEPS[name]
    options = {k: v for k, v in spec.items() if k != "step"}
    return cls(build_config(cls.Config, options, f"{where} ({name})"))
