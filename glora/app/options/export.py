"""The options of ``glora-export`` / ``reparam.py``: its own, and the ones it shares with the search (the data root
and the extra evaluation sets, data-loading workers, progress bars)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..declared import Group, declared, option
from . import Command, Runtime, program_name
from .search import Evaluation

__all__ = ["build_parser", "ExportOptions", "DEFAULT_SUBNET"]

DEFAULT_SUBNET = "runs/default/search/subnet.yaml"


@dataclass
class ExportOptions:
    """What is folded, where it goes, and how it is checked."""

    supernet: str = option("runs/default/supernet/last.pt", "checkpoint from train_supernet.py")
    subnet: str | None = option(
        None,
        "subnet YAML from search.py (default: the subnet the checkpoint was trained as, when glora-train retrained "
        f"one with --subnet; else {DEFAULT_SUBNET})",
    )
    out: str = option("runs/default/export", "export folder (timm local-dir or save_pretrained)")
    force: bool = option(False, "replace --out if it already exists", action="store_true")
    adapter_only: bool = option(
        False,
        "write the pick's adapter folder (glora_adapter.json + adapter.safetensors: the supports the subnet reads and "
        "the head) instead of the folded model: glora.load_adapter(base, folder) on the base model rebuilds it",
        action="store_true",
    )
    format: str = option(
        "glora",
        "with --adapter-only: glora (this toolkit's folder) or peft (HF PEFT's GLoRA format, which PeftModel loads; "
        "every adapted layer must take the same choices)",
        choices=("glora", "peft"),
    )
    verify_examples: int = option(
        64, "real validation examples (images or sequences) the folded model is compared with the supernet on", min=1
    )
    verify_images: int | None = option(None, argparse.SUPPRESS, min=1)  # the old name of --verify-examples
    tolerance: float = option(1e-4, "largest allowed |folded - supernet| relative to the largest logit", min=0)
    min_agreement: float = option(
        0.99,
        "a quantized base (--quantize): the least share of verification predictions (classes, or next tokens) the "
        "folded model must make as the quantized supernet does (the outputs cannot be equal once the base is "
        "dequantized)",
        min=0,
        max=1,
    )
    latency_rounds: int = option(
        5,
        "timed forwards of the folded model, the unfolded supernet and the base model on the verification batch, "
        "interleaved, recorded in glora_export.json (0: skip)",
        min=0,
    )
    batch_size: int = option(256, "batch size of the --eval-set evaluations", min=1)
    device: str = option("cpu", "device for the checks (the export is always saved from CPU)")


def build_parser() -> Command:
    """``glora-export``'s options."""
    return Command(
        program_name("reparam.py", "glora-export"),
        "Fold a searched subnet into plain weights and export a vanilla timm (or transformers) model.",
        [
            Group.of("", ExportOptions),
            Group(
                "evaluation",
                [
                    *declared(Evaluation, only=("data_root", "eval_set")),
                    *declared(Runtime, only=("workers", "progress")),
                ],
            ),
        ],
    )
