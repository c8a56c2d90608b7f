"""One module per ``drsformer`` subcommand: its arguments, turned into typed values, and one library call.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``; :mod:`drsformer.cli` lists them.
The options several commands share are written once, in :mod:`.args`; running a command and printing our
errors as one line is :mod:`.running`. Nothing in the library imports this package.
"""
