"""Where a supernet step's time goes, one adapted layer at a time: each A x B choice vs a frozen plain linear.

    python -m benchmarks.perf.layer_costs [--model vit_small_patch16_224] [--batch-size 32] [--rounds 5]

For every distinct adapted layer shape of the model (ViT: qkv, proj, fc1, fc2), the manual-path GLoRA layer runs forward
and backward under each A x B pair (C, D, E vector: they only move the bias) on one batch worth of tokens, timed
round by round against the same ``nn.Linear`` with a frozen weight (bias and input gradients: what bias-only
tuning runs in that layer). "uniform" is the expectation when every choice is drawn uniformly, as supernet
training does, weighted by each shape's plain time and layer count: the linear-layer share of the step's overhead.
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

import timm
import torch

import glora

from ..common import add_json_arg, machine, write_json
from .timing import interleaved

__all__ = ["main"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    add_json_arg(p)
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
    vec = glora.Choice(glora.Kind.VECTOR)

    def run(module, choice=None):
        def step():
            if choice is not None:
                module.set_choice(choice)
            module(x).backward(g)

        return step

    fns = {"plain": run(plain)}
    for a, b in itertools.product(space.choices_for("A"), space.choices_for("B")):
        fns[f"{a.name}/{b.name}"] = run(layer, glora.LayerChoice(a, b, vec, vec, vec))
    return interleaved(fns, args.rounds, args.warmup, torch.device("cpu"))


def main() -> None:
    args = parse()
    torch.set_grad_enabled(True)
    space = glora.SearchSpace(lora_ranks=tuple(args.ranks))
    counts, names = layer_shapes(args)
    print(f"machine: {machine()}")
    print(
        f"model {args.model}, batch {args.batch_size}, GLoRA ranks {set(args.ranks)}; manual-path layer forward + "
        f"backward vs a frozen nn.Linear, {args.rounds} interleaved rounds (median); C, D, E = vector"
    )
    pairs = [f"{a.name}/{b.name}" for a, b in itertools.product(space.choices_for("A"), space.choices_for("B"))]
    total_plain = total_expected = 0.0
    shapes = {}
    for (in_f, out_f, tokens), n in counts.items():
        times = time_shape(args, space, in_f, out_f, tokens)
        ratios = {p: times[p] / times["plain"] for p in pairs}
        uniform = sum(ratios.values()) / len(ratios)
        shapes[names[(in_f, out_f, tokens)]] = {"in": in_f, "out": out_f, "layers": n, "plain_ms": times["plain"] * 1e3}
        shapes[names[(in_f, out_f, tokens)]] |= {"uniform": uniform, "ratios": ratios}
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
    overall = total_expected / total_plain
    print(f"\nall adapted layers, uniform choices: {overall:.3f}x their plain (bias-only) time")
    write_json(args.json, "layer_costs", args, {"shapes": shapes, "uniform_all_layers": overall})


if __name__ == "__main__":
    main()
