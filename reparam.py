"""Fold a searched subnet into plain weights and export a vanilla timm model. No arguments: the embedded default.

python reparam.py [--supernet runs/default/supernet/last.pt] [--subnet runs/default/search/subnet.yaml] [--out DIR]
"""

from glora.cli import run
from glora.export import main

if __name__ == "__main__":
    raise SystemExit(run(main))
