"""Where a supernet step's time goes, one adapted layer at a time: each A x B choice vs a frozen plain linear.

    python benchmarks/layer_costs.py [--model vit_small_patch16_224] [--batch-size 32] [--rounds 5] [--ops]

For every distinct adapted layer shape of the model (ViT: qkv, proj, fc1, fc2), the fused GLoRA layer runs forward
and backward under each A x B pair (C, D, E vector: they only move the bias) on one batch worth of tokens, timed
round by round against the same ``nn.Linear`` with a frozen weight (bias and input gradients: what bias-only
tuning runs in that layer). "uniform" is the expectation when every choice is drawn uniformly, as supernet
training does, weighted by each shape's plain time and layer count: the linear-layer share of the step's overhead.
With --ops, also the skinny products behind the B paths, each in the form the fused backward uses against the
plain call, on the widest layer.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, machine

import glora
from glora import fused
from glora.space import Choice, LayerChoice


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ops", action="store_true", help="also time the skinny products of the B paths")
    return p.parse_args()


def layer_shapes(args) -> tuple[Counter, dict]:
    """(in, out, tokens per image) of every adapted layer, counted, and one layer name per shape."""
    model = timm.create_model(args.model, pretrained=False, num_classes=10, img_size=args.img_size)
    space = glora.SearchSpace(lora_ranks=tuple(args.ranks))
    glora.inject(model, space)
    glora.set_subnet(model, glora.make_subnet(model))
    tokens: dict[str, int] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            tokens[name] = inputs[0][0].numel() // inputs[0].shape[-1]  # per image

        return hook

    hooks = [layer.register_forward_hook(record(name)) for name, layer in glora.glora_layers(model).items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, args.img_size, args.img_size))
    for h in hooks:
        h.remove()
    counts: Counter = Counter()
    names: dict[tuple[int, int, int], str] = {}
    for name, layer in glora.glora_layers(model).items():
        key = (layer.in_features, layer.out_features, tokens[name])
        counts[key] += 1
        names.setdefault(key, name.rsplit(".", 1)[-1])
    return counts, names


def time_shape(args, space, in_f: int, out_f: int, tokens: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = torch.nn.Linear(in_f, out_f)
    plain = torch.nn.Linear(in_f, out_f)
    plain.weight.requires_grad_(False)
    layer = glora.GLoRALinear(base, space)
    with torch.no_grad():
        for p in layer.support_params():
            p.normal_(0, 0.02)
    x = torch.randn(args.batch_size, tokens, in_f, requires_grad=True)
    g = torch.randn(args.batch_size, tokens, out_f)
    vec = Choice("vector")

    def run(module, choice=None):
        def step():
            if choice is not None:
                module.set_choice(choice)
            module(x).backward(g)

        return step

    fns = {"plain": run(plain)}
    for a, b in itertools.product(space.choices_for("A"), space.choices_for("B")):
        fns[f"{a.name}/{b.name}"] = run(layer, LayerChoice(a, b, vec, vec, vec))
    return interleaved(fns, args.rounds, args.warmup, torch.device("cpu"))


def bench_ops(args, in_f: int, out_f: int, tokens: int) -> None:
    """The fused backward's forms of the skinny products against the plain calls (CPU)."""
    torch.manual_seed(0)
    rows, r = args.batch_size * tokens, max(args.ranks)
    g, y = torch.randn(rows, out_f), torch.randn(rows, out_f)
    x, cols = torch.randn(rows, in_f), torch.randn(rows, r + 1)
    bd = torch.randn(out_f, r)
    gu = torch.randn(rows, r)
    pairs = {
        f"[1|u]ᵀ g  ({r + 1}x{rows} · {rows}x{out_f})": (lambda: cols.t() @ g, lambda: fused._token_dot(cols, g)),
        f"(g Bd)ᵀ x ({r}x{rows} · {rows}x{in_f})": (lambda: gu.t() @ x, lambda: fused._token_dot(gu, x)),
        f"g Bd      ({rows}x{out_f} · {out_f}x{r})": (lambda: g @ bd, lambda: F.linear(g, bd.t().contiguous())),
        f"Σ_t g ⊙ y ({rows}x{out_f})": (
            lambda: torch.linalg.vecdot(g, y, dim=0),
            lambda: fused._column_dots(g, y, torch.float32),
        ),
    }
    print(f"\nskinny products on the {in_f} -> {out_f} layer ({args.rounds} interleaved rounds, median ms)")
    print(f"{'product':44s} {'plain call':>10s} {'fused form':>10s} {'speed-up':>9s}")
    for label, (plain, ours) in pairs.items():
        t = interleaved({"plain": plain, "ours": ours}, max(args.rounds, 10), args.warmup, torch.device("cpu"))
        print(f"{label:44s} {t['plain'] * 1e3:10.2f} {t['ours'] * 1e3:10.2f} {t['plain'] / t['ours']:8.2f}x")


def main() -> None:
    args = parse()
    torch.set_grad_enabled(True)
    space = glora.SearchSpace(lora_ranks=tuple(args.ranks))
    counts, names = layer_shapes(args)
    print(f"machine: {machine()}")
    print(
        f"model {args.model}, batch {args.batch_size}, GLoRA ranks {set(args.ranks)}; fused layer forward + "
        f"backward vs a frozen nn.Linear, {args.rounds} interleaved rounds (median); C, D, E = vector"
    )
    pairs = [f"{a.name}/{b.name}" for a, b in itertools.product(space.choices_for("A"), space.choices_for("B"))]
    total_plain = total_expected = 0.0
    for (in_f, out_f, tokens), n in counts.items():
        times = time_shape(args, space, in_f, out_f, tokens)
        ratios = {p: times[p] / times["plain"] for p in pairs}
        uniform = sum(ratios.values()) / len(ratios)
        total_plain += n * times["plain"]
        total_expected += n * times["plain"] * uniform
        print(
            f"\n{names[(in_f, out_f, tokens)]} ({in_f} -> {out_f}, {args.batch_size * tokens} tokens, {n} layers): "
            f"plain {times['plain'] * 1e3:.1f} ms, uniform {uniform:.2f}x"
        )
        width = max(len(c.name) for c in space.choices_for("B"))
        print(f"{'A / B':10s}" + "".join(f"{c.name:>{width + 2}s}" for c in space.choices_for("B")))
        for a in space.choices_for("A"):
            cells = "".join(f"{ratios[f'{a.name}/{b.name}']:>{width + 1}.2f}x" for b in space.choices_for("B"))
            print(f"{a.name:10s}{cells}")
    print(f"\nall adapted layers, uniform choices: {total_expected / total_plain:.3f}x their plain (bias-only) time")
    if args.ops:
        in_f, out_f, tokens = max(counts, key=lambda k: k[1])
        bench_ops(args, in_f, out_f, tokens)


if __name__ == "__main__":
    main()
