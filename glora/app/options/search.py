"""The options of ``glora-search`` / ``search.py``: the evolution's are :class:`search.SearchSettings`' fields, how it
computes is the shared :class:`~glora.app.options.runtime.Runtime`, the rest are declared here."""

from __future__ import annotations

from dataclasses import dataclass

from search import SearchSettings

from ..declared import Group, option
from ..evalsets import eval_set_text
from ..layout import SearchFolder
from ..tasks import METRICS
from . import Command, Runtime, program_name, support_choices

__all__ = ["build_parser", "SearchInputs", "Budget", "Evaluation", "SearchOutput"]


@dataclass
class SearchInputs:
    """What is searched, and in which space."""

    supernet: str = option("runs/default/supernet/last.pt", "checkpoint from train_supernet.py")
    choices: list[str] | None = option(
        None,
        "search only these choices per support, e.g. C=none D=vector,none (each must be the supernet's); a space of "
        "one subnet is evaluated as it is, whatever the budget",
        type=support_choices,
        nargs="+",
        metavar="SUPPORT=NAMES",
    )


@dataclass
class Budget:
    """The budget, in the paper's # params, in millions."""

    param_limit: float | None = option(0.03, "largest allowed subnet, millions of params (none: no limit)", above=0)
    min_param_limit: float = option(0.0, "smallest allowed subnet, millions", min=0)


@dataclass
class Ranking:
    """Which validation metric the evolution maximises."""

    metric: str | None = option(
        None,
        "the validation metric to maximise (default: the one the supernet was trained with; lower-is-better ones, "
        "mse, loss, perplexity, are minimised)",
        choices=tuple(METRICS),
    )


@dataclass
class Evaluation:
    """How candidates are evaluated."""

    batch_size: int | None = option(
        None,
        "evaluation batch size (default: 256; 8 for a causal LM, whose logits span the vocabulary per token)",
        min=1,
        resume="may-change",
    )
    data_root: str | None = option(
        None, "override the data root stored in the supernet checkpoint", resume="may-change"
    )
    eval_set: list[str] = option(
        [],
        "extra evaluation sets reported beside test (an ImageFolder tree or a 'path label' list; mask: a file of "
        "classes or 'present', for sets covering part of the classes, e.g. ImageNet-A/-R)",
        type=eval_set_text,
        nargs="+",
        metavar="NAME=PATH[,mask=M]",
        resume="may-change",
    )


@dataclass
class SearchOutput:
    """Where the search writes."""

    out: str = option("runs/default/search", "output folder")
    resume: bool = option(False, f"continue from <out>/{SearchFolder.STATE}", action="store_true")
    force: bool = option(False, "overwrite results already in --out", action="store_true")


def build_parser() -> Command:
    """``glora-search``'s options, in the groups ``--help`` shows."""
    return Command(
        program_name("search.py", "glora-search"),
        "Evolutionary search (deap) of a GLoRA supernet under a parameter budget.",
        [
            Group.of("", SearchInputs),
            Group.of("budget (the paper's # params, in millions)", Budget),
            Group.of("evolution", SearchSettings, Ranking),
            Group.of("evaluation", Evaluation),
            Group.of("runtime", Runtime),
            Group.of("output", SearchOutput),
        ],
    )
