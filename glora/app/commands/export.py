"""``reparam.py`` / ``glora-export``: fold a searched subnet into the supernet's weights, export a plain timm model
(or, for a transformers supernet, a plain transformers ``save_pretrained`` folder with its tokenizer).

Before anything is written, the folded model is checked against the supernet on real inputs and against the base
architecture (same parameters, same FLOPs); after writing, the export is reloaded with the plain library and checked
again.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._io import atomic_write_text
from glora.adapter import load_adapter, save_adapter
from glora.fold import fold
from glora.quantized import quantization_of
from glora.subnet import Subnet, count_params, load_subnet, parse_subnet, save_subnet, set_subnet, subnet_difference

from ..backbone import BackboneSpec, build_backbone
from ..checkpoint import load_supernet, read_checkpoint, supernet_inputs
from ..cli import run
from ..data import DataSpec, Modality, make_loader, modality_from_record
from ..data.batch import batch_rows
from ..evalsets import check_eval_sets, eval_set_inputs, evaluate_sets
from ..evaluate import resolve_device
from ..hf_backbone import (
    CausalLM,
    TokenModel,
    declare_biases,
    export_transformers_folder,
    reload_transformers_folder,
    restore_layer_classes,
    transformers_bars,
)
from ..layout import ExportFolder, SearchFolder, SupernetFolder
from ..options.export import DEFAULT_SUBNET, build_parser
from ..outputs import absolute, check_no_overlap, output_lock, run_folder
from ..timm_folder import check_finite, count_flops, export_timm_folder, max_difference, measure_latency, staged_folder

__all__ = ["build_parser", "main", "cli", "prediction_agreement"]

_logger = logging.getLogger(__name__)


@dataclass
class _Checked:
    """A folded model and what was measured about it before export."""

    folded: nn.Module
    x: dict[str, torch.Tensor]  # the verification inputs as the model takes them (images normalised), on the CPU
    logits: torch.Tensor  # the folded model's outputs on them
    modality: Modality  # how the inputs reach the model
    stats: dict[str, Any]


def main(argv: Sequence[str] | None = None) -> int:
    parsed = build_parser().parse(argv)
    args = parsed.args
    if "format" in parsed.explicit() and not args.adapter_only:
        raise ValueError(f"--format {args.format}{parsed.set_by(['format'])}: the format of an adapter folder; give it "
                         "with --adapter-only (a folded export is the model library's own folder)")  # fmt: skip
    if args.verify_images is not None:
        _logger.warning("--verify-images is now --verify-examples (it counts images or sequences); read as such")
        args.verify_examples = args.verify_images
    out = Path(args.out)
    args.supernet, args.subnet = absolute(args.supernet), absolute(args.subnet)  # recorded absolute
    early = _read_if_readable(args.supernet) if args.subnet is None else None
    own = _trained_subnet(early)
    if args.subnet is None and own is None:
        args.subnet = DEFAULT_SUBNET
    inputs = [("--supernet", args.supernet), ("--subnet", args.subnet), ("--data-root", args.data_root)]
    inputs += [
        ("the --supernet's run folder", run_folder(args.supernet, SupernetFolder.LOG, SupernetFolder.CONFIG)),
    ]
    if args.subnet:
        inputs.append(("the --subnet's search folder", run_folder(args.subnet, SearchFolder.STATE, SearchFolder.LOG)))
    inputs += eval_set_inputs(args.eval_set)
    check_no_overlap(out, inputs + [("--config", c) for c in args.config])
    check_eval_sets(args.eval_set)
    with output_lock(out, command="glora-export"):
        if out.exists() and not args.force and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{str(out)!r} already exists; pass --force to replace it")
        _check_replaceable(out)
        ckpt = early or read_checkpoint(args.supernet)
        hf = BackboneSpec.from_dict(ckpt["backbone"]).is_transformers  # which library's folder the export writes
        inputs = modality_from_record(ckpt["input"])
        if args.eval_set and not inputs.image_inputs:
            raise ValueError(f"--eval-set takes image folders or lists; this supernet takes {inputs.name}")
        check_no_overlap(out, supernet_inputs(ckpt, args.data_root))
        subnet = own or load_subnet(args.subnet)  # read, and the data checked, before the model is rebuilt
        _check_not_mixed(args, ckpt, subnet)
        DataSpec.from_checkpoint(ckpt["data"], args.data_root).preflight(("val",), given_test=False)
        model = load_supernet(ckpt, device=resolve_device(args.device))
        parse_subnet(model, subnet)  # names the layer and choice if the subnet does not fit this supernet
        if args.adapter_only:
            _write_adapter(args, out, ckpt, model, subnet)
            return 0
        checked = _fold_and_check(args, ckpt, model, subnet)
        _write_export(args, out, ckpt, checked, hf, subnet)
    if hf:
        auto = "AutoModelForCausalLM" if isinstance(model, CausalLM) else "AutoModelForSequenceClassification"
        print(f"plain transformers reload matches exactly; exported to {out}/ (config.json, model.safetensors)")
        print(f'load it anywhere with: {auto}.from_pretrained("{out}")')
    else:
        print(f"plain timm reload matches exactly; exported to {out}/ (config.json, model.safetensors)")
        print(f'load it anywhere with: timm.create_model("local-dir:{out}", pretrained=True)')
    return 0


def _read_if_readable(path: str) -> dict[str, Any] | None:
    """The checkpoint, or None when it cannot be read (left for the checks that report it, in their order)."""
    try:
        return read_checkpoint(path)
    except (OSError, ValueError):
        return None


def _trained_subnet(ckpt: dict[str, Any] | None) -> Subnet | None:
    """The subnet a checkpoint was trained as (``glora-train --subnet``: a retrained pick), or None."""
    stored = None if ckpt is None else ckpt.get("subnet")
    return stored if isinstance(stored, dict) and stored else None


def _check_not_mixed(args: argparse.Namespace, ckpt: dict[str, Any], subnet: Subnet) -> None:
    """A retrained checkpoint folds the subnet it trained, and no other: another subnet would fold tensors of the
    retraining with tensors left as the supernet had them (never trained together)."""
    trained = _trained_subnet(ckpt)
    if trained is None or subnet is trained:
        return
    differ = subnet_difference(subnet, trained)
    if differ:
        origin = (ckpt.get("config") or {}).get("subnet") or "its --subnet"
        raise ValueError(
            f"--supernet {args.supernet} retrained one subnet ({origin}); --subnet {args.subnet} is another "
            f"({differ}), which would fold retrained tensors with ones the retraining never touched: leave out "
            "--subnet to export the retrained pick, or export this subnet from the supernet it was retrained from"
        )


def _check_replaceable(out: Path) -> None:
    """``--force`` replaces a previous export (a folder holding glora_export.json) or an empty folder, never a
    folder of other files: those would be deleted with it."""
    if not out.is_dir() or not any(out.iterdir()) or ExportFolder(out).holds_run():
        return
    foreign = sorted(p.name for p in out.iterdir())
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise FileExistsError(
        f"--force replaces a previous export only; {str(out)!r} holds other files ({shown}) that it would delete: "
        "choose another --out, or empty it first"
    )


def cli() -> int:
    """Console entry point ``glora-export``."""
    return run(main)


def _fold_and_check(args: argparse.Namespace, ckpt: dict[str, Any], model: nn.Module, subnet: Subnet) -> _Checked:
    """Fold, then compare with the supernet on real images and with the base architecture's size and FLOPs."""
    folded = fold(model, subnet).eval()
    check_finite(folded)
    device = next(model.parameters()).device
    plain = {"pretrained": False, "pretrained_file": None, "quantize": None}  # the architecture, dense
    spec = BackboneSpec.from_dict(dict(ckpt["backbone"]) | plain)
    base = build_backbone(spec, device=device).eval()
    if isinstance(folded, TokenModel):  # (GPT-2's Conv1D layers, loaded quantized as linear ones)
        restore_layer_classes(folded, base)
    extra = sorted(set(folded.state_dict()) - set(base.state_dict()))
    declared: list[str] = []
    if extra and isinstance(folded, TokenModel):  # turn on the architecture's bias flags, or refuse
        declared = declare_biases(folded, extra)
        print(
            f"the subnet gives bias-free layers a bias: the export turns on {', '.join(declared)} in its config (the "
            "overhead below is those biases)"
        )
    elif extra:
        raise ValueError(
            f"the subnet gives bias-free layer(s) a bias ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): "
            f"the architecture of {spec.model} has no place for it; choose C and E none there (or train with "
            "--bias-free exclude)"
        )
    modality = modality_from_record(ckpt["input"])
    x = _verification_inputs(args, ckpt, modality, device)
    rows = batch_rows(x)
    set_subnet(model, subnet)
    with torch.no_grad():
        expected, got = modality(model, x), modality(folded, x)
    diff, rel = max_difference(got, expected)
    quant = quantization_of(model)
    agreement = _check_close(args, got, expected, x, quant, what="folded outputs", rows=rows, unit=modality.unit)
    n_base, n_fold = (sum(p.numel() for p in m.parameters()) for m in (base, folded))
    one = modality.first(x, 1)
    f_base, f_fold = count_flops(base, one, modality), count_flops(folded, one, modality)
    glora_params = count_params(model, subnet)
    print(
        f"parameters: base {n_base:,}, folded {n_fold:,} (overhead {n_fold - n_base}); "
        f"GLoRA subnet trained {glora_params:,} ({glora_params / 1e6:.4f}M)"
    )
    print(f"FLOPs per {modality.unit_singular}: base {f_base:,}, folded {f_fold:,} (overhead {f_fold - f_base})")
    stats = {
        "supernet": str(args.supernet),
        "subnet": str(args.subnet) if args.subnet else f"{args.supernet} (the subnet it was trained as)",
        "glora_params": glora_params,
        "params": n_fold,
        "base_params": n_base,
        "flops": f_fold,
        "base_flops": f_base,
        "verify_examples": rows,
        "declared_bias_flags": declared,
        "max_abs_diff": diff,
        "max_rel_diff": rel,
    }
    if quant:
        stats |= {"quantization": quant, "dequantized": True} | agreement
    if args.latency_rounds:
        stats["latency"] = _latency(args.latency_rounds, folded, model, base, x, modality)
    if args.eval_set:
        stats["eval_sets"] = _eval_sets(args, ckpt, folded, device, modality)
    return _Checked(folded.to("cpu"), {k: v.cpu() for k, v in x.items()}, got.cpu(), modality, stats)


