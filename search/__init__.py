"""Evolutionary search (deap) over GLoRA subnets under a parameter budget."""

from .evolution import Evolution, Fitness, SearchSettings, pareto_front
from .genome import BudgetError, Genome

__all__ = ["BudgetError", "Evolution", "Fitness", "Genome", "SearchSettings", "pareto_front"]
