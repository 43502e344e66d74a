"""Subnets as integer genomes: one gene per (layer, support), the index of its choice in the space.

Parameter cost is additive per gene except GIFT, whose generator counts once per group at the largest rank any
member uses; both are computed exactly here. Sampling and repair only ever return candidates inside the budget,
and a budget no candidate can meet is reported at once, never searched for forever.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence

from torch import nn

from glora.gift import generators_params, gift_params
from glora.inject import get_space, require_layers
from glora.space import SUPPORTS, Choice, Kind, SearchSpace
from glora.subnet import Subnet

__all__ = ["Genome", "BudgetError"]


def _narrowed(own: SearchSpace, space: SearchSpace) -> SearchSpace:
    for s in SUPPORTS:
        extra = [n for n in space.choice_names(s) if n not in own.choice_names(s)]
        if extra:
            raise ValueError(
                f"choice {extra[0]!r} for support {s} is not in the supernet's space; "
                f"it offers: {', '.join(own.choice_names(s))}"
            )
    if space.gift_sharing != own.gift_sharing and space.offers("A", Kind.GIFT):
        raise ValueError(f"gift_sharing {space.gift_sharing!r} differs from the supernet's {own.gift_sharing!r}")
    return space


class BudgetError(ValueError):
    """The parameter budget is inverted or no subnet of the space can meet it."""


class Genome:
    """Encoding of a model's subnets; ``low``/``up`` are the per-gene bounds deap's mutUniformInt takes."""

    def __init__(self, model: nn.Module, space: SearchSpace | None = None, only: Subnet | None = None) -> None:
        """``space``: search a narrower space than the supernet's (every choice it offers must be the supernet's);
        ``only``: the one subnet a retrained checkpoint trained (each gene keeps that subnet's choice)."""
        layers = require_layers(model)
        own = get_space(model)
        space = own if space is None else _narrowed(own, space)
        self.layer_names = list(layers)
        self.genes: list[tuple[str, str]] = [(n, s) for n in self.layer_names for s in SUPPORTS]
        # A layer may offer less than the space (a bias-free layer under bias_free="exclude"): its genes keep the
        # choices both offer.
        self.options: list[tuple[str, ...]] = [
            tuple(c for c in space.choice_names(s) if c in layers[n].space.choice_names(s)) for n, s in self.genes
        ]
        if only is not None:
            pinned = [only.get(n, {}).get(s) for n, s in self.genes]
            left_out = next(
                ((n, s, c) for (n, s), c, o in zip(self.genes, pinned, self.options) if c is not None and c not in o),
                None,
            )
            if left_out is not None:
                n, s, c = left_out
                raise ValueError(
                    f"this checkpoint holds one retrained subnet (scored as it is: no other subnet was trained with "
                    f"it), whose choice for layer {n!r}, support {s} is {c}; the searched choices for {s} "
                    f"({', '.join(space.choice_names(s))}) leave it out: search without narrowing {s}, or search the "
                    "supernet it was retrained from"
                )
            self.options = [(c,) if c in o else () for c, o in zip(pinned, self.options)]
        empty = next(((n, s) for (n, s), o in zip(self.genes, self.options) if not o), None)
        if empty is not None:
            n, s = empty
            raise ValueError(
                f"layer {n!r} offers none of the searched choices for {s} ({', '.join(space.choice_names(s))}); "
                f"it offers: {', '.join(layers[n].space.choice_names(s))}"
            )
        self.low = [0] * len(self.genes)
        self.up = [len(o) - 1 for o in self.options]
        self._index = [{name: i for i, name in enumerate(o)} for o in self.options]
        # Own cost of each (gene, option): count() of a layer choice with only that support set (it is additive).
        self.cost_table: list[list[int]] = []
        # GIFT: for A genes, (group id, in_features) and the rank of each option (0 = not gift).
        self.gift_rank: list[list[int]] = []
        self.group_of: list[int] = []
        groups: dict[str, int] = {}
        self.group_width: list[int] = []
        for (name, support), options in zip(self.genes, self.options):
            layer = layers[name]
            row, ranks = [], []
            for opt in options:
                choice = Choice.parse(opt)
                gift = choice.kind is Kind.GIFT
                row.append(0 if gift else layer.count_support(support, choice))
                ranks.append(choice.rank if gift else 0)
            self.cost_table.append(row)
            self.gift_rank.append(ranks)
            if support == "A" and any(ranks):
                key = layer.gift_group
                if key not in groups:
                    groups[key] = len(groups)
                    self.group_width.append(layer.in_features)
                self.group_of.append(groups[key])
            else:
                self.group_of.append(-1)

    def __len__(self) -> int:
        return len(self.genes)

    # ------------------------------------------------------------------ encode / decode
    def decode(self, genes: Sequence[int]) -> Subnet:
        out: Subnet = {n: {} for n in self.layer_names}
        for (name, support), options, g in zip(self.genes, self.options, genes):
            out[name][support] = options[g]
        return out

    def encode(self, subnet: Subnet) -> list[int]:
        try:
            return [self._index[i][subnet[n][s]] for i, (n, s) in enumerate(self.genes)]
        except KeyError as e:
            raise ValueError(f"subnet does not fit this search space ({e})") from None

    # ------------------------------------------------------------------ cost
    def cost(self, genes: Sequence[int]) -> int:
        """The paper's "# params" of the subnet (equal to glora.count_params)."""
        total = sum(self.cost_table[i][g] for i, g in enumerate(genes))
        uses = ((self.group_of[i], self.group_width[self.group_of[i]], self.gift_rank[i][g])
                for i, g in enumerate(genes) if self.gift_rank[i][g])  # fmt: skip
        return total + generators_params(uses)

    def min_cost(self) -> int:
        return sum(min(row) for row in self.cost_table)

    @functools.cached_property
    def _max_cost(self) -> int:
        return self.max_cost()

    def max_cost(self) -> int:
        """Exact: a GIFT group pays off only if one member gives up its own most expensive A choice for it."""
        total = 0
        members: dict[int, list[int]] = {}
        for i, row in enumerate(self.cost_table):
            grp = self.group_of[i]
            own = (
                max(c for c, r in zip(row, self.gift_rank[i]) if not r) if any(not r for r in self.gift_rank[i]) else 0
            )
            total += own
            if grp >= 0:
                members.setdefault(grp, []).append(own)
        for grp, owns in members.items():
            top = max(r for i in range(len(self.genes)) if self.group_of[i] == grp for r in self.gift_rank[i])
            total += max(0, gift_params(self.group_width[grp], top) - min(owns))
        return total

    def check_budget(self, lo: int, hi: int) -> None:
        """Raise BudgetError naming the numbers when [lo, hi] is inverted or out of reach.

        Exact, GIFT included: the extremes, and every gap inside them (a reachability DP over the costs).
        """
        if lo > hi:
            raise BudgetError(
                f"inverted budget: --min-param-limit ({lo / 1e6:g}M) is above --param-limit ({hi / 1e6:g}M)"
            )
        smallest, largest = self.min_cost(), self.max_cost()
        if hi < smallest:
            raise BudgetError(
                f"no subnet fits --param-limit {hi / 1e6:g}M: the smallest has {smallest / 1e6:g}M params"
            )
        if lo > largest:
            raise BudgetError(
                f"no subnet reaches --min-param-limit {lo / 1e6:g}M: the largest has {largest / 1e6:g}M params"
            )
        reach = self._suffix(largest)[0]
        if not _any_bit(reach, lo, hi):
            below = (reach & ((1 << lo) - 1)).bit_length() - 1
            above = lo + ((reach >> lo) & -(reach >> lo)).bit_length() - 1 if reach >> lo else None
            raise BudgetError(
                f"no subnet has between {lo:,} and {hi:,} params; the nearest have {below:,}"
                + (f" and {above:,}" if above is not None else "")
            )

    # ------------------------------------------------------------------ sampling and repair
    def random(self, rng: random.Random) -> list[int]:
        return [rng.randint(0, u) for u in self.up]

    def sample(self, rng: random.Random, lo: int, hi: int, tries: int = 50) -> list[int]:
        """A feasible candidate: uniform rejection sampling first (the exact conditional distribution), then a
        sampler guided by a reachability DP, which cannot miss a feasible candidate (GIFT included)."""
        for _ in range(tries):
            genes = self.random(rng)
            if lo <= self.cost(genes) <= hi:
                return genes
        genes = self._guided(rng, lo, hi)
        if genes is None:
            raise BudgetError(f"found no subnet with {lo:,}-{hi:,} params; widen the budget")
        return genes

    # A GIFT group's cost is not additive over its members (the generator is paid once, at the largest rank any
    # member uses), so the DP runs over units: every non-GIFT gene alone, and each group's A genes together. For
    # a group and a top rank R, members choose non-GIFT options or GIFT ranks <= R, at least one exactly R (a
    # flag in the DP), and the group adds 2 R width once; R = 0 means no member uses GIFT.
    @functools.cached_property
    def _units(self) -> list[list[int]]:
        units: list[list[int]] = []
        seen: dict[int, list[int]] = {}
        for i, grp in enumerate(self.group_of):
            if grp < 0:
                units.append([i])
            elif grp in seen:
                seen[grp].append(i)
            else:
                seen[grp] = [i]
                units.append(seen[grp])
        return units

    def _tops(self, unit: list[int]) -> list[int]:
        """The top ranks R a group can have (0: none of it uses GIFT); [0] for a plain gene."""
        ranks = {r for i in unit for r in self.gift_rank[i] if r}
        plain = all(any(not r for r in self.gift_rank[i]) for i in unit)
        return ([0] if plain else []) + sorted(ranks)

    def _tables(self, unit: list[int], top: int, after: int, mask: int) -> tuple[list[int], list[int]]:
        """Reachable-cost bitsets from member j on: ``done[j]`` once some member has used rank ``top`` (or top is
        0), ``due[j]`` while one still must; ``after`` is what the units behind this one can add."""
        n = len(unit)
        done, due = [0] * (n + 1), [0] * (n + 1)
        done[n] = after
        for j in range(n - 1, -1, -1):
            i = unit[j]
            for o, r in enumerate(self.gift_rank[i]):
                if r > top:
                    continue
                c = self.cost_table[i][o]
                done[j] |= done[j + 1] << c
                if top:
                    due[j] |= (done[j + 1] if r == top else due[j + 1]) << c
            done[j] &= mask
            due[j] &= mask
        return done, due

    def _unit_reach(self, unit: list[int], after: int, mask: int) -> int:
        acc = 0
        for top in self._tops(unit):
            done, due = self._tables(unit, top, after, mask)
            acc |= (due[0] if top else done[0]) << gift_params(self._width(unit), top)
        return acc & mask

    def _width(self, unit: list[int]) -> int:
        return self.group_width[self.group_of[unit[0]]] if self.group_of[unit[0]] >= 0 else 0

    def _suffix(self, cap: int) -> list[int]:
        """Bitsets (Python ints) of the costs reachable by units[k:], for every k; costs above cap dropped."""
        mask = (1 << (cap + 1)) - 1
        suffix = [1] * (len(self._units) + 1)
        for k in range(len(self._units) - 1, -1, -1):
            suffix[k] = self._unit_reach(self._units[k], suffix[k + 1], mask)
        return suffix

    def _guided(self, rng: random.Random, lo: int, hi: int) -> list[int] | None:
        """Draw unit by unit, each choice uniformly among those that keep [lo, hi] reachable; None if none can."""
        hi = min(hi, self._max_cost)
        if hi < max(lo, 0):
            return None
        mask = (1 << (hi + 1)) - 1
        suffix = self._suffix(hi)
        if not _any_bit(suffix[0], lo, hi):
            return None
        genes = [0] * len(self.genes)
        total = 0
        for k, unit in enumerate(self._units):
            width = self._width(unit)
            tables = {top: self._tables(unit, top, suffix[k + 1], mask) for top in self._tops(unit)}
            fits = [
                top
                for top, (done, due) in tables.items()
                if _any_bit(
                    due[0] if top else done[0],
                    lo - total - gift_params(width, top),
                    hi - total - gift_params(width, top),
                )
            ]
            top = rng.choice(fits)
            total += gift_params(width, top)
            done, due = tables[top]
            pending = top > 0
            for j, i in enumerate(unit):
                ok = []
                for o, r in enumerate(self.gift_rank[i]):
                    if r > top:
                        continue
                    c = self.cost_table[i][o]
                    nxt = due[j + 1] if pending and r != top else done[j + 1]
                    if _any_bit(nxt, lo - total - c, hi - total - c):
                        ok.append(o)
                genes[i] = rng.choice(ok)
                total += self.cost_table[i][genes[i]]
                pending = pending and self.gift_rank[i][genes[i]] != top
        return genes

    def repair(self, genes: list[int], rng: random.Random, lo: int, hi: int) -> list[int] | None:
        """Move ``genes`` into [lo, hi] by random single-gene changes (in place); None if it gets stuck."""
        state = _CostState(self, genes)
        order = list(range(len(genes)))
        while state.total > hi or state.total < lo:
            rng.shuffle(order)
            too_big = state.total > hi
            for i in order:
                options = []
                for o in range(len(self.options[i])):
                    if o == genes[i]:
                        continue
                    d = state.delta(i, o)
                    if (d < 0) if too_big else (d > 0 and state.total + d <= hi):
                        options.append(o)
                if options:
                    state.set(i, rng.choice(options))
                    break
            else:
                return None
        return genes


def _any_bit(bits: int, lo: int, hi: int) -> bool:
    """Whether the bitset ``bits`` has a set bit in [lo, hi]."""
    lo, hi = max(lo, 0), min(hi, bits.bit_length())
    if hi < lo:
        return False
    return bool((bits >> lo) & ((1 << (hi - lo + 1)) - 1))


class _CostState:
    """Running cost of a genome under single-gene changes (GIFT group maxima kept as rank counters)."""

    def __init__(self, genome: Genome, genes: list[int]) -> None:
        self.g, self.genes = genome, genes
        self.own = sum(genome.cost_table[i][x] for i, x in enumerate(genes))
        self.ranks: dict[int, Counter] = {}
        for i, x in enumerate(genes):
            r = genome.gift_rank[i][x]
            if r:
                self.ranks.setdefault(genome.group_of[i], Counter())[r] += 1
        self.total = genome.cost(genes)

    def _gift(self, grp: int, counter: Counter) -> int:
        top = max((r for r, n in counter.items() if n > 0), default=0)
        return gift_params(self.g.group_width[grp], top)

    @staticmethod
    def _move(counter: Counter, r_old: int, r_new: int) -> None:
        if r_old:
            counter[r_old] -= 1
        if r_new:
            counter[r_new] += 1

    def delta(self, i: int, new: int) -> int:
        g, old = self.g, self.genes[i]
        d = g.cost_table[i][new] - g.cost_table[i][old]
        r_old, r_new = g.gift_rank[i][old], g.gift_rank[i][new]
        if r_old != r_new:
            grp = g.group_of[i]
            counter = self.ranks.get(grp, Counter())
            after = Counter(counter)
            self._move(after, r_old, r_new)
            d += self._gift(grp, after) - self._gift(grp, counter)
        return d

    def set(self, i: int, new: int) -> None:
        d = self.delta(i, new)
        g, old = self.g, self.genes[i]
        self._move(self.ranks.setdefault(g.group_of[i], Counter()), g.gift_rank[i][old], g.gift_rank[i][new])
        self.genes[i] = new
        self.total += d
