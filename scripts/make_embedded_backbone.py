"""Regenerate the embedded backbone: a small ViT pretrained on scikit-learn's digits 0-4 (about a minute on 2 CPUs).

    python scripts/make_embedded_backbone.py [--out glora/app/assets/digits-vit] [--epochs 150] [--seed 0]

It also prints the headroom of the transfer task the default run adapts to (digits 5-9): linear probe vs full
fine-tuning, so the method's gains are visible. Pretraining and both baselines use the toolkit's training loop.
"""

from __future__ import annotations

import argparse
import json
import logging

from glora.app.cli import run
from glora.app.embedded import BACKBONE_DIR, PRETRAIN_RECIPE, pretrain, save_timm_folder, transfer_headroom


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(BACKBONE_DIR), help="timm folder to write (default: the shipped backbone)")
    p.add_argument("--epochs", type=int, default=PRETRAIN_RECIPE.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="log every training epoch")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if not args.verbose:
        logging.getLogger("glora.app.trainer").setLevel(logging.WARNING)
    model, acc = pretrain(epochs=args.epochs, seed=args.seed)
    print(f"pretrained on digits 0-4: val accuracy {acc:.4f}")
    save_timm_folder(model, args.out)
    print(f"saved {args.out}/config.json and model.safetensors")
    print(json.dumps({k: round(v, 4) for k, v in transfer_headroom(model, seed=args.seed).items()}, indent=2))


if __name__ == "__main__":
    raise SystemExit(run(main))
