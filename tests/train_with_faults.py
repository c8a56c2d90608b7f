"""``drsformer train`` with faults injected at exact points, so that tests do not race a running process.

Run as ``python tests/train_with_faults.py -opt FILE ...`` (or as torchrun's script) with:

- ``FAULT_KILL_AT=N``: SIGKILL the process of rank ``FAULT_KILL_RANK`` (default 0) right after the training
  state of iteration N is saved (every process has then passed the save's barrier), in the first round of an
  elastic run only;
- ``FAULT_SIGNAL_AT=N``: send this process SIGUSR1 (Slurm's warning) as iteration N starts;
- ``FAULT_VAL_OOM_RANK=R``: the process of rank R runs out of memory on its first validation image.
"""

import os
import signal
import sys

import drsformer.engine.state as state
import drsformer.engine.trainer as trainer
import drsformer.engine.validation as validation
from drsformer.errors import OutOfMemory
from drsformer.train import main

KILL_AT = int(os.environ.get("FAULT_KILL_AT", "0"))
KILL_RANK = int(os.environ.get("FAULT_KILL_RANK", "0"))
SIGNAL_AT = int(os.environ.get("FAULT_SIGNAL_AT", "0"))
VAL_OOM_RANK = int(os.environ.get("FAULT_VAL_OOM_RANK", "-1"))
FIRST_ROUND = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

save, set_learning_rate = state.StateKeeper.save, trainer.set_learning_rate


def save_then_die(self, parts, progress):
    save(self, parts, progress)
    if progress.iteration == KILL_AT and self.dist.rank == KILL_RANK and FIRST_ROUND:
        os.kill(os.getpid(), signal.SIGKILL)


def signal_at(optimizer, scheduler, iteration, warmup, factor):
    if iteration == SIGNAL_AT:
        os.kill(os.getpid(), signal.SIGUSR1)
    return set_learning_rate(optimizer, scheduler, iteration, warmup, factor)


def restore_out_of_memory(self, model, lq, vset, item, iteration):
    if self.dist.rank == VAL_OOM_RANK:
        raise OutOfMemory(f"validation of {vset.name} at iteration {iteration}: out of memory (injected)")
    return restore(self, model, lq, vset, item, iteration)


restore = validation.Validator._restore
validation.Validator._restore = restore_out_of_memory
state.StateKeeper.save = save_then_die
trainer.set_learning_rate = signal_at
sys.exit(main(sys.argv[1:]))
