"""One rule for every configuration dataclass: plain-type dicts in and out, unknown keys rejected.

Every config (the Crysformer's, the noise processes', the energy head's, training's, CrysDB building's)
derives from :class:`Config`. ``from_dict`` accepts a mapping of known keys only; a typo
(``model: {hiden: 32}``) or a value of the wrong type (``lr: abc``) is a :class:`~dao.errors.ConfigError`
naming the section and the key, never a silently ignored setting. Nested configs are built recursively.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from dao.errors import ConfigError

C = TypeVar("C", bound="Config")


def _check_value(section: str, name: str, hint: Any, value: Any) -> Any:
    """``value`` converted to the field's plain type, or ConfigError naming section.name."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    where = f"{section}.{name}"
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config {where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config {where}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"config {where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config {where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {where}: expected a list, got {value!r}")
        return list(value)
    return value


@dataclasses.dataclass
class Config:
    """Base class of DAO's configuration dataclasses (subclasses are ``@dataclass`` too).

    ``section`` names the config in error messages (e.g. ``train``); ``to_dict`` gives plain types only,
    as checkpoints store them; ``from_dict(to_dict())`` round-trips exactly.
    """

    section: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any] | None) -> C:
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"config section {cls.section!r}: expected a mapping, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(str(k) for k in d if k not in fields)
        if unknown:
            raise ConfigError(f"unknown {cls.section} config key(s): {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(fields))})")
        kwargs = {}
        for name, value in d.items():
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, Config):
                kwargs[name] = hint.from_dict(value)
            else:
                kwargs[name] = _check_value(cls.section, name, hint, value)
        obj = cls(**kwargs)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Range checks beyond types (override; raise :class:`~dao.errors.ConfigError`)."""
