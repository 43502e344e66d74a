"""Research studies: accuracy against parameters and training budget, with their result files (see
:mod:`benchmarks`)."""
