"""Train a GLoRA supernet (one random subnet per step). With no arguments: the embedded default, offline.

python train_supernet.py [--config configs/vtab/cifar.yaml] [--out DIR] [--epochs N] [--resume] ...
(the same command as ``glora-train``, installed by pip)
"""

from glora.app.commands.train import cli

if __name__ == "__main__":
    raise SystemExit(cli())
