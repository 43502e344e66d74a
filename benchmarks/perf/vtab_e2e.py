"""One VTAB-1k-shaped task end to end through the three commands, with wall time per stage (target on one GPU:
under 10 minutes for ViT-B/16 at the paper's recipe).

    python -m benchmarks.perf.vtab_e2e [--model vit_base_patch16_224] [--epochs 500] [--generations 20] [--work DIR]

Synthetic data in the shape of a VTAB-1k task: 800 train + 200 val images (plus 200 test) at 224², 10 classes, as an
ImageFolder tree; a random-init backbone saved to a local weights file (so nothing is downloaded). Stages: writing
the data, ``glora-train`` (500 supernet epochs on the 800 images, batch 64, lr 5e-4, 10 warmup epochs: the paper's
recipe), ``glora-search`` (population 50 x 20 generations = about 1,000 candidates on the 200 validation images)
and ``glora-export``. Each command runs in this process with its defaults for the device (compiled with CUDA graphs
on CUDA), so the figures are what a user gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from glora.app.cli import setup_logging
from glora.app.commands.export import main as export_main
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main

from ..common import add_json_arg, machine, write_json

__all__ = ["main", "write_task"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=800, help="train images (VTAB-1k: 800)")
    p.add_argument("--val", type=int, default=200, help="validation images the search ranks on (VTAB-1k: 200)")
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=None, help="folder for the data and outputs (default: a temporary one)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more glora-train options, e.g. --no-compile")
    add_json_arg(p)
    return p.parse_args()


def write_task(root: Path, classes: int, counts: dict[str, int], size: int, seed: int = 0) -> None:
    """An ImageFolder tree ``root/{train,val,test}/<class>/<i>.png``: noise around a colour per class, so the task
    is learnable but not trivial."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(classes, 3))
    for split, n in counts.items():
        for i in range(n):
            c = i % classes
            pixels = np.clip(colours[c] + rng.normal(0, 48, size=(size, size, 3)), 0, 255).astype(np.uint8)
            path = root / split / f"class{c:02d}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


def run_stages(args: argparse.Namespace, work: Path) -> dict[str, float]:
    seconds: dict[str, float] = {}

    def stage(name: str, fn) -> None:
        start = time.perf_counter()
        code = fn()
        if code not in (0, None):
            raise SystemExit(f"{name} failed with exit code {code}")
        seconds[name] = time.perf_counter() - start
        print(f"{name:8s} {seconds[name]:8.1f} s", flush=True)

    data = work / "data"
    counts = {"train": args.train, "val": args.val, "test": args.test}
    stage("data", lambda: write_task(data, args.classes, counts, args.img_size))
    weights = work / "backbone.safetensors"
    torch.manual_seed(0)
    backbone = timm.create_model(args.model, pretrained=False, num_classes=args.classes, img_size=args.img_size)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    common = ["--device", args.device, "--no-progress"]
    train = [
        *("--model", args.model, "--pretrained-file", str(weights), "--img-size", str(args.img_size)),
        *("--dataset", "folder", "--data-root", str(data)),
        *("--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", "5e-4"),
        *("--warmup-epochs", str(min(10, args.epochs - 1)), "--min-lr", "1e-5", "--out", str(work / "supernet")),
        *common,
        *args.extra,
    ]
    stage("train", lambda: train_main(train))
    supernet = str(work / "supernet" / "last.pt")
    search = ["--supernet", supernet, "--out", str(work / "search"), "--param-limit", "none", *common[:2]]
    search += ["--population", str(args.population), "--generations", str(args.generations), "--no-progress"]
    search += ["--parents", str(max(2, args.population // 5))]
    search += ["--mutations", str(args.population // 2), "--crossovers", str(args.population // 2)]
    stage("search", lambda: search_main(search))
    subnet = str(work / "search" / "subnet.yaml")
    stage("export", lambda: export_main(["--supernet", supernet, "--subnet", subnet, "--out", str(work / "export")]))
    return seconds


def main() -> None:
    args = parse()
    setup_logging(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        seconds = run_stages(args, work)
        final = json.loads((work / "search" / "search_log.jsonl").read_text().splitlines()[-1])
    total = sum(seconds.values())
    print(f"machine: {machine()}")
    print(
        f"{args.model} at {args.img_size}², {args.train}/{args.val}/{args.test} images, {args.epochs} epochs, "
        f"{final['evaluated']} candidates evaluated; total {total:.1f} s ({total / 60:.1f} min)"
    )
    write_json(args.json, "vtab_e2e", args, {"seconds": seconds, "total_seconds": total, "search": final})


if __name__ == "__main__":
    main()
