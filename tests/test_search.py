"""The search's genome and evolution, on small models (no data needed)."""

from __future__ import annotations

import functools
import itertools
import random

import pytest
import yaml
from helpers import tiny_vit
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import glora
from search import BudgetError, Evolution, Genome, SearchSettings, pareto_front


def _shared_gift_model() -> nn.Module:
    """Two same-width layers in one GIFT group ("*"), a narrower one in another, and a head."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(4, 3))
    space = glora.SearchSpace(
        lora_ranks=(2,),
        gift_ranks=(2, 1),
        choices={"B": ["vector", "none"], "C": ["none"], "D": ["none"], "E": ["scalar", "none"]},
    )
    return glora.inject(model, space, heads=["3"])


def _vit_model() -> nn.Module:
    vit = tiny_vit()
    return glora.inject(vit, glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(4,)))


def test_cost_equals_count_params():
    for model in (_shared_gift_model(), _vit_model()):
        genome = Genome(model)
        rng = random.Random(0)
        for _ in range(50):
            genes = genome.random(rng)
            assert genome.cost(genes) == glora.count_params(model, genome.decode(genes))
            assert genome.encode(genome.decode(genes)) == genes


def test_min_and_max_cost_are_exact():
    model = _shared_gift_model()
    genome = Genome(model)
    costs = [genome.cost(list(g)) for g in itertools.product(*(range(u + 1) for u in genome.up))]
    assert genome.min_cost() == min(costs)
    assert genome.max_cost() == max(costs)


def test_max_cost_counts_gift_when_it_pays():
    """With a wide GIFT generator, the maximum gives one layer gift and keeps lora elsewhere."""
    model = glora.inject(
        nn.Sequential(nn.Linear(64, 4), nn.Linear(64, 4), nn.Linear(4, 2)),
        glora.SearchSpace(lora_ranks=(1,), gift_ranks=(8,), choices={s: ["none"] for s in "BCDE"}),
        heads=["2"],
    )
    genome = Genome(model)
    brute = max(genome.cost(list(g)) for g in itertools.product(*(range(u + 1) for u in genome.up)))
    assert genome.max_cost() == brute == 2 * 8 * 64 + 1 * (4 + 64)


def test_budget_errors():
    genome = Genome(_shared_gift_model())
    with pytest.raises(BudgetError, match="inverted"):
        genome.check_budget(10, 5)
    with pytest.raises(BudgetError, match="largest has"):
        genome.check_budget(genome.max_cost() + 1, 10**9)
    genome.check_budget(genome.max_cost(), genome.max_cost())  # exactly reachable


@functools.cache
def _gift_costs() -> frozenset[int]:
    genome = Genome(_shared_gift_model())
    return frozenset(genome.cost(list(g)) for g in itertools.product(*(range(u + 1) for u in genome.up)))


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 400), st.integers(0, 60))
def test_with_gift_budget_errors_are_exact_and_sampling_never_misses(seed, lo, width):
    """GIFT's generator is paid once per group, so cost is not additive; the DP must still be exact."""
    genome = Genome(_shared_gift_model())
    hi = lo + width
    rng = random.Random(seed)
    if not any(lo <= c <= hi for c in _gift_costs()):
        with pytest.raises(BudgetError):
            genome.check_budget(lo, hi)
        with pytest.raises(BudgetError):
            genome.sample(rng, lo, hi)
        return
    genome.check_budget(lo, hi)
    assert lo <= genome.cost(genome.sample(rng, lo, hi)) <= hi
    guided = genome._guided(rng, lo, hi)  # the DP sampler alone, without rejection sampling's help
    assert guided is not None and lo <= genome.cost(guided) <= hi
    fixed = genome.repair(genome.random(rng), rng, lo, hi)
    assert fixed is None or lo <= genome.cost(fixed) <= hi


def test_guided_sampler_reaches_every_exact_cost_with_gift():
    """Each single cost of the space is a budget window of width 0; the guided sampler must hit every one."""
    genome = Genome(_shared_gift_model())
    rng = random.Random(0)
    for c in sorted(_gift_costs()):
        genes = genome._guided(rng, c, c)
        assert genes is not None and genome.cost(genes) == c, c


def test_guided_sampler_uses_gift_in_a_vit():
    genome = Genome(_vit_model())
    rng = random.Random(0)
    lo, hi = genome.max_cost() // 3, genome.max_cost() // 2
    draws = [genome._guided(rng, lo, hi) for _ in range(5)]
    assert all(g is not None and lo <= genome.cost(g) <= hi for g in draws)
    assert any(genome.gift_rank[i][g[i]] for g in draws for i in range(len(genome)))


def _evolution(settings: SearchSettings, model=None) -> Evolution:
    model = model or _vit_model()
    genome = Genome(model)

    def evaluate(genes):  # a deterministic stand-in for accuracy: prefers A=lora and B=vector
        subnet = genome.decode(genes)
        return sum((c["A"].startswith("lora")) + (c["B"] == "vector") for c in subnet.values()) / (2 * len(subnet))

    return Evolution(genome, settings, evaluate)


