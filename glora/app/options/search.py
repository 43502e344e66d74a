"""The options of ``glora-search`` / ``search.py``."""

from __future__ import annotations

import argparse

from search.evolution import OBJECTIVES

from ..evalsets import add_eval_set_option
from ..evaluate import AMP_MODES
from ..layout import SearchFolder
from ..tasks import METRICS
from . import (
    add_progress_option,
    add_runtime_options,
    make_parser,
    nonneg_float,
    nonneg_int,
    optional,
    positive_float,
    positive_int,
    probability,
    program_name,
    support_choices,
)

__all__ = [
    "build_parser",
    "RESUMABLE_OPTIONS",
]


RESUMABLE_OPTIONS = {
    "generations",
    "device",
    "progress",
    "force",
    "out",
    "data_root",
    "batch_size",
    "workers",
    "compile",
    "compile_mode",
    "compile_backend",
    "execution",
    "fsdp",
    "data_on_device",
    "eval_set",
}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        program_name("search.py", "glora-search"),
        "Evolutionary search (deap) of a GLoRA supernet under a parameter budget.",
    )
    p.add_argument("--supernet", default="runs/default/supernet/last.pt", help="checkpoint from train_supernet.py")
    p.add_argument("--out", default="runs/default/search", help="output folder")
    g = p.add_argument_group("budget (the paper's # params, in millions)")
    g.add_argument(
        "--param-limit",
        type=optional(positive_float),
        default=0.03,
        help="largest allowed subnet, millions of params (none: no limit)",
    )
    g.add_argument("--min-param-limit", type=nonneg_float, default=0.0, help="smallest allowed subnet, millions")
    p.add_argument(
        "--choices",
        type=support_choices,
        nargs="+",
        default=None,
        metavar="SUPPORT=NAMES",
        help="search only these choices per support, e.g. C=none D=vector,none (each must be the supernet's); "
        "a space of one subnet is evaluated as it is, whatever the budget",
    )
    g = p.add_argument_group("evolution")
    g.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="accuracy",
        help="accuracy: the paper's loop (top-k by the validation metric); pareto: NSGA-II over (metric, params)",
    )
    g.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default=None,
        help="the validation metric to maximise (default: the one the supernet was trained with; lower-is-better "
        "ones, mse, loss, perplexity, are minimised)",
    )
    g.add_argument("--population", type=positive_int, default=50, help="candidates per generation")
    g.add_argument("--parents", type=positive_int, default=10, help="top-k candidates that breed")
    g.add_argument("--mutations", type=nonneg_int, default=25, help="children by mutation per generation")
    g.add_argument("--mutation-prob", type=probability, default=0.2, help="per-gene mutation probability")
    g.add_argument("--crossovers", type=nonneg_int, default=25, help="children by uniform crossover per generation")
    g.add_argument("--generations", type=positive_int, default=20, help="generations to run (may grow on --resume)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seeds every random draw of the search")
    g = p.add_argument_group("evaluation")
    g.add_argument(
        "--batch-size",
        type=optional(positive_int),
        default=None,
        help="evaluation batch size (default: 256; 8 for a causal LM, whose logits span the vocabulary per token)",
    )
    g.add_argument("--data-root", default=None, help="override the data root stored in the supernet checkpoint")
    g.add_argument("--workers", type=nonneg_int, default=2, help="data-loading workers when images are not cached")
    g.add_argument("--amp", choices=AMP_MODES, default="auto", help="auto: bf16 autocast on CUDA only")
    add_eval_set_option(g)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_runtime_options(g)
    g = p.add_argument_group("output")
    g.add_argument("--resume", action="store_true", help=f"continue from <out>/{SearchFolder.STATE}")
    g.add_argument("--force", action="store_true", help="overwrite results already in --out")
    add_progress_option(g)
    return p
