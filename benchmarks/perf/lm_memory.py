"""What a 7-8B causal LM's GLoRA supernet holds in memory, counted: frozen weights in bf16 and quantized by
bitsandbytes (nf4 / fp4 with and without double quantization, int8), the supports and their AdamW state.

    python -m benchmarks.perf.lm_memory [--models llama2-7b llama3-8b] [--ranks 8 4] [--targets q_proj v_proj]

Counted, not measured: each model is built from its config on the meta device (no memory, no weights), and a
quantized linear's bytes come from bitsandbytes' storage layout (packed values, one scale per 64-value block, the
scales themselves quantized per 256 blocks under double quantization, the code tables). That formula is first
checked against the bytes real quantized layers hold (``glora.quantized.QuantizedWeight.nbytes``) on a few shapes,
in the same run; the embeddings, norms and ``lm_head`` stay in bf16, as transformers leaves them.
"""

from __future__ import annotations

import argparse
import math

import torch

import glora

from ..common import add_json_arg, machine, write_json

__all__ = ["MODELS", "quantized_bytes", "main"]

# (layers, hidden, MLP, vocab, heads, KV heads)
MODELS = {
    "llama2-7b": (32, 4096, 11008, 32000, 32, 32),
    "llama3-8b": (32, 4096, 14336, 128256, 32, 8),
}
SCHEMES = ("bf16", "nf4+dq", "nf4", "fp4", "int8")
BLOCK, NESTED_BLOCK = 64, 256


def quantized_bytes(scheme: str, out_features: int, in_features: int) -> int:
    """Bytes bitsandbytes stores for one ``out x in`` linear weight under ``scheme``."""
    n = out_features * in_features
    if scheme == "bf16":
        return 2 * n
    if scheme == "int8":
        return n + 4 * out_features  # int8 values, one float32 scale per row
    blocks = math.ceil(n / BLOCK)
    code = 16 * 4  # the 4-bit code table
    if scheme.endswith("+dq"):  # uint8 block scales, their float32 scales, the nested code table, an offset
        return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 256 * 4 + code + 4
    return math.ceil(n / 2) + 4 * blocks + code


def _checked() -> list[tuple[str, tuple[int, int], int, int]]:
    """(scheme, shape, formula, measured) on real quantized layers: the formula is what bitsandbytes holds."""
    import bitsandbytes as bnb

    from glora.quantized import quantized_weight

    rows = []
    for shape in ((96, 160), (256, 512), (1024, 384)):
        lin = torch.nn.Linear(shape[1], shape[0], bias=False)
        for scheme in ("nf4+dq", "nf4", "fp4", "int8"):
            if scheme == "int8":
                q = bnb.nn.Linear8bitLt(shape[1], shape[0], bias=False, has_fp16_weights=False)
                q.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
            else:
                kind, dq = scheme.split("+")[0], scheme.endswith("+dq")
                q = bnb.nn.Linear4bit(shape[1], shape[0], bias=False, quant_type=kind, compress_statistics=dq)
                q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type=kind,
                                             compress_statistics=dq)  # fmt: skip
            q = q.to("cpu")
            rows.append((scheme, shape, quantized_bytes(scheme, *shape), quantized_weight(q).nbytes))
    return rows


def _count(name: str, args) -> dict:
    import transformers

    layers, hidden, mlp, vocab, heads, kv = MODELS[name]
    shape = {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers}
    cfg = transformers.LlamaConfig(**shape, num_attention_heads=heads, num_key_value_heads=kv)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    in_linears = {id(m.weight) for m in linears.values()}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in in_linears)  # embeddings, norms, lm_head
    frozen = {s: sum(quantized_bytes(s, m.out_features, m.in_features) for m in linears.values()) + 2 * rest
              for s in SCHEMES}  # fmt: skip
    config = glora.AdapterConfig(glora.SearchSpace(lora_ranks=tuple(args.ranks)), tuple(args.targets),
                                 support_dtype="float32")  # fmt: skip
    trainable = glora.supernet_size(model, config)
    linear = {s: frozen[s] - 2 * rest for s in SCHEMES}
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "linear_bytes": linear,  # the quantized layers alone
        "frozen_bytes": frozen,
        "trainable": trainable,
        "training_state_bytes": 16 * trainable,  # fp32 value, gradient, AdamW's two moments
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 4])
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    add_json_arg(p)
    args = p.parse_args(argv)
    checked = _checked()
    bad = [r for r in checked if r[2] != r[3]]
    print(f"machine: {machine()}")
    print(f"storage formula against real bitsandbytes layers: {len(checked) - len(bad)}/{len(checked)} exact")
    for scheme, shape, formula, measured in bad:
        print(f"  {scheme} {shape}: formula {formula:,} B, measured {measured:,} B")
    gib = 2**30
    results = {"formula_checked": len(checked), "formula_mismatches": len(bad), "models": {}}
    print(f"Q/V supernet, ranks {set(args.ranks)}, fp32 supports; frozen GiB by storage (x = against bf16):")
    print("| model | params | " + " | ".join(SCHEMES) + " | trainable | training state |")
    for name in args.models:
        c = _count(name, args)
        results["models"][name] = c
        bf16 = c["frozen_bytes"]["bf16"]
        cells = [f"{c['frozen_bytes'][s] / gib:.2f} ({c['frozen_bytes'][s] / bf16:.2f}x)" for s in SCHEMES]
        print(f"| {name} | {c['params'] / 1e9:.2f} B | " + " | ".join(cells) +
              f" | {c['trainable']:,} | {c['training_state_bytes'] / 2**20:.0f} MiB |")  # fmt: skip
    for name, c in results["models"].items():
        lin = c["linear_bytes"]
        shares = ", ".join(f"{s} {lin[s] / lin['bf16']:.3f}x" for s in SCHEMES[1:])
        print(f"{name}: the linear layers alone (embeddings, norms and lm_head left in bf16): {shares}")
    write_json(args.json, "lm_memory", args, results)


if __name__ == "__main__":
    main()
