"""The training engine: the loop and its parts (build, resume, step, guard, validation, state, checkpoints,
data, distributed helpers, signals, logging). The optimizers and schedulers it builds are in
:mod:`drsformer.optim`."""
