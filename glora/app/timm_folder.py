"""A folded model as a plain timm folder (``local-dir:`` layout), and the checks that make it trustworthy: finite
weights, outputs against the supernet, parameters and FLOPs against the base model, interleaved latency. The
``glora-export`` command (:mod:`glora.app.commands.export`, script ``reparam.py``) runs them in order.

The folder is timm's hub layout (config.json + model.safetensors, written by ``timm.models.save_for_hf``), so
``timm.create_model("local-dir:<folder>", pretrained=True)`` loads it without this toolkit.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import DiskFullError, is_out_of_space, publish_tree

__all__ = [
    "count_flops",
    "max_difference",
    "check_finite",
    "export_timm_folder",
    "staged_folder",
    "remove_stale",
    "measure_latency",
]

_logger = logging.getLogger(__name__)


# How a model is run on an input: ``call(model, x)`` (a Modality passes named inputs; by default ``model(x)``).
Call = Callable[[Callable[..., torch.Tensor], Any], torch.Tensor]


def _plain_call(model: Callable[..., torch.Tensor], x: Any) -> torch.Tensor:
    return model(x)


def count_flops(model: nn.Module, x: Any, call: Call | None = None) -> int:
    """FLOPs of one forward pass (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        (call or _plain_call)(model, x)
    return int(counter.get_total_flops())


def max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, that divided by max |b|)."""
    diff = (a.float() - b.float()).abs().max().item()
    return diff, diff / max(b.float().abs().max().item(), 1e-12)


def check_finite(model: nn.Module) -> None:
    """``ValueError`` naming the first tensor that holds NaN or inf: a broken model is never exported."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"folded tensor {name!r} holds NaN or inf; refusing to export a broken model")


def export_timm_folder(
    model: nn.Module, folder: Path, inputs: Mapping[str, Any], label_names: Sequence[str] | None = None
) -> None:
    """timm's own save helper, with the preprocessing the supernet was trained with (squash resize, mean/std) and
    the class names where timm keeps them (``label_names`` in config.json), so outputs map back to classes."""
    data_config = {"mean": tuple(inputs["mean"]), "std": tuple(inputs["std"]), "crop_pct": 1.0, "crop_mode": "squash"}
    model_config: dict[str, Any] = {"pretrained_cfg": {"tag": "glora"}}
    if label_names:
        if len(label_names) != getattr(model, "num_classes", len(label_names)):
            raise ValueError(f"{len(label_names)} class names for a model with {model.num_classes} classes")
        model_config["label_names"] = list(label_names)
    import timm  # imported where used: the commands start without it

    timm.models.save_for_hf(
        model, str(folder), safe_serialization=True, model_config=model_config, data_config=data_config
    )


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A private temporary folder beside ``target`` that replaces it on clean exit (and is removed on error).

    The old ``target`` is only removed once the new one is in place, so a failure at any point leaves either the old
    folder or the new one, never a mix.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        publish_tree(tmp)
        _replace_dir(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_out_of_space(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(target) from e
        raise


def remove_stale(target: Path) -> None:
    """What a killed export left beside ``target`` (the caller holds its output lock, so no live export owns them):
    half-written temporary folders are removed; a previous export set aside for the swap is put back when the swap
    never happened (no ``target``), else removed."""
    stale = sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.*") if p.is_dir())
    for path in stale:
        kept = path.name.startswith(f".{target.name}.old-") and not target.exists()
        if kept:
            os.replace(path, target)
            _logger.warning("restored %s from an interrupted export's swap", target)
        else:
            shutil.rmtree(path, ignore_errors=True)
    if stale:
        _logger.info("removed what an interrupted export left beside %s", target)


def _replace_dir(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


def measure_latency(
    models: Mapping[str, Callable[..., torch.Tensor]],
    x: Any,
    rounds: int,
    warmup: int = 1,
    *,
    call: Call | None = None,
    unit: str = "images",
) -> dict[str, Any]:
    """Median milliseconds per forward of each model on the same batch ``x`` (a tensor, or named inputs run through
    ``call``), interleaved; throughput in ``unit`` per second.

    Every round runs each model once, in an order rotated round by round, so drifting clocks, caches and other
    load touch all models alike (the paper's Table 3 compares inference cost; a ratio measured this way is what
    carries over between machines). ``warmup`` untimed rounds go first.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    names = list(models)
    call = call or _plain_call
    times: dict[str, list[float]] = {n: [] for n in names}
    first = x if isinstance(x, torch.Tensor) else next(iter(x.values()))
    rows = len(first)
    sync = torch.cuda.synchronize if first.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for r in range(warmup + rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                sync()
                start = time.perf_counter()
                call(models[name], x)
                sync()
                if r >= warmup:
                    times[name].append(time.perf_counter() - start)
    out: dict[str, Any] = {
        "device": str(first.device),
        "batch": rows,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "interleaved": True,
    }
    for name in names:
        ms = statistics.median(times[name]) * 1e3
        out[name] = {"ms_per_batch": round(ms, 3), f"{unit}_per_s": round(rows / ms * 1e3, 2)}
    return out
