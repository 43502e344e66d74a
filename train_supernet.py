"""Train a GLoRA supernet (one random subnet per step). With no arguments: the embedded default, offline.

python train_supernet.py [--config configs/vtab/cifar.yaml] [--out DIR] [--epochs N] [--resume] ...
"""

from glora.cli import run
from glora.train import main

if __name__ == "__main__":
    raise SystemExit(run(main))
