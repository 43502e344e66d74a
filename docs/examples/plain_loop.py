"""A GLoRA supernet in a training loop of your own, on the embedded task (digits 5-9 on a ViT pretrained on 0-4):
the toolkit's sampler per step, your own metric for the search, the pick kept as an adapter and folded.

    python docs/examples/plain_loop.py --epochs 20 --out runs/plain-loop

Nothing of the toolkit's commands: the data are plain tensors, the loop is five lines, the search takes a function.
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

import glora
from glora.app import BackboneSpec, build_backbone
from glora.app.data import load_digits
from glora.app.embedded import BACKBONE
from glora.app.sampling import Sampling, SubnetSampler
from search import search_subnets


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A digits split as float images (normalised as the backbone was trained: mean and std 0.5) and labels."""
    data = load_digits("transfer", split)
    return (data.images.float() / 255 - 0.5) / 0.5, data.labels


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--budget", type=int, default=30_000, help="the search's budget (the paper's count)")
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--out", default="runs/plain-loop")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = build_backbone(BackboneSpec(BACKBONE, num_classes=5))
    glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4)))
    (x, y), (vx, vy) = tensors("train"), tensors("val")
    sampler = SubnetSampler(model, Sampling("sandwich", sandwich_random=1, distill=True, param_limit=args.budget / 1e6))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=1e-4)
    rng, gen = random.Random(0), torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=gen).split(64):
            xb, yb = x[batch], y[batch]
            loss = sampler.train_step(lambda xb=xb: model(xb), lambda out, yb=yb: F.cross_entropy(out, yb), rng)
            opt.step()
            opt.zero_grad()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss:.4f}")

    def accuracy(subnet):
        glora.set_subnet(model, subnet)
        with torch.no_grad():
            return (model(vx).argmax(-1) == vy).float().mean().item()

    model.eval()
    result = search_subnets(model, accuracy, max_params=args.budget, generations=args.generations, metric="accuracy")
    tx, ty = tensors("test")
    with torch.no_grad():
        test = (glora.fold(model, result.subnet)(tx).argmax(-1) == ty).float().mean().item()
    print(f"pick: {result.params:,} params, val accuracy {result.score:.4f}, test accuracy {test:.4f} (folded)")
    glora.save_adapter(model, f"{args.out}/adapter", result.subnet)


if __name__ == "__main__":
    main()
