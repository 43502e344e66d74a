"""Options of how a command runs (device, compilation, execution path, sharding, progress bars): none of them
changes what it computes, so they may change when a run resumes."""

from __future__ import annotations

import argparse

from glora import paths

from ..data.loading import DATA_ON_DEVICE

__all__ = ["add_progress_option", "add_runtime_options", "COMPILE_MODES"]


def add_progress_option(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``; the default (None) shows bars only on a terminal, so logs stay clean."""
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only on a terminal)",
    )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_runtime_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """How a command runs the supernet (none of these change what it computes, so they may change on resume)."""
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the whole supernet (one graph for every subnet: the GLoRA layers' static path); "
        "default: on with CUDA, off on the CPU",
    )
    group.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile mode (inductor); default: reduce-overhead (CUDA graphs) with CUDA, default on the CPU",
    )
    group.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    group.add_argument(
        "--execution",
        type=lambda name: paths.ALIASES.get(name, name),  # the old name "fused" still reads as "manual"
        choices=paths.path_names(),
        default="auto",
        help="how GLoRA layers run eagerly: manual (hand-written backward), static (the compiled graph's math), "
        "autograd; auto = manual (a compiled model always runs static)",
    )
    group.add_argument(
        "--fsdp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="under torchrun, shard the backbone and the supports over the processes (FSDP2 fully_shard per block): "
        "for a model larger than one device; eager (static path), checkpoints stay whole",
    )
    group.add_argument(
        "--data-on-device",
        choices=DATA_ON_DEVICE,
        default="auto",
        help="keep the cached rows (uint8 images, token fields) on the accelerator (auto: when they take at most a "
        "quarter of it)",
    )
