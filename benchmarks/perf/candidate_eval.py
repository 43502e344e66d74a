"""Cost of evaluating one search candidate vs plain inference of the same model over the same validation set.

    python -m benchmarks.perf.candidate_eval [--model vit_small_patch16_224] [--images 200] [--batch-size 100]

The search folds each candidate once (``glora.folded``: W_uni, b_uni per layer, no model copy) and runs plain
weights over the split; the target is <= 1.03x plain inference, fold time included. For context: running the
supernet without folding (every batch forms W_uni again) and ``glora.fold`` (a full model copy per candidate).
"""

from __future__ import annotations

import argparse
import random

import timm
import torch

import glora
from glora.app.evaluate import autocast, resolve_device

from ..common import machine, write_json
from .timing import add_workload_args, interleaved

__all__ = ["main"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(p, "vit_small_patch16_224", 100, classes=False)
    p.add_argument("--images", type=int, default=200, help="validation images per candidate (VTAB-1k: 200)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also the compiled supernet evaluating candidates under glora.folded (what search does on CUDA), and "
        "the plain model compiled alike",
    )
    p.add_argument("--compile-mode", default=None, help="default: reduce-overhead on CUDA, default on the CPU")
    return p.parse_args()


def main() -> None:
    args = parse()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    supernet = timm.create_model(args.model, pretrained=False, num_classes=100, img_size=args.img_size)
    glora.inject(supernet, glora.SearchSpace(lora_ranks=tuple(args.ranks)))
    with torch.no_grad():  # trained-looking supports, so folding does real work
        for p in supernet.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    supernet.to(device).eval()
    rng = random.Random(0)
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    batches = [images[i : i + args.batch_size].to(device) for i in range(0, args.images, args.batch_size)]
    subnet = glora.sample_subnet(supernet, rng)
    plain = glora.fold(supernet, subnet).to(device).eval()

    @torch.no_grad()
    def infer(model) -> None:
        for x in batches:
            with autocast(device, args.amp):
                model(x)

    def candidate_folded() -> None:  # what search.py does per candidate
        with glora.folded(supernet, glora.sample_subnet(supernet, rng)):
            infer(supernet)

    def candidate_unfolded() -> None:
        glora.set_subnet(supernet, glora.sample_subnet(supernet, rng))
        infer(supernet)

    def candidate_copy() -> None:
        infer(glora.fold(supernet, glora.sample_subnet(supernet, rng)).eval())

    fns = {
        "plain model": lambda: infer(plain),
        "glora.folded (search)": candidate_folded,
        "supernet, no fold": candidate_unfolded,
        "glora.fold (copy)": candidate_copy,
    }
    if args.compile:  # the static path: a candidate is the same graph with other codes (no fold, no recompile)
        mode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else "default")
        compiled, plain_compiled = torch.compile(supernet, mode=mode), torch.compile(plain, mode=mode)

        def candidate_compiled() -> None:
            with glora.folded(supernet, glora.sample_subnet(supernet, rng)):
                infer(compiled)

        fns["plain model, compiled"] = lambda: infer(plain_compiled)
        fns["compiled + glora.folded"] = candidate_compiled
    times = interleaved(fns, args.rounds, 1, device)
    print(f"machine: {machine()}; device {device.type}, amp {args.amp}")
    print(
        f"model {args.model}, {args.images} images in batches of {args.batch_size}, GLoRA ranks {set(args.ranks)}, "
        f"{args.rounds} interleaved rounds (median), a new random candidate each call"
    )
    base = times["plain model"]
    print(f"{'per candidate':26s} {'seconds':>8s} {'vs plain':>9s} {'candidates/min':>15s}")
    for k, t in times.items():
        print(f"{k:26s} {t:8.3f} {t / base:8.3f}x {60 / t:15.1f}")
    rows = {k: {"seconds": t, "vs_plain": t / base, "candidates_per_min": 60 / t} for k, t in times.items()}
    write_json(args.json, "candidate_eval", args, rows)


if __name__ == "__main__":
    main()
