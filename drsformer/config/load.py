"""Reading options files: YAML with ``yaml.SafeLoader`` (plain data only), ``base:`` overlays and ``--set``
overrides, for training and test options alike.

A file may start from others with ``base: other.yml`` (or a list, merged in order; paths relative to the file):
mappings merge key by key, any other value (lists included) replaces. Then each ``a.b.c=VALUE`` override is
applied, VALUE parsed the same way (``[1,1,1,1]``, ``2e3``, ``true``, ``~``). Any file that does not parse is a
one-line :class:`~drsformer.errors.ConfigError` naming it.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, MissingPathError


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only) that also reads ``1e-4`` and ``2e3`` as numbers, as YAML 1.2 does;
    PyYAML's YAML 1.1 rules need ``1.0e-4`` and would give the string ``'1e-4'``."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (see :class:`_SafeLoader`)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a SafeLoader subclass)


# ----------------------------------------------------------------------------------------------------------------
# Reading files and overrides


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in an options file; any file that does not parse is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such options file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); options files are YAML text") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from None
    except (ValueError, RecursionError) as err:  # a timestamp like 2023-13-45, or nesting too deep to parse
        raise ConfigError(f"{path}: not valid YAML ({type(err).__name__}: {str(err)[:120]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, found {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` on top of ``base``: mappings merge recursively, other values replace. Inputs are not changed."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'base' files include each other ({' -> '.join(p.name for p in chain)})")
    data = read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: base: expected a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        base = path.parent / name
        if not base.is_file():
            raise MissingPathError(f"{path}: base: {name}: no such options file ({base})")
        merged = merge(merged, _load_with_bases(base, (*chain, path.resolve())))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (['a', 'b', 'c'], yaml.safe_load(VALUE))."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. train.total_iter=2e3")
    try:
        parsed = safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    return parts, parsed


def apply_override(options: dict[str, Any], parts: list[str], value: Any) -> None:
    node = options
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {'.'.join(parts)}: {where} is {child!r}, not a section")
        node = child
    node[parts[-1]] = value


def load_options(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The merged options of ``path`` (with its ``base`` files) and the ``KEY=VALUE`` ``overrides``."""
    options = _load_with_bases(Path(path), ())
    for text in overrides:
        apply_override(options, *parse_override(text))
    return options


def parse_overrides(groups: Sequence[Sequence[str]] | None) -> list[str]:
    """Flattens repeated ``--set A=1 B=2`` groups from argparse (``action='append', nargs='+'``)."""
    return [item for group in groups or () for item in group]
