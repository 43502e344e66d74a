"""Supernet training (paper §3, Appendix A): one random subnet per step, AdamW, cosine schedule with warmup.

``python train_supernet.py`` with no arguments trains the embedded default (a ViT pretrained on digits 0-4,
adapted to digits 5-9) into ``runs/default/supernet``. Every epoch end writes ``last.pt`` atomically, then
``log.jsonl``; ``--resume`` continues exactly where the last completed epoch left off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_write_text
from .backbone import BackboneSpec, build_backbone, fingerprint
from .checkpoint import load_trainable, read_checkpoint, trainable_state, write_checkpoint
from .config import (
    ConfigError,
    add_progress_option,
    args_to_dict,
    make_parser,
    nonneg_float,
    nonneg_int,
    optional,
    parse_args,
    positive_float,
    positive_int,
    probability,
    save_config,
    start_or_resume,
    yaml_mapping,
)
from .data import DATASETS, DataSpec, Normalizer, input_config, make_loader
from .distributed import setup_distributed
from .evaluate import accuracy, autocast, resolve_device
from .inject import head_names, inject
from .space import GIFT_SHARING, SearchSpace
from .subnet import sample_subnet, set_subnet

__all__ = ["build_parser", "main", "space_from_args", "data_from_args", "RESUMABLE_OPTIONS"]

_logger = logging.getLogger(__name__)

# Options that may change when resuming (they do not alter what is computed); everything else comes from last.pt.
RESUMABLE_OPTIONS = {
    "epochs",
    "stop_after",
    "device",
    "workers",
    "progress",
    "resume",
    "force",
    "out",
    "compile",
    "compile_backend",
}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("train_supernet.py", "Train a GLoRA supernet: a random subnet per step over a frozen backbone.")
    g = p.add_argument_group("backbone")
    g.add_argument(
        "--model",
        default="local-dir:assets/digits-vit",
        help="timm name (e.g. vit_base_patch16_224.augreg_in21k), hf-hub:<repo> or local-dir:<folder>",
    )
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True, help="load the model's pretrained weights"
    )
    g.add_argument("--pretrained-file", default=None, help="load pretrained weights from this local file (offline)")
    g.add_argument("--img-size", type=optional(positive_int), default=None, help="input size, if not the model's")
    g.add_argument("--drop-path", type=probability, default=0.0, help="stochastic depth rate of the backbone")
    g.add_argument(
        "--model-kwargs",
        type=yaml_mapping,
        default={},
        help="more timm.create_model arguments as a YAML/JSON mapping, e.g. '{embed_dim: 32, depth: 2}'",
    )

    g = p.add_argument_group("search space")
    g.add_argument(
        "--lora-ranks", type=positive_int, nargs="*", default=[8, 4], help="LoRA ranks (paper: 8 4 | 4 2 | 2)"
    )
    g.add_argument("--gift-ranks", type=positive_int, nargs="*", default=[], help="GIFT ranks offered to A")
    g.add_argument("--gift-sharing", choices=GIFT_SHARING, default="type", help="which layers share a GIFT generator")
    g.add_argument("--targets", nargs="+", default=None, help="layer-name suffixes to adapt (default: all but heads)")
    g.add_argument("--targets-regex", default=None, help="regex the whole layer name must match (instead of --targets)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits", help="digits (embedded), vtab or folder")
    g.add_argument("--data-root", default=None, help="VTAB-1k root (<root>/<task>/...) or an ImageFolder tree")
    g.add_argument("--task", default=None, help="VTAB-1k task name, e.g. cifar")
    g.add_argument("--train-split", default="train", help="train split (VTAB-1k: train800 or a list file)")
    g.add_argument("--val-split", default="val", help="validation split: the search ranks subnets on it")
    g.add_argument("--test-split", default="test", help="test split, looked at once for the final pick")
    g.add_argument(
        "--val-fraction", type=probability, default=0.2, help="ImageFolder: per-class share held out for val"
    )
    g.add_argument("--test-fraction", type=probability, default=0.0, help="ImageFolder: per-class share for test")
    g.add_argument("--split-seed", type=nonneg_int, default=0, help="ImageFolder: seed of the stratified split")
    g.add_argument(
        "--cache-images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode and resize every image once and keep it in memory (uint8)",
    )
    g.add_argument("--workers", type=nonneg_int, default=2, help="data-loading workers when images are not cached")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=120)
    g.add_argument("--batch-size", type=positive_int, default=64)
    g.add_argument("--lr", type=positive_float, default=5e-3, help="peak learning rate (paper VTAB-1k: 5e-4 or 1e-4)")
    g.add_argument("--weight-decay", type=nonneg_float, default=1e-4)
    g.add_argument("--warmup-epochs", type=nonneg_float, default=2.0)
    g.add_argument("--warmup-lr", type=nonneg_float, default=1e-6)
    g.add_argument("--min-lr", type=nonneg_float, default=1e-6)
    g.add_argument("--smoothing", type=probability, default=0.0, help="label smoothing")
    g.add_argument("--clip-grad", type=optional(positive_float), default=None, help="max gradient norm")
    g.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 autocast on CUDA only")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the backbone between GLoRA layers (their subnet changes every step)",
    )
    g.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    g.add_argument("--seed", type=nonneg_int, default=0, help="seeds the head init, data order and subnet sampling")

    g = p.add_argument_group("output")
    g.add_argument("--out", default="runs/default/supernet", help="output folder (last.pt, log.jsonl, config.yaml)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    g.add_argument("--force", action="store_true", help="start over even if <out> already holds a checkpoint")
    g.add_argument(
        "--stop-after",
        type=optional(positive_int),
        default=None,
        help="stop (resumably) after this many epochs in this run, e.g. to fit a job time limit",
    )
    add_progress_option(g)
    return p


def space_from_args(args: argparse.Namespace) -> SearchSpace:
    return SearchSpace(
        lora_ranks=tuple(args.lora_ranks), gift_ranks=tuple(args.gift_ranks), gift_sharing=args.gift_sharing
    )


def data_from_args(args: argparse.Namespace) -> DataSpec:
    return DataSpec(
        dataset=args.dataset,
        data_root=args.data_root,
        task=args.task,
        train_split=args.train_split,
        val_split=args.val_split,
        test_split=args.test_split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        split_seed=args.split_seed,
        cache_images=args.cache_images,
    )


def _targets(args: argparse.Namespace) -> str | list[str] | None:
    if args.targets and args.targets_regex:
        raise ConfigError("give --targets or --targets-regex, not both")
    return args.targets_regex or (list(args.targets) if args.targets else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    last = Path(args.out) / "last.pt"
    args, ckpt = start_or_resume(
        parser,
        argv,
        args,
        RESUMABLE_OPTIONS,
        load=lambda: read_checkpoint(last),
        saved_config=lambda c: c.get("config", {}),
        existing=[last],
        what="a supernet checkpoint",
    )
    trainer = Trainer(args, ckpt)
    try:
        trainer.fit()
    finally:
        trainer.dist.close()
    return 0


class DivergenceError(RuntimeError):
    """The loss became NaN or inf; nothing non-finite was written."""

    user_facing = True  # reported as one line by the CLI


class Trainer:
    """Holds the run's state; ``fit`` trains from the start or from a checkpoint."""

    def __init__(self, args: argparse.Namespace, ckpt: dict[str, Any] | None = None) -> None:
        self.args = args
        self.out = Path(args.out)
        self.dist, self.device = setup_distributed(resolve_device(args.device))
        if not self.dist.main:
            logging.getLogger().setLevel(logging.WARNING)
        data_spec = data_from_args(args)
        space = space_from_args(args)
        self.targets = _targets(args)
        num_classes = data_spec.num_classes()
        kwargs: dict[str, Any] = dict(args.model_kwargs)
        if args.img_size:
            kwargs["img_size"] = args.img_size
        if args.drop_path:
            kwargs["drop_path_rate"] = args.drop_path
        self.spec = BackboneSpec(
            model=args.model,
            num_classes=num_classes,
            pretrained=args.pretrained,
            pretrained_file=args.pretrained_file,
            model_kwargs=kwargs,
        )
        torch.manual_seed(args.seed)  # the new head's init
        model = build_backbone(self.spec)
        self.heads = head_names(model)
        inject(model, space, self.targets)
        self.fingerprint = fingerprint(model)
        self.inputs = input_config(model)
        self.model = model.to(self.device)
        self.forward = torch.compile(self.model, backend=args.compile_backend) if args.compile else self.model
        self.normalize = Normalizer(self.inputs["mean"], self.inputs["std"]).to(self.device)
        self.data_spec = data_spec
        self.train_set = data_spec.load("train", self.inputs["input_size"])
        self.val_set = data_spec.load("val", self.inputs["input_size"])
        for name, s in (("train", self.train_set), ("val", self.val_set)):
            if len(s) == 0:
                raise ValueError(f"the {name} split is empty")
            if s.num_classes != num_classes:
                raise ValueError(f"the {name} split has {s.num_classes} classes, the model head {num_classes}")

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.dist.broadcast_params(self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=args.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_set) / args.batch_size)
        from timm.scheduler import CosineLRScheduler

        total = args.epochs * self.steps_per_epoch
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=total,
            lr_min=args.min_lr,
            warmup_t=min(round(args.warmup_epochs * self.steps_per_epoch), max(total - 1, 0)),
            warmup_lr_init=args.warmup_lr,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        self.rng = random.Random(args.seed)
        self.epoch = 0  # completed epochs
        self.step = 0
        self.batch = 0  # batches done in the current epoch (non-zero only after an interruption)
        self.partial = {"loss": 0.0, "count": 0, "seconds": 0.0}  # the current epoch's running totals
        self._stop = False
        self.log: list[dict[str, Any]] = []
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.scheduler.step_update(0)

    # ------------------------------------------------------------------ checkpointing
    def _restore(self, ckpt: dict[str, Any]) -> None:
        where = ckpt.get("path", "last.pt")
        if ckpt["fingerprint"] != self.fingerprint:
            raise ValueError(f"{where}: the backbone's weights differ from the ones this run was trained on")
        load_trainable(self.model, ckpt["trainable"], where)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        sched = dict(ckpt["scheduler"])
        sched.pop("t_initial", None)  # --epochs may grow on resume; the schedule follows the new length
        self.scheduler.load_state_dict(sched | {"t_initial": self.scheduler.t_initial})
        self.rng.setstate(_to_tuple(ckpt["rng"]["python"]))
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batch = int(ckpt.get("batch", 0))
        self.partial = dict(ckpt.get("partial", self.partial))
        self.log = list(ckpt.get("log", []))
        self.scheduler.step_update(self.step)
        where = f"epoch {self.epoch + 1}, batch {self.batch}" if self.batch else f"after epoch {self.epoch}"
        _logger.info("resuming %s %s (step %d)", self.out / "last.pt", where, self.step)

    def _save(self) -> None:
        """Rank 0 writes; the others wait, so a failed write stops everyone at the same epoch."""
        if not self.dist.main:
            self.dist.barrier()
            return
        write_checkpoint(
            self.out / "last.pt",
            {
                "backbone": self.spec.to_dict(),
                "fingerprint": self.fingerprint,
                "space": space_from_args(self.args).to_dict(),
                "targets": self.targets,
                "heads": self.heads,
                "data": self.data_spec.to_dict(),
                "input": {k: list(v) for k, v in self.inputs.items()},
                "trainable": trainable_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": {"python": self.rng.getstate(), "torch": torch.get_rng_state()},
                "epoch": self.epoch,
                "step": self.step,
                "batch": self.batch,
                "partial": self.partial,
                "config": args_to_dict(self.args),
                "log": self.log,
            },
        )
        atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.log))
        self.dist.barrier()

    # ------------------------------------------------------------------ loop
    def fit(self) -> None:
        args = self.args
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):  # left by a run killed in the middle of an atomic write
                stale.unlink(missing_ok=True)
            save_config(args, self.out / "config.yaml")
            if self.log:  # log.jsonl may lag last.pt if a run died between the two writes
                atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.log))
        n_train = sum(p.numel() for p in self.params)
        _logger.info(
            "supernet: %d adapted layers, %d trainable tensors' elements, %d train / %d val images",
            sum(1 for _ in _glora_layers(self.model)),
            n_train,
            len(self.train_set),
            len(self.val_set),
        )
        stop_at = args.epochs if not args.stop_after else min(args.epochs, self.epoch + args.stop_after)
        from tqdm.auto import tqdm

        progress = args.progress  # None: tqdm decides (bars only on a terminal)
        with self._stop_on_signals():
            while self.epoch < stop_at:
                start = time.time() - self.partial["seconds"]
                loss = self._train_epoch(tqdm, progress, start)
                val_acc = self._validate()
                self.epoch += 1
                self.batch = 0
                self.partial = {"loss": 0.0, "count": 0, "seconds": 0.0}
                record = {
                    "epoch": self.epoch,
                    "loss": round(loss, 6),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "val_acc": round(val_acc, 6),
                    "seconds": round(time.time() - start, 3),
                }
                self.log.append(record)
                self._save()
                _logger.info(
                    "epoch %d/%d  loss %.4f  lr %.2e  val_acc(random subnet) %.4f  %.1fs",
                    self.epoch,
                    args.epochs,
                    loss,
                    record["lr"],
                    val_acc,
                    record["seconds"],
                )
        if self.epoch < args.epochs:
            _logger.info("stopped after epoch %d of %d; continue with --resume", self.epoch, args.epochs)
        else:
            _logger.info("done: %s; next: python search.py --supernet %s", self.out / "last.pt", self.out / "last.pt")

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """Ctrl-C / SIGTERM ask for a stop at the next step boundary (then a resumable save); a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum, _frame):
            self._stop = True
            _logger.warning("%s: saving after the current step (send it again to abort)", signal.Signals(signum).name)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _train_epoch(self, tqdm, progress, start: float) -> float:
        args = self.args
        model = self.model
        model.train()
        loader, meta = make_loader(
            self.train_set,
            args.batch_size,
            shuffle=True,
            seed=args.seed * 1_000_003 + self.epoch,
            workers=args.workers,
            shard=self.dist.shard if self.dist.enabled else None,
            skip=self.batch,
        )
        total, count = self.partial["loss"], self.partial["count"]
        disable = _disable(progress) if self.dist.main else True
        bar = tqdm(
            zip(loader, meta),
            total=len(meta),
            desc=f"epoch {self.epoch + 1}/{args.epochs}",
            leave=False,
            disable=disable,
        )
        for (x, y), (global_n, weight) in bar:
            x = self.normalize(x.to(self.device, non_blocking=True))
            y = y.to(self.device, non_blocking=True)
            set_subnet(model, sample_subnet(model, self.rng))  # the same draw on every rank
            with autocast(self.device, args.amp):
                logits = self.forward(x)
            # This rank's share of the global batch's mean loss: summed over ranks it is the global mean.
            loss_sum = F.cross_entropy(logits.float(), y, label_smoothing=args.smoothing, reduction="sum") * weight
            loss = loss_sum / global_n
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.dist.all_reduce_grads(self.params)
            batch_loss, _ = self.dist.sum([loss_sum.item(), 0.0], self.device)
            if not math.isfinite(batch_loss):
                kept = "last.pt is as it was" if (self.out / "last.pt").exists() else "no checkpoint was written"
                raise DivergenceError(
                    f"loss became {batch_loss / global_n} at epoch {self.epoch + 1}, step {self.step + 1}; stopped "
                    f"without saving ({kept}); try a lower --lr or --clip-grad"
                )
            if args.clip_grad:
                nn.utils.clip_grad_norm_(self.params, args.clip_grad)
            self.optimizer.step()
            self.step += 1
            self.scheduler.step_update(self.step)
            total += batch_loss
            count += global_n
            self.batch += 1
            if self._stop_requested():
                self.partial = {"loss": total, "count": count, "seconds": time.time() - start}
                self._save()
                _logger.warning(
                    "interrupted at epoch %d, batch %d: %s saved; continue with --resume",
                    self.epoch + 1,
                    self.batch,
                    self.out / "last.pt",
                )
                raise KeyboardInterrupt
            bar.set_postfix(loss=f"{batch_loss / global_n:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
        return total / max(count, 1)

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not self.dist.enabled:
            return self._stop
        return self.dist.sum([1.0 if self._stop else 0.0], self.device)[0] > 0

    def _validate(self) -> float:
        set_subnet(self.model, sample_subnet(self.model, self.rng))
        part = self.val_set.subset(self.dist.shard(len(self.val_set))) if self.dist.enabled else self.val_set
        loader, _ = make_loader(part, max(self.args.batch_size, 256), shuffle=False, workers=self.args.workers)
        correct = accuracy(self.model, loader, self.normalize, self.device, self.args.amp) * len(part)
        correct, total = self.dist.sum([correct, float(len(part))], self.device)
        return correct / max(total, 1.0)


def _glora_layers(model: nn.Module):
    from .layer import GLoRALinear

    return (m for m in model.modules() if isinstance(m, GLoRALinear))


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _to_tuple(state: Any) -> Any:
    """Python's RNG state comes back from torch.load with lists where tuples were."""
    return tuple(_to_tuple(s) for s in state) if isinstance(state, (list, tuple)) else state
