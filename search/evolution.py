"""Evolutionary search over a supernet's subnets with deap (paper §2.5; AutoFormer-style loop).

Metric objective (the paper's): each generation keeps the top ``parents`` candidates seen so far (a deap
HallOfFame), makes ``mutations`` children with ``mutUniformInt`` and ``crossovers`` with ``cxUniform``, and fills
the population with random candidates. Pareto objective: NSGA-II (``varOr`` + ``selNSGA2``) over (fitness,
params). The fitness is the task's validation metric, negated when lower is better (a loss), so the evolution
always maximises; :class:`Fitness` names it, and the log records the metric's own values. Every operator returns
candidates inside the budget; every evaluated candidate is cached; the whole state is plain JSON data
(:meth:`Evolution.state`), which the caller saves after each generation, so a search resumes exactly where it
stopped. This module reads and writes no files.

deap's operators draw from Python's global ``random``; ``Evolution._seeded`` lends them the search's own
``random.Random`` for the duration of each call, so runs are reproducible and global state is left untouched.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from deap import algorithms, base, creator, tools

from .genome import Genome

__all__ = ["SearchSettings", "Fitness", "Evolution", "pareto_front", "OBJECTIVES", "objective_name"]

_logger = logging.getLogger(__name__)

# metric: the paper's top-k loop on the validation metric alone (ties broken by fewer parameters); pareto: NSGA-II over
# (metric, params). "accuracy", the first name of "metric" (it maximises whatever metric the task ranks by, a negated
# loss included), is still read.
OBJECTIVES = ("metric", "pareto")
OBJECTIVE_ALIASES = {"accuracy": "metric"}


def objective_name(name: str) -> str:
    """An objective's name, the old one (``accuracy``) read as the new (``metric``)."""
    return OBJECTIVE_ALIASES.get(name, name)


STATE_VERSION = 1


def _individual_class() -> type:
    """deap's individual class, created in deap's ``creator`` on first use (not at import), once per process.

    deap's fitness = (the search's fitness, params): maximise the first, minimise the second. deap compares fitnesses
    lexicographically, so the metric objective breaks ties by fewer parameters; NSGA-II uses both.
    """
    if not hasattr(creator, "GLoRAFitness"):
        creator.create("GLoRAFitness", base.Fitness, weights=(1.0, -1.0))
    if not hasattr(creator, "GLoRAIndividual"):
        creator.create("GLoRAIndividual", list, fitness=creator.GLoRAFitness)
    return creator.GLoRAIndividual


def _option(default: Any, help: str, **meta: Any) -> Any:
    """A field that is also the search command's option of the same name (plain metadata: help, bounds, choices)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class SearchSettings:
    """How the evolution runs; the fields with help are ``glora-search``'s options of the same names."""

    population: int = _option(50, "candidates per generation", min=1)
    parents: int = _option(10, "top-k candidates that breed", min=1)
    mutations: int = _option(25, "children by mutation per generation", min=0)
    mutation_prob: float = _option(0.2, "per-gene mutation probability", min=0, max=1)
    crossovers: int = _option(25, "children by uniform crossover per generation", min=0)
    generations: int = _option(20, "generations to run (may grow on --resume)", min=1, resume="may-change")
    min_params: int = 0  # the budget, in parameters (the command takes millions: --min-param-limit, --param-limit)
    max_params: int = 10**12
    objective: str = _option(
        "metric",
        "metric: the paper's loop (top-k by the validation metric, whatever it is); pareto: NSGA-II over (metric, "
        "params)",
        type=objective_name,
        choices=OBJECTIVES,
    )
    seed: int = _option(0, "seeds every random draw of the search", min=0)

    def __post_init__(self) -> None:
        self.objective = objective_name(self.objective)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.parents > self.population:
            raise ValueError(f"--parents ({self.parents}) cannot exceed --population ({self.population})")
        if self.mutations + self.crossovers > self.population:
            raise ValueError(
                f"--mutations + --crossovers ({self.mutations + self.crossovers}) cannot exceed --population "
                f"({self.population})"
            )


