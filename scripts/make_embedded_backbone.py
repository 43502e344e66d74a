"""Regenerate assets/digits-vit: a small ViT pretrained on scikit-learn's digits 0-4 (about a minute on 2 CPUs).

    python scripts/make_embedded_backbone.py [--out assets/digits-vit] [--epochs 150] [--seed 0]

It also prints the headroom of the transfer task the default run adapts to (digits 5-9): linear probe vs full
fine-tuning, so the method's gains are visible.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glora.cli import run
from glora.embedded import pretrain, save_timm_folder, transfer_headroom


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="assets/digits-vit")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    model, acc = pretrain(epochs=args.epochs, seed=args.seed)
    print(f"pretrained on digits 0-4: val accuracy {acc:.4f}")
    save_timm_folder(model, args.out)
    print(f"saved {args.out}/config.json and model.safetensors")
    print(json.dumps({k: round(v, 4) for k, v in transfer_headroom(model, seed=args.seed).items()}, indent=2))


if __name__ == "__main__":
    raise SystemExit(run(main))
