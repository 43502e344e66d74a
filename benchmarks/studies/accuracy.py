"""Accuracy per parameter on the embedded transfer task (digits 0-4 backbone -> digits 5-9), several seeds.

    python -m benchmarks.studies.accuracy [--seeds 0 1 2] [--epochs 240] [--out benchmarks/studies/results/accuracy]

Methods: linear probe (head only), LoRA r=8 as a fixed GLoRA subnet (B = lora_8, rest none), full fine-tuning,
and GLoRA: a supernet trained with train_supernet.py and searched with search.py under LoRA r=8's parameter
budget (the paper's count). Test accuracy of every method's final model; the searched subnet's test accuracy is
search.py's own report. Also the Pareto front (validation accuracy vs params) of the first seed's search, and the
Kendall rank correlation between the supernet's inherited-weight accuracy and stand-alone accuracy (each subnet
trained alone from the same backbone) for --tau-subnets random subnets: how faithfully the supernet ranks them.
Every model trains through the toolkit's one training loop (``glora.app.Trainer``) with the same recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
from pathlib import Path

import torch

import glora
from glora.app import load_supernet
from glora.app.cli import setup_logging
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main

from ..common import add_json_arg, machine, write_json
from ..stats import kendall_tau, mean_std
from .common import backbone, evaluate, fit, fixed_subnet

__all__ = ["main"]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=240, help="every method trains this long (the supernet too)")
    p.add_argument("--tau-subnets", type=int, default=8)
    p.add_argument("--generations", type=int, default=20, help="search generations (the paper's 20)")
    p.add_argument("--out", default="benchmarks/studies/results/accuracy", help="folder for results.json and the plot")
    add_json_arg(p)
    return p.parse_args()


def linear_probe(seed: int, epochs: int) -> tuple[float, int]:
    torch.manual_seed(seed)
    model = backbone()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("head."))
    fit(model, 1e-2, epochs, seed)
    return evaluate(model, "test"), 0


def full_finetune(seed: int, epochs: int) -> tuple[float, int]:
    torch.manual_seed(seed)
    model = backbone()
    head = sum(p.numel() for p in model.head.parameters())
    fit(model, 1e-3, epochs, seed)
    return evaluate(model, "test"), sum(p.numel() for p in model.parameters()) - head


def glora_search(seed: int, epochs: int, budget: int, work: Path, generations: int) -> tuple[float, int, Path]:
    supernet = work / f"supernet-{seed}"
    assert train_main(["--epochs", str(epochs), "--seed", str(seed), "--out", str(supernet), "--no-progress"]) == 0
    out = work / f"search-{seed}"
    code = search_main(
        [
            "--supernet",
            str(supernet / "last.pt"),
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--param-limit",
            f"{budget / 1e6:.6f}",
            "--generations",
            str(generations),
            "--no-progress",
        ]
    )
    assert code == 0
    final = json.loads((out / "search_log.jsonl").read_text().splitlines()[-1])
    return final["test_acc"], final["params"], out


def compare_methods(args, work: Path) -> tuple[dict[str, list[tuple[float, int]]], list, Path]:
    """Every method on every seed: (test accuracy, params) lists, seed 0's Pareto front, its supernet."""
    rows: dict[str, list[tuple[float, int]]] = {
        "linear probe": [],
        "LoRA r=8 (B=lora_8)": [],
        "full fine-tuning": [],
        "GLoRA searched (<= LoRA params)": [],
    }
    first_search = supernet = None
    for seed in args.seeds:
        rows["linear probe"].append(linear_probe(seed, args.epochs))
        rows["full fine-tuning"].append(full_finetune(seed, args.epochs))
        acc, lora_params = fixed_subnet(seed, args.epochs, lambda m: glora.make_subnet(m, B="lora_8"))
        rows["LoRA r=8 (B=lora_8)"].append((acc, lora_params))
        acc, params, search_dir = glora_search(seed, args.epochs, lora_params, work, args.generations)
        rows["GLoRA searched (<= LoRA params)"].append((acc, params))
        if first_search is None:
            first_search = json.loads((search_dir / "pareto.json").read_text())["front"]
            supernet = work / f"supernet-{seed}" / "last.pt"
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1][0]:.4f}" for k, v in rows.items()), flush=True)
    return rows, first_search, supernet


def rank_correlation(args, supernet_path: Path) -> tuple[float, list[float], list[float]]:
    """Kendall tau of inherited-weight vs stand-alone validation accuracy over random subnets."""
    supernet = load_supernet(supernet_path)
    rng = random.Random(123)
    subnets = [glora.sample_subnet(supernet, rng) for _ in range(args.tau_subnets)]
    inherited = []
    for s in subnets:
        with glora.folded(supernet, s):
            inherited.append(evaluate(supernet, "val"))
    alone = [fixed_subnet(args.seeds[0], args.epochs, lambda m, s=s: s, split="val")[0] for s in subnets]
    return kendall_tau(inherited, alone), inherited, alone


def main() -> None:
    args = parse()
    setup_logging(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows, front, supernet = compare_methods(args, Path(tmp))
        tau, inherited, alone = rank_correlation(args, supernet)

    print(f"\nmachine: {machine()}")
    print(f"embedded task, {len(args.seeds)} seeds {args.seeds}, {args.epochs} epochs each; test accuracy mean ± std")
    print(f"{'method':34s} {'params (paper count)':>21s} {'test acc':>16s}")
    summary = {}
    for k, v in rows.items():
        accs = [a for a, _ in v]
        params = [p for _, p in v]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary[k] = {"test_acc": accs, "params": params}
        print(f"{k:34s} {statistics.mean(params):>21,.0f} {statistics.mean(accs):9.4f} ± {std:.4f}")
    print(
        f"Pareto front (seed {args.seeds[0]}, val acc): "
        + ", ".join(f"{p['params']:,}: {p['val_acc']:.3f}" for p in front)
    )
    print(f"Kendall tau, inherited vs stand-alone val accuracy over {len(alone)} random subnets: {tau:.3f}")
    print("  inherited:  " + " ".join(f"{a:.3f}" for a in inherited))
    print("  stand-alone:" + " ".join(f"{a:.3f}" for a in alone))
    result = {
        "machine": machine(),
        "args": vars(args),
        "methods": summary,
        "pareto_front": front,
        "kendall_tau": tau,
        "inherited": inherited,
        "stand_alone": alone,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    write_json(args.json, "accuracy", args, result)
    plot(summary, front, out / "accuracy_vs_params.png")
    print(f"wrote {out / 'results.json'} and {out / 'accuracy_vs_params.png'}")


def plot(summary, front, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for i, (k, v) in enumerate(summary.items()):
        if k == "full fine-tuning":
            continue  # 200k params: off the chart's scale; its accuracy is drawn as a line
        ax.errorbar(
            [statistics.mean(v["params"]) / 1e3],
            [statistics.mean(v["test_acc"])],
            yerr=[mean_std(v["test_acc"])[1]],
            fmt="o",
            capsize=4,
            color=f"C{i}",
            label=k,
        )
    ft = summary["full fine-tuning"]
    ax.axhline(
        statistics.mean(ft["test_acc"]),
        color="grey",
        ls="--",
        label=f"full fine-tuning ({statistics.mean(ft['params']) / 1e3:.0f}k params)",
    )
    ax.step(
        [p["params"] / 1e3 for p in front],
        [p["val_acc"] for p in front],
        where="post",
        color="C5",
        alpha=0.6,
        label="GLoRA Pareto front (val, seed 0)",
    )
    ax.set_xlabel("trained parameters (thousands, paper's count; head excluded)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
