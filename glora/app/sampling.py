"""Which subnets a supernet training step trains: the paper's one uniform draw, or the sandwich rule, optionally
inside the parameter budget the search will use, with in-place distillation from the largest subnet.

A supernet whose inherited weights rank subnets the way training them alone would (rank faithfulness) is what
makes the search's pick worth having. Uniform sampling (the paper, AutoFormer) trains each subnet for a sliver of
the steps. The sandwich rule (BigNAS, after slimmable networks) trains the largest and the smallest subnet every
step beside a few random ones, so both ends of the space, and through weight entanglement everything between,
get trained at every step; in-place distillation (BigNAS, Once-for-All) teaches the other subnets of the step the
largest one's outputs instead of the labels. With a budget (``--param-limit`` at training time) the random draws
come from the subnets the search may pick, and nowhere else.

Every draw comes from the trainer's seeded RNG, so a run is the same run on resume and on every data-parallel rank.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from glora.subnet import Subnet, sample_subnet, set_subnet
from search.genome import BudgetError, Genome

from .declared import option

__all__ = ["SAMPLINGS", "MAX_SANDWICH_RANDOM", "Sampling", "SubnetSampler"]

# --sampling: uniform (one subnet per step, every choice drawn uniformly: the paper's) or sandwich (the largest,
# the smallest and --sandwich-random random subnets per step, their gradients averaged into one update).
SAMPLINGS = ("uniform", "sandwich")

# Random subnets a sandwich step may add to its two ends: each is one more forward and backward of the whole model per
# step (BigNAS uses 2); beyond this a step costs more than a dozen plain steps and a run is better served by more steps.
MAX_SANDWICH_RANDOM = 16


@dataclass(frozen=True)
class Sampling:
    """How a supernet step picks its subnets (the train command's options of the same names).

    Args:
        sampling: ``uniform`` or ``sandwich``.
        sandwich_random: random subnets per sandwich step, besides the largest and the smallest.
        param_limit: millions of parameters (the paper's count): random draws come from subnets at most this
            large, as the search's ``--param-limit`` will ask (None: the whole space).
        min_param_limit: millions: and at least this large.
        distill: in-place distillation: the largest subnet learns the labels, the others its outputs (sandwich).
    """

    sampling: str = option(
        "uniform",
        "uniform: one subnet per step, every choice drawn uniformly (the paper's); sandwich: the largest, the "
        "smallest and --sandwich-random random subnets per step, gradients averaged (BigNAS)",
        choices=SAMPLINGS,
    )
    sandwich_random: int = option(
        2, "random subnets per sandwich step, besides the two ends", min=0, max=MAX_SANDWICH_RANDOM
    )
    param_limit: float | None = option(
        None,
        "millions of params (the paper's count): random subnets are drawn among those the search's --param-limit "
        "will allow (default: the whole space)",
        above=0,
    )
    min_param_limit: float = option(0.0, "millions: and among those at least this large", min=0)
    distill: bool = option(
        False,
        "in-place distillation (with --sampling sandwich): the largest subnet learns the labels, the others its "
        "outputs",
    )

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {self.sampling!r}")
        if not 0 <= self.sandwich_random <= MAX_SANDWICH_RANDOM:
            raise ValueError(
                f"--sandwich-random {self.sandwich_random}: give 0 to {MAX_SANDWICH_RANDOM} random subnets per step "
                "(each one more forward and backward of the model per step; BigNAS uses 2)"
            )
        if self.param_limit is not None and self.min_param_limit > self.param_limit:
            raise ValueError(
                f"--param-limit at training time: inverted budget: --min-param-limit ({self.min_param_limit:g}M) is "
                f"above --param-limit ({self.param_limit:g}M)"
            )
        if self.distill and self.sampling != "sandwich":
            raise ValueError(
                "--distill teaches the step's subnets the largest one's outputs: it needs --sampling sandwich"
            )

    @property
    def budget(self) -> tuple[int, int] | None:
        """(min, max) parameters of the random draws, or None for the whole space."""
        if self.param_limit is None and not self.min_param_limit:
            return None
        top = round(self.param_limit * 1e6) if self.param_limit is not None else 10**12
        return round(self.min_param_limit * 1e6), top


class SubnetSampler:
    """The subnets of one training step of ``model``'s supernet, and the random one validation scores."""

    def __init__(self, model: nn.Module, sampling: Sampling) -> None:
        self.model, self.sampling = model, sampling
        self.genome = Genome(model)
        self._budget = sampling.budget
        if self._budget is not None:
            lo, hi = self._budget
            try:
                self.genome.check_budget(lo, hi)
            except BudgetError as e:
                raise ValueError(f"--param-limit at training time: {e}") from None
        costs = self.genome.cost_table
        self.largest = self.genome.decode([max(range(len(row)), key=row.__getitem__) for row in costs])
        self.smallest = self.genome.decode([min(range(len(row)), key=row.__getitem__) for row in costs])

    @property
    def size(self) -> int:
        """Subnets per step."""
        return 1 if self.sampling.sampling == "uniform" else 2 + self.sampling.sandwich_random

    def random(self, rng: random.Random) -> Subnet:
        """One random subnet: every choice uniform, or (with a budget) a uniform draw among the subnets inside it."""
        if self._budget is None:
            return sample_subnet(self.model, rng)
        return self.genome.decode(self.genome.sample(rng, *self._budget))

    def draw(self, rng: random.Random) -> list[Subnet]:
        """This step's subnets, the teacher (the largest) first under the sandwich rule."""
        if self.sampling.sampling == "uniform":
            return [self.random(rng)]
        return [self.largest, self.smallest, *(self.random(rng) for _ in range(self.sampling.sandwich_random))]

    def train_step(
        self,
        forward: Callable[[], torch.Tensor],
        loss: Callable[[torch.Tensor], torch.Tensor],
        rng: random.Random,
        distill_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> float:
        """One supernet step's forwards and backwards, in a training loop of your own: each drawn subnet is set,
        ``forward()`` computes the batch's outputs, ``loss(outputs)`` its loss, and the gradients of the step's
        subnets are averaged into the parameters' ``.grad`` (call the optimizer after). With in-place distillation
        the subnets after the first (the largest) learn its outputs through ``distill_loss(outputs, teacher)``
        (default: cross-entropy to the teacher's class probabilities). Returns the mean loss.

        Example:
            >>> sampler = SubnetSampler(model, Sampling("sandwich", sandwich_random=1, distill=True))
            >>> for x, y in loader:
            ...     sampler.train_step(lambda: model(x), lambda out: F.cross_entropy(out, y), rng)
            ...     opt.step(); opt.zero_grad()
        """
        subnets = self.draw(rng)
        distill = distill_loss or _soft_cross_entropy
        teacher, total = None, 0.0
        for subnet in subnets:
            set_subnet(self.model, subnet)
            out = forward()
            value = loss(out) if teacher is None else distill(out, teacher)
            if self.sampling.distill and teacher is None:
                teacher = out.detach()
            (value / len(subnets)).backward()
            total += float(value.detach())
        return total / len(subnets)


def _soft_cross_entropy(out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to a teacher's class probabilities, averaged over the rows (in-place distillation)."""
    rows = out.reshape(-1, out.shape[-1]).float()
    soft = teacher.reshape(-1, teacher.shape[-1]).float().softmax(-1)
    return -(soft * rows.log_softmax(-1)).sum(-1).mean()
