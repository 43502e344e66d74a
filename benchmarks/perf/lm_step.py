"""Causal-LM training step on a Llama-shaped model: the GLoRA supernet against norms-only tuning, PEFT LoRA r=8 and
PEFT GLoRA on the same target layers.

    python -m benchmarks.perf.lm_step [--layers 4] [--hidden 512] [--seq 256] [--batch-size 8] [--rounds 6] [--peak]
        [--dtype bf16 --support-dtype float32 --gradient-checkpointing]   # the 7-8B recipe's memory setup

A random-init ``LlamaForCausalLM`` built from a config (offline), next-token loss on random token ids. Llama's
projections have no bias, so the floor is norms-only tuning (the RMSNorm scales train: the bias-only analogue, whose
backward still runs through every layer). Targets default to the GIFT paper's Query/Value layers (``q_proj``,
``v_proj``); ``--targets all-linear`` adapts every projection. The supernet draws a new random subnet per step
(ranks {8, 4}), as training does; ``glora-lora8`` is the fixed subnet B = lora_8 (= LoRA r=8). Methods run
interleaved round by round (medians); tokens/s = batch x sequence / step time. With ``--peak`` each method's peak
memory is measured in a process of its own, above what the built model holds. ``--dtype bf16`` keeps the frozen
weights in bf16 (built on the device), ``--support-dtype float32`` the GLoRA supports in fp32 (the commands' default
over a bf16 backbone), ``--gradient-checkpointing`` recomputes block activations: the setup of a 7-8B supernet on one
GPU (``benchmarks/gpu.sh``'s ``lm_7b`` step runs it at Llama-2-7B's shape).
"""

from __future__ import annotations

import argparse
import json
import random

import torch

import glora
from glora.app.evaluate import resolve_device
from glora.app.trainer import make_adamw
from glora.quantized import frozen_bytes

from ..common import add_json_arg, machine, write_json
from .timing import (
    Method,
    interleaved,
    peak_above_base,
    peak_in_own_process,
    peft_available,
    saved_for_backward_mib,
    step_table,
)

__all__ = ["ALL", "build", "main"]

ALL = ["norms-only", "glora-supernet", "glora-lora8", "peft-lora", "peft-glora"]
# Over a base quantized by bitsandbytes (the frozen projections in 4-bit NF4, double quantization, or 8-bit): QLoRA's
# setting; "peft-lora-nf4" is QLoRA itself.
QUANTIZED = ["glora-supernet-nf4", "glora-supernet-int8", "peft-lora-nf4"]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1376, help="MLP width (Llama's ~8/3 x hidden)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"], help="layer suffixes, or all-linear")
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=ALL, choices=ALL + QUANTIZED)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="the frozen weights")
    p.add_argument("--support-dtype", choices=["float32", "bfloat16"], default=None, help="GLoRA supports' dtype")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument("--peak", action="store_true", help="also measure each method's peak memory in its own process")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: peak memory of one method
    add_json_arg(p)
    return p.parse_args(argv)


def _model(args):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, 32),
        tie_word_embeddings=False,
    )
    with torch.device(resolve_device(args.device)):  # built where it runs: a 7B model never visits the host
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16) if args.dtype == "bf16" else model
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _targets(model, args) -> list[str]:
    suffixes = None if args.targets == ["all-linear"] else args.targets
    out = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    return out if suffixes is None else [n for n in out if n.rsplit(".", 1)[-1] in suffixes]


def _quantize(model, scheme: str, device: torch.device) -> None:
    """Every projection (not ``lm_head``, as transformers leaves it) replaced in place by bitsandbytes' layer holding
    its weight quantized where it runs, as ``from_pretrained(quantization_config=...)`` would load it."""
    import bitsandbytes as bnb

    dtype = next(model.parameters()).dtype
    for name, lin in [(n, m) for n, m in model.named_modules() if type(m) is torch.nn.Linear and n != "lm_head"]:
        w = lin.weight.detach()
        if scheme == "int8":
            q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False)
            q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=dtype,
                                  quant_type=scheme, compress_statistics=True)  # fmt: skip
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=scheme, compress_statistics=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, q.to(device))


