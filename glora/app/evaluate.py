"""Evaluation of a model on a split (a task's metrics, or top-1 accuracy), shared by training, search and export."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from glora.quantized import is_quantized_model

from .data.batch import Batch, Modality
from .tasks import Task

__all__ = ["AMP_MODES", "accuracy", "autocast", "resolve_device", "predict", "split_stats", "compile_model"]

_logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; anything else must be a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def compile_model(
    model: nn.Module,
    device: torch.device,
    enabled: bool | None = None,
    mode: str | None = None,
    backend: str = "inductor",
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``torch.compile(model)`` when ``enabled`` (None: on CUDA only), else None (run the model eagerly).

    GLoRA layers trace their static path, so one graph serves every subnet: switching subnets between steps, or
    evaluating search candidates under ``glora.folded``, never recompiles. With CUDA the default mode is
    ``reduce-overhead`` (CUDA graphs: a step replays without the host dispatching each kernel).
    """
    if is_quantized_model(model):  # bitsandbytes' matmuls break the graph: a quantized base runs eagerly
        if enabled:
            raise ValueError("--compile: a quantized base (--quantize) runs eagerly; leave out --compile")
        return None
    if not (device.type == "cuda" if enabled is None else enabled):
        return None
    kwargs: dict = {"backend": backend}
    if backend == "inductor":
        kwargs["mode"] = mode or ("reduce-overhead" if device.type == "cuda" else "default")
    _logger.info(
        "compiling the supernet on first use (torch.compile %s)", ", ".join(f"{k}={v}" for k, v in kwargs.items())
    )
    return torch.compile(model, **kwargs)


# --amp: mixed precision of forward passes (training steps and evaluation).
AMP_MODES = ("auto", "bf16", "off")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for ``amp`` in (auto, bf16); a no-op on the CPU or with ``off``."""
    if amp == "off" or device.type != "cuda":
        if amp == "bf16" and device.type != "cuda":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    modality: Modality,
    device: torch.device,
    amp: str = "off",
    forward: Callable[..., torch.Tensor] | None = None,
):
    """(logits, labels) over ``loader``'s batches, in eval mode (the model's mode is restored). ``forward`` computes
    the logits (default: ``model``; e.g. its ``torch.compile`` wrapper); ``modality`` places and passes the inputs."""
    was_training = model.training
    model.eval()
    forward = model if forward is None else forward
    outs, labels = [], []
    try:
        for inputs, targets in loader:
            with autocast(device, amp):
                outs.append(modality(forward, modality.place(inputs, device)).float())
            labels.append(targets["labels"].to(device))
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def accuracy(
    model: nn.Module,
    loader: Iterable[Batch],
    modality: Modality,
    device: torch.device,
    amp: str = "off",
    forward: Callable[..., torch.Tensor] | None = None,
) -> float:
    logits, labels = predict(model, loader, modality, device, amp, forward)
    return (logits.argmax(-1) == labels).float().mean().item() if len(labels) else 0.0


@torch.no_grad()
def split_stats(
    model: nn.Module,
    loader: Iterable[Batch],
    modality: Modality,
    device: torch.device,
    task: Task,
    amp: str = "off",
    forward: Callable[..., torch.Tensor] | None = None,
    keep: Sequence[bool] | None = None,
) -> list[torch.Tensor]:
    """``task.stats`` of every batch of ``loader``, concatenated (on the device): what ``task.compute`` turns into
    the split's metrics. Batch by batch, so a language model's logits are never held for the whole split.
    ``keep[i]`` False: batch i runs (a sharded model's ranks must all take part in every forward) but is not
    counted (a rank whose share of a small last batch was empty)."""
    was_training = model.training
    model.eval()
    forward = model if forward is None else forward
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        for i, (inputs, targets) in enumerate(loader):
            with autocast(device, amp):
                out = modality(forward, modality.place(inputs, device))
            if keep is None or keep[i]:
                parts.append(task.stats(out, {k: v.to(device, non_blocking=True) for k, v in targets.items()}))
    finally:
        model.train(was_training)
    if not parts:
        return list(task.empty_stats())
    return [torch.cat(column) for column in zip(*parts)]
