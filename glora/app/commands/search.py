"""``search.py`` / ``glora-search``: evolutionary search of a trained supernet under a parameter budget.

Fitness is top-1 accuracy on the validation split with inherited supernet weights; the test split is used once,
for the final pick. Outputs in ``--out``: subnet.yaml, search_log.jsonl, pareto.json, plots/*.png, config.yaml
and search_state.json (for ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glora._io import atomic_write_bytes, atomic_write_text
from glora.fold import folded
from glora.inject import get_space, set_execution
from glora.space import SUPPORTS, SearchSpace
from glora.subnet import params_by_type, save_subnet
from search import Evolution, Genome, SearchSettings, pareto_front
from search.plots import plot_accuracy_vs_params, plot_choices, plot_params_by_type, plot_progress, png_bytes

from ..checkpoint import load_supernet, read_checkpoint, supernet_inputs
from ..cli import run, terminate_as_interrupt
from ..data import DataSpec, make_loader, make_normalizer, place
from ..distributed import Distributed, setup_distributed
from ..evalsets import eval_set_inputs, evaluate_sets
from ..evaluate import accuracy, compile_model, resolve_device
from ..options import (
    args_to_dict,
    parse_args,
    parse_choices,
    save_config,
    start_or_resume,
)
from ..options.search import RESUMABLE_OPTIONS, STATE_FILE, build_parser
from ..outputs import check_no_overlap, output_lock, writes_files

__all__ = ["build_parser", "main", "cli"]

_logger = logging.getLogger(__name__)


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
    check_no_overlap(out, _inputs(args, configs=not args.resume))
    with output_lock(out, enabled=writes_files(), command="glora-search"):
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
        check_no_overlap(out, _inputs(args, configs=False))
        job, device = setup_distributed(resolve_device(args.device))
        if not job.main:
            logging.getLogger().setLevel(logging.WARNING)
        try:
            with terminate_as_interrupt():
                _SearchRun(args, job, device, state).run()
        finally:
            job.close()
    return 0


def _inputs(args: argparse.Namespace, configs: bool = True) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = [("--supernet", args.supernet), ("--data-root", args.data_root)]
    found += eval_set_inputs(args.eval_set)
    return found + ([("--config", c) for c in args.config] if configs else [])


def cli() -> int:
    """Console entry point ``glora-search``."""
    return run(main)


class _SearchRun:
    """One search. Under torchrun every rank runs the same evolution (same seed) and evaluates its share of each
    generation's new candidates (``job.map``); rank 0 writes."""

    def __init__(self, args: argparse.Namespace, job: Distributed, device: torch.device, state: dict | None) -> None:
        self.args, self.job, self.device, self.out = args, job, device, Path(args.out)
        ckpt = read_checkpoint(args.supernet)
        if state is not None and state.get("fingerprint") != ckpt["fingerprint"]:
            raise ValueError(f"{args.supernet!r} is not the supernet this search started with")
        self.model = load_supernet(ckpt, device=device)
        set_execution(self.model, path=args.execution)
        # Compiled, a candidate is the same graph with other codes: no fold on the host, no recompilation.
        self.forward = compile_model(self.model, device, args.compile, args.compile_mode, args.compile_backend)
        self._compiled = False
        self.data = DataSpec.from_checkpoint(ckpt["data"], args.data_root)
        check_no_overlap(self.out, supernet_inputs(ckpt, self.data.data_root))
        if self.data.selects_on_test:
            _logger.warning(
                "the validation split (%s) is the test split: subnets are chosen on test, so the test accuracy "
                "reported is not held out (the paper's Table 1 protocol; use val200 for an unbiased figure)",
                self.data.val_split,
            )
        self.inputs = ckpt["input"]
        self.class_names = ckpt.get("class_names")
        self.normalize = make_normalizer(self.inputs).to(device)
        self.val = place(self.data.load("val", self.inputs["input_size"], args.progress), device, args.data_on_device)
        self.val_loader, _ = make_loader(self.val, args.batch_size, shuffle=False, workers=args.workers)
        self.genome = Genome(self.model, _search_space(get_space(self.model), args.choices))
        self.fixed = all(up == 0 for up in self.genome.up)
        settings = _settings(args)
        if self.fixed:
            cost = self.genome.cost([0] * len(self.genome))
            _logger.info("the space holds one subnet (%s params): evaluating it, no search", f"{cost:,}")
            if not settings.min_params <= cost <= settings.max_params:
                _logger.warning("the one subnet has %s params, outside --param-limit; kept anyway", f"{cost:,}")
            settings = dataclasses.replace(
                settings, population=1, parents=1, mutations=0, crossovers=0, generations=1, min_params=0,
                max_params=10**12,
            )  # fmt: skip
        meta = {"config": args_to_dict(args), "fingerprint": ckpt["fingerprint"], "supernet": str(args.supernet)}
        self.evo = Evolution(self.genome, settings, self._fitness, meta=meta, map_fn=job.map)
        if state is not None:
            self.evo.restore(state)

    def _fitness(self, genes: list[int]) -> float:
        started = time.time()
        with folded(self.model, self.genome.decode(genes)):  # fold once, then plain-weight inference over the split
            acc = accuracy(self.model, self.val_loader, self.normalize, self.device, self.args.amp, self.forward)
        if self.forward is not None and not self._compiled:
            _logger.info("first candidate with the compiled model (compilation included): %.1fs", time.time() - started)
            self._compiled = True
        return acc

    def run(self) -> None:
        from tqdm.auto import tqdm

        args, s = self.args, self.evo.s
        if self.job.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(args, self.out / "config.yaml")
        limit = "none" if args.param_limit is None else f"{s.max_params:,}"
        _logger.info(
            "searching %d genes (%d layers), budget %s-%s params, %d val images",
            len(self.genome),
            len(self.genome.layer_names),
            f"{s.min_params:,}",
            limit,
            len(self.val),
        )
        bar = tqdm(
            total=args.generations,
            initial=self.evo.generation,
            desc="generations",
            disable=(None if args.progress is None else not args.progress) if self.job.main else True,
        )

        def on_generation(done: int, total: int) -> None:
            bar.update(done - bar.n)
            if self.job.main:  # the state first: the log never runs ahead of what a resume would restore
                atomic_write_text(self.out / STATE_FILE, json.dumps(self.evo.state()))
                self._write_log()

        try:
            self.evo.run(on_generation)
        finally:
            bar.close()
        if self.job.main:
            self._finish()
        self.job.barrier()

    def _write_log(self, final: dict[str, Any] | None = None) -> None:
        lines = [json.dumps(r) for r in self.evo.log] + ([json.dumps(final)] if final else [])
        atomic_write_text(self.out / "search_log.jsonl", "\n".join(lines) + "\n")

    def _test_accuracy(self, subnet) -> float | None:
        """The test split, looked at once, for the pick; None when the data has no test split."""
        try:
            test = self.data.load("test", self.inputs["input_size"], self.args.progress)
        except (ValueError, FileNotFoundError) as e:
            _logger.warning("no test split (%s); test accuracy not reported", e)
            return None
        loader, _ = make_loader(test, self.args.batch_size, shuffle=False, workers=self.args.workers)
        with folded(self.model, subnet):
            return accuracy(self.model, loader, self.normalize, self.device, self.args.amp, self.forward)

    def _extra_sets(self, subnet) -> dict[str, dict[str, Any]]:
        """The pick on each ``--eval-set``, side by side with test (domain generalization)."""
        if not self.args.eval_set:
            return {}
        with folded(self.model, subnet):
            return evaluate_sets(
                self.model,
                self.args.eval_set,
                input_cfg=self.inputs,
                num_classes=self.val.num_classes,
                class_names=self.class_names,
                crop_pct=self.data.eval_crop_pct,
                normalize=self.normalize,
                device=self.device,
                batch_size=self.args.batch_size,
                workers=self.args.workers,
                amp=self.args.amp,
                forward=self.forward,
            )

    def _finish(self) -> None:
        args, evo, out = self.args, self.evo, self.out
        ranked = evo.ranked()
        genes, val_acc, params = ranked[0]
        subnet = self.genome.decode(genes)
        save_subnet(subnet, out / "subnet.yaml")
        test_acc = self._test_accuracy(subnet)
        extra = self._extra_sets(subnet)
        final = {
            "final": True,
            "subnet": "subnet.yaml",
            "params": params,
            "val_acc": round(val_acc, 6),
            "test_acc": None if test_acc is None else round(test_acc, 6),
            "evaluated": len(evo.cache),
        }
        if extra:
            final["eval_sets"] = extra
        self._write_log(final)
        points = [(p, a, g) for g, a, p in ranked]
        front = pareto_front(points)
        pareto = {
            "objective": args.objective,
            "param_limit": args.param_limit,
            "min_param_limit": args.min_param_limit,
            "front": [{"params": p, "val_acc": round(a, 6), "subnet": self.genome.decode(g)} for p, a, g in front],
        }
        atomic_write_text(out / "pareto.json", json.dumps(pareto, indent=1))
        limits = (evo.s.min_params, evo.s.max_params)
        figures = {
            "progress.png": plot_progress(evo.log),
            "accuracy_vs_params.png": plot_accuracy_vs_params(
                [(p, a) for p, a, _ in points], [(p, a) for p, a, _ in front], (params, val_acc), limits=limits
            ),
            "choices.png": plot_choices(subnet),
            "params_by_type.png": plot_params_by_type(params_by_type(self.model, subnet)),
        }
        for name, fig in figures.items():
            atomic_write_bytes(out / "plots" / name, png_bytes(fig))
        test_txt = "n/a" if test_acc is None else f"{test_acc:.4f}"
        test_txt += "".join(f", {name} {r['acc']:.4f}" for name, r in extra.items())
        print(
            f"best subnet: {params:,} params ({params / 1e6:.4f}M), val acc {val_acc:.4f}, test acc {test_txt} "
            f"({len(evo.cache)} candidates evaluated)"
        )
        print(f"wrote {out / 'subnet.yaml'}, search_log.jsonl, pareto.json ({len(front)} points), plots/")
        print(
            f"next: glora-export --supernet {args.supernet} --subnet {out / 'subnet.yaml'} (or python reparam.py ...)"
        )


def _search_space(own: SearchSpace, choices: Sequence[str] | None) -> SearchSpace:
    """The supernet's space, narrowed by ``--choices`` (supports not named keep the supernet's choices)."""
    narrowed = parse_choices(choices)
    if not narrowed:
        return own
    current = {s: list(own.choice_names(s)) for s in SUPPORTS}
    return SearchSpace(
        lora_ranks=own.lora_ranks,
        gift_ranks=own.gift_ranks,
        gift_sharing=own.gift_sharing,
        choices=current | narrowed,
    )


def _settings(args: argparse.Namespace) -> SearchSettings:
    return SearchSettings(
        population=args.population,
        parents=args.parents,
        mutations=args.mutations,
        mutation_prob=args.mutation_prob,
        crossovers=args.crossovers,
        generations=args.generations,
        min_params=round(args.min_param_limit * 1e6),
        max_params=round(args.param_limit * 1e6) if args.param_limit is not None else 10**12,
        objective=args.objective,
        seed=args.seed,
    )
