"""Name -> class registries for the ``type:`` entries of YAML configs.

Each registry names its home, the package whose import fills it (``import drsformer.data`` fills the dataset
registry): packages register their classes when they are imported, explicitly, and nothing scans folders. A
registry never imports its home itself (that would tie this bottom module to every package above it); the
modules that read options import the homes (:mod:`drsformer.config.training`, :mod:`drsformer.engine.build`), and
a lookup in a registry whose home nobody imported says which package to import.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError

__all__ = [
    "ARCH_REGISTRY",
    "ConfigError",
    "DATASET_REGISTRY",
    "LOSS_REGISTRY",
    "METRIC_REGISTRY",
    "OPTIMIZER_REGISTRY",
    "Registry",
    "SCHEDULER_REGISTRY",
    "check_kwargs",
    "suggest",
]


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class Registry:
    """Maps ``type:`` names to classes or factories; ``home`` is the module whose import registers them."""

    def __init__(self, kind: str, home: str) -> None:
        self.kind = kind
        self.home = home
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator; registers under the object's own name plus any ``names`` given."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(obj, *names)
            return obj

        return add

    def add(self, obj: Callable[..., Any], *names: str) -> None:
        """Registers ``obj`` under its ``__name__`` and ``names``; a clash with another object is a ``KeyError``."""
        for name in (obj.__name__, *names):
            if name in self._entries and self._entries[name] is not obj:
                raise KeyError(f"{self.kind} registry already has an entry named {name!r}")
            self._entries[name] = obj

    def get(self, name: str, where: str = "") -> Callable[..., Any]:
        entries = self._entries
        if not isinstance(name, str) or name not in entries:
            known = ", ".join(sorted(entries)) or "(none)"
            hint = suggest(name, entries) if isinstance(name, str) else ""
            prefix = f"{where}.type: " if where else ""
            unfilled = "" if self.home in sys.modules else f"; import {self.home} first, which registers them"
            raise ConfigError(f"{prefix}unknown {self.kind} type {name!r}{hint} (known: {known}){unfilled}")
        return entries[name]

    def build(self, opt: dict[str, Any], *args: Any, where: str = "", **runtime: Any) -> Any:
        """``opt['type'](*args, **runtime, **rest_of_opt)``.

        ``args`` and ``runtime`` are what only the program has (the parameters for an optimizer, the optimizer
        for a scheduler). Unknown and missing keys are errors naming ``where`` (the YAML section).
        """
        where = where or self.kind
        if not isinstance(opt, dict):
            raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {opt!r}")
        if "type" not in opt:
            raise ConfigError(f"{where}: missing key 'type' (one of: {', '.join(self.names())})")
        cls = self.get(opt["type"], where)
        kwargs = {k: v for k, v in opt.items() if k != "type"}
        check_kwargs(cls, kwargs, where, given=len(args), supplied=set(runtime))
        return cls(*args, **runtime, **kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)


def check_kwargs(
    fn: Callable[..., Any], kwargs: dict[str, Any], where: str, given: int = 0, supplied: set[str] | None = None
) -> None:
    """Raises :class:`ConfigError` for a keyword ``fn`` does not take, or a required one that is absent.

    ``given`` positional arguments and the ``supplied`` keywords come from the program, not the config.
    """
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    supplied = supplied or set()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    from_program = {p.name for p in named[:given]} | supplied
    accepted = [p.name for p in named if p.name not in from_program]
    if not takes_any:
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"{where}.{key}: unknown key{suggest(key, accepted)} (accepted: {', '.join(accepted)})"
                )
    for p in named:
        if p.name in from_program or p.kind is inspect.Parameter.POSITIONAL_ONLY:
            continue
        if p.default is inspect.Parameter.empty and p.name not in kwargs:
            raise ConfigError(f"{where}: missing required key {p.name!r}")


ARCH_REGISTRY = Registry("arch", "drsformer.archs")
DATASET_REGISTRY = Registry("dataset", "drsformer.data")
LOSS_REGISTRY = Registry("loss", "drsformer.losses")
METRIC_REGISTRY = Registry("metric", "drsformer.metrics")
OPTIMIZER_REGISTRY = Registry("optimizer", "drsformer.optim")
SCHEDULER_REGISTRY = Registry("scheduler", "drsformer.optim")