def prediction_agreement(
    got: torch.Tensor, expected: torch.Tensor, x: dict[str, torch.Tensor]
) -> tuple[float | None, int, str]:
    """(share of predictions that agree, how many, of what): the arg-max class per row, or the next token at every
    position the attention mask keeps (a causal LM); (None, 0, "") for a single output (regression)."""
    if got.shape[-1] == 1:
        return None, 0, ""
    same = got.argmax(-1) == expected.argmax(-1)
    what = "rows"
    if same.dim() == 2:  # (batch, positions): a causal LM's next-token predictions
        mask = x.get("attention_mask")
        same = same[mask.to(torch.bool).to(same.device)] if mask is not None and mask.shape == same.shape else same
        what = "tokens"
    return float(same.float().mean()), int(same.numel()), what


def _check_close(
    args: argparse.Namespace,
    got: torch.Tensor,
    expected: torch.Tensor,
    x: dict[str, torch.Tensor],
    quant: dict[str, Any] | None,
    *,
    what: str,
    rows: int,
    unit: str,
    show: bool = True,
) -> dict[str, Any]:
    """Print how close ``got`` (a folded model) is to ``expected`` (the supernet) and refuse an export that is not:
    within --tolerance of the largest logit, or over a quantized base (folded into the dequantized weights, so not
    equal by construction) predicting as the supernet does on at least --min-agreement of the rows or tokens."""
    diff, rel = max_difference(got, expected)
    if not quant:
        if show:
            print(f"folded vs supernet on {rows} real {unit}: max |diff| {diff:.3e} (relative {rel:.3e})")
        if rel > args.tolerance:
            raise ValueError(f"{what} differ from the supernet by {rel:.3e} (relative) > --tolerance {args.tolerance}")
        return {}
    share, n, over = prediction_agreement(got, expected, x)
    agrees = "" if share is None else f"; predictions agree on {share:.2%} of {n:,} {over}"
    print(
        f"folded into the dequantized weights vs the {quant['scheme']} supernet on {rows} real {unit}: max |diff| "
        f"{diff:.3e} (relative {rel:.3e}){agrees}"
    )
    if share is not None and share < args.min_agreement:
        raise ValueError(
            f"{what} agree with the {quant['scheme']} supernet's predictions on {share:.2%} of {n:,} {over} < "
            f"--min-agreement {args.min_agreement:.2%}: the dequantized model does not predict as the quantized one"
        )
    return {"prediction_agreement": share, "agreement_over": f"{n} {over}" if share is not None else None}