def pareto_front(points: list[tuple[int, float, Any]]) -> list[tuple[int, float, Any]]:
    """Non-dominated (params, fitness, payload) points, fewest params first (2 objectives: one sweep)."""
    front: list[tuple[int, float, Any]] = []
    best = float("-inf")
    for params, fit, payload in sorted(points, key=lambda p: (p[0], -p[1])):
        if fit > best:
            front.append((params, fit, payload))
            best = fit
    return front


@dataclass(frozen=True)
class Fitness:
    """What the evolution maximises: a metric, negated when lower is better (a loss), named so the log can say it."""

    metric: str = "fitness"
    greater_is_better: bool = True

    def value(self, fitness: float) -> float:
        """A fitness back as the metric's own value."""
        return fitness if self.greater_is_better else -fitness

    def show(self, fitness: float) -> str:
        return f"{self.metric} {self.value(fitness):.4f}"


class Evolution:
    """One search run. ``evaluate(genes) -> fitness`` is only called for candidates not in the cache.

    Args:
        genome: the supernet's encoding (bounds, exact costs, feasible sampling).
        settings: population sizes, budget, objective and seed.
        evaluate: the fitness of one candidate (a gene list) on the validation split: higher is better.
        meta: extra plain data stored in :meth:`state` (the caller's options, the supernet's fingerprint).
        map_fn: how a generation's new candidates are evaluated (``map``; a distributed map splits them).
        fitness: which metric the fitness is (the log records and shows that metric's own values).
    """

    def __init__(
        self,
        genome: Genome,
        settings: SearchSettings,
        evaluate: Callable[[list[int]], float],
        *,
        meta: dict[str, Any] | None = None,
        map_fn: Callable = map,
        fitness: Fitness | None = None,
    ) -> None:
        self.genome = genome
        self.fitness = fitness or Fitness()
        self.s = settings
        self._evaluate = evaluate
        self.meta = meta or {}
        self._Individual = _individual_class()
        genome.check_budget(settings.min_params, settings.max_params)
        self.rng = random.Random(settings.seed)
        self._draw: Any = self.rng  # where draws come from: the module while deap holds our stream (see _seeded)
        self.cache: dict[tuple[int, ...], float] = {}
        self.log: list[dict[str, Any]] = []
        self.generation = 0
        self.population: list = []
        tb = base.Toolbox()
        tb.register("clone", lambda ind: self._Individual(list(ind)))
        tb.register("mate", self._mate)
        tb.register("mutate", self._mutate)
        tb.register("map", map_fn)
        self.toolbox = tb

    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        """Lend deap's operators (global ``random``) this search's stream; restore the global state after.

        Inside, our own sampling/repair draws from the module too, so the one stream is never forked.
        """
        if self._draw is not self.rng:  # already inside
            yield
            return
        saved = random.getstate()
        random.setstate(self.rng.getstate())
        self._draw = random
        try:
            yield
        finally:
            self._draw = self.rng
            self.rng.setstate(random.getstate())
            random.setstate(saved)

    # ------------------------------------------------------------------ operators (always feasible)
    def _individual(self, genes: list[int]):
        return self._Individual(genes)

    def _feasible(self, genes) -> bool:
        return self.s.min_params <= self.genome.cost(genes) <= self.s.max_params

    def _fix(self, ind):
        """Keep ``ind`` if feasible; else repair it (or replace it by a fresh feasible sample)."""
        if self._feasible(ind):
            return ind
        lo, hi = self.s.min_params, self.s.max_params
        fixed = self.genome.repair(list(ind), self._draw, lo, hi)
        ind[:] = fixed if fixed is not None else self.genome.sample(self._draw, lo, hi)
        return ind

    def _mutate(self, ind):
        with self._seeded():
            return self._mutate_seeded(ind)

    def _mutate_seeded(self, ind):
        for _ in range(10):
            cand = self.toolbox.clone(ind)
            tools.mutUniformInt(cand, self.genome.low, self.genome.up, self.s.mutation_prob)
            if self._feasible(cand):
                break
        ind[:] = self._fix(cand)
        del ind.fitness.values
        return (ind,)

    def _mate(self, a, b):
        with self._seeded():
            return self._mate_seeded(a, b)

    def _mate_seeded(self, a, b):
        for _ in range(10):
            c1, c2 = self.toolbox.clone(a), self.toolbox.clone(b)
            tools.cxUniform(c1, c2, 0.5)
            if self._feasible(c1) and self._feasible(c2):
                break
        a[:], b[:] = self._fix(c1), self._fix(c2)
        del a.fitness.values, b.fitness.values
        return a, b

    def _random(self):
        return self._individual(self.genome.sample(self._draw, self.s.min_params, self.s.max_params))

    # ------------------------------------------------------------------ evaluation
    def _score(self, individuals: list) -> int:
        """Give every individual its fitness, evaluating only uncached candidates; returns how many were new."""
        todo = []
        for ind in individuals:
            key = tuple(ind)
            if key not in self.cache and key not in {tuple(t) for t in todo}:
                todo.append(ind)
        for ind, fit in zip(todo, self.toolbox.map(self._evaluate, [list(t) for t in todo])):
            self.cache[tuple(ind)] = float(fit)
        for ind in individuals:
            ind.fitness.values = (self.cache[tuple(ind)], float(self.genome.cost(ind)))
        return len(todo)

    def ranked(self) -> list[tuple[tuple[int, ...], float, int]]:
        """All evaluated candidates as (genes, fitness, params), best first (ties: fewer params, then order)."""
        items = [(k, fit, self.genome.cost(k)) for k, fit in self.cache.items()]
        return sorted(items, key=lambda t: (-t[1], t[2]))

    # ------------------------------------------------------------------ the loop
    def run(self, on_generation: Callable[[int, int], None] | None = None) -> None:
        """Run the remaining generations; ``on_generation(done, total)`` after each (save :meth:`state` there)."""
        s = self.s
        if not self.population:
            self.population = self._fresh(s.population)
        while self.generation < s.generations:
            start = time.time()
            step = self._step_metric if s.objective == "metric" else self._step_pareto
            new, fits = step()
            self.generation += 1
            self._record(new, fits, time.time() - start)
            if on_generation:
                on_generation(self.generation, s.generations)

    def _fresh(self, n: int, exclude: set | None = None) -> list:
        """``n`` feasible random individuals, unseen ones preferred."""
        seen = set(self.cache) | (exclude or set())
        out = []
        for _ in range(n * 20):
            if len(out) == n:
                break
            ind = self._random()
            if tuple(ind) not in seen:
                seen.add(tuple(ind))
                out.append(ind)
        while len(out) < n:  # the feasible region is small: duplicates are free (cached)
            out.append(self._random())
        return out

    def _fits(self, individuals: list) -> list[float]:
        return [self.cache[tuple(ind)] for ind in individuals]

    def _step_metric(self) -> tuple[int, list[float]]:
        """Evaluate this generation; breed the next one from the top-k seen so far.

        The next population is bred even after the last generation, so a run resumed with more generations
        continues exactly as an uninterrupted one would.
        """
        s = self.s
        new = self._score(self.population)
        fits = self._fits(self.population)
        parents = tools.HallOfFame(s.parents)
        parents.update([self._with_fitness(k) for k in self.cache])  # top-k over everything seen so far
        pool = list(parents)
        children: list = []
        seen = set(self.cache)

        def add(make: Callable[[], Any], count: int) -> None:
            made = 0
            for _ in range(count * 10):
                if made == count:
                    break
                child = make()
                if tuple(child) not in seen:
                    seen.add(tuple(child))
                    children.append(child)
                    made += 1

        def mutant():
            parent = self.rng.choice(pool)
            return self.toolbox.mutate(self.toolbox.clone(parent))[0]

        def crossed():
            if len(pool) < 2:
                return self.toolbox.mutate(self.toolbox.clone(pool[0]))[0]
            a, b = self.rng.sample(pool, 2)
            return self.toolbox.mate(self.toolbox.clone(a), self.toolbox.clone(b))[0]

        add(mutant, s.mutations)
        add(crossed, s.crossovers)
        children += self._fresh(s.population - len(children), exclude=seen)
        self.population = children
        return new, fits

    def _step_pareto(self) -> tuple[int, list[float]]:
        """Offspring by varOr, then NSGA-II survivor selection (population stays evaluated)."""
        s = self.s
        new = 0
        if self.generation == 0:
            new += self._score(self.population)
            self.population = tools.selNSGA2(self.population, s.population)
        with self._seeded():
            offspring = algorithms.varOr(self.population, self.toolbox, s.population, cxpb=0.5, mutpb=0.5)
        new += self._score(offspring)
        self.population = tools.selNSGA2(self.population + offspring, s.population)
        return new, self._fits(self.population)

    def _with_fitness(self, key: tuple[int, ...]):
        ind = self._individual(list(key))
        ind.fitness.values = (self.cache[key], float(self.genome.cost(key)))
        return ind

    def _record(self, new: int, fits: list[float], seconds: float) -> None:
        """One line of the log: the best candidate so far and this generation's, as values of the metric."""
        _, best, best_params = self.ranked()[0]
        value = self.fitness.value
        mean = sum(fits) / len(fits)
        record = {
            "generation": self.generation,
            "evaluated": new,
            "cache_size": len(self.cache),
            "metric": self.fitness.metric,
            "best": round(value(best), 6),
            "best_params": best_params,
            "gen_best": round(value(max(fits)), 6),
            "gen_mean": round(value(mean), 6),
            "seconds": round(seconds, 3),
        }
        self.log.append(record)
        _logger.info(
            "generation %d/%d  best %s (%d params)  mean %s  new %d  cached %d  %.1fs",
            self.generation,
            self.s.generations,
            self.fitness.show(best),
            best_params,
            self.fitness.show(mean),
            new,
            len(self.cache),
            seconds,
        )

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything needed to continue this search exactly (JSON-friendly), plus ``meta``."""
        return {
            "version": STATE_VERSION,
            "settings": asdict(self.s),
            "generation": self.generation,
            "population": [list(ind) for ind in self.population],
            "cache": [[list(k), fit] for k, fit in self.cache.items()],
            "rng": _jsonable(self.rng.getstate()),
            "log": self.log,
            **self.meta,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (written by :meth:`save`); settings must be the ones it was run with."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search state has version {state.get('version')}, expected {STATE_VERSION}")
        saved = dict(state.get("settings", {}))
        saved.pop("generations", None)  # may grow on resume
        if "objective" in saved:
            saved["objective"] = objective_name(saved["objective"])
        mine = asdict(self.s)
        mine.pop("generations")
        if saved != mine:
            diff = ", ".join(sorted(k for k in mine if saved.get(k) != mine[k]))
            raise ValueError(f"cannot resume with different search settings ({diff})")
        n = len(self.genome)
        self.cache = {}
        for genes, fit in state["cache"]:
            if len(genes) != n:
                raise ValueError("search state does not match this supernet's genome length")
            self.cache[tuple(genes)] = float(fit)
        self.population = [self._individual(list(g)) for g in state["population"]]
        for ind in self.population:
            if tuple(ind) in self.cache:
                ind.fitness.values = (self.cache[tuple(ind)], float(self.genome.cost(ind)))
        self.rng.setstate(_tuple(state["rng"]))
        self.generation = int(state["generation"])
        self.log = [self._readable(r) for r in state["log"]]

    def _readable(self, record: dict[str, Any]) -> dict[str, Any]:
        """A log line of a search written before the log named its metric (``best_acc``: the fitness), in today's
        form."""
        if "best_acc" not in record or "best" in record:
            return record
        old = dict(record)
        value = self.fitness.value
        new = {k: v for k, v in old.items() if k not in ("best_acc", "gen_best_acc", "gen_mean_acc")}
        new |= {"metric": self.fitness.metric, "best": value(old["best_acc"])}
        new |= {"gen_best": value(old["gen_best_acc"]), "gen_mean": value(old["gen_mean_acc"])}
        return new


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x
