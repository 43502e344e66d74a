"""The search from Python: a trained supernet, a budget and a scoring function of your own give the pick and the
front, with no command line, files or data pipeline of the toolkit's.

    from search import search_subnets

    def score(subnet):                        # higher is better: your validation metric
        glora.set_subnet(model, subnet)
        return evaluate(model, val_loader)

    result = search_subnets(model, score, max_params=30_000)
    result.subnet, result.score, result.params  # the pick
    result.front                                # (params, score, subnet), fewest parameters first

``score`` is called once per new candidate (every evaluation is cached), with the subnet as a plain mapping of layer
names to choices; the model is left set to the pick. The evolution is the paper's loop (or NSGA-II with
``objective="pareto"``), seeded, every candidate inside the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from glora.inject import get_space
from glora.space import SUPPORTS, SearchSpace
from glora.subnet import Subnet, set_subnet

from .evolution import Evolution, Fitness, SearchSettings, pareto_front
from .genome import Genome

__all__ = ["SearchResult", "search_subnets"]


@dataclass
class SearchResult:
    """What a search found: the pick (its subnet, score and the paper's parameter count), the Pareto front over
    everything evaluated, and the log (one record per generation)."""

    subnet: Subnet
    score: float
    params: int
    front: list[tuple[int, float, Subnet]] = field(default_factory=list)
    evaluated: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


def search_subnets(
    model: nn.Module,
    score: Callable[[Subnet], float],
    *,
    max_params: int | None = None,
    min_params: int = 0,
    choices: Mapping[str, Sequence[str]] | None = None,
    greater_is_better: bool = True,
    metric: str = "score",
    settings: SearchSettings | None = None,
    **options: Any,
) -> SearchResult:
    """Search ``model``'s subnets (an injected, trained supernet) for the best ``score`` under the budget.

    Args:
        model: a model :func:`glora.inject` wrapped (trained as a supernet).
        score: a subnet's score on your validation data (higher is better, unless ``greater_is_better=False``: a
            loss).
        max_params / min_params: the budget in the paper's parameter count (``glora.count_params``); None: no limit.
        choices: search a narrower space, e.g. ``{"C": ["none"]}`` (each choice must be the supernet's).
        metric: the score's name in the log (``"accuracy"``, ``"loss"``).
        settings: the evolution (population, generations, objective, seed; :class:`search.SearchSettings`);
            ``options`` set its fields by name instead (``generations=5, seed=1``).

    Returns:
        a :class:`SearchResult`; the model is left set to the pick.
    """
    settings = dataclasses.replace(settings or SearchSettings(), **options)
    settings = dataclasses.replace(
        settings, min_params=min_params, max_params=10**12 if max_params is None else int(max_params)
    )
    space = None
    if choices:
        own = get_space(model)
        current = {s: list(own.choice_names(s)) for s in SUPPORTS}
        narrowed = {s.upper(): list(v) for s, v in choices.items()}
        space = SearchSpace(own.lora_ranks, own.gift_ranks, own.gift_sharing, choices=current | narrowed)
    genome = Genome(model, space)
    fitness = Fitness(metric, greater_is_better)

    def evaluate(genes: list[int]) -> float:
        value = float(score(genome.decode(genes)))
        return value if greater_is_better else -value

    evolution = Evolution(genome, settings, evaluate, fitness=fitness)
    evolution.run()
    ranked = evolution.ranked()
    genes, best, params = ranked[0]
    front = [(p, fitness.value(f), genome.decode(g)) for p, f, g in pareto_front([(p, f, g) for g, f, p in ranked])]
    pick = genome.decode(genes)
    set_subnet(model, pick)
    return SearchResult(pick, fitness.value(best), params, front, len(evolution.cache), evolution.log)