@pytest.mark.parametrize("objective", ["metric", "pareto", "accuracy"])  # accuracy: metric's old name, still read
def test_evolution_respects_budget_and_improves(objective):
    s = SearchSettings(
        population=12, parents=4, mutations=4, crossovers=4, generations=6, max_params=3000, objective=objective, seed=1
    )
    evo = _evolution(s)
    evo.run()
    assert all(evo.genome.cost(k) <= 3000 for k in evo.cache)
    # it improves, strictly: a loop that only kept its first population (elitism without search) fails here
    assert evo.log[-1]["best"] > evo.log[0]["best"]
    assert evo.log[-1]["gen_mean"] > evo.log[0]["gen_mean"]
    assert len(evo.log) == 6 and evo.generation == 6


def test_the_log_names_the_metric_and_records_its_own_values():
    """A lower-is-better metric is maximised negated, but the log says which metric it is and holds its values; a
    state written before the log named its metric (``best_acc``: the negated fitness) reads the same way."""
    from search import Fitness

    s = SearchSettings(population=8, parents=2, mutations=2, crossovers=2, generations=3, seed=1)
    model = _vit_model()
    genome = Genome(model)

    def loss(genes):  # a negated loss, as the search scores one
        return -1.0 - sum(genes) / 100

    evo = Evolution(genome, s, loss, fitness=Fitness("loss", greater_is_better=False))
    evo.run()
    best = max(evo.cache.values())
    assert evo.log[-1]["metric"] == "loss" and evo.log[-1]["best"] == round(-best, 6) > 0
    assert all(r["gen_mean"] >= r["best"] for r in evo.log)  # a loss: the mean is no lower than the best
    old = evo.state()
    old["settings"]["objective"] = "accuracy"  # the objective's first name
    old["log"] = [{k: v for k, v in r.items() if k not in ("metric", "best", "gen_best", "gen_mean")}
                  | {"best_acc": -r["best"], "gen_best_acc": -r["gen_best"], "gen_mean_acc": -r["gen_mean"]}
                  for r in evo.log]  # fmt: skip
    again = Evolution(genome, s, loss, fitness=Fitness("loss", greater_is_better=False))
    again.restore(old)
    assert again.log == evo.log


def test_evolution_leaves_global_random_alone_and_is_seeded():
    random.seed(123)
    before = random.getstate()
    s = SearchSettings(population=8, parents=3, mutations=3, crossovers=3, generations=3, max_params=4000, seed=5)
    a, b = _evolution(s), _evolution(s)
    a.run()
    assert random.getstate() == before
    b.run()
    assert a.state()["cache"] == b.state()["cache"] and a.state()["population"] == b.state()["population"]


def test_restore_refuses_other_settings():
    s = SearchSettings(population=8, parents=3, mutations=3, crossovers=3, generations=2, max_params=4000)
    evo = _evolution(s)
    evo.run()
    other = _evolution(
        SearchSettings(population=8, parents=3, mutations=3, crossovers=3, generations=2, max_params=5000)
    )
    with pytest.raises(ValueError, match="max_params"):
        other.restore(evo.state())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"objective": "speed"}, "one of metric, pareto"),
        ({"parents": 60}, "cannot exceed --population"),
        ({"mutations": 30, "crossovers": 30}, "cannot exceed --population"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchSettings(**kwargs)


def test_pareto_front_two_objectives():
    pts = [(10, 0.5, "a"), (5, 0.4, "b"), (20, 0.5, "c"), (15, 0.7, "d"), (5, 0.3, "e")]
    assert [p[2] for p in pareto_front(pts)] == ["b", "a", "d"]


def _additive_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 7), nn.Linear(7, 2))
    space = glora.SearchSpace(lora_ranks=(2, 1), choices={"C": ["vector", "none"], "D": ["none"], "E": ["none"]})
    return glora.inject(model, space, heads=["2"])


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 200), st.integers(0, 40))
def test_without_gift_budget_errors_are_exact_and_sampling_never_misses(seed, lo, width):
    genome = Genome(_additive_model())
    hi = lo + width
    costs = {genome.cost(list(g)) for g in itertools.product(*(range(u + 1) for u in genome.up))}
    feasible = any(lo <= c <= hi for c in costs)
    if not feasible:
        with pytest.raises(BudgetError):
            genome.check_budget(lo, hi)
        return
    genome.check_budget(lo, hi)
    genes = genome.sample(random.Random(seed), lo, hi)
    assert lo <= genome.cost(genes) <= hi


def test_unbounded_budget_uses_the_guided_sampler_cheaply():
    """No upper limit (search.py --param-limit none) must not size anything by the limit itself."""
    genome = Genome(_additive_model())
    genes = genome._guided(random.Random(0), genome.max_cost(), 10**12)
    assert genes is not None and genome.cost(genes) == genome.max_cost()
    genome.check_budget(0, 10**12)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_genome_encode_decode_round_trip(data):
    model = tiny_vit(depth=1)
    glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,)))
    genome = Genome(model)
    genes = [data.draw(st.integers(0, u)) for u in genome.up]
    subnet = genome.decode(genes)
    assert genome.encode(subnet) == genes
    assert yaml.safe_load(yaml.safe_dump(subnet)) == subnet
    assert genome.cost(genes) == glora.count_params(model, subnet)
