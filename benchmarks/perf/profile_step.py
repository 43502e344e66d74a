"""Where a training step's time goes: host (Python, dispatch) vs device kernels, syncs, and the costliest ops.

    python -m benchmarks.perf.profile_step [--model vit_base_patch16_224] [--batch-size 64] [--methods ...] [--out DIR]

On a GPU a step is fast enough that the host can become the bottleneck: when the wall time per step is well above
the kernel time, extra launches and host-device syncs (not FLOPs) are what a method costs. "aten ops" counts the
operator calls the host dispatches per step (nested calls included; measurable on a CPU too): a compiled model
(``NAME+compile``) runs most of its step as generated kernels, so it dispatches far fewer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from glora.app.evaluate import resolve_device

from ..common import machine, write_json
from .timing import add_workload_args, sync
from .train_step import ALL, method_name, setup

__all__ = ["main"]

SYNC_OPS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")  # host waits for the device


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(p, "vit_base_patch16_224", 64)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["bias-only", "glora-supernet", "glora-supernet+compile", "glora-lora8", "peft-lora"],
        type=method_name,
        help=f"of {', '.join(ALL)}, each optionally +compile",
    )
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=None, help="write each method's op tables here")
    args = p.parse_args()
    args.compile, args.compile_mode = False, None
    return args


def _kernel_us(avgs) -> float:
    """Summed time of device-side events only (kernels, memcpy), so host ops that launch them are not counted twice."""
    total = 0.0
    for a in avgs:
        if getattr(a, "device_type", None) == DeviceType.CUDA:
            total += getattr(a, "self_device_time_total", None) or getattr(a, "self_cuda_time_total", 0.0)
    return total


def main() -> None:
    args = parse()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device.type}, amp {args.amp}")
    print(f"model {args.model}, batch {args.batch_size}")
    head = f"{'method':24s} {'wall ms':>8s} {'kernels ms':>10s} {'host-bound':>10s} {'syncs':>6s} {'subnet ms':>9s}"
    print(head + f" {'aten ops':>9s}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    rows = {}
    for name in args.methods:
        method, _, step = setup(args, name, device)
        for _ in range(3):
            step()
        sync(device)
        walls = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            sync(device)
            walls.append(time.perf_counter() - start)
        t0 = time.perf_counter()
        for _ in range(20):
            method.before_step()
        subnet_ms = (time.perf_counter() - t0) / 20 * 1e3
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            sync(device)
        avgs = prof.key_averages()
        kernels = _kernel_us(avgs) / 1e3 / args.steps
        syncs = (sum(a.count for a in avgs if a.key in SYNC_OPS) - (device.type == "cuda")) / args.steps
        wall = statistics.median(walls) * 1e3
        ops = sum(a.count for a in avgs if a.key.startswith("aten::")) / args.steps
        rows[name] = {"wall_ms": wall, "subnet_ms": subnet_ms, "aten_ops_per_step": ops}
        if device.type == "cuda":
            rows[name] |= {"kernel_ms": kernels, "syncs_per_step": syncs}
        if device.type == "cuda":
            bound = "yes" if kernels < 0.8 * wall else "no"
            print(f"{name:24s} {wall:8.1f} {kernels:10.1f} {bound:>10s} {syncs:6.0f} {subnet_ms:9.2f} {ops:9.0f}")
        else:  # on CPU the ops are the kernels: there is no separate device timeline to compare against
            print(f"{name:24s} {wall:8.1f} {'-':>10s} {'-':>10s} {'-':>6s} {subnet_ms:9.2f} {ops:9.0f}")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            text = avgs.table(sort_by="self_cpu_time_total", row_limit=25)
            if device.type == "cuda":
                text += "\n" + avgs.table(sort_by="self_cuda_time_total", row_limit=25)
            (out / f"profile_{name}.txt").write_text(text)
        del method, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_json(args.json, "profile_step", args, rows)


if __name__ == "__main__":
    main()
