"""Name -> class registries, filled by explicit imports (no directory scanning)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it."""


class Registry:
    """Maps the ``type:`` names used in YAML configs to classes or factories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator; registers under the object's own name plus any ``names`` given."""

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            for name in (obj.__name__, *names):
                if name in self._entries and self._entries[name] is not obj:
                    raise KeyError(f"{self.kind} registry already has an entry named {name!r}")
                self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ConfigError(f"unknown {self.kind} type {name!r}; known types: {known}")
        return self._entries[name]

    def build(self, opt: dict[str, Any], where: str = "") -> Any:
        """Builds ``opt['type'](**rest)``; an unknown argument is an error naming the key."""
        if "type" not in opt:
            raise ConfigError(f"{where or self.kind}: missing 'type' key")
        kwargs = {k: v for k, v in opt.items() if k != "type"}
        cls = self.get(opt["type"])
        check_kwargs(cls, kwargs, where=where or f"{self.kind} {opt['type']}")
        return cls(**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> None:
    """Raises :class:`ConfigError` naming the first keyword ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"{where}: unknown key {key!r}; accepted keys: {', '.join(accepted)}")


ARCH_REGISTRY = Registry("arch")
DATASET_REGISTRY = Registry("dataset")
LOSS_REGISTRY = Registry("loss")
METRIC_REGISTRY = Registry("metric")
