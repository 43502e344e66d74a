"""Performance micro-benchmarks: ratios measured side by side in one process (see :mod:`benchmarks`)."""
