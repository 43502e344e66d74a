"""``--fsdp`` against plain data parallelism: what each rank holds and what a supernet step costs.

    torchrun --nproc_per_node=2 -m benchmarks.perf.fsdp_step [--layers 4] [--hidden 512] [--seq 256] [--batch-size 8]
        [--rounds 6] [--device cpu]

A random-init Llama-shaped ``LlamaForCausalLM`` (as ``benchmarks.perf.lm_step`` builds it), GLoRA on q_proj/v_proj
(ranks {8, 4}), built twice from the same seed: once replicated (every rank holds the whole model; gradients
all-reduced by :class:`glora.app.distributed.Distributed`, as the trainer does without ``--fsdp``) and once sharded
with :func:`glora.app.sharding.shard_model`. Each rank takes its share of the global batch. Reported on rank 0: the
bytes of parameters each rank holds (frozen and trainable), and the median step (a random subnet, forward, backward,
gradient exchange, AdamW) of each, interleaved round by round.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

import glora
from glora.app.distributed import setup_distributed
from glora.app.evaluate import resolve_device
from glora.app.sharding import shard_model
from glora.app.trainer import make_adamw

from ..common import add_json_arg, machine, write_json
from .lm_step import _model as lm_model
from .timing import sync

__all__ = ["main"]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    add_json_arg(p)
    return p.parse_args(argv)


def _model(args) -> torch.nn.Module:
    """lm_step's Llama-shaped model (fp32, no checkpointing), seeded, with GLoRA on q_proj / v_proj."""
    torch.manual_seed(0)
    model = lm_model(argparse.Namespace(**vars(args), dtype="fp32", gradient_checkpointing=False))
    space = glora.SearchSpace(lora_ranks=(8, 4), bias_free="exclude")
    glora.inject(model, glora.AdapterConfig(space, targets=("q_proj", "v_proj")))
    glora.set_execution(model, path="static")
    return model


def _held(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of frozen and of trainable parameters this rank holds (its shards, when sharded)."""
    frozen = trainable = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        size = local.numel() * local.element_size()
        if p.requires_grad:
            trainable += size
        else:
            frozen += size
    return frozen, trainable


def main(argv=None) -> None:
    args = parse(argv)
    job, device = setup_distributed(resolve_device(args.device))
    if not job.enabled:
        raise SystemExit("run it under torchrun: torchrun --nproc_per_node=2 -m benchmarks.perf.fsdp_step")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch_size, args.seq), generator=g)[job.shard(args.batch_size)]
    ids = ids.to(device)
    weight = len(ids) / args.batch_size  # this rank's share of the global mean

    replicated = _model(args).to(device)
    sharded = _model(args)
    shard_model(sharded, device, job.world)
    setups = {}
    for name, model in (("data parallel", replicated), ("fsdp", sharded)):
        params = [p for p in model.parameters() if p.requires_grad]
        setups[name] = (model, params, make_adamw(params, lr=1e-4, weight_decay=0.0), random.Random(2))

    def step(name: str) -> None:
        model, params, opt, rng = setups[name]
        glora.set_subnet(model, glora.sample_subnet(model, rng))
        loss = model(input_ids=ids, labels=ids).loss * weight
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in glora.unused_params(model):
            p.grad = None
        if name == "data parallel":
            job.all_reduce_grads(params)
        opt.step()

    times: dict[str, list[float]] = {n: [] for n in setups}
    for r in range(args.warmup + args.rounds):
        for name in setups:
            job.barrier()
            sync(device)
            start = time.perf_counter()
            step(name)
            sync(device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    rows = {}
    for name, (model, *_rest) in setups.items():
        frozen, trainable = _held(model)
        rows[name] = {"frozen_mib": frozen / 2**20, "trainable_mib": trainable / 2**20,
                      "step_ms": 1000 * statistics.median(times[name])}  # fmt: skip
    if job.main:
        print(f"{machine()}; {job.world} processes, OMP threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
        print(f"Llama {args.layers} layers, hidden {args.hidden}, seq {args.seq}, global batch {args.batch_size}")
        print("| setup | frozen MiB per rank | trainable MiB per rank | step ms (median) | step / data parallel |")
        print("|---|---|---|---|---|")
        base = rows["data parallel"]["step_ms"]
        for name, r in rows.items():
            print(f"| {name} | {r['frozen_mib']:.1f} | {r['trainable_mib']:.2f} | {r['step_ms']:.1f} | "
                  f"{r['step_ms'] / base:.2f}× |")  # fmt: skip
        write_json(args.json, "fsdp_step", args, rows)
    job.close()


if __name__ == "__main__":
    main()
