"""Fold a searched subnet into plain weights and export a vanilla timm model. No arguments: the embedded default.

python reparam.py [--supernet runs/default/supernet/last.pt] [--subnet runs/default/search/subnet.yaml] [--out DIR]
(the same command as ``glora-export``, installed by pip)
"""

from glora.app.commands.export import cli

if __name__ == "__main__":
    raise SystemExit(cli())
