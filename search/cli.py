"""``search.py``: evolutionary search of a trained supernet under a parameter budget.

Fitness is top-1 accuracy on the validation split with inherited supernet weights; the test split is used once,
for the final pick. Outputs in ``--out``: subnet.yaml, search_log.jsonl, pareto.json, plots/*.png, config.yaml
and search_state.json (for ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glora import folded, load_supernet, save_subnet
from glora._io import atomic_write_text
from glora.checkpoint import read_checkpoint
from glora.config import (
    add_progress_option,
    args_to_dict,
    make_parser,
    nonneg_float,
    nonneg_int,
    optional,
    parse_args,
    positive_float,
    positive_int,
    probability,
    save_config,
    start_or_resume,
)
from glora.data import DataSpec, Normalizer, make_loader
from glora.distributed import Distributed, setup_distributed
from glora.evaluate import accuracy, resolve_device

from .evolution import Evolution, SearchSettings, pareto_front
from .genome import Genome
from .plots import plot_accuracy_vs_params, plot_choices, plot_progress

__all__ = ["build_parser", "main"]

_logger = logging.getLogger(__name__)

RESUMABLE_OPTIONS = {"generations", "device", "progress", "force", "out", "data_root", "batch_size", "workers"}
STATE_FILE = "search_state.json"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("search.py", "Evolutionary search (deap) of a GLoRA supernet under a parameter budget.")
    p.add_argument("--supernet", default="runs/default/supernet/last.pt", help="checkpoint from train_supernet.py")
    p.add_argument("--out", default="runs/default/search", help="output folder")
    g = p.add_argument_group("budget (the paper's # params, in millions)")
    g.add_argument(
        "--param-limit",
        type=optional(positive_float),
        default=0.03,
        help="largest allowed subnet, millions of params (none: no limit)",
    )
    g.add_argument("--min-param-limit", type=nonneg_float, default=0.0, help="smallest allowed subnet, millions")
    g = p.add_argument_group("evolution")
    g.add_argument(
        "--objective",
        choices=("accuracy", "pareto"),
        default="accuracy",
        help="accuracy: the paper's loop; pareto: NSGA-II over (accuracy, params)",
    )
    g.add_argument("--population", type=positive_int, default=50)
    g.add_argument("--parents", type=positive_int, default=10, help="top-k candidates that breed")
    g.add_argument("--mutations", type=nonneg_int, default=25, help="children by mutation per generation")
    g.add_argument("--mutation-prob", type=probability, default=0.2, help="per-gene mutation probability")
    g.add_argument("--crossovers", type=nonneg_int, default=25, help="children by uniform crossover per generation")
    g.add_argument("--generations", type=positive_int, default=20)
    g.add_argument("--seed", type=nonneg_int, default=0)
    g = p.add_argument_group("evaluation")
    g.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    g.add_argument("--data-root", default=None, help="override the data root stored in the supernet checkpoint")
    g.add_argument("--workers", type=nonneg_int, default=2, help="data-loading workers when images are not cached")
    g.add_argument("--device", default="auto")
    g.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    g = p.add_argument_group("output")
    g.add_argument("--resume", action="store_true", help=f"continue from <out>/{STATE_FILE}")
    g.add_argument("--force", action="store_true", help="overwrite results already in --out")
    add_progress_option(g)
    return p


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no search to resume: {str(path)!r} does not exist")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"search state {str(path)!r} is corrupt: {e}") from None
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError(f"{str(path)!r} is not a search state written by search.py")
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    out = Path(args.out)
    args, state = start_or_resume(
        parser,
        argv,
        args,
        RESUMABLE_OPTIONS,
        load=lambda: _read_state(out / STATE_FILE),
        saved_config=lambda s: s["config"],
        existing=[out / STATE_FILE, out / "subnet.yaml"],
        what="search results",
    )

    job, device = setup_distributed(resolve_device(args.device))
    if not job.main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        _search(args, out, state, job, device)
    finally:
        job.close()
    return 0


def _search(args, out: Path, state: dict[str, Any] | None, job: Distributed, device: torch.device) -> None:
    """The search proper. Under torchrun every rank runs the same evolution (same seed) and evaluates its share
    of each generation's new candidates (``job.map``); rank 0 writes."""
    ckpt = read_checkpoint(args.supernet)
    if state is not None and state.get("fingerprint") != ckpt["fingerprint"]:
        raise ValueError(f"{args.supernet!r} is not the supernet this search started with")
    model = load_supernet(ckpt, device=device)
    data = DataSpec.from_dict(dict(ckpt["data"]) | ({"data_root": args.data_root} if args.data_root else {}))
    inputs = ckpt["input"]
    normalize = Normalizer(inputs["mean"], inputs["std"]).to(device)
    val = data.load("val", inputs["input_size"])
    val_loader, _ = make_loader(val, args.batch_size, shuffle=False, workers=args.workers)
    genome = Genome(model)
    lo = round(args.min_param_limit * 1e6)
    hi = round(args.param_limit * 1e6) if args.param_limit is not None else 10**12
    settings = SearchSettings(
        population=args.population,
        parents=args.parents,
        mutations=args.mutations,
        mutation_prob=args.mutation_prob,
        crossovers=args.crossovers,
        generations=args.generations,
        min_params=lo,
        max_params=hi,
        objective=args.objective,
        seed=args.seed,
    )

    def evaluate(genes: list[int]) -> float:
        with folded(model, genome.decode(genes)):  # fold once, then plain-weight inference over the split
            return accuracy(model, val_loader, normalize, device, args.amp)

    meta = {"config": args_to_dict(args), "fingerprint": ckpt["fingerprint"], "supernet": str(args.supernet)}
    evo = Evolution(
        genome, settings, evaluate, state_path=out / STATE_FILE if job.main else None, meta=meta, map_fn=job.map
    )
    if state is not None:
        evo.restore(state)
    if job.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(args, out / "config.yaml")
    _logger.info(
        "searching %d genes (%d layers), budget %s-%s params, %d val images",
        len(genome),
        len(genome.layer_names),
        f"{lo:,}",
        "none" if args.param_limit is None else f"{hi:,}",
        len(val),
    )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=args.generations,
        initial=evo.generation,
        desc="generations",
        disable=(None if args.progress is None else not args.progress) if job.main else True,
    )

    def on_generation(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if job.main:
            _write_log(out, evo.log)

    try:
        evo.run(on_generation)
    finally:
        bar.close()
    if job.main:
        _finish(out, args, evo, genome, model, data, inputs, normalize, device)
    job.barrier()


def _write_log(out: Path, records: list[dict[str, Any]], final: dict[str, Any] | None = None) -> None:
    lines = [json.dumps(r) for r in records] + ([json.dumps(final)] if final else [])
    atomic_write_text(out / "search_log.jsonl", "\n".join(lines) + "\n")


def _finish(out, args, evo: Evolution, genome: Genome, model, data: DataSpec, inputs, normalize, device) -> None:
    ranked = evo.ranked()
    genes, val_acc, params = ranked[0]
    subnet = genome.decode(genes)
    save_subnet(subnet, out / "subnet.yaml")
    test_acc = None
    try:
        test = data.load("test", inputs["input_size"])
    except (ValueError, FileNotFoundError) as e:
        _logger.warning("no test split (%s); test accuracy not reported", e)
    else:
        loader, _ = make_loader(test, args.batch_size, shuffle=False, workers=args.workers)
        with folded(model, subnet):
            test_acc = accuracy(model, loader, normalize, device, args.amp)
    final = {
        "final": True,
        "subnet": "subnet.yaml",
        "params": params,
        "val_acc": round(val_acc, 6),
        "test_acc": None if test_acc is None else round(test_acc, 6),
        "evaluated": len(evo.cache),
    }
    _write_log(out, evo.log, final)
    points = [(p, a, g) for g, a, p in ranked]
    front = pareto_front(points)
    atomic_write_text(
        out / "pareto.json",
        json.dumps(
            {
                "objective": args.objective,
                "param_limit": args.param_limit,
                "min_param_limit": args.min_param_limit,
                "front": [{"params": p, "val_acc": round(a, 6), "subnet": genome.decode(g)} for p, a, g in front],
            },
            indent=1,
        ),
    )
    plots = out / "plots"
    plot_progress(evo.log, plots / "progress.png")
    plot_accuracy_vs_params(
        [(p, a) for p, a, _ in points],
        [(p, a) for p, a, _ in front],
        (params, val_acc),
        plots / "accuracy_vs_params.png",
        limits=(evo.s.min_params, evo.s.max_params),
    )
    plot_choices(subnet, plots / "choices.png")
    test_txt = "n/a" if test_acc is None else f"{test_acc:.4f}"
    print(
        f"best subnet: {params:,} params ({params / 1e6:.4f}M), val acc {val_acc:.4f}, test acc {test_txt} "
        f"({len(evo.cache)} candidates evaluated)"
    )
    print(f"wrote {out / 'subnet.yaml'}, search_log.jsonl, pareto.json ({len(front)} points), plots/")
    print(f"next: python reparam.py --supernet {args.supernet} --subnet {out / 'subnet.yaml'}")
    torch.set_grad_enabled(True)
