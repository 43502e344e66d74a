"""What the studies share: a search's pick read back, a preset's choices, and the embedded task's pieces (its
backbone with a new head, training through the toolkit's loop, its metrics, a subnet trained alone)."""

from __future__ import annotations

from typing import Any

import torch

import glora
from glora.app import BackboneSpec, Recipe, build_backbone
from glora.app.data import load_digits
from glora.app.embedded import BACKBONE, digits_accuracy, digits_metrics, fit_digits

__all__ = ["pick_accuracy", "preset_choices", "backbone", "fit", "evaluate", "evaluate_metrics", "fixed_subnet"]


def pick_accuracy(final: dict[str, Any]) -> tuple[float, float | None]:
    """A search's final record: its pick's validation and test accuracy, whatever metric the search ranked by."""
    test = final.get("test_metrics") or {}
    return final["val_metrics"]["accuracy"], test.get("accuracy")


def preset_choices(name: str) -> list[str]:
    """A shipped ``-c`` preset's ``choices`` as ``SUPPORT=NAMES`` strings, checked as ``--choices`` checks them."""
    import yaml

    from glora.app.options.parsing import support_choices
    from glora.app.options.presets import resolve_config

    preset = yaml.safe_load(resolve_config(name).read_text(encoding="utf-8")) or {}
    return support_choices.from_yaml(preset.get("choices") or [], name)


def backbone() -> torch.nn.Module:
    """The embedded backbone with a new 5-class head (seeded by the caller)."""
    return build_backbone(BackboneSpec(BACKBONE, num_classes=5))


def fit(model, lr: float, epochs: int, seed: int, subnet: glora.Subnet | None = None) -> None:
    """The train command's recipe (AdamW wd 1e-4, cosine with 2 warmup epochs, batch 64), through its loop."""
    recipe = Recipe(epochs=epochs, lr=lr, seed=seed, amp="off", workers=0)
    fit_digits(model, load_digits("transfer", "train"), recipe, subnet=subnet)


def evaluate(model, split: str) -> float:
    return digits_accuracy(model, load_digits("transfer", split))


def evaluate_metrics(model, split: str) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a transfer split."""
    return digits_metrics(model, load_digits("transfer", split))


def fixed_subnet(
    seed: int, epochs: int, subnet_of, lr: float = 5e-3, split: str = "test", measure=evaluate
) -> tuple[float, int]:
    """Train one GLoRA subnet alone (stand-alone accuracy, or what ``measure(model, split)`` returns)."""
    torch.manual_seed(seed)
    model = backbone()
    glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4)))
    subnet = subnet_of(model)
    fit(model, lr, epochs, seed, subnet=subnet)
    return measure(model, split), glora.count_params(model, subnet)
