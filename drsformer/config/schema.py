"""A small schema engine for options: declare what a section holds, check a given mapping against it, fill the
defaults, and name every key that is wrong.

A schema is a dict of key -> spec: :class:`Field` (a typed value), :class:`Section` (a nested schema),
:class:`Mapping` (free keys, one spec for every value), :class:`Typed` (a ``type:`` section built through a
registry, whose other keys are checked against the class's own arguments) or :class:`Ignored` (accepted and
reported, for keys of other codebases' files that mean nothing here). Any spec with a ``validate`` method works.
Errors are :class:`~drsformer.errors.ConfigError` naming the key path, with the closest valid key for a typo.
The training options (:mod:`drsformer.config`) and the test options (:mod:`drsformer.test`) are two schemas.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..registry import Registry, check_kwargs, suggest

REQUIRED = object()


def join(path: str, key: str) -> str:
    """``path.key`` (``key`` at the top)."""
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class Field:
    """One option: its kind (``int``, ``float``, ``bool``, ``str``, ``ints``, ``any``), default, and choices."""

    kind: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] = ()
    nullable: bool = False

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> Any:
        if not present:
            if self.default is REQUIRED:
                raise ConfigError(f"{where}: missing required key")
            return copy.deepcopy(self.default)
        return coerce(value, self, where)


@dataclass(frozen=True)
class Ignored:
    """A key of other codebases' files that means nothing here; ``why`` is said once when it appears."""

    why: str


@dataclass(frozen=True)
class Section:
    fields: dict[str, Any]
    optional: bool = False

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> Any:
        if not present and not self.optional:
            raise ConfigError(f"{where}: missing required section")
        return validator.section(self.fields, value, where)


@dataclass(frozen=True)
class Mapping:
    """A free mapping whose every value follows ``value`` (e.g. ``val.metrics``)."""

    value: Any
    default: dict[str, Any] = field(default_factory=dict)

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> Any:
        if not present or value is None:
            value = self.default
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type_name(value)} {value!r}")
        return {str(k): validator.value(self.value, v, True, join(where, str(k))) for k, v in value.items()}


@dataclass(frozen=True)
class ListOf:
    """A list whose every item follows ``item`` (e.g. a test file's ``models``); absent or null: empty."""

    item: Any

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> Any:
        if not present or value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type_name(value)} {value!r}")
        return [validator.value(self.item, v, True, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Typed:
    """A ``type:`` section built through ``registry``; ``runtime`` keys are supplied by the program."""

    registry: Registry
    default: dict[str, Any] | None = None
    positional: int = 0
    runtime: tuple[str, ...] = ()
    optional: bool = False

    def validate(self, validator: Validator, value: Any, present: bool, where: str) -> dict[str, Any] | None:
        if not present or value is None:
            if self.optional and not present:
                return None
            if self.default is None:
                raise ConfigError(f"{where}: missing required section")
            return copy.deepcopy(self.default)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section with a 'type' key, got {type_name(value)} {value!r}")
        if self.default is not None and value.get("type", self.default["type"]) == self.default["type"]:
            value = {**self.default, **value}  # keys given without a type (or with the default's) refine the default
        if "type" not in value:
            raise ConfigError(f"{where}.type: missing required key (one of: {', '.join(self.registry.names())})")
        target = self.registry.get(value["type"], where)
        kwargs = {k: v for k, v in value.items() if k != "type"}
        check_kwargs(target, kwargs, where, given=self.positional, supplied=set(self.runtime))
        return dict(value)


def coerce(value: Any, spec: Field, where: str) -> Any:
    """``value`` as ``spec.kind``; integral floats count as integers (YAML ``!!float 1e3``)."""
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    kind = spec.kind
    if kind == "int" or kind == "ints":
        items = value if kind == "ints" else [value]
        if kind == "ints" and not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of integers, got {type_name(value)} {value!r}")
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or float(item) != int(item):
                raise ConfigError(f"{where}: expected an integer, got {type_name(item)} {item!r}")
            out.append(int(item))
        value = out if kind == "ints" else out[0]
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type_name(value)} {value!r}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type_name(value)} {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type_name(value)} {value!r}")
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, spec.choices))}, got {value!r}")
    return value


class Validator:
    """Checks values against specs; collects the ignored keys it meets as (key path, why)."""

    def __init__(self) -> None:
        self.ignored: list[tuple[str, str]] = []

    def section(self, fields: dict[str, Any], given: Any, path: str) -> dict[str, Any]:
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: expected a section (a mapping), got {type_name(given)} {given!r}")
        valid = [k for k, v in fields.items() if not isinstance(v, Ignored)]
        for key in given:
            if key not in fields:
                raise ConfigError(f"{join(path, key)}: unknown key{suggest(str(key), valid)}")
        out: dict[str, Any] = {}
        for key, spec in fields.items():
            where = join(path, key)
            if isinstance(spec, Ignored):
                if key in given:
                    self.ignored.append((where, spec.why))
                continue
            out[key] = self.value(spec, given.get(key), key in given, where)
        return out

    def value(self, spec: Any, value: Any, present: bool, where: str) -> Any:
        validate = getattr(spec, "validate", None)
        if validate is None:
            raise TypeError(f"bad schema entry at {where}: {spec!r}")
        return validate(self, value, present, where)


def check_section(fields: dict[str, Any], given: Any, where: str = "") -> dict[str, Any]:
    """``given`` checked against a schema section, defaults filled."""
    return Validator().section(fields, given, where)
