"""The embedded default backbone: a small ViT pretrained on digits 0-4, to be adapted to digits 5-9.

Everything the default run needs ships with the project (the backbone, ``assets/digits-vit``) or with a pip
dependency (scikit-learn's digits), so it runs offline. ``scripts/make_embedded_backbone.py`` regenerates the
backbone with :func:`pretrain` and reports the transfer task's headroom (linear probe vs full fine-tuning).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ._io import publish_tree
from .data import ImageSet, Normalizer, load_digits

__all__ = ["ARCH", "ARCH_ARGS", "MEAN", "STD", "pretrain", "save_timm_folder", "transfer_headroom"]

_logger = logging.getLogger(__name__)

ARCH = "vit_tiny_patch16_224"
ARCH_ARGS = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 4}
MEAN, STD = (0.5,), (0.5,)


def _make(num_classes: int) -> nn.Module:
    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **ARCH_ARGS)


def _shift(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Random translation by up to one pixel: the only augmentation digits need."""
    return torch.roll(x, (rng.randint(-1, 1), rng.randint(-1, 1)), dims=(2, 3))


def _fit(model: nn.Module, data: ImageSet, params, *, epochs: int, lr: float, seed: int, augment: bool) -> None:
    normalize = Normalizer(MEAN, STD)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05 if augment else 1e-4)
    batch = 64
    steps = epochs * -(-len(data) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = normalize(data.images[idx])
            x = _shift(x, rng) if augment else x
            loss = F.cross_entropy(model(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def _accuracy(model: nn.Module, data: ImageSet) -> float:
    model.eval()
    return (model(Normalizer(MEAN, STD)(data.images)).argmax(-1) == data.labels).float().mean().item()


def pretrain(*, epochs: int = 150, lr: float = 2e-3, seed: int = 0) -> tuple[nn.Module, float]:
    """Train the backbone on digits 0-4; returns (model, validation accuracy on 0-4)."""
    torch.manual_seed(seed)
    model = _make(5)
    _fit(model, load_digits("pretrain", "train"), model.parameters(), epochs=epochs, lr=lr, seed=seed, augment=True)
    return model, _accuracy(model, load_digits("pretrain", "val"))


def save_timm_folder(model: nn.Module, folder: str | Path) -> None:
    """Save in timm's hub layout (config.json + model.safetensors) with the digits' mean/std."""
    timm.models.save_for_hf(
        model,
        str(folder),
        safe_serialization=True,
        model_config={"pretrained_cfg": {"tag": "glora_digits_0to4"}},
        data_config={"mean": MEAN, "std": STD, "crop_pct": 1.0},
    )
    publish_tree(folder)


def transfer_headroom(backbone: nn.Module, *, epochs: int = 30, seed: int = 0) -> dict[str, float]:
    """Val/test accuracy on digits 5-9 of a linear probe (head only) and of full fine-tuning."""
    train, val, test = (load_digits("transfer", s) for s in ("train", "val", "test"))
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    out = {}
    for mode, lr in (("linear_probe", 1e-2), ("full_finetune", 1e-3)):
        torch.manual_seed(seed)
        model = _make(5)
        model.load_state_dict(state, strict=False)
        params = model.head.parameters() if mode == "linear_probe" else model.parameters()
        _fit(model, train, list(params), epochs=epochs, lr=lr, seed=seed, augment=False)
        out[f"{mode}_val"] = _accuracy(model, val)
        out[f"{mode}_test"] = _accuracy(model, test)
    return out
