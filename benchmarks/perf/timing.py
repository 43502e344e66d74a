"""What the performance benchmarks share: the workload options, the methods they time (GLoRA supernets, fixed
subnets, bias-only, PEFT's LoRA and GLoRA), interleaved timing, memory peaks and the step table.

They print ratios measured side by side in one process (methods interleaved round by round, medians), so background
noise hits every method alike. PEFT baselines need ``pip install peft`` (benchmarks/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import glora

from ..common import add_json_arg

__all__ = [
    "add_workload_args",
    "sync",
    "Method",
    "build_method",
    "linear_targets",
    "peft_available",
    "interleaved",
    "saved_for_backward_mib",
    "peak_above_base",
    "peak_in_own_process",
    "step_table",
]


def add_workload_args(p: argparse.ArgumentParser, model: str, batch_size: int, classes: bool = True) -> None:
    """The options every benchmark shares (model, batch, image size, GLoRA ranks, device, AMP), so they read alike."""
    p.add_argument("--model", default=model)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--img-size", type=int, default=224)
    if classes:
        p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="auto: bf16 on CUDA")
    add_json_arg(p)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Method:
    """A model set up for one fine-tuning method, plus what to do before each training step."""

    name: str
    model: nn.Module
    before_step: Callable[[], None] = field(default=lambda: None)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def linear_targets(model: nn.Module) -> list[str]:
    heads = set(glora.head_names(model))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in heads]


def build_method(name: str, make: Callable[[], nn.Module], ranks=(8, 4), seed: int = 0) -> Method:
    """bias-only | glora-supernet (manual path, formerly "fused") | glora-static (the compiled graph's path, eager)
    | glora-reference (plain autograd) | glora-lora8 | peft-lora | peft-glora."""
    torch.manual_seed(seed)
    model = make()
    if name == "bias-only":
        heads = glora.head_names(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("bias") or any(n.startswith(h + ".") for h in heads))
        return Method(name, model)
    if name.startswith("glora"):
        glora.inject(model, glora.SearchSpace(lora_ranks=tuple(ranks)))
        if name == "glora-lora8":
            glora.set_subnet(model, glora.make_subnet(model, B=f"lora_{max(ranks)}"))
            return Method(name, model)
        if name in ("glora-reference", "glora-static"):
            glora.set_execution(model, path="autograd" if name == "glora-reference" else "static")
        rng = random.Random(seed)
        return Method(name, model, lambda: glora.set_subnet(model, glora.sample_subnet(model, rng)))
    if name.startswith("peft"):
        import peft

        targets = linear_targets(model)
        heads = glora.head_names(model)
        if name == "peft-lora":
            config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=targets, modules_to_save=heads)
        elif name == "peft-glora":
            config = peft.GloraConfig(
                r=8,
                target_modules=targets,
                config_A_B="lora",
                config_C="lora",
                config_D_E="vector",
                modules_to_save=heads,
            )
        else:
            raise ValueError(name)
        return Method(name, peft.get_peft_model(model, config))
    raise ValueError(f"unknown method {name!r}")


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int, device: torch.device) -> dict:
    """Median seconds per call of each function, running them round-robin."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def saved_for_backward_mib(model: nn.Module, run: Callable[[], torch.Tensor]) -> float:
    """MiB of tensors autograd keeps for backward (parameters excluded), counted once per storage."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params) / 2**20


def _rss_mib(field: str) -> float:
    for line in open("/proc/self/status", encoding="utf-8"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def peak_above_base(step: Callable[[], None], device: torch.device, steps: int = 3) -> float:
    """Peak MiB of ``steps`` training steps above what is already held (CUDA: allocated; CPU: RSS, Linux), so
    optimizer state, gradients and activations are what is counted."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")  # reset the RSS high-water mark to the current RSS
    base = _rss_mib("VmRSS")
    for _ in range(steps):
        step()
    return _rss_mib("VmHWM") - base


def peak_in_own_process(benchmark: str, method: str, workload: list[str]) -> float | None:
    """``python -m benchmarks.perf.<benchmark> --one <method> <workload>`` in a fresh process: its printed peak MiB
    (None when that process failed), so no method inherits another's allocator high-water mark."""
    cmd = [sys.executable, "-m", f"benchmarks.perf.{benchmark}", "--one", method, *workload]
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"] if out.returncode == 0 else None


def step_table(
    trainable: dict[str, int],
    times: dict[str, float],
    saved: dict[str, float],
    peaks: dict[str, float | None],
    *,
    floor: str,
    unit: str,
    per_step: int,
) -> dict[str, dict[str, Any]]:
    """Print one row per method (trainable, step ms, ``unit``/s, ratio to the ``floor`` method, saved and peak
    memory) and return the rows for the JSON record (keys ``<unit>_per_s`` and ``vs_<floor>``)."""
    width = max(16, *(len(m) + 2 for m in times))
    vs = f"vs {floor}"
    header = f"{'method':{width}s} {'trainable':>10s} {'step ms':>9s} {unit + '/s':>9s} {vs:>{len(vs) + 2}s}"
    print(header + f" {'saved MiB':>10s}" + (f" {'peak +MiB':>9s}" if peaks else ""))
    base = times.get(floor)
    rows = {}
    for m, t in times.items():
        ratio = t / base if base else float("nan")
        key = floor.replace("-", "_")
        rows[m] = {
            "trainable": trainable[m],
            "step_ms": t * 1e3,
            f"{unit}_per_s": per_step / t,
            f"vs_{key}": ratio,
            "saved_mib": saved[m],
            "peak_mib": peaks.get(m),
        }
        line = f"{m:{width}s} {trainable[m]:>10,d} {t * 1e3:9.1f} {per_step / t:9.1f} {ratio:{len(vs) + 1}.2f}x"
        line += f" {saved[m]:10.1f}"
        print(line + (f" {peaks[m]:9.0f}" if peaks.get(m) else (" " * 10 if peaks else "")))
    return rows
