"""Evolutionary search (deap) over GLoRA subnets under a parameter budget."""

from .api import SearchResult, search_subnets
from .evolution import Evolution, Fitness, SearchSettings, pareto_front
from .genome import BudgetError, Genome

__all__ = [
    "search_subnets",
    "SearchResult",
    "BudgetError",
    "Evolution",
    "Fitness",
    "Genome",
    "SearchSettings",
    "pareto_front",
]
