"""Top-1 accuracy of a model on a split, shared by training, search and export."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["accuracy", "autocast", "resolve_device", "predict"]


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


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for ``amp`` in (auto, bf16); a no-op on the CPU or with ``off``."""
    if amp == "off" or device.type != "cuda":
        if amp == "bf16" and device.type != "cuda":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, normalize: nn.Module, device: torch.device, amp: str = "off"):
    """(logits, labels) over ``loader``, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    try:
        for x, y in loader:
            with autocast(device, amp):
                outs.append(model(normalize(x.to(device, non_blocking=True))).float())
            labels.append(y.to(device))
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def accuracy(
    model: nn.Module, loader: DataLoader, normalize: nn.Module, device: torch.device, amp: str = "off"
) -> float:
    logits, labels = predict(model, loader, normalize, device, amp)
    return (logits.argmax(-1) == labels).float().mean().item() if len(labels) else 0.0
