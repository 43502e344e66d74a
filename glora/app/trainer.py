"""The one training loop: supernets, single subnets, plain fine-tuning and the embedded backbone all go through it.

Per step: (a supernet) draw the step's subnets from the trainer's seeded RNG (one uniform draw, the paper's, or the
sandwich rule, inside a parameter budget or not: :mod:`glora.app.sampling`), forward under autocast (eagerly or through
a compiled model: the same graph for every subnet), the task's loss (cross-entropy with optional label smoothing,
mean squared error, or a causal LM's response-token loss), backward, the unused supports' gradients settled by the
recipe's semantics, all-reduce of the gradients that exist (data parallelism; under FSDP the sharded model
reduce-scatters them itself), optional clipping, AdamW (fused where
torch has it), timm's cosine (or linear) schedule with warmup (stepped per update, paper Appendix A). A step's loss
is read on the host one step later, so the host never waits for the device mid-epoch. The data order of each epoch
depends only on the seed and the epoch, and everything the loop's future depends on is in
:meth:`Trainer.state_dict`, so a run stopped at any step boundary continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from glora.inject import find_in_place_edits, glora_layers
from glora.subnet import Subnet, set_subnet, unused_params

from .cli import catch_signals
from .data import Batch, Modality, Split, make_loader, place
from .declared import option
from .distributed import Distributed
from .evaluate import AMP_MODES, autocast, split_stats
from .options.runtime import Runtime
from .sampling import Sampling, SubnetSampler
from .sharding import full_optimizer_state, is_sharded, sharded_optimizer_state
from .tasks import Task, result_key

__all__ = ["Recipe", "Trainer", "DivergenceError", "Augment", "UNUSED_SUPPORTS", "SCHEDULES", "make_adamw"]

_logger = logging.getLogger(__name__)

# An augmentation of a batch's inputs, placed on the device (images normalised); draws only from the RNG it is given
# (the trainer's).
Augment = Callable[[dict[str, torch.Tensor], random.Random], dict[str, torch.Tensor]]

# Optimizer semantics for the supports a step's subnet does not use (glora.unused_params):
#   skip   - they get no gradient, so AdamW leaves them exactly as they are (value, moments, step count); a support
#            changes only on steps that train it. The default: what eager autograd does, and what keeps a rarely drawn
#            choice from being decayed towards zero by steps that never train it.
#   update - they get zero gradients, so AdamW still applies momentum and weight decay to them: the paper's reference
#            code (its supernet keeps every tensor in the graph).
# Both hold on every execution path: eager steps leave them without a gradient, static/compiled steps give zeros,
# and the trainer drops or zero-fills those gradients accordingly.
UNUSED_SUPPORTS = ("skip", "update")

# --sched: the decay after the warmup. cosine (timm's CosineLRScheduler, the paper's) runs over epochs x steps after
# the warmup, as the reference does; linear (timm's PolyLRScheduler, power 1) reaches min_lr exactly at the last
# step, as transformers' linear schedule does (the GLUE recipes of LoRA, VeRA and GIFT).
SCHEDULES = ("cosine", "linear")


@dataclass
class Recipe:
    """How to train: optimiser, schedule, loss, precision, seed; each field is the train command's option of the same
    name (``--warmup-epochs``), declared here once.

    The defaults are the embedded task's; the paper's VTAB-1k recipe (500 epochs, lr 5e-4 or 1e-4, 10 warmup
    epochs) is in the ``vtab/*`` presets (``configs/vtab``). ``amp`` and ``workers`` are the runtime options'
    (:class:`glora.app.options.runtime.Runtime`), shared with the search.
    """

    epochs: int = option(120, "supernet epochs (paper VTAB-1k: 500)", min=1, resume="may-change")
    batch_size: int = option(64, "images or sequences per step (all processes together)", min=1)
    lr: float = option(5e-3, "peak learning rate (paper VTAB-1k: 5e-4 or 1e-4)", above=0)
    weight_decay: float = option(1e-4, "AdamW weight decay", min=0)
    sched: str = option(
        "cosine",
        "learning-rate decay after the warmup (timm's name): cosine (the paper's), or linear to --min-lr "
        "(transformers' linear schedule, the GLUE recipes')",
        choices=SCHEDULES,
    )
    sched_on_updates: bool = option(
        True,
        "step the schedule every update (timm's name); --no-sched-on-updates: once per epoch, after it, as the "
        "reference code does (its one-epoch lag included: the first two epochs run at --warmup-lr)",
    )
    drop_last: bool = option(
        False, "drop each epoch's last incomplete batch (the reference code does: 12 steps on 800 images at 64)"
    )
    warmup_epochs: float = option(2.0, "linear warmup before the schedule, in epochs", min=0)
    warmup_ratio: float | None = option(
        None,
        "linear warmup as a share of this run's epochs (transformers' warmup_ratio): it follows the stage's length; "
        "when set it replaces --warmup-epochs",
        min=0,
        max=1,
    )
    warmup_lr: float = option(1e-6, "learning rate the warmup starts from", min=0)
    min_lr: float = option(1e-6, "learning rate the schedule ends at", min=0)
    smoothing: float = option(0.0, "label smoothing", min=0, max=1)
    clip_grad: float | None = option(None, "max gradient norm", above=0)
    unused_supports: str = option(
        "skip",
        "supports a step's subnet does not use: skip = AdamW leaves them untouched; update = zero gradients, so AdamW "
        "still applies momentum and weight decay (the paper's reference code)",
        choices=UNUSED_SUPPORTS,
    )
    seed: int = option(0, "seeds the head init, data order and subnet sampling", min=0)
    amp: str = Runtime.amp  # auto: bf16 autocast on CUDA only; bf16; off
    workers: int = Runtime.workers  # data-loading workers when images are not cached in memory

    @property
    def warmup(self) -> float:
        """The warm-up in epochs: ``warmup_ratio`` of the epochs when it is set, else ``warmup_epochs``."""
        return self.warmup_epochs if self.warmup_ratio is None else self.warmup_ratio * self.epochs

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}; got {self.amp!r}")
        if self.sched not in SCHEDULES:
            raise ValueError(f"sched must be one of {', '.join(SCHEDULES)}; got {self.sched!r}")
        if self.unused_supports not in UNUSED_SUPPORTS:
            allowed = ", ".join(UNUSED_SUPPORTS)
            raise ValueError(f"unused_supports must be one of {allowed}; got {self.unused_supports!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | Any) -> Recipe:
        """The recipe part of a command's options (an argparse Namespace or a mapping with the same names)."""
        values = options if isinstance(options, Mapping) else vars(options)
        return cls(**{k: values[k] for k in asdict(cls()) if k in values})


def make_adamw(params: Sequence[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW in its fused form where torch has one for the parameters' device (one kernel for every tensor: a
    supernet has hundreds of small ones, and the loop over them was a sizeable part of a small model's step)."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class DivergenceError(RuntimeError):
    """The loss became NaN or inf; the step was not applied."""

    user_facing = True  # reported as one line by the CLI


class Trainer:
    """Trains ``model``'s trainable tensors on ``train_set``; :meth:`fit` runs (or continues) the epochs.

    Args:
        model: a model on ``device``. With GLoRA layers and ``subnet=None`` it is trained as a supernet (a random
            subnet per step); with ``subnet`` that one subnet is trained alone.
        train_set: the training split (images cached or read from files, or tokenized text).
        recipe: optimiser, schedule, loss and seed.
        modality: places a batch on the device (normalising images) and calls the model with it.
        device: where batches go.
        params: the tensors to train (default: every parameter that requires grad).
        val_set: evaluated after every epoch (a supernet: one random subnet; else the model itself).
        subnet: train this fixed subnet instead of sampling one per step.
        augment: applied to each placed training batch's inputs.
        forward: what computes the logits (default ``model``; e.g. ``torch.compile(model)``).
        dist: this process's place in a data-parallel job (default: a single process).
        progress: progress bars (None: only on a terminal).
        data_on_device: where cached rows live during the run (``glora.app.data.place``: auto, on, off).
        task: the loss and the validation metrics (default: classification, cross-entropy, accuracy first).
        sampling: which subnets a supernet step trains (default: one uniform draw, the paper's).
        teacher: a frozen model whose outputs a fixed subnet also learns (knowledge distillation: a retrained pick
            learns from its supernet's largest subnet), weighted by ``teacher_weight`` against the labels.
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Split,
        recipe: Recipe,
        *,
        modality: Modality,
        device: torch.device,
        params: Sequence[nn.Parameter] | None = None,
        val_set: Split | None = None,
        subnet: Subnet | None = None,
        augment: Augment | None = None,
        forward: Callable[..., torch.Tensor] | None = None,
        dist: Distributed | None = None,
        progress: bool | None = None,
        data_on_device: str = "auto",
        task: Task | None = None,
        sampling: Sampling | None = None,
        teacher: nn.Module | None = None,
        teacher_weight: float = 0.5,
    ) -> None:
        if len(train_set) == 0:
            raise ValueError("the train split is empty")
        self.model, self.recipe, self.device = model, recipe, device
        self.task = task or Task(num_classes=train_set.num_classes)
        self.train_set = place(train_set, device, data_on_device)
        self.val_set = None if val_set is None else place(val_set, device, data_on_device)
        self.modality, self.augment = modality, augment
        self.forward = forward if forward is not None else model
        self.dist = dist or Distributed()
        self.progress = progress
        self.adapted = bool(glora_layers(model))
        self.sharded = is_sharded(model)  # FSDP2: gradients reduce-scattered by the model, state gathered to save
        self.supernet = self.adapted and subnet is None
        self.sampling = sampling or Sampling()
        if self.sampling.distill and self.supernet and not self.task.distills:
            raise ValueError(
                "--distill is for classification and regression; a causal LM trains on its labels: add --no-distill"
            )
        self.sampler = SubnetSampler(model, self.sampling) if self.supernet else None
        if teacher is not None and (self.supernet or not self.task.distills):
            raise ValueError("a teacher trains one fixed subnet of a classification or regression task")
        if not 0 <= teacher_weight <= 1:
            raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
        self.teacher, self.teacher_weight = teacher, teacher_weight
        self._edits_checked = False
        if subnet is not None:
            set_subnet(model, subnet)
        self.params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: no parameter requires grad")
        if not self.sharded:  # sharded ranks built the same model from the same seed before splitting it
            self.dist.broadcast_params(self.params)
        self.optimizer = make_adamw(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        n, size = len(train_set), recipe.batch_size
        self.steps_per_epoch = n // size if recipe.drop_last else math.ceil(n / size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"--drop-last with --batch-size {size} leaves no batch of the {n} training items; lower --batch-size"
            )
        self.scheduler = self._schedule()
        self.rng = random.Random(recipe.seed)
        self.epoch = 0  # completed epochs
        self.step = 0
        self.batch = 0  # batches done in the current epoch (non-zero only after an interruption)
        self.partial = {"loss": 0.0, "count": 0, "seconds": 0.0}  # the current epoch's running totals
        self.log: list[dict[str, Any]] = []
        self._stop = False  # this process was asked to stop (Ctrl-C, SIGTERM)
        self._stop_agreed = False  # some rank was: read with a step's loss (torchrun), so every rank stops together
        self._first_step = True
        self._set_lr()

    def _set_lr(self) -> None:
        """The learning rate for where the run stands: per update, the schedule at this step; per epoch, as the
        reference code steps it (``step(epoch)`` after each epoch), the value at the previous epoch, so the first
        two epochs run at the warm-up's initial rate."""
        if self.recipe.sched_on_updates:
            self.scheduler.step_update(self.step)
        else:
            self.scheduler.step(max(self.epoch - 1, 0))

    def _schedule(self):
        from timm.scheduler import CosineLRScheduler, PolyLRScheduler

        r = self.recipe
        per = self.steps_per_epoch if r.sched_on_updates else 1  # time unit: updates, or epochs
        total = r.epochs * per
        warmup = min(round(r.warmup * per), max(total - 1, 0))
        common = dict(lr_min=r.min_lr, warmup_t=warmup, warmup_lr_init=r.warmup_lr, warmup_prefix=True)
        units = dict(t_in_epochs=not r.sched_on_updates)
        if r.sched == "linear":
            return PolyLRScheduler(self.optimizer, t_initial=total - warmup, power=1.0, **units, **common)
        return CosineLRScheduler(self.optimizer, t_initial=total, **units, **common)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on (not the model's tensors: save those beside it). Whole tensors
        even when the model is sharded (then a collective: every rank calls it)."""
        return {
            "optimizer": full_optimizer_state(self.optimizer) if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "batch": self.batch,
            "partial": dict(self.partial),
            "log": list(self.log),
        }

    def _rng_state(self) -> dict[str, Any]:
        """Every generator the rest of the run draws from: subnets and augmentation (Python), drop-path and dropout
        (torch, and the accelerator's own generator when the model runs there)."""
        state: dict[str, Any] = {"python": self.rng.getstate(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(_to_tuple(state["python"]))
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output. ``recipe.epochs`` may have grown: the schedule follows it."""
        saved = state["optimizer"]
        self.optimizer.load_state_dict(sharded_optimizer_state(self.optimizer, saved) if self.sharded else saved)
        sched = dict(state["scheduler"])
        sched.pop("t_initial", None)
        self.scheduler.load_state_dict(sched | {"t_initial": self.scheduler.t_initial})
        self._set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch = int(state.get("batch", 0))
        self.partial = dict(state.get("partial", self.partial))
        self.log = list(state.get("log", []))
        self._set_lr()

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        *,
        stop_after: int | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_interrupt: Callable[[], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        """Train until ``recipe.epochs`` (or ``stop_after`` more epochs).

        ``on_epoch_end(record)`` runs after each epoch (save there). With ``handle_signals``, Ctrl-C / SIGTERM ask
        for a stop at the next step boundary: ``on_interrupt()`` runs (save there), then KeyboardInterrupt is raised.
        """
        r, task = self.recipe, self.task
        stop_at = r.epochs if not stop_after else min(r.epochs, self.epoch + stop_after)
        with self._signals() if handle_signals else contextlib.nullcontext():
            while self.epoch < stop_at:
                start = time.time() - self.partial["seconds"]
                loss = self._train_epoch(start, on_interrupt)
                metrics = self.validate() if self.val_set is not None else None
                self.epoch += 1
                self.batch = 0
                if not r.sched_on_updates:
                    self._set_lr()
                self.partial = {"loss": 0.0, "count": 0, "seconds": 0.0}
                record = {"epoch": self.epoch, "loss": round(loss, 6), "lr": self.optimizer.param_groups[0]["lr"]}
                for name, value in (metrics or {}).items():
                    record[f"val_{result_key(name)}"] = round(value, 6)
                record["seconds"] = round(time.time() - start, 3)
                self.log.append(record)
                if on_epoch_end:
                    on_epoch_end(record)
                _logger.info(
                    "epoch %d/%d  loss %.4f  lr %.2e%s  %.1fs",
                    self.epoch,
                    r.epochs,
                    loss,
                    record["lr"],
                    "" if metrics is None else f"  val{' (random subnet)' * self.supernet} {task.describe(metrics)}",
                    record["seconds"],
                )
                if self._stop_agreed and self.epoch < stop_at:  # asked during the epoch's last step (torchrun)
                    if on_interrupt:
                        on_interrupt()
                    raise KeyboardInterrupt

    def _signals(self) -> contextlib.AbstractContextManager[None]:
        """Ctrl-C / SIGTERM request a stop at the next step boundary; a second one aborts at once."""

        def request_stop(signum: int) -> None:
            self._stop = True
            _logger.warning("%s: saving after the current step (send it again to abort)", signal.Signals(signum).name)

        return catch_signals(request_stop, once=True)

    def _train_epoch(self, start: float, on_interrupt: Callable[[], None] | None) -> float:
        from tqdm.auto import tqdm

        r = self.recipe
        self.model.train()
        loader, meta = make_loader(
            self.train_set,
            r.batch_size,
            shuffle=True,
            seed=r.seed * 1_000_003 + self.epoch,
            workers=r.workers,
            shard=self.dist.shard if self.dist.enabled else None,
            skip=self.batch,
            drop_last=r.drop_last,
        )
        total, count = self.partial["loss"], self.partial["count"]
        disable = (None if self.progress is None else not self.progress) if self.dist.main else True
        bar = tqdm(
            zip(loader, meta), total=len(meta), desc=f"epoch {self.epoch + 1}/{r.epochs}", leave=False, disable=disable
        )
        # A step's loss is read on the host one step later, once the device has moved on: reading it at once would
        # make the host wait for every step to finish before it can queue the next (a GPU would idle meanwhile).
        # Under torchrun the stop flag travels with the loss in the same all-reduce, read as late, so no step
        # waits for the others to agree: every rank sees the same flag at the same step and stops there.
        pending: tuple[torch.Tensor, int, int] | None = None

        def interrupt() -> None:
            nonlocal total
            if pending is not None:
                total += self._read_loss(*pending, bar)
            self.partial = {"loss": total, "count": count, "seconds": time.time() - start}
            if on_interrupt:
                on_interrupt()
            raise KeyboardInterrupt

        for batch, (global_n, weight) in bar:
            started = time.time()
            loss = self._step(batch, global_n, weight)
            if loss is None:  # a stop request ended the step between its subnets: nothing of it was applied
                interrupt()
            if self._first_step and self.forward is not self.model:
                _logger.info("first step with the compiled model (compilation included): %.1fs", time.time() - started)
            self._first_step = False
            if pending is not None:
                total += self._read_loss(*pending, bar)
            pending = (loss, global_n, self.step)
            count += global_n
            self.batch += 1
            if self._stop_agreed if self.dist.enabled else self._stop:
                interrupt()
        if pending is not None:
            total += self._read_loss(*pending, bar)
        return total / max(count, 1)

    def _read_loss(self, packed: torch.Tensor, global_n: int, step: int, bar) -> float:
        """A step's summed loss on the host (and, under torchrun, whether any rank had been asked to stop: noted in
        ``_stop_agreed``); a non-finite loss stops training (before anything is saved)."""
        value, stop = packed.tolist()
        self._stop_agreed = self._stop_agreed or stop > 0
        if not math.isfinite(value):
            at = f"epoch {self.epoch + 1}, step {step}"
            raise DivergenceError(f"loss became {value / global_n} at {at}; try a lower --lr or --clip-grad")
        bar.set_postfix(loss=f"{value / global_n:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
        return value

    def _step(self, batch: Batch, global_n: int, weight: float) -> torch.Tensor | None:
        """One update; returns this global batch's summed loss as a device tensor (all ranks' shares added). A
        supernet step trains the subnets its sampler draws (one, or a sandwich: their gradients averaged).

        A stop request that arrives while a sandwich step trains its subnets ends the step before the next one (a
        single process: ranks would have to agree): nothing is applied, the random generators are put back as the
        step found them, and None is returned, so the run saves at the previous step and a resume redoes this one
        exactly."""
        r, modality = self.recipe, self.modality
        multi = self.supernet and self.sampler.size > 1 and not self.dist.enabled
        before = self._rng_state() if multi else None
        inputs = modality.place(batch.inputs, self.device)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in batch.targets.items()}
        if self.augment is not None:
            inputs = self.augment(inputs, self.rng)
        subnets = self.sampler.draw(self.rng) if self.supernet else [None]  # the same draws on every rank
        self.optimizer.zero_grad(set_to_none=True)
        teacher, total, unused = None, None, None
        for i, subnet in enumerate(subnets):
            if before is not None and i and self._stop:
                self.optimizer.zero_grad(set_to_none=True)
                self._set_rng_state(before)
                return None
            if subnet is not None:
                set_subnet(self.model, subnet)
            if self.adapted and not self._edits_checked:  # once per run, on the first batch (no draw consumed)
                with autocast(self.device, r.amp):
                    find_in_place_edits(self.model, lambda: modality(self.model, inputs))
                self._edits_checked = True
            with autocast(self.device, r.amp):
                logits = modality(self.forward, inputs)
            # This rank's share of the global batch's mean loss: summed over ranks it is the global mean.
            if teacher is not None:  # in-place distillation: the largest subnet's outputs are the targets
                loss_sum = self.task.distill_loss(logits, teacher) * weight
            else:
                loss_sum = self.task.loss(logits, targets, r.smoothing) * weight
                if self.sampling.distill and self.supernet:
                    teacher = logits.detach()
                if self.teacher is not None:  # a fixed subnet learning from a frozen teacher too
                    with torch.no_grad(), autocast(self.device, r.amp):
                        taught = modality(self.teacher, inputs)
                    w = self.teacher_weight
                    loss_sum = (1 - w) * loss_sum + w * self.task.distill_loss(logits, taught) * weight
            (loss_sum / (global_n * len(subnets))).backward()
            total = loss_sum.detach() if total is None else total + loss_sum.detach()
            if self.adapted:  # the supports no subnet of the step reads
                step_unused = {id(p): p for p in unused_params(self.model)}
                unused = step_unused if unused is None else {k: p for k, p in unused.items() if k in step_unused}
        if unused is not None:
            self._settle_unused(list(unused.values()))
        if not self.sharded:
            self.dist.all_reduce_grads(self.params)
        stop = torch.tensor(float(self._stop), dtype=torch.float64).to(self.device, non_blocking=True)
        packed = self.dist.sum_(torch.stack([(total / len(subnets)).double(), stop]))  # [loss, ranks asked to stop]
        if r.clip_grad:
            nn.utils.clip_grad_norm_(self.params, r.clip_grad)
        self.optimizer.step()
        self.step += 1
        if r.sched_on_updates:
            self.scheduler.step_update(self.step)
        return packed

    def _settle_unused(self, unused: list[nn.Parameter]) -> None:
        """Give the supports this step's subnets did not use the gradient the recipe's semantics asks for."""
        if self.recipe.unused_supports == "skip":
            for p in unused:
                p.grad = None
        else:
            for p in unused:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def validate(self) -> dict[str, float]:
        """The task's validation metrics: a supernet's of one random subnet (drawn from the trainer's RNG), else the
        model's. Each rank evaluates its share; the per-row statistics are gathered, so metrics are the split's."""
        if self.supernet:
            set_subnet(self.model, self.sampler.random(self.rng))
        r = self.recipe
        size = self.task.validation_batch_size(r.batch_size)
        if self.sharded:  # every rank runs every batch (each forward is collective): its share of each
            loader, meta = make_loader(self.val_set, size, shuffle=False, workers=r.workers, shard=self.dist.shard)
            keep = [weight > 0 for _, weight in meta]
        else:
            part = self.val_set.subset(self.dist.shard(len(self.val_set))) if self.dist.enabled else self.val_set
            loader, _ = make_loader(part, size, shuffle=False, workers=r.workers)
            keep = None
        stats = split_stats(self.model, loader, self.modality, self.device, self.task, r.amp, self.forward, keep)
        return self.task.compute(self.dist.gather(stats))


def _to_tuple(state: Any) -> Any:
    """Python's RNG state comes back from torch.load with lists where tuples were."""
    return tuple(_to_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