def _eval_sets(
    args: argparse.Namespace, ckpt: dict[str, Any], folded: nn.Module, device: torch.device, modality: Modality
) -> dict:
    """The folded model (what ships) on each ``--eval-set``: the paper's domain-generalization table."""
    data = DataSpec.from_checkpoint(ckpt["data"], args.data_root)
    head = _head_outputs(folded)
    results = evaluate_sets(
        folded,
        args.eval_set,
        modality=modality,
        num_classes=head,
        class_names=ckpt.get("class_names"),
        crop_pct=data.eval_crop_pct,
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    for name, r in results.items():
        how = f"masked to {r['classes']} classes" if r["masked"] else f"{r['classes']}-way, unmasked"
        print(f"eval set {name}: acc {r['acc']:.4f} on {r['images']} images ({how})")
    return results


def _head_outputs(model: nn.Module) -> int:
    num = getattr(model, "num_classes", None)
    if isinstance(num, int) and num > 0:
        return num
    raise ValueError("cannot tell how many classes the model predicts (it has no num_classes)")


def _latency(
    rounds: int, folded: nn.Module, supernet: nn.Module, base: nn.Module, x: dict[str, torch.Tensor], modality: Modality
) -> dict:
    """What folding buys at inference: the folded model should cost what the base model costs."""
    models = {"folded": folded, "supernet": supernet.eval(), "base": base}
    lat = measure_latency(models, x, rounds, call=modality, unit=modality.unit)
    unit = modality.unit
    for name in ("folded", "supernet"):
        lat[f"{name}_vs_base"] = round(lat[name]["ms_per_batch"] / lat["base"]["ms_per_batch"], 4)
    plural = "s" * (rounds != 1)
    print(
        f"latency on {lat['batch']} {unit} ({lat['device']}, median of {rounds} interleaved round{plural}): folded "
        f"{lat['folded']['ms_per_batch']:.1f} ms ({lat['folded_vs_base']:.2f}x base), unfolded supernet "
        f"{lat['supernet']['ms_per_batch']:.1f} ms ({lat['supernet_vs_base']:.2f}x), base "
        f"{lat['base']['ms_per_batch']:.1f} ms"
    )
    return lat


def _verification_inputs(
    args: argparse.Namespace, ckpt: dict[str, Any], modality: Modality, device: torch.device
) -> dict[str, torch.Tensor]:
    """The first ``--verify-examples`` validation rows (images, or every field the tokenizer gave), as the model takes
    them on ``device``."""
    data = DataSpec.from_checkpoint(ckpt["data"], args.data_root)
    part = data.load_for("val", modality, args.progress).subset(args.verify_examples)
    loader, _ = make_loader(part, len(part), shuffle=False, workers=0)
    return modality.place(next(iter(loader)).inputs, device)


def _base_recipe(ckpt: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """What rebuilds the adapter's base: the checkpoint's backbone record (``glora.app.build_backbone``), and for a
    transformers model what ``from_pretrained`` of the base needs for the head (its class, labels, problem type)."""
    spec = BackboneSpec.from_dict(ckpt["backbone"])
    recipe: dict[str, Any] = {"backbone": spec.to_dict(), "class_names": ckpt.get("class_names")}
    if isinstance(model, TokenModel):
        config = model.model.config
        auto = "AutoModelForCausalLM" if isinstance(model, CausalLM) else "AutoModelForSequenceClassification"
        recipe["transformers"] = {"auto_class": auto, "model": spec.model}
        recipe["task_type"] = "CAUSAL_LM" if isinstance(model, CausalLM) else "SEQ_CLS"  # PEFT's names
        if auto == "AutoModelForSequenceClassification":
            names = ckpt.get("class_names")
            recipe["transformers"] |= {
                "num_labels": config.num_labels,
                "problem_type": config.problem_type,
                "id2label": {str(i): n for i, n in enumerate(names)} if names else None,
            }
    else:
        recipe["timm"] = {"model": spec.model, "num_classes": spec.num_classes, "model_kwargs": spec.model_kwargs}
    return recipe


def _write_adapter(args: argparse.Namespace, out: Path, ckpt: dict[str, Any], model: nn.Module, subnet: Subnet) -> None:
    """``--adapter-only``: the pick's adapter folder, checked before it is put in place: a fresh base (rebuilt as
    the checkpoint says) that loads it computes the supernet's outputs exactly, and folded it computes the folded
    export's; its size is recorded beside the folded model's."""
    prefix = "model." if isinstance(model, TokenModel) else ""  # the base's own names: plain transformers loads it
    device = next(model.parameters()).device
    modality = modality_from_record(ckpt["input"])
    x = _verification_inputs(args, ckpt, modality, device)
    set_subnet(model, subnet)
    with torch.no_grad():
        expected = modality(model, x)
    with staged_folder(out) as tmp:
        save_adapter(model, tmp, subnet, prefix=prefix, extra=_base_recipe(ckpt, model), format=args.format)
        fresh = build_backbone(BackboneSpec.from_dict(ckpt["backbone"]), device=device).eval()
        load_adapter(fresh, tmp, prefix=prefix)
        with torch.no_grad():
            got = modality(fresh, x)
            if not torch.equal(got, expected):
                diff, _ = max_difference(got, expected)
                raise ValueError(f"a fresh base with the adapter differs from the supernet by {diff:.3e}")
            folded = fold(fresh, subnet).eval()
            got = modality(folded, x)
        diff, rel = max_difference(got, expected)
        quant = quantization_of(model)
        agreement = _check_close(args, got, expected, x, quant, what="the folded adapter's outputs",
                                 rows=batch_rows(x), unit=modality.unit, show=False)  # fmt: skip
        adapter_bytes = sum(f.stat().st_size for f in tmp.iterdir())
        if args.format == "peft":  # PEFT's folder says nothing of the base: the record beside it does
            atomic_write_text(tmp / "glora_base.json", json.dumps(_base_recipe(ckpt, model), indent=1))
        folded_bytes = sum(t.numel() * t.element_size() for t in folded.state_dict().values())
        glora_params = count_params(model, subnet)
        stats = {
            "adapter_only": True,
            "supernet": str(args.supernet),
            "subnet": str(args.subnet) if args.subnet else f"{args.supernet} (the subnet it was trained as)",
            "glora_params": glora_params,
            "adapter_bytes": adapter_bytes,
            "folded_bytes": folded_bytes,
            "verify_examples": batch_rows(x),
            "max_rel_diff_folded": rel,
        }
        if quant:
            stats |= {"quantization": quant} | agreement
        save_subnet(subnet, ExportFolder(tmp).subnet)
        atomic_write_text(ExportFolder(tmp).record, json.dumps(stats, indent=1))
    folded_note = "folded, as above" if quant else f"folded, within {rel:.1e} (relative)"
    print(
        f"a fresh base with the adapter computes the supernet's outputs exactly on {batch_rows(x)} {modality.unit}; "
        f"{folded_note}"
    )
    print(
        f"adapter: {glora_params:,} params, {_mb(adapter_bytes)} in {out}/ ({_files(args.format)}); "
        f"the folded export would take {_mb(folded_bytes)} ({folded_bytes / max(adapter_bytes, 1):.0f}x)"
    )
    base = _base_recipe(ckpt, model)
    if args.format == "peft" and "transformers" in base:
        print(f'load it with PEFT: peft.PeftModel.from_pretrained(base, "{out}"), or glora.load_adapter(base, "{out}")')
    elif "transformers" in base:
        t = base["transformers"]
        labels = f", num_labels={t['num_labels']}" if t.get("num_labels") else ""
        spec = BackboneSpec.from_dict(base["backbone"])
        quantized = f", quantization_config={_bnb_config_text(spec)}" if spec.quantize else ""
        call = f'transformers.{t["auto_class"]}.from_pretrained("{t["model"]}"{labels}{quantized})'
        print(f'load it with: base = {call}; glora.load_adapter(base, "{out}")')
        if spec.quantize:
            print("(or over the base in floating point, as QLoRA adapters are served: it then computes what it did "
                  "up to the quantization error)")  # fmt: skip
    else:
        print(f'load it with: base = glora.app.build_backbone(glora.app.BackboneSpec.from_dict(json.load(open("{out}/'
              f'glora_adapter.json"))["extra"]["backbone"])); glora.load_adapter(base, "{out}")')  # fmt: skip


def _bnb_config_text(spec: BackboneSpec) -> str:
    """The ``BitsAndBytesConfig(...)`` a user passes to rebuild the quantized base the adapter trained over."""
    if spec.quantize == "int8":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(spec.dtype)
    compute = f", bnb_4bit_compute_dtype=torch.{dtype}" if dtype else ""
    return (f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{spec.quantize}", '
            f"bnb_4bit_use_double_quant={spec.double_quant}{compute})")  # fmt: skip


def _files(fmt: str) -> str:
    return (
        "adapter_config.json, adapter_model.safetensors: PEFT's GLoRA"
        if fmt == "peft"
        else ("glora_adapter.json, adapter.safetensors")
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _write_export(
    args: argparse.Namespace, out: Path, ckpt: dict[str, Any], checked: _Checked, hf: bool, subnet: Subnet
) -> None:
    """Write the folder privately (timm's layout, or save_pretrained for a transformers model), reload it with the
    plain library, check it, then put it in place."""
    with staged_folder(out) as tmp:
        if hf:
            tokenizer = DataSpec.from_checkpoint(ckpt["data"]).tokenizer
            with transformers_bars(args.progress):
                export_transformers_folder(checked.folded, tmp, tokenizer, ckpt.get("class_names"))
                reloaded, library = reload_transformers_folder(tmp, checked.folded).eval(), "transformers"
        else:
            import timm

            export_timm_folder(checked.folded, tmp, ckpt["input"], ckpt.get("class_names"))
            reloaded, library = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval(), "timm"
        save_subnet(subnet, ExportFolder(tmp).subnet)
        with torch.no_grad():
            rdiff, _ = max_difference(checked.modality(reloaded, checked.x), checked.logits)
        if rdiff > 0:
            raise ValueError(f"the export reloaded with plain {library} differs from the folded model by {rdiff:.3e}")
        atomic_write_text(ExportFolder(tmp).record, json.dumps(checked.stats, indent=1))
