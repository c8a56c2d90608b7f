"""Running a subcommand: our own errors (:class:`~drsformer.errors.DrsformerError`) become one line on stderr and
exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..errors import DrsformerError, RunStopped

Handler = Callable[[argparse.Namespace], int]


def run_command(name: str, handler: Handler, args: argparse.Namespace) -> int:
    """``handler(args)``; a :class:`DrsformerError` is printed as ``drsformer NAME: error: ...`` (status 2), a
    stop request as one line with its own status, Ctrl-C as one line (status 130)."""
    try:
        return handler(args)
    except RunStopped as stop:
        print(f"drsformer {name}: {stop}", file=sys.stderr)
        return stop.exit_status
    except DrsformerError as err:
        print(f"drsformer {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drsformer {name}: interrupted", file=sys.stderr)
        return 130


def module_main(
    name: str,
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Handler,
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m drsformer.<module>``: one subcommand alone, with the same arguments and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_command(name, handler, parser.parse_args(argv))
