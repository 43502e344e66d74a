"""Benchmarks: scripts that print ratios measured side by side in one process (methods interleaved round by round).

Run them as modules from the repository root, e.g. ``python -m benchmarks.train_step --peak``; every script takes
``--json PATH`` to write its results (with the machine, date and command) in one shared layout. Every figure quoted
anywhere is in ``benchmarks/RESULTS.md`` with its date, machine and command.
"""
