"""Supernet training step vs bias-only tuning, PEFT LoRA r=8 and PEFT GLoRA, on the same timm ViT and batch.

    python -m benchmarks.perf.train_step [--model vit_small_patch16_224] [--batch-size 32] [--rounds 10] [--peak]

Bias-only tuning (biases + head train) is the floor for any method that adapts every layer: its backward still
runs through every layer. The GLoRA supernet draws a new random subnet every step (ranks {8, 4} by default), as
training does. Also shown: the same supernet on plain autograd (``glora-reference``, the manual path switched
off) and a fixed GLoRA subnet equal to LoRA r=8 (B = lora_8). Memory: tensors kept for backward, averaged over
random subnets (in process), and with --peak each method's peak memory in a process of its own (CPU: peak RSS;
CUDA: max allocated), counted above what the built model already holds, so optimizer state, gradients and
activations are what differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from glora.app.evaluate import autocast, resolve_device
from glora.app.trainer import make_adamw

from ..common import machine, write_json
from .timing import (
    add_workload_args,
    build_method,
    interleaved,
    peak_above_base,
    peak_in_own_process,
    peft_available,
    saved_for_backward_mib,
    step_table,
)

__all__ = ["ALL", "setup", "main"]

ROOT = Path(__file__).resolve().parent.parent

ALL = ["bias-only", "glora-supernet", "glora-static", "glora-reference", "glora-lora8", "peft-lora", "peft-glora"]


def method_name(text: str) -> str:
    """A method of ALL, optionally with ``+compile`` (that method's model under torch.compile)."""
    base, plus, tag = text.partition("+")
    if base not in ALL or (plus and tag != "compile"):
        raise argparse.ArgumentTypeError(
            f"unknown method {text!r}; methods: {', '.join(ALL)}, each optionally +compile"
        )
    return text


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(p, "vit_small_patch16_224", 32)
    p.add_argument("--methods", nargs="+", default=ALL, type=method_name, help="ALL's names, each optionally +compile")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory-samples", type=int, default=6, help="random subnets averaged for saved-tensor memory")
    p.add_argument("--peak", action="store_true", help="also measure each method's peak memory in its own process")
    p.add_argument("--compile", action="store_true", help="torch.compile every method's model (as NAME+compile)")
    p.add_argument(
        "--compile-mode", default=None, help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)"
    )
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: peak memory of one method
    return p.parse_args()


def setup(args, name, device):
    def make():
        return timm.create_model(args.model, pretrained=False, num_classes=args.num_classes, img_size=args.img_size)

    base, _, tag = name.partition("+")
    method = build_method(base, make, ranks=args.ranks)
    method.model.to(device).train()
    # The trainer's optimizer for every method (fused AdamW where torch has it for the device).
    opt = make_adamw([p for p in method.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    forward = method.model
    if args.compile or tag == "compile":  # GLoRA layers trace their static path: one graph for every subnet
        mode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else "default")
        forward = torch.compile(method.model, mode=mode)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)

    def loss():
        method.before_step()
        with autocast(device, args.amp):
            out = forward(x)
        return F.cross_entropy(out.float(), y)

    def step():
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return method, loss, step


def peak_of_one(args, name: str) -> float:
    """Peak memory of training steps above what the built model (and libraries) already hold."""
    device = resolve_device(args.device)
    method, loss, step = setup(args, name, device)
    if args.compile or name.endswith("+compile"):  # compile outside the measurement; optimizer state stays inside
        loss().backward()
        method.model.zero_grad(set_to_none=True)
    return peak_above_base(step, device)


def saved_memory(args, runs: dict) -> dict[str, float]:
    """MiB kept for backward per method, averaged over random subnets for the supernet."""
    saved = {}
    for m, (method, loss, _) in runs.items():
        if args.compile or m.endswith("+compile"):  # compiled graphs keep tensors outside autograd's saved-tensor hooks
            saved[m] = float("nan")
            continue
        samples = args.memory_samples if m.startswith(("glora-supernet", "glora-static", "glora-reference")) else 1
        saved[m] = sum(saved_for_backward_mib(method.model, loss) for _ in range(samples)) / samples
    return saved


def peak_memory(args, methods: list[str]) -> dict[str, float | None]:
    """Each method's peak memory in a fresh process of its own (None where that process failed)."""
    workload = ["--model", args.model, "--batch-size", str(args.batch_size), "--img-size", str(args.img_size)]
    workload += ["--num-classes", str(args.num_classes), "--device", args.device, "--amp", args.amp]
    workload += ["--ranks", *map(str, args.ranks), *(["--compile"] if args.compile else [])]
    workload += ["--compile-mode", args.compile_mode] if args.compile_mode else []
    return {m: peak_in_own_process("train_step", m, workload) for m in methods}


def main() -> None:
    args = parse()
    if args.one:
        print(json.dumps({"peak_mib": peak_of_one(args, args.one)}))
        return
    device = resolve_device(args.device)
    methods = [m for m in args.methods if not m.startswith("peft") or peft_available()]
    if len(methods) < len(args.methods):
        print("peft is not installed: PEFT baselines skipped (pip install -r benchmarks/requirements.txt)")
    runs = {m: setup(args, m, device) for m in methods}
    times = interleaved({m: r[2] for m, r in runs.items()}, args.rounds, args.warmup, device)
    saved = saved_memory(args, runs)
    peaks = peak_memory(args, methods) if args.peak else {}

    print(f"machine: {machine()}; device {device.type}, amp {args.amp}")
    print(
        f"model {args.model}, batch {args.batch_size}, {args.img_size}x{args.img_size}, GLoRA ranks "
        f"{set(args.ranks)}, {args.rounds} interleaved rounds (median)" + (", torch.compile" if args.compile else "")
    )
    trainable = {m: r[0].trainable for m, r in runs.items()}
    rows = step_table(trainable, times, saved, peaks, floor="bias-only", unit="img", per_step=args.batch_size)
    write_json(args.json, "train_step", args, rows)


if __name__ == "__main__":
    main()
