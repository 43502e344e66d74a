"""The options of ``glora-export`` / ``reparam.py``."""

from __future__ import annotations

import argparse

from ..evalsets import add_eval_set_option
from . import (
    add_progress_option,
    make_parser,
    nonneg_float,
    nonneg_int,
    positive_int,
    program_name,
)

__all__ = [
    "build_parser",
    "DEFAULT_SUBNET",
]

DEFAULT_SUBNET = "runs/default/search/subnet.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        program_name("reparam.py", "glora-export"),
        "Fold a searched subnet into plain weights and export a vanilla timm (or transformers) model.",
    )
    p.add_argument("--supernet", default="runs/default/supernet/last.pt", help="checkpoint from train_supernet.py")
    p.add_argument(
        "--subnet",
        default=None,
        help="subnet YAML from search.py (default: the subnet the checkpoint was trained as, when glora-train "
        f"retrained one with --subnet; else {DEFAULT_SUBNET})",
    )
    p.add_argument("--out", default="runs/default/export", help="export folder (timm local-dir or save_pretrained)")
    p.add_argument("--force", action="store_true", help="replace --out if it already exists")
    p.add_argument(
        "--verify-examples",
        type=positive_int,
        default=64,
        help="real validation examples (images or sequences) the folded model is compared with the supernet on",
    )
    p.add_argument("--verify-images", type=positive_int, default=None, help=argparse.SUPPRESS)  # the old name
    p.add_argument(
        "--tolerance",
        type=nonneg_float,
        default=1e-4,
        help="largest allowed |folded - supernet| relative to the largest logit",
    )
    p.add_argument(
        "--latency-rounds",
        type=nonneg_int,
        default=5,
        help="timed forwards of the folded model, the unfolded supernet and the base model on the verification "
        "batch, interleaved, recorded in glora_export.json (0: skip)",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="batch size of the --eval-set evaluations")
    p.add_argument("--workers", type=nonneg_int, default=2, help="data-loading workers of the --eval-set evaluations")
    add_eval_set_option(p)
    p.add_argument("--data-root", default=None, help="override the data root stored in the supernet checkpoint")
    p.add_argument("--device", default="cpu", help="device for the checks (the export is always saved from CPU)")
    add_progress_option(p)
    return p
