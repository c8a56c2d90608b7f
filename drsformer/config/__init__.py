"""Options files: reading YAML (:mod:`.load`), the schema engine (:mod:`.schema`), the training options
(:mod:`.training`) and the test options (:mod:`.testing`)."""

from .load import load_options, parse_overrides
from .training import Resolved, describe_differences, dump_options, read_training_options, resolve_options

__all__ = [
    "Resolved",
    "describe_differences",
    "dump_options",
    "load_options",
    "parse_overrides",
    "read_training_options",
    "resolve_options",
]
