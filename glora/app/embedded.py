"""The embedded default backbone: a small ViT pretrained on digits 0-4, to be adapted to digits 5-9.

Everything the default run needs ships with the package (the backbone, ``embedded:digits-vit``, a timm folder in
``glora/app/assets``) or with a pip dependency (scikit-learn's digits), so it runs offline from any folder.
``scripts/make_embedded_backbone.py`` regenerates the backbone with :func:`pretrain` and reports the transfer task's
headroom (linear probe vs full fine-tuning); both train through the one training loop (:class:`Trainer`).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from torch import nn

from glora._io import publish_tree
from glora.subnet import Subnet

from .backbone import EMBEDDED_PREFIX
from .data import PIXELS, ImageModality, ImageSet, load_digits, make_loader
from .evaluate import accuracy, predict
from .tasks import Task
from .trainer import Augment, Recipe, Trainer

__all__ = [
    "ARCH",
    "ARCH_ARGS",
    "MEAN",
    "STD",
    "BACKBONE",
    "BACKBONE_DIR",
    "PRETRAIN_RECIPE",
    "pretrain",
    "fit_digits",
    "save_timm_folder",
    "transfer_headroom",
    "digits_accuracy",
    "digits_metrics",
]

_logger = logging.getLogger(__name__)

ARCH = "vit_tiny_patch16_224"
ARCH_ARGS = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4, "num_heads": 4}
MEAN, STD = (0.5,), (0.5,)
BACKBONE = f"{EMBEDDED_PREFIX}digits-vit"  # what --model names it
BACKBONE_DIR = Path(__file__).resolve().parent / "assets" / "digits-vit"
# Pretraining on digits 0-4: stronger weight decay and a one-pixel shift keep the tiny ViT from memorising 900 images.
PRETRAIN_RECIPE = Recipe(
    epochs=150, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=15, min_lr=1e-5, amp="off", workers=0
)


def _make(num_classes: int) -> nn.Module:
    import timm  # imported where used: the commands start without it

    return timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **ARCH_ARGS)


def shift(inputs: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    """Random translation by up to one pixel: the only augmentation digits need."""
    x = inputs[PIXELS]
    return {PIXELS: torch.roll(x, (rng.randint(-1, 1), rng.randint(-1, 1)), dims=(2, 3))}


def _inputs() -> ImageModality:
    """The digits as the backbone takes them: 8x8 grey levels normalised with the digits' mean and std."""
    return ImageModality({"input_size": (1, 8, 8), "mean": MEAN, "std": STD})


def fit_digits(
    model: nn.Module, data: ImageSet, recipe: Recipe, *, subnet: Subnet | None = None, augment: Augment | None = None
) -> None:
    """Train on a digits split on the CPU through the one training loop (quietly: no progress bars)."""
    cpu = torch.device("cpu")
    Trainer(model, data, recipe, modality=_inputs(), device=cpu, subnet=subnet, augment=augment, progress=False).fit()


def digits_accuracy(model: nn.Module, data: ImageSet) -> float:
    loader, _ = make_loader(data, 512, shuffle=False)
    return accuracy(model, loader, _inputs(), torch.device("cpu"))


def digits_metrics(model: nn.Module, data: ImageSet) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a digits split: the loss tells apart models whose accuracies tie on a
    few hundred images (rank-faithfulness measurements)."""
    loader, _ = make_loader(data, 512, shuffle=False)
    logits, labels = predict(model, loader, _inputs(), torch.device("cpu"))
    task = Task(num_classes=logits.shape[-1])
    metrics = task.compute(task.stats(logits, labels))
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"]}


def pretrain(*, epochs: int = PRETRAIN_RECIPE.epochs, seed: int = 0) -> tuple[nn.Module, float]:
    """Train the backbone on digits 0-4; returns (model, validation accuracy on 0-4)."""
    torch.manual_seed(seed)
    model = _make(5)
    recipe = Recipe(**{**vars(PRETRAIN_RECIPE), "epochs": epochs, "seed": seed})
    fit_digits(model, load_digits("pretrain", "train"), recipe, augment=shift)
    return model, digits_accuracy(model, load_digits("pretrain", "val"))


def save_timm_folder(model: nn.Module, folder: str | Path) -> None:
    """Save in timm's hub layout (config.json + model.safetensors) with the digits' mean/std."""
    import timm

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
        if mode == "linear_probe":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("head."))
        fit_digits(model, train, Recipe(epochs=epochs, lr=lr, seed=seed, amp="off", workers=0))
        out[f"{mode}_val"] = digits_accuracy(model, val)
        out[f"{mode}_test"] = digits_accuracy(model, test)
    return out
