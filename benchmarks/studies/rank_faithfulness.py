"""Rank faithfulness of supernet training strategies on the embedded task: Kendall tau between each supernet's
inherited-weight validation accuracy and stand-alone validation accuracy, on the same held-out candidates.

    python -m benchmarks.studies.rank_faithfulness [--epochs 60] [--alone-epochs 60] [--candidates 10] [--seeds 0 1 2]

Candidates are drawn (seeded, the same for every strategy) among the subnets inside LoRA r=8's parameter count, the
budget the search uses, in the space every strategy trains (without C's lora when ``recommended preset`` runs).
Stand-alone accuracy: each candidate trained alone (``glora-train --subnet``) from the backbone for --alone-epochs,
once. Inherited accuracy: the candidate's validation accuracy with each supernet's weights (what the search's
fitness reads). Validation cross-entropy is measured beside accuracy on both sides: besides the issue's tau
(inherited accuracy vs stand-alone accuracy) the benchmark reports tau of the inherited loss (``glora-search
--metric loss``'s fitness) against stand-alone accuracy and against stand-alone loss; on 200 validation images
accuracies tie or differ by a few rows, the loss does not. Each strategy's supernet trains --epochs epochs through
``glora-train`` with the same seed; its search pick under the same budget is reported too (test accuracy), beside
LoRA r=8 trained alone for the same epochs. Every seed draws its own candidates and trains everything again; the
summary is the mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

import glora
from glora.app import load_supernet
from glora.app.cli import setup_logging
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.options.parsing import parse_choices
from glora.app.sampling import Sampling, SubnetSampler

from ..common import add_json_arg, machine, write_json
from ..stats import kendall_tau, mean_std
from .common import backbone, evaluate_metrics, fixed_subnet, pick_accuracy, preset_choices

__all__ = ["main", "STRATEGIES"]

# name -> the train command's sampling options (BUDGET is replaced by the candidates' budget in millions)
_SANDWICH = ["--sampling", "sandwich", "--sandwich-random", "1"]
STRATEGIES: dict[str, list[str]] = {
    "uniform (paper)": [],
    "uniform in budget": ["--param-limit", "BUDGET"],
    "sandwich": _SANDWICH,
    "sandwich in budget": [*_SANDWICH, "--param-limit", "BUDGET"],
    "sandwich in budget + distill": [*_SANDWICH, "--param-limit", "BUDGET", "--distill"],
    # the same with C without lora: the candidates are then drawn in that narrower space, for every strategy
    "recommended preset": ["-c", "protocols/recommended", "--param-limit", "BUDGET"],
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60, help="supernet epochs of every strategy")
    p.add_argument("--alone-epochs", type=int, default=60, help="epochs of each candidate trained alone")
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--generations", type=int, default=10, help="search generations per strategy")
    p.add_argument(
        "--search-metric",
        choices=("accuracy", "loss"),
        default=None,
        help="the search's fitness (--metric; default: each supernet's own: the recommended preset's loss, else "
        "accuracy)",
    )
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES), metavar="NAME")
    add_json_arg(p)
    return p.parse_args()


def candidate_space(strategies: list[str]) -> glora.SearchSpace:
    """The space every strategy's supernet can score: the paper's ({8, 4}), narrowed by a preset's ``choices``
    (the recommended one leaves C's lora out) when a strategy trains one."""
    choices: dict[str, list[str]] = {}
    for name in strategies:
        options = STRATEGIES[name]
        for flag, value in itertools.pairwise(options):
            if flag == "-c":
                choices |= parse_choices(preset_choices(value)) or {}
    return glora.SearchSpace(lora_ranks=(8, 4), choices=choices or None)


def candidates(n: int, budget: int, seed: int, space: glora.SearchSpace) -> list[glora.Subnet]:
    """``n`` distinct subnets of ``space`` inside ``budget`` params, drawn uniformly among those subnets (seeded)."""
    torch.manual_seed(seed)
    model = glora.inject(backbone(), space)
    sampler = SubnetSampler(model, Sampling(param_limit=budget / 1e6))
    rng, out = random.Random(seed), []
    while len(out) < n:
        subnet = sampler.random(rng)
        if subnet not in out:
            out.append(subnet)
    return out


def inherited(supernet: Path, subnets: list[glora.Subnet]) -> list[dict[str, float]]:
    """Each candidate's validation accuracy and loss with the supernet's weights."""
    model = load_supernet(supernet)
    out = []
    for s in subnets:
        with glora.folded(model, s):
            out.append(evaluate_metrics(model, "val"))
    return out


def taus(inh: list[dict[str, float]], alone: list[dict[str, float]]) -> dict[str, float]:
    """Kendall tau of the inherited scores against the stand-alone ones (losses negated: higher is better)."""

    def col(rows, key):
        return [r[key] if key == "accuracy" else -r[key] for r in rows]

    return {
        "kendall_tau": kendall_tau(col(inh, "accuracy"), col(alone, "accuracy")),
        "kendall_tau_loss_vs_acc": kendall_tau(col(inh, "loss"), col(alone, "accuracy")),
        "kendall_tau_loss": kendall_tau(col(inh, "loss"), col(alone, "loss")),
    }


def run_strategy(name: str, args, seed: int, budget: int, subnets, alone, work: Path) -> dict:
    options = [budget_text(budget) if o == "BUDGET" else o for o in STRATEGIES[name]]
    run = work / name.replace(" ", "_").replace("+", "and").replace("(", "").replace(")", "")
    sup, found = run / "supernet", run / "search"
    started = time.time()
    argv = ["--epochs", str(args.epochs), "--seed", str(seed), "--out", str(sup), "--no-progress", *options]
    assert train_main(argv) == 0
    train_s = time.time() - started
    inh = inherited(sup / "last.pt", subnets)
    started = time.time()
    search = ["--supernet", str(sup / "last.pt"), "--out", str(found), "--seed", str(seed), "--param-limit",
              budget_text(budget), "--generations", str(args.generations), "--no-progress"]  # fmt: skip
    if args.search_metric:
        search += ["--metric", args.search_metric]
    assert search_main(search) == 0
    final = json.loads((found / "search_log.jsonl").read_text().splitlines()[-1])
    val_acc, test_acc = pick_accuracy(final)
    return {
        "options": options,
        **taus(inh, alone),
        "inherited": inh,
        "train_s": round(train_s, 1),
        "search_s": round(time.time() - started, 1),
        "pick": {"params": final["params"], "val_acc": val_acc, "test_acc": test_acc},
    }


def budget_text(budget: int) -> str:
    return f"{budget / 1e6:.6f}"


def one_seed(args, seed: int, work: Path) -> dict:
    acc_lora, lora_params = fixed_subnet(seed, args.epochs, lambda m: glora.make_subnet(m, B="lora_8"))
    subnets = candidates(args.candidates, lora_params, seed, candidate_space(args.strategies))
    started = time.time()
    alone = [
        fixed_subnet(seed, args.alone_epochs, lambda m, s=s: s, split="val", measure=evaluate_metrics)[0]
        for s in subnets
    ]
    alone_s = time.time() - started
    print(f"seed {seed}: LoRA r=8 alone, {args.epochs} epochs: test {acc_lora:.4f}, {lora_params:,} params (budget)")
    print("  stand-alone val accuracy of the candidates: " + " ".join(f"{a['accuracy']:.3f}" for a in alone))
    print("  stand-alone val loss of the candidates:     " + " ".join(f"{a['loss']:.3f}" for a in alone), flush=True)
    results = {}
    for name in args.strategies:
        results[name] = r = run_strategy(name, args, seed, lora_params, subnets, alone, work / f"seed{seed}")
        pick = r["pick"]
        print(f"  {name:30s} tau {r['kendall_tau']:+.3f} (loss: vs acc {r['kendall_tau_loss_vs_acc']:+.3f}, vs loss "
              f"{r['kendall_tau_loss']:+.3f})  pick {pick['params']:,} params test {pick['test_acc']:.4f}  "
              f"train {r['train_s']:.0f}s", flush=True)  # fmt: skip
    return {
        "budget": lora_params,
        "lora_test_acc": acc_lora,
        "candidates": subnets,
        "stand_alone": alone,
        "stand_alone_s": round(alone_s, 1),
        "strategies": results,
    }


def main() -> None:
    args = parse()
    setup_logging(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = {seed: one_seed(args, seed, Path(tmp)) for seed in args.seeds}
    print(f"\nmachine: {machine()}; {len(args.seeds)} seeds, mean ± std")
    lora = mean_std([r["lora_test_acc"] for r in seeds.values()])
    print(f"{'LoRA r=8 alone':30s} {'':>14s}  test {lora[0]:.4f} ± {lora[1]:.4f}")
    summary = {"lora_test_acc": lora}
    for name in args.strategies:
        tau = mean_std([r["strategies"][name]["kendall_tau"] for r in seeds.values()])
        tau_la = mean_std([r["strategies"][name]["kendall_tau_loss_vs_acc"] for r in seeds.values()])
        tau_l = mean_std([r["strategies"][name]["kendall_tau_loss"] for r in seeds.values()])
        test = mean_std([r["strategies"][name]["pick"]["test_acc"] for r in seeds.values()])
        params = statistics.mean(r["strategies"][name]["pick"]["params"] for r in seeds.values())
        train_s = statistics.mean(r["strategies"][name]["train_s"] for r in seeds.values())
        summary[name] = {"kendall_tau": tau, "kendall_tau_loss_vs_acc": tau_la, "kendall_tau_loss": tau_l,
                         "pick_test_acc": test, "pick_params": params, "train_s": train_s}  # fmt: skip
        print(f"{name:30s} tau {tau[0]:+.3f} ± {tau[1]:.3f} (loss: vs acc {tau_la[0]:+.3f} ± {tau_la[1]:.3f}, vs loss "
              f"{tau_l[0]:+.3f} ± {tau_l[1]:.3f})  pick test {test[0]:.4f} ± {test[1]:.4f}  {params:,.0f} params  "
              f"train {train_s:.0f}s")  # fmt: skip
    write_json(args.json, "rank_faithfulness", args, {"summary": summary, "seeds": seeds})


if __name__ == "__main__":
    main()