def build(name: str, args) -> Method:
    """One method's model on the benchmark's targets (the same layers for GLoRA and PEFT)."""
    torch.manual_seed(0)
    model = _model(args)
    targets = _targets(model, args)
    scheme = next((s for s in ("nf4", "int8") if name.endswith("-" + s)), None)
    if scheme is not None:
        _quantize(model, scheme, resolve_device(args.device))
        name = name.removesuffix("-" + scheme)
    if name == "norms-only":
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("norm.weight"))
        return Method(name, model)
    if name.startswith("glora"):
        space = glora.SearchSpace(lora_ranks=tuple(args.ranks))
        glora.inject(model, glora.AdapterConfig(space, tuple(targets), support_dtype=args.support_dtype))
        if name == "glora-lora8":
            glora.set_subnet(model, glora.make_subnet(model, B=f"lora_{max(args.ranks)}"))
            return Method(name, model)
        rng = random.Random(0)
        return Method(name, model, lambda: glora.set_subnet(model, glora.sample_subnet(model, rng)))
    import peft

    if name == "peft-lora":
        config = peft.LoraConfig(r=8, lora_alpha=8, target_modules=targets)
    else:  # PEFT's GLoRA at the paper's largest fixed configuration
        config = peft.GloraConfig(r=8, target_modules=targets, config_A_B="lora", config_C="lora", config_D_E="vector")
    return Method(name, peft.get_peft_model(model, config))


def setup(name: str, args, device: torch.device):
    method = build(name, args)
    method.name = name
    if not any(name.endswith(s) for s in ("-nf4", "-int8")):  # (a quantized model is built where it runs)
        method.model.to(device)
    method.model.train()
    opt = make_adamw([p for p in method.model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch_size, args.seq), generator=g).to(device)

    def loss():
        method.before_step()
        return method.model(input_ids=ids, labels=ids).loss

    def step():
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return method, loss, step


def _workload(args) -> list[str]:
    out = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads)]
    out += ["--intermediate", str(args.intermediate), "--vocab", str(args.vocab), "--seq", str(args.seq)]
    out += ["--batch-size", str(args.batch_size), "--device", args.device, "--ranks", *map(str, args.ranks)]
    out += ["--dtype", args.dtype, *(["--support-dtype", args.support_dtype] if args.support_dtype else [])]
    return [*out, *(["--gradient-checkpointing"] if args.gradient_checkpointing else []), "--targets", *args.targets]


def main(argv=None) -> None:
    args = parse(argv)
    device = resolve_device(args.device)
    if args.one:
        _, _, step = setup(args.one, args, device)
        print(json.dumps({"peak_mib": peak_above_base(step, device)}))
        return
    methods = [m for m in args.methods if not m.startswith("peft") or peft_available()]
    if len(methods) < len(args.methods):
        print("peft is not installed: PEFT baselines skipped (pip install -r benchmarks/requirements.txt)")
    runs = {}
    for m in methods:
        try:
            runs[m] = setup(m, args, device)
        except Exception as e:  # a baseline that cannot run this model is reported, not fatal
            print(f"{m}: cannot run ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    times = interleaved({m: r[2] for m, r in runs.items()}, args.rounds, args.warmup, device)
    saved = {m: saved_for_backward_mib(r[0].model, r[1]) for m, r in runs.items()}
    peaks = {m: peak_in_own_process("lm_step", m, _workload(args)) for m in runs} if args.peak else {}
    tokens = args.batch_size * args.seq
    print(f"machine: {machine()}; device {device.type}")
    print(
        f"Llama-shaped causal LM: {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, vocab "
        f"{args.vocab}; batch {args.batch_size} x {args.seq} tokens; targets {' '.join(args.targets)}; GLoRA ranks "
        f"{set(args.ranks)}; frozen weights {args.dtype}, supports {args.support_dtype or args.dtype}"
        f"{', gradient checkpointing' * args.gradient_checkpointing}; {args.rounds} interleaved rounds (median)"
    )
    frozen = {m: frozen_bytes(r[0].model) for m, r in runs.items()}
    print("frozen weights: " + ", ".join(f"{m} {b / 2**20:.1f} MiB" for m, b in frozen.items()))
    for m in runs:
        plain = m.removesuffix("-nf4").removesuffix("-int8")
        if plain != m and plain in times:
            print(
                f"{m} / {plain}: step {times[m] / times[plain]:.2f}x, frozen weights {frozen[m] / frozen[plain]:.2f}x"
            )
    trainable = {m: r[0].trainable for m, r in runs.items()}
    rows = step_table(trainable, times, saved, peaks, floor="norms-only", unit="tokens", per_step=tokens)
    for m, row in rows.items():
        row["frozen_mib"] = frozen[m] / 2**20
    for a, b in (("glora-supernet", "peft-glora"), ("glora-supernet", "peft-lora")):
        if a in times and b in times:
            print(f"{a} step / {b} step: {times[a] / times[b]:.2f}x")
    write_json(args.json, "lm_step", args, rows)


if __name__ == "__main__":
    main()
