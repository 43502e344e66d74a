"""``train_supernet.py`` / ``glora-train``: train a GLoRA supernet, one random subnet per step.

With no arguments it trains the embedded default (a ViT shipped with glora, pretrained on digits 0-4, adapted to
digits 5-9) into ``runs/default/supernet``. Every epoch end writes ``last.pt`` atomically, then ``log.jsonl``;
``--resume`` continues exactly where the run stopped (an epoch end, or the step where Ctrl-C/SIGTERM arrived).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import atomic_write_text
from glora.config import SUPPORT_DTYPES
from glora.gift import GiftBank
from glora.inject import glora_layers, head_names, inject, set_execution, supernet_size
from glora.quantized import describe_quantized, weight_bytes
from glora.space import SearchSpace
from glora.subnet import Subnet, count_params, load_subnet, parse_subnet, set_subnet
from search.genome import Genome

from ..backbone import (
    bias_free_rule,
    build_backbone,
    enable_checkpointing,
    fingerprint,
    resolve_bias_free,
)
from ..checkpoint import load_trainable, read_checkpoint, trainable_state, write_checkpoint
from ..cli import run
from ..data import DataSpec, modality_from_record
from ..data.spec import PATH_OPTIONS
from ..distributed import Distributed, setup_distributed
from ..evaluate import compile_model, resolve_device
from ..layout import SupernetFolder
from ..options import (
    ConfigError,
    args_to_dict,
    save_config,
    start_or_resume,
)
from ..options.train import (
    adapter_from_args,
    augment_from_args,
    backbone_from_args,
    build_parser,
    check_applicable,
    check_init_from,
    inputs_of,
    parse_train_args,
    resolve_warmup,
    sampling_from_args,
)
from ..outputs import absolute, check_no_overlap, output_lock, writes_files
from ..sampling import Sampling, SubnetSampler
from ..sharding import build_on_ranks, check_path, fsdp_wanted, place_model, weightless
from ..sizes import check_training_size
from ..tasks import Task
from ..trainer import DivergenceError, Recipe, Trainer

__all__ = ["build_parser", "main", "cli"]

_logger = logging.getLogger(__name__)


def _describe(space: SearchSpace) -> str:
    return " ".join(f"{s}={','.join(space.choice_names(s))}" for s in "ABCDE")


def main(argv: Sequence[str] | None = None) -> int:
    parsed = parse_train_args(build_parser(), argv)
    args = parsed.args
    if not args.resume:  # a resumed run keeps its checked options
        check_applicable(parsed)
        sampling_from_args(args)  # its rules, before anything is loaded
        if args.teacher_weight and not (args.subnet and args.init_from):
            raise ConfigError("--teacher-weight distils a supernet into its pick: give --subnet and --init-from")
        check_init_from(args.init_from, args.subnet)
    last = SupernetFolder(Path(args.out)).checkpoint
    check_no_overlap(args.out, inputs_of(args, configs=not args.resume))
    with output_lock(args.out, enabled=writes_files(), command="glora-train"):
        args, ckpt = start_or_resume(
            parsed,
            load=lambda: read_checkpoint(last),
            saved_config=lambda c: c.get("config", {}),
            existing=[last],
            what="a supernet checkpoint",
        )
        if not args.resume:
            resolve_warmup(parsed, args)
        check_no_overlap(args.out, inputs_of(args, configs=False))  # a resumed run reads its saved inputs
        for name in _RECORDED_PATHS:  # the saved options name inputs absolute: commands run from any folder
            if isinstance(getattr(args, name, None), str):
                setattr(args, name, absolute(getattr(args, name)))
        dist, device = setup_distributed(resolve_device(args.device))
        try:
            if not dist.main:
                logging.getLogger().setLevel(logging.WARNING)
            _SupernetRun(args, dist, device, ckpt).fit()
        finally:
            dist.close()
    return 0


# Options that name files or folders this run reads (a hub id or timm name stays as it is: absolute() keeps what
# does not exist here).
_RECORDED_PATHS = ("model", "pretrained_file", "init_from", "subnet", *PATH_OPTIONS)


def cli() -> int:
    """Console entry point ``glora-train``."""
    return run(main)


class _SupernetRun:
    """One training run's pieces: the supernet, its data, the trainer, and where it is saved."""

    def __init__(
        self, args: argparse.Namespace, dist: Distributed, device: torch.device, ckpt: dict[str, Any] | None
    ) -> None:
        self.args, self.dist, self.out = args, dist, Path(args.out)
        self.files = SupernetFolder(self.out)
        self.sharded = fsdp_wanted(args, dist)
        self.data = DataSpec.from_options(args)
        self.data = self.data.modality.with_model(self.data, str(args.model))  # text: the model's own tokenizer
        self.data.preflight()  # the train and val files (and a given test file), read before a model is built
        num_classes = self.data.num_classes()
        self.task = Task(self.data.task_kind(), args.metric, num_classes)
        self.spec = backbone_from_args(args, num_classes)
        self._build_model(device)
        self.modality.check_model(self.model, self.data)  # text: sequence length and tokenizer
        train, val = self._load_splits()
        compiled = None  # a sharded model runs eagerly
        if not self.sharded:
            compiled = compile_model(self.model, device, args.compile, args.compile_mode, args.compile_backend)
        self.class_names = list(train.class_names) if train.class_names else None
        self.subnet = self._fixed_subnet()
        if args.init_from and ckpt is None:
            self._inherit(args.init_from)
        teacher = self._teacher(ckpt) if args.teacher_weight else None
        self.trainer = Trainer(
            self.model,
            train,
            Recipe.from_options(args),
            modality=self.modality,
            device=device,
            val_set=val,
            forward=compiled,
            dist=dist,
            progress=args.progress,
            data_on_device=args.data_on_device,
            task=self.task,
            subnet=self.subnet,
            sampling=sampling_from_args(args),
            teacher=teacher,
            teacher_weight=args.teacher_weight,
        )
        if ckpt is not None:
            self._restore(ckpt)

    def _build_model(self, device: torch.device) -> None:
        torch.manual_seed(self.args.seed)  # the new head's init
        # Sharded, only rank 0 reads the weights; the others build the architecture on the meta device (no memory)
        # and receive their shards from rank 0 once the model is split.
        whole = not self.sharded or self.dist.main
        model = build_on_ranks(
            lambda: build_backbone(self.spec, device=device if self.spec.quantize else "cpu"),
            lambda where: build_backbone(weightless(self.spec), device=where),
            self.dist,
            self.sharded,
        )
        self.adapter = adapter_from_args(self.args, heads=head_names(model))
        self.adapter = resolve_bias_free(model, self.adapter, self.args.bias_free)
        # Before anything is allocated: ranks no layer can use, and a training state the machine cannot hold.
        support = SUPPORT_DTYPES.get(self.adapter.support_dtype or "", None)
        share = self.dist.world if self.sharded else 1  # each rank holds 1/world of everything under FSDP
        check_training_size(
            supernet_size(model, self.adapter) // share,
            device,
            self.out,
            enabled=self.args.memory_check,
            element_size=support.itemsize if support is not None else next(model.parameters()).element_size(),
            frozen_bytes=weight_bytes(model) // share,  # a quantized base at its quantized size
        )
        if self.spec.quantize:
            _logger.info("%s", describe_quantized(model))
        inject(model, self.adapter)
        if self.args.gradient_checkpointing:
            enable_checkpointing(model)
        rule = bias_free_rule(model)
        if rule:
            _logger.info("%s", rule)
        if self.adapter.space.layer_size == 1:
            _logger.info("the space holds one subnet (%s): training a fixed adapter", _describe(self.adapter.space))
        set_execution(model, path=check_path(self.args.execution) if self.sharded else self.args.execution)
        self.fingerprint = fingerprint(model) if whole else ""
        modality = self.data.model_inputs(model, self.args.mean, self.args.std) if whole else None
        self.model = place_model(model, self.dist, device, self.sharded)  # sharded: each rank keeps its shards
        if self.sharded:
            self.fingerprint, record = self.dist.broadcast_object((self.fingerprint, modality and modality.record()))
            modality = modality_from_record(record)
        self.modality = modality

    def _load_splits(self):
        splits = []
        augment = augment_from_args(self.args)
        for name in ("train", "val"):
            s = self.data.load_for(
                name, self.modality, self.args.progress, augment=augment if name == "train" else None
            )
            if len(s) == 0:
                raise ValueError(f"the {name} split is empty")
            if s.num_classes != self.spec.num_classes:
                raise ValueError(
                    f"the {name} split has {s.num_classes} classes, the model head {self.spec.num_classes}"
                )
            splits.append(s)
        self.task.check_split(splits[1].targets, "validation")
        return splits

    def _fixed_subnet(self) -> Subnet | None:
        """``--subnet``: the one subnet this run trains (checked against the supernet's space), or None."""
        if not self.args.subnet:
            return None
        subnet = load_subnet(self.args.subnet)
        parse_subnet(self.model, subnet)  # names the layer and choice that do not fit
        params = count_params(self.model, subnet)
        _logger.info("training one subnet (%s, %s params) as a fixed adapter", self.args.subnet, f"{params:,}")
        return subnet

    def _inherit(self, path: str) -> None:
        """``--init-from``: start from a trained supernet's tensors (the same backbone, space and heads)."""
        ckpt = read_checkpoint(path)
        if ckpt["fingerprint"] != self.fingerprint:
            raise ValueError(f"--init-from {path}: its backbone's weights differ from this run's backbone")
        load_trainable(self.model, ckpt["trainable"], f"--init-from {path}")
        _logger.info("starting from the trained tensors of %s", path)

    def _teacher(self, ckpt: dict[str, Any] | None) -> nn.Module:
        """``--teacher-weight``: the supernet's largest subnet, frozen as --init-from loaded it. Only the trainable
        tensors are copied (the frozen backbone is shared with the student)."""
        args = self.args
        if self.sharded:
            raise ValueError("--teacher-weight needs the whole model on each process; run it without --fsdp")
        if not self.task.distills:
            raise ValueError(
                f"--teacher-weight is for classification and regression; a {self.task.kind} task trains on its labels"
            )
        if ckpt is not None:  # resuming: the student moved on; the teacher is the checkpoint it started from
            self._inherit(args.init_from)
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        teacher = copy.deepcopy(self.model, memo=shared)
        teacher.requires_grad_(False).eval()
        set_subnet(teacher, SubnetSampler(teacher, Sampling()).largest)
        _logger.info("the pick also learns from %s's largest subnet (weight %g)", args.init_from, args.teacher_weight)
        return teacher

    def _restore(self, ckpt: dict[str, Any]) -> None:
        where = ckpt.get("path", str(self.files.checkpoint))
        if ckpt["fingerprint"] != self.fingerprint:
            raise ValueError(f"{where}: the backbone's weights differ from the ones this run was trained on")
        load_trainable(self.model, ckpt["trainable"], where)
        self.trainer.load_state_dict(ckpt)
        t = self.trainer
        at = f"epoch {t.epoch + 1}, batch {t.batch}" if t.batch else f"after epoch {t.epoch}"
        _logger.info("resuming %s %s (step %d)", self.files.checkpoint, at, t.step)
        before = (ckpt.get("config") or {}).get("epochs")
        if before is not None and before != self.args.epochs and t.epoch < self.args.epochs:
            groups = (ckpt.get("optimizer") or {}).get("param_groups") or [{}]
            was, now = groups[0].get("lr"), t.optimizer.param_groups[0]["lr"]
            _logger.warning(
                "--epochs %d -> %d: the learning-rate schedule is recomputed over %d epochs (as timm's resume does), "
                "so it goes from %s where the run stopped to %.2e at step %d, then decays to --min-lr at the new end",
                before,
                self.args.epochs,
                self.args.epochs,
                "?" if was is None else f"{was:.2e}",
                now,
                t.step,
            )

    def _save(self) -> None:
        """Rank 0 writes; the others wait, so a failed write stops everyone at the same step. A sharded model's
        tensors are gathered whole first, on every rank."""
        tensors = trainable_state(self.model) if self.dist.main or self.sharded else {}
        state = self.trainer.state_dict() if self.dist.main or self.sharded else {}
        if self.dist.main:
            write_checkpoint(
                self.files.checkpoint,
                {
                    "backbone": self.spec.to_dict(),
                    "fingerprint": self.fingerprint,
                    "adapter": self.adapter.to_dict(),
                    "data": self.data.to_dict(),
                    "task": self.task.to_dict(),
                    "input": self.modality.record(),
                    "class_names": self.class_names,
                    "subnet": self.subnet,
                    "trainable": tensors,
                    **state,
                    "config": args_to_dict(self.args),
                },
            )
            self._write_log()
        self.dist.barrier()

    def _write_log(self) -> None:
        atomic_write_text(self.files.log, "".join(json.dumps(r) + "\n" for r in self.trainer.log))

    def _prepare_out(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):  # left by a run killed in the middle of an atomic write
            stale.unlink(missing_ok=True)
        save_config(self.args, self.files.config)
        if self.trainer.log:  # log.jsonl may lag last.pt if a run died between the two writes
            self._write_log()

    def _interrupted(self) -> None:
        self._save()
        t = self.trainer
        _logger.warning(
            "interrupted at epoch %d, batch %d: %s saved; continue with --resume",
            t.epoch + 1,
            t.batch,
            self.files.checkpoint,
        )

    def _what_trains(self) -> str:
        """What this run trains, in the paper's count (the supports a subnet uses; the head apart), and the tensors
        it allocates for it."""
        layers = glora_layers(self.model)
        supports = {id(p) for layer in layers.values() for p in layer.support_params()}
        supports |= {id(p) for m in self.model.modules() if isinstance(m, GiftBank) for p in m.parameters()}
        params = self.trainer.params
        head = sum(p.numel() for p in params if id(p) not in supports)
        allocated = sum(p.numel() for p in params)
        genome = Genome(self.model) if self.subnet is None else None
        if genome is not None and any(genome.up):
            largest = genome.max_cost()
            what = f"supernet: {len(layers)} adapted layers, subnets of up to {largest:,} params (the paper's count)"
            held = "the supports at their largest ranks"
        elif genome is not None:  # a space of one subnet: a fixed adapter
            what = f"fixed adapter: {len(layers)} adapted layers, {genome.max_cost():,} params (the paper's count)"
            held = "its supports"
        else:
            params = count_params(self.model, self.subnet)
            what = f"one subnet: {len(layers)} adapted layers, {params:,} params trained (the paper's count)"
            held = "whole supports, of which the subnet trains its slices"
        return f"{what} and a head of {head:,}; {allocated:,} trainable elements allocated ({held})"

    def fit(self) -> None:
        t, args = self.trainer, self.args
        if self.dist.main:
            self._prepare_out()
        _logger.info(
            "%s; %d train / %d val %s", self._what_trains(), len(t.train_set), len(t.val_set), self.modality.unit
        )
        try:
            t.fit(
                stop_after=args.stop_after,
                on_epoch_end=lambda record: self._save(),
                on_interrupt=self._interrupted,
                handle_signals=True,
            )
        except DivergenceError as e:
            last = self.files.checkpoint
            kept = f"{last.name} is as it was" if last.exists() else "no checkpoint was written"
            raise DivergenceError(f"{e} (stopped without saving: {kept})") from None
        last = self.files.checkpoint
        if t.epoch < args.epochs:
            _logger.info("stopped after epoch %d of %d; continue with --resume", t.epoch, args.epochs)
        else:
            if self.subnet is not None:  # a retrained pick: the export folds the subnet it was trained as
                _logger.info("done: %s; next: glora-export --supernet %s (or python reparam.py ...)", last, last)
            else:
                _logger.info("done: %s; next: glora-search --supernet %s (or python search.py ...)", last, last)
