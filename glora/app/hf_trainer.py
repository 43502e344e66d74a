"""GLoRA supernets inside a ``transformers.Trainer`` (or TRL's ``SFTTrainer``, or any Trainer subclass) of your own.

    model = glora.inject(AutoModelForSequenceClassification.from_pretrained(...), glora.SearchSpace(lora_ranks=(8, 4)))
    trainer = GLoRATrainer(model=model, args=TrainingArguments(...), train_dataset=..., eval_dataset=...,
                           sampling=Sampling("sandwich", sandwich_random=1, distill=True))
    trainer.train()                                   # a subnet (or a sandwich of them) per step
    result = search_with_trainer(trainer, max_params=100_000, metric="eval_loss")
    glora.save_adapter(model, "my-adapter", result.subnet)

Every step draws its subnets from the toolkit's samplers (:mod:`glora.app.sampling`: the paper's uniform draw, the
sandwich rule, in-place distillation), seeded; the Trainer's own loss, gradient accumulation, mixed precision and
devices are kept. At each of the Trainer's checkpoints the supernet is also saved as an adapter folder
(``checkpoint-N/glora_adapter``) with the sampler's state, and a run resumed from a checkpoint continues the same
draws. :func:`glora_trainer` mixes the same behaviour into another Trainer class (``glora_trainer(SFTTrainer)``).

This module is the only one that imports transformers' Trainer; the rest of the toolkit runs without it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from glora.adapter import save_adapter
from glora.inject import glora_layers
from glora.subnet import Subnet, set_subnet
from search import SearchResult, search_subnets

from .sampling import Sampling, SubnetSampler, _soft_cross_entropy

__all__ = ["GLoRATrainerMixin", "GLoRATrainer", "glora_trainer", "GLoRACheckpoints", "search_with_trainer"]

_logger = logging.getLogger(__name__)

ADAPTER_FOLDER = "glora_adapter"
SAMPLER_STATE = "glora_sampler.json"


def _unwrap(model: nn.Module) -> nn.Module:
    """The injected model inside the Trainer's wrappers (DDP's ``module``, a compiled model's ``_orig_mod``)."""
    while not glora_layers(model) and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


class GLoRATrainerMixin:
    """What a Trainer class needs to train a GLoRA supernet: the step's subnets drawn from a seeded sampler, their
    losses (or, with distillation, the largest subnet's outputs as the others' targets) averaged into one update.

    Keyword arguments beside the Trainer's: ``sampling`` (:class:`~glora.app.sampling.Sampling`; default: the paper's
    one uniform draw per step), ``glora_seed`` (the draws' seed), ``subnet`` (train this one subnet alone: a fixed
    adapter, or retraining a pick).
    """

    def __init__(self, *args: Any, sampling: Sampling | None = None, glora_seed: int = 0,
                 subnet: Subnet | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        model = _unwrap(self.model)
        if not glora_layers(model):
            raise ValueError("the Trainer's model has no GLoRA layers: glora.inject(model, space) before the Trainer")
        self.glora_subnet = subnet
        self.glora_sampling = sampling or Sampling()
        self.glora_sampler = None if subnet is not None else SubnetSampler(model, self.glora_sampling)
        self.glora_rng = random.Random(glora_seed)
        self._glora_weight = 1.0
        self._glora_teacher: torch.Tensor | None = None
        if subnet is not None:
            set_subnet(model, subnet)
        self.add_callback(GLoRACheckpoints(self))

    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.glora_sampler is None:  # one fixed subnet
            return super().training_step(model, inputs, *args, **kwargs)
        subnets = self.glora_sampler.draw(self.glora_rng)
        self._glora_teacher, total = None, None
        try:
            for subnet in subnets:
                set_subnet(_unwrap(model), subnet)
                self._glora_weight = 1.0 / len(subnets)
                loss = super().training_step(model, inputs, *args, **kwargs)
                total = loss if total is None else total + loss
        finally:
            self._glora_weight, self._glora_teacher = 1.0, None
        return total

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:  # fmt: skip
        if self._glora_teacher is not None:  # in-place distillation: the largest subnet's outputs as targets
            kept = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**kept)
            loss = _soft_cross_entropy(outputs["logits"], self._glora_teacher)
        else:  # the outputs only where they are needed (TRL recomputes the logits to return them)
            teaches = self.glora_sampler is not None and self.glora_sampling.distill and self._glora_weight != 1.0
            if return_outputs or teaches:
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            else:
                loss, outputs = super().compute_loss(model, inputs, False, num_items_in_batch), None
            if teaches:
                self._glora_teacher = outputs["logits"].detach()
        loss = loss * self._glora_weight
        return (loss, outputs) if return_outputs else loss


class GLoRATrainer(GLoRATrainerMixin, transformers.Trainer):
    """``transformers.Trainer`` training a GLoRA supernet (see :class:`GLoRATrainerMixin`)."""


def glora_trainer(base: type) -> type:
    """``base`` (a Trainer class: TRL's ``SFTTrainer``, your own) with the GLoRA supernet's steps mixed in."""
    return type(f"GLoRA{base.__name__}", (GLoRATrainerMixin, base), {"__doc__": f"{base.__name__} training a GLoRA "
                                                                     "supernet (see GLoRATrainerMixin)."})  # fmt: skip


class GLoRACheckpoints(transformers.TrainerCallback):
    """At each of the Trainer's checkpoints: the supernet as an adapter folder and the sampler's state beside the
    Trainer's own files; when a run resumes from one, the sampler continues its draws from there."""

    def __init__(self, trainer: GLoRATrainerMixin) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        trainer = self.trainer
        save_adapter(_unwrap(trainer.model), folder / ADAPTER_FOLDER, trainer.glora_subnet)
        if state.is_world_process_zero:
            rng = trainer.glora_rng.getstate()
            (folder / SAMPLER_STATE).write_text(json.dumps({"rng": [rng[0], list(rng[1]), rng[2]]}))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.global_step:
            return
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / SAMPLER_STATE
        if saved.is_file():
            rng = json.loads(saved.read_text())["rng"]
            self.trainer.glora_rng.setstate((rng[0], tuple(rng[1]), rng[2]))
            _logger.info("GLoRA: the sampler continues from %s", saved)


def search_with_trainer(
    trainer: transformers.Trainer,
    *,
    max_params: int | None = None,
    min_params: int = 0,
    metric: str = "eval_loss",
    greater_is_better: bool | None = None,
    **settings: Any,
) -> SearchResult:
    """The evolutionary search over the Trainer's supernet, each candidate scored by ``trainer.evaluate()`` on its
    eval dataset (``metric``: a key of what it returns; lower is better for a loss unless said otherwise). Leaves
    the model set to the pick. ``settings``: :class:`search.SearchSettings` fields (``generations=5``, ``seed``)."""
    model = _unwrap(trainer.model)
    better = greater_is_better if greater_is_better is not None else "loss" not in metric

    def score(subnet: Subnet) -> float:
        set_subnet(model, subnet)
        found = trainer.evaluate()
        if metric not in found:
            raise ValueError(f"trainer.evaluate() gives no {metric!r}; it gives {', '.join(found)}")
        return float(found[metric])

    return search_subnets(model, score, max_params=max_params, min_params=min_params, metric=metric,
                          greater_is_better=better, **settings)  # fmt: skip
