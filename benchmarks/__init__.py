"""Benchmarks, in two parts that share only :mod:`benchmarks.common` (the machine and the ``--json`` layout) and
:mod:`benchmarks.stats` (means, spreads, rank correlation):

- :mod:`benchmarks.perf`: performance micro-benchmarks (a training step, a search candidate, a layer's choices, the
  FSDP step, a VTAB-1k run end to end): ratios measured side by side in one process, methods interleaved round by
  round, e.g. ``python -m benchmarks.perf.train_step --peak``.
- :mod:`benchmarks.studies`: research studies (accuracy per parameter, budget-fair comparisons with LoRA, rank
  faithfulness of the supernet) with their result files in ``benchmarks/studies/results/``.

Run them as modules from the repository root; every script takes ``--json PATH``. Every figure quoted anywhere is in
``benchmarks/RESULTS.md`` with its date, machine and command.
"""
