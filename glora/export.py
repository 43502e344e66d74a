"""``reparam.py``: fold a searched subnet into the supernet's weights and export a plain timm model.

The export is timm's hub layout (config.json + model.safetensors, written by ``timm.models.save_for_hf``), so
``timm.create_model("local-dir:<out>", pretrained=True)`` loads it without this toolkit. Before anything is
written, the folded model is checked against the supernet on real images and against the base architecture
(same parameters, same FLOPs); after writing, the export is reloaded with plain timm and checked again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ._io import atomic_write_text, publish_tree
from .backbone import BackboneSpec, build_backbone
from .checkpoint import load_supernet, read_checkpoint
from .config import make_parser, nonneg_float, parse_args, positive_int
from .data import DataSpec, Normalizer
from .evaluate import resolve_device
from .fold import fold
from .subnet import count_params, load_subnet, parse_subnet, set_subnet

__all__ = ["build_parser", "main", "count_flops", "export_timm_folder", "max_difference"]

_logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("reparam.py", "Fold a searched subnet into plain weights and export a vanilla timm model.")
    p.add_argument("--supernet", default="runs/default/supernet/last.pt", help="checkpoint from train_supernet.py")
    p.add_argument("--subnet", default="runs/default/search/subnet.yaml", help="subnet YAML from search.py")
    p.add_argument("--out", default="runs/default/export", help="export folder (timm local-dir layout)")
    p.add_argument("--force", action="store_true", help="replace --out if it already exists")
    p.add_argument("--verify-images", type=positive_int, default=64, help="real validation images to compare on")
    p.add_argument(
        "--tolerance",
        type=nonneg_float,
        default=1e-4,
        help="largest allowed |folded - supernet| relative to the largest logit",
    )
    p.add_argument("--data-root", default=None, help="override the data root stored in the supernet checkpoint")
    p.add_argument("--device", default="cpu", help="device for the checks (the export is always saved from CPU)")
    return p


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, that divided by max |b|)."""
    diff = (a.float() - b.float()).abs().max().item()
    return diff, diff / max(b.float().abs().max().item(), 1e-12)


def export_timm_folder(model: nn.Module, folder: Path, inputs: dict[str, Any]) -> None:
    """timm's own save helper, with the preprocessing the supernet was trained with (squash resize, mean/std)."""
    data_config = {"mean": tuple(inputs["mean"]), "std": tuple(inputs["std"]), "crop_pct": 1.0, "crop_mode": "squash"}
    model_config = {"pretrained_cfg": {"tag": "glora"}}
    timm.models.save_for_hf(
        model, str(folder), safe_serialization=True, model_config=model_config, data_config=data_config
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    out = Path(args.out)
    if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} already exists; pass --force to replace it")
    device = resolve_device(args.device)
    ckpt = read_checkpoint(args.supernet)
    model = load_supernet(ckpt, device=device)
    subnet = load_subnet(args.subnet)
    parse_subnet(model, subnet)  # names the layer and choice if the subnet does not fit this supernet

    folded = fold(model, subnet).eval()
    for name, t in folded.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"folded tensor {name!r} holds NaN or inf; refusing to export a broken model")
    spec = BackboneSpec.from_dict(dict(ckpt["backbone"]) | {"pretrained": False, "pretrained_file": None})
    base = build_backbone(spec, device=device).eval()
    extra = sorted(set(folded.state_dict()) - set(base.state_dict()))
    if extra:
        raise ValueError(
            f"the subnet gives bias-free layer(s) a bias ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): "
            f"the timm architecture {spec.model} has no place for it; choose C and E none there"
        )

    data = DataSpec.from_dict(dict(ckpt["data"]) | ({"data_root": args.data_root} if args.data_root else {}))
    inputs = ckpt["input"]
    images = data.load("val", inputs["input_size"]).subset(args.verify_images).images
    if images is None:  # not cached: read the few images we need
        batch = data.load("val", inputs["input_size"]).subset(args.verify_images).dataset()
        images = torch.stack([batch[i][0] for i in range(len(batch))])
    x = Normalizer(inputs["mean"], inputs["std"])(images).to(device)
    set_subnet(model, subnet)
    with torch.no_grad():
        expected = model(x)
        got = folded(x)
    diff, rel = max_difference(got, expected)
    print(f"folded vs supernet on {len(x)} real images: max |diff| {diff:.3e} (relative {rel:.3e})")
    if rel > args.tolerance:
        raise ValueError(
            f"folded outputs differ from the supernet by {rel:.3e} (relative) > --tolerance {args.tolerance}"
        )

    n_base, n_fold = (sum(p.numel() for p in m.parameters()) for m in (base, folded))
    f_base, f_fold = count_flops(base, x[:1]), count_flops(folded, x[:1])
    glora_params = count_params(model, subnet)
    print(
        f"parameters: base {n_base:,}, folded {n_fold:,} (overhead {n_fold - n_base}); "
        f"GLoRA subnet trained {glora_params:,} ({glora_params / 1e6:.4f}M)"
    )
    print(f"FLOPs per image: base {f_base:,}, folded {f_fold:,} (overhead {f_fold - f_base})")

    folded = folded.to("cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_timm_folder(folded, tmp, inputs)
        shutil.copyfile(args.subnet, tmp / "subnet.yaml")
        reloaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        with torch.no_grad():
            rdiff, _ = max_difference(reloaded(x.cpu()), got.cpu())
        if rdiff > 0:
            raise ValueError(f"the export reloaded with plain timm differs from the folded model by {rdiff:.3e}")
        atomic_write_text(
            tmp / "glora_export.json",
            json.dumps(
                {
                    "supernet": str(args.supernet),
                    "subnet": str(args.subnet),
                    "glora_params": glora_params,
                    "params": n_fold,
                    "base_params": n_base,
                    "flops": f_fold,
                    "base_flops": f_base,
                    "verify_images": len(x),
                    "max_abs_diff": diff,
                    "max_rel_diff": rel,
                },
                indent=1,
            ),
        )
        publish_tree(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"plain timm reload matches exactly; exported to {out}/ (config.json, model.safetensors)")
    print(f'load it anywhere with: timm.create_model("local-dir:{out}", pretrained=True)')
    return 0


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is only removed once the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
