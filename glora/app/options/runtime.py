"""How and where a command computes (device, precision, compilation, execution path, sharding, data loading, progress
bars): the options training and the search share, declared once. Only ``--amp`` changes what is computed; the others
may change when a run resumes."""

from __future__ import annotations

from dataclasses import dataclass

from glora import paths

from ..data.loading import DATA_ON_DEVICE
from ..declared import option
from ..evaluate import AMP_MODES

__all__ = ["Runtime", "COMPILE_MODES"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _execution(name: str) -> str:
    """An execution path's name (the old name "fused" still reads as "manual")."""
    return paths.ALIASES.get(name, name)


@dataclass
class Runtime:
    """How and where a command computes; the values of ``glora-train`` and ``glora-search`` alike."""

    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", resume="may-change")
    amp: str = option("auto", "auto: bf16 autocast on CUDA only", choices=AMP_MODES)
    workers: int = option(2, "data-loading workers when images are not cached", min=0, resume="may-change")
    compile: bool | None = option(
        None,
        "torch.compile the whole supernet (one graph for every subnet: the GLoRA layers' static path); "
        "default: on with CUDA, off on the CPU",
        resume="may-change",
    )
    compile_mode: str | None = option(
        None,
        "torch.compile mode (inductor); default: reduce-overhead (CUDA graphs) with CUDA, default on the CPU",
        choices=COMPILE_MODES,
        resume="may-change",
    )
    compile_backend: str = option("inductor", "torch.compile backend", resume="may-change")
    execution: str = option(
        "auto",
        "how GLoRA layers run eagerly: manual (hand-written backward), static (the compiled graph's math), "
        "autograd; auto = manual (a compiled model always runs static)",
        type=_execution,
        choices=paths.path_names(),
        resume="may-change",
    )
    fsdp: bool = option(
        False,
        "under torchrun, shard the backbone and the supports over the processes (FSDP2 fully_shard per block): "
        "for a model larger than one device; eager (static path), checkpoints stay whole",
        resume="may-change",
    )
    data_on_device: str = option(
        "auto",
        "keep the cached rows (uint8 images, token fields) on the accelerator (auto: when they take at most a "
        "quarter of it)",
        choices=DATA_ON_DEVICE,
        resume="may-change",
    )
    progress: bool | None = option(None, "progress bars (default: only on a terminal)", resume="may-change")
