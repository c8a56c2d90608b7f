"""The training engine: loop, optimizers and schedules, checkpoints, distributed helpers, logging.

Importing this package registers the optimizers and schedulers.
"""

from . import optim  # noqa: F401  (registers OPTIMIZER_REGISTRY and SCHEDULER_REGISTRY entries)
