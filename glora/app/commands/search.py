"""``search.py`` / ``glora-search``: evolutionary search of a trained supernet under a parameter budget.

Fitness is the task's validation metric (top-1 accuracy for classification; Matthews, F1, Pearson, a causal LM's
loss, ... by ``--metric``) on the validation split with inherited supernet weights; the test split is used once,
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
from glora.subnet import params_by_type, save_subnet, set_subnet
from search import Evolution, Fitness, Genome, SearchSettings, pareto_front
from search.plots import plot_choices, plot_metric_vs_params, plot_params_by_type, plot_progress, png_bytes

from ..backbone import bias_free_rule
from ..checkpoint import load_supernet, read_checkpoint, supernet_inputs, supernet_skeleton
from ..cli import run, terminate_as_interrupt
from ..data import DataSpec, make_loader, modality_from_record, place
from ..distributed import Distributed, setup_distributed
from ..evalsets import check_eval_sets, eval_set_inputs, evaluate_sets
from ..evaluate import compile_model, resolve_device, split_stats
from ..layout import SearchFolder, SupernetFolder
from ..options import args_to_dict, parse_choices, save_config, start_or_resume
from ..options.search import build_parser
from ..outputs import absolute, check_no_overlap, output_lock, run_folder, writes_files
from ..sharding import build_on_ranks, check_path, fsdp_wanted, place_model
from ..tasks import METRICS, Task, result_key

__all__ = ["build_parser", "main", "cli"]

_logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parsed = build_parser().parse(argv)
    args = parsed.args
    out = Path(args.out)
    check_no_overlap(out, _inputs(args, configs=not args.resume))
    check_eval_sets(args.eval_set)
    with output_lock(out, enabled=writes_files(), command="glora-search"):
        args, state = start_or_resume(
            parsed,
            load=SearchFolder(out).read_state,
            saved_config=lambda s: s["config"],
            existing=[SearchFolder(out).state, SearchFolder(out).subnet],
            what="search results",
        )
        check_no_overlap(out, _inputs(args, configs=False))
        args.supernet = absolute(args.supernet)  # recorded absolute: the report finds it from any folder
        job, device = setup_distributed(resolve_device(args.device))
        if not job.main:
            logging.getLogger().setLevel(logging.WARNING)
        try:
            with terminate_as_interrupt():
                _SearchRun(args, job, device, state, frozenset(parsed.explicit())).run()
        finally:
            job.close()
    return 0


def _inputs(args: argparse.Namespace, configs: bool = True) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = [("--supernet", args.supernet), ("--data-root", args.data_root)]
    found.append(("the --supernet's run folder", run_folder(args.supernet, SupernetFolder.LOG, SupernetFolder.CONFIG)))
    found += eval_set_inputs(args.eval_set)
    return found + ([("--config", c) for c in args.config] if configs else [])


def cli() -> int:
    """Console entry point ``glora-search``."""
    return run(main)


class _SearchRun:
    """One search. Under torchrun every rank runs the same evolution (same seed) and evaluates its share of each
    generation's new candidates (``job.map``); rank 0 writes. With ``--fsdp`` the supernet is sharded instead: the
    ranks evaluate every candidate together, each on its share of every validation batch."""

    def __init__(
        self,
        args: argparse.Namespace,
        job: Distributed,
        device: torch.device,
        state: dict | None,
        explicit: frozenset[str] = frozenset(),
    ) -> None:
        """``explicit``: the options this command line (or its -c files) gave, as opposed to their defaults."""
        self.args, self.job, self.device, self.out = args, job, device, Path(args.out)
        self.files = SearchFolder(self.out)
        self.sharded = fsdp_wanted(args, job)
        if self.sharded and args.eval_set:
            raise ValueError("--eval-set cannot be combined with --fsdp; evaluate the exported model on them instead")
        ckpt = read_checkpoint(args.supernet)
        if state is not None and state.get("fingerprint") != ckpt["fingerprint"]:
            raise ValueError(f"{args.supernet!r} is not the supernet this search started with")
        self.data = DataSpec.from_checkpoint(ckpt["data"], args.data_root)
        self.modality = modality_from_record(ckpt["input"])
        if not self.modality.image_inputs and args.eval_set:
            raise ValueError(f"--eval-set takes image folders or lists; this supernet takes {self.modality.name}")
        self.data.preflight(("val",))  # the validation (and a given test) files, read before the supernet is rebuilt
        # Sharded, rank 0 rebuilds it on the host and each rank keeps its shards of it, on the device.
        model = build_on_ranks(
            lambda: load_supernet(ckpt), lambda where: supernet_skeleton(ckpt, where), job, self.sharded
        )
        set_execution(model, path=check_path(args.execution) if self.sharded else args.execution)
        self.model = place_model(model, job, device, self.sharded)
        self.forward = None  # a sharded model runs eagerly
        if not self.sharded:  # compiled, a candidate is the same graph with other codes: no fold, no recompilation
            self.forward = compile_model(self.model, device, args.compile, args.compile_mode, args.compile_backend)
        self._compiled = False
        check_no_overlap(self.out, supernet_inputs(ckpt, args.data_root))
        if self.data.selects_on_test:
            _logger.warning(
                "the validation split (%s) is the test split: subnets are chosen on test, so the test accuracy "
                "reported is not held out (the paper's Table 1 protocol; use val200 for an unbiased figure)",
                self.data.split_key("val"),
            )
        self.class_names = ckpt.get("class_names")
        stored = Task.from_dict(ckpt.get("task"))
        self.task = dataclasses.replace(stored, metric=args.metric) if args.metric else stored
        if args.batch_size is None:
            args.batch_size = self.task.eval_batch_size
        self.val = place(self.data.load_for("val", self.modality, args.progress), device, args.data_on_device)
        self.task.check_split(self.val.targets, "validation")
        self.val_loader = self._loader(self.val)
        # a retrained pick (glora-train --subnet) trained one subnet: that one is scored, the rest are stale
        self.retrained = ckpt.get("subnet")
        self.genome = Genome(self.model, _search_space(get_space(self.model), args.choices), only=self.retrained)
        rule = bias_free_rule(self.model)
        if rule:
            _logger.info("%s", rule)
        self.fixed = all(up == 0 for up in self.genome.up)
        settings = _settings(args)
        if self.fixed:
            cost = self.genome.cost([0] * len(self.genome))
            what = "the checkpoint trained one subnet" if self.retrained else "the space holds one subnet"
            _logger.info("%s (%s params): it is evaluated once, with no search and no budget", what, f"{cost:,}")
            given = [n for n in ("param_limit", "min_param_limit") if n in explicit]
            if given and not settings.min_params <= cost <= settings.max_params:
                flags = " / ".join("--" + n.replace("_", "-") for n in given)
                _logger.warning("%s does not apply: the one subnet (%s params) lies outside it", flags, f"{cost:,}")
            settings = dataclasses.replace(
                settings, population=1, parents=1, mutations=0, crossovers=0, generations=1, min_params=0,
                max_params=10**12,
            )  # fmt: skip
        meta = {"config": args_to_dict(args), "fingerprint": ckpt["fingerprint"], "supernet": str(args.supernet)}
        self.fitness = Fitness(self.task.selection, METRICS[self.task.selection].greater_is_better)
        map_fn = map if self.sharded else job.map
        self.evo = Evolution(self.genome, settings, self._fitness, meta=meta, map_fn=map_fn, fitness=self.fitness)
        if state is not None:
            self.evo.restore(state)

    def _loader(self, data) -> tuple[Any, list[bool] | None]:
        """Batches of a split, and (sharded) which of this rank's batches count: each rank takes its share of every
        batch, and one whose share is empty still runs (every forward of a sharded model is collective)."""
        shard = self.job.shard if self.sharded else None
        loader, meta = make_loader(data, self.args.batch_size, shuffle=False, workers=self.args.workers, shard=shard)
        return loader, [weight > 0 for _, weight in meta] if self.sharded else None

    def _metrics(self, batches: tuple[Any, list[bool] | None], subnet) -> dict[str, float]:
        loader, keep = batches
        if self.sharded:  # the static path with the subnet's codes: folding would need every layer's whole weight
            set_subnet(self.model, subnet)
            stats = split_stats(self.model, loader, self.modality, self.device, self.task, self.args.amp, None, keep)
            return self.task.compute(self.job.gather(stats))
        with folded(self.model, subnet):  # fold once, then plain-weight inference over the split
            stats = split_stats(self.model, loader, self.modality, self.device, self.task, self.args.amp, self.forward)
        return self.task.compute(stats)

    def _fitness(self, genes: list[int]) -> float:
        """The selection metric (negated when lower is better: the evolution maximises)."""
        started = time.time()
        score = self.task.score(self._metrics(self.val_loader, self.genome.decode(genes)))
        if self.forward is not None and not self._compiled:
            _logger.info("first candidate with the compiled model (compilation included): %.1fs", time.time() - started)
            self._compiled = True
        return score

    def run(self) -> None:
        from tqdm.auto import tqdm

        args, s = self.args, self.evo.s
        if self.job.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(args, self.files.config)
        if self.fixed:
            _logger.info("evaluating it on %d val %s", len(self.val), self.modality.unit)
        else:
            limit = "none" if args.param_limit is None else f"{s.max_params:,}"
            _logger.info(
                "searching %d genes (%d layers), budget %s-%s params, %d val %s",
                len(self.genome),
                len(self.genome.layer_names),
                f"{s.min_params:,}",
                limit,
                len(self.val),
                self.modality.unit,
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
                atomic_write_text(self.files.state, json.dumps(self.evo.state()))
                self._write_log()

        try:
            self.evo.run(on_generation)
            bar.close()
            if self.job.main or self.sharded:  # a sharded model's ranks evaluate the pick together
                pick = self._evaluate_pick()
                if self.job.main:
                    self._finish(*pick)
        except KeyboardInterrupt:
            bar.close()
            if self.job.main:
                self._interrupted()
            raise
        self.job.barrier()

    def _interrupted(self) -> None:
        """Say what a stopped search kept and how to go on (the state is written after every generation)."""
        done, total = self.evo.generation, self.evo.s.generations
        if done == 0:
            _logger.warning("interrupted in generation 1 of %d: no generation had finished, nothing to resume", total)
        elif done < total:
            _logger.warning(
                "interrupted in generation %d of %d: %s holds the %d finished; continue with --resume",
                done + 1,
                total,
                self.files.state,
                done,
            )
        else:
            _logger.warning(
                "interrupted while scoring the pick: %s holds all %d generations; --resume scores it",
                self.files.state,
                total,
            )

    def _write_log(self, final: dict[str, Any] | None = None) -> None:
        lines = [json.dumps(r) for r in self.evo.log] + ([json.dumps(final)] if final else [])
        atomic_write_text(self.files.log, "\n".join(lines) + "\n")

    def _test_metrics(self, subnet) -> dict[str, float] | None:
        """The test split, looked at once, for the pick; None when the data has no test split."""
        try:
            test = self.data.load_for("test", self.modality, self.args.progress)
        except (ValueError, FileNotFoundError) as e:
            if self.job.main:
                _logger.warning("no test split (%s); test metrics not reported", e)
            return None
        return self._metrics(self._loader(test), subnet)

    def _extra_sets(self, subnet) -> dict[str, dict[str, Any]]:
        """The pick on each ``--eval-set``, side by side with test (domain generalization)."""
        if not self.args.eval_set:
            return {}
        with folded(self.model, subnet):
            return evaluate_sets(
                self.model,
                self.args.eval_set,
                modality=self.modality,
                num_classes=self.val.num_classes,
                class_names=self.class_names,
                crop_pct=self.data.eval_crop_pct,
                device=self.device,
                batch_size=self.args.batch_size,
                workers=self.args.workers,
                amp=self.args.amp,
                forward=self.forward,
            )

    def _evaluate_pick(self) -> tuple[dict[str, float], dict[str, float] | None, dict[str, dict[str, Any]]]:
        """The best subnet's metrics on validation (all of them), test and the ``--eval-set`` sets."""
        subnet = self.genome.decode(self.evo.ranked()[0][0])
        return self._metrics(self.val_loader, subnet), self._test_metrics(subnet), self._extra_sets(subnet)

    def _finish(self, val: dict[str, float], test: dict[str, float] | None, extra: dict[str, dict[str, Any]]) -> None:
        args, evo, task = self.args, self.evo, self.task
        ranked = evo.ranked()
        genes, score, params = ranked[0]
        subnet = self.genome.decode(genes)
        save_subnet(subnet, self.files.subnet)
        key, name = result_key(task.selection), task.selection
        final = {
            "final": True,
            "subnet": SearchFolder.SUBNET,
            "params": params,
            "metric": name,
            "objective": args.objective,
            f"val_{key}": round(self.fitness.value(score), 6),
            f"test_{key}": None if test is None or name not in test else round(test[name], 6),
            "val_metrics": {k: round(v, 6) for k, v in val.items()},
            "test_metrics": None if test is None else {k: round(v, 6) for k, v in test.items()},
            "evaluated": len(evo.cache),
        }
        if extra:
            final["eval_sets"] = extra
        self._write_log(final)
        points = [(p, a, g) for g, a, p in ranked]
        front = pareto_front(points)
        pareto = {
            "objective": args.objective,
            "metric": name,
            "param_limit": None if self.fixed else args.param_limit,  # a one-subnet evaluation has no budget
            "min_param_limit": None if self.fixed else args.min_param_limit,
            "front": [
                {"params": p, f"val_{key}": round(self.fitness.value(a), 6), "subnet": self.genome.decode(g)}
                for p, a, g in front
            ],
        }
        atomic_write_text(self.files.pareto, json.dumps(pareto, indent=1))
        limits = (evo.s.min_params, evo.s.max_params)
        label, value = f"validation {name}", self.fitness.value
        figures = {
            "progress.png": plot_progress(evo.log, label=label),
            "metric_vs_params.png": plot_metric_vs_params(
                [(p, value(a)) for p, a, _ in points],
                [(p, value(a)) for p, a, _ in front],
                (params, value(score)),
                limits=limits,
                label=label,
            ),
            "choices.png": plot_choices(subnet),
            "params_by_type.png": plot_params_by_type(params_by_type(self.model, subnet)),
        }
        for fname, fig in figures.items():
            atomic_write_bytes(self.files.plots / fname, png_bytes(fig))
        short = result_key(name)
        test_txt = "n/a" if test is None or name not in test else f"{test[name]:.4f}"
        test_txt += "".join(f", {n} {r['acc']:.4f}{' (masked)' * r['masked']}" for n, r in extra.items())
        which = "the one subnet" if self.fixed else "best subnet"
        searched = "evaluated once, no search" if self.fixed else f"{len(evo.cache)} candidates evaluated"
        print(
            f"{which}: {params:,} params ({params / 1e6:.4f}M), val {short} {self.fitness.value(score):.4f}, test "
            f"{short} {test_txt} ({searched})"
        )
        others = [n for n in task.metric_names if n != name]
        if others:
            print(f"val: {task.describe(val)}" + ("" if test is None else f"; test: {task.describe(test)}"))
        f = self.files
        print(f"wrote {f.subnet}, {f.LOG}, {f.PARETO} ({len(front)} point{'s' * (len(front) != 1)}), {f.PLOTS}/")
        print(f"next: glora-export --supernet {args.supernet} --subnet {f.subnet} (or python reparam.py ...)")


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
