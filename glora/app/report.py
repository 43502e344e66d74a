"""From finished runs to the papers' tables: ``glora-report RUN [RUN ...] --out DIR``.

A run is a folder laid out as the default run is (``supernet/``, ``search/``, ``export/``) or any one of those
folders. What each run trained on (dataset, task, shot, seed, search space) is read from the supernet's
``config.yaml`` (found through the search's or export's record when only those are given); the result from the
search's final record (the pick's metrics and parameter count) and the export's ``glora_export.json`` (its
extra evaluation sets, the domain-generalization columns). Runs that differ only in their seed are one cell:
mean (or median, ``--aggregate median``) ± sample standard deviation over seeds, and how many; each CSV keeps all
three per cell (columns ``X``, ``X std``, ``X n``), and ``runs.csv`` holds every run as a row.

Tables (Markdown in ``report.md``, one CSV each, the few-shot curves as PNG): VTAB-1k per task with the paper's
group means (Natural, Specialized, Structured) and their mean, as the paper averages (Table 1); few-shot accuracy
per shot; domain generalization (source test set and each extra set, masked ones marked); every other task with its
own metric. The paper's published numbers sit beside ours where the seeds give them (GLoRA Tables 1, 2 and 5;
GIFT's Table 3 for a GIFT-only space) with the difference. Missing tasks are shown as missing, never as zero; a
group mean needs every task of its group.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glora._io import atomic_write_bytes, atomic_write_text

from .data import FEWSHOT_SHOTS, DataSpec
from .layout import SearchFolder, SupernetFolder, run_folders
from .tasks import result_key
from .values import not_found

__all__ = [
    "RunResult",
    "AGGREGATES",
    "find_results",
    "build_report",
    "write_report",
    "VTAB_GROUPS",
    "PAPER_VTAB",
    "PAPER_DG",
]

_logger = logging.getLogger(__name__)

VTAB_GROUPS = {
    "Natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": (
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ),
}

# GLoRA paper, Table 1 (ViT-B/16, VTAB-1k test accuracy, %), per search space (LoRA ranks), in VTAB_GROUPS order.
_TABLE1 = {
    "glora (0.86M)": "76.4 92.9 74.6 99.6 92.5 91.5 57.8 87.3 96.8 88.0 76.0 83.1 67.3 54.5 86.2 83.8 52.9 37.0 41.4",
    "glora (0.44M)": "76.5 92.3 75.2 99.6 92.3 91.2 57.5 87.3 96.7 88.1 76.1 80.6 67.2 53.4 84.5 83.5 52.8 35.2 40.8",
    "glora (0.29M)": "76.1 92.7 75.3 99.6 92.4 90.5 57.2 87.5 96.7 88.1 76.1 81.0 66.2 52.4 84.9 81.8 53.3 33.3 39.8",
}
_TASK_ORDER = [t for group in VTAB_GROUPS.values() for t in group]
PAPER_VTAB = {name: dict(zip(_TASK_ORDER, map(float, row.split()))) for name, row in _TABLE1.items()}
PAPER_VTAB_AVERAGE = {"glora (0.86M)": 78.0, "glora (0.44M)": 77.6, "glora (0.29M)": 77.3}
# Which paper row a search space is compared with: its LoRA ranks (the paper's three space presets).
_SPACE_ROW = {(8, 4): "glora (0.86M)", (4, 2): "glora (0.44M)", (2,): "glora (0.29M)"}
# GLoRA paper, Table 5: Swin-B (ImageNet-21k) on VTAB-1k, group means and their mean.
PAPER_SWIN = {"Natural": 83.7, "Specialized": 88.7, "Structured": 61.9, "Average": 78.1}
# GIFT paper, Table 3: GIFT (rank 16, ViT-B/16) on VTAB-1k, group means.
PAPER_GIFT = {"Natural": 81.95, "Specialized": 86.30, "Structured": 61.12}
# GLoRA paper, Table 2: domain generalization of GLoRA (0.29M), ImageNet 16-shot source, unmasked 1000-way.
PAPER_DG = {"ImageNet": 78.3, "-Sketch": 30.6, "-V2": 67.5, "-A": 13.3, "-R": 31.0}
_DG_NAMES = {
    "sketch": "-Sketch",
    "imagenet-sketch": "-Sketch",
    "v2": "-V2",
    "imagenetv2": "-V2",
    "imagenet-v2": "-V2",
    "a": "-A",
    "imagenet-a": "-A",
    "r": "-R",
    "imagenet-r": "-R",
}


@dataclass
class RunResult:
    """One finished run as the report needs it."""

    run: str
    dataset: str
    task: str | None
    shot: int | None
    seed: int
    space: str  # "lora 8,4", "lora 4 + gift 16", ...
    lora_ranks: tuple[int, ...]
    model: str
    gift_ranks: tuple[int, ...] = ()
    metric: str = "accuracy"
    test: float | None = None  # the pick's test metric (None: the run has no test result yet)
    params: int | None = None
    eval_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)  # every metric of the pick, as the search wrote them
    test_metrics: dict[str, float] = field(default_factory=dict)
    finished: bool = False  # the search wrote its final record (with or without a test split)

    @property
    def percent(self) -> bool:
        """Accuracy-like metrics are reported in %, as the papers do."""
        return _percent(self.metric)

    def test_value(self, metric: str | None = None) -> float | None:
        """The pick's test figure for ``metric`` (default: the one the search ranked by); None when not measured."""
        if metric is None or metric == self.metric:
            return self.test
        value = self.test_metrics.get(metric)
        return None if value is None else float(value)

    def shown_metrics(self) -> list[str]:
        """The metrics a table shows for this run: the one its search ranked by, and the task's own headline metric
        beside it when that was another (a classifier searched by its loss is shown by its accuracy too)."""
        headline = next((m for m in _HEADLINE if m in self.test_metrics), None)
        return [self.metric] + ([headline] if headline is not None and headline != self.metric else [])


# The metric a task is known by, first found in a run's test metrics: classification, then regression.
_HEADLINE = ("accuracy", "pearson")


def _percent(metric: str) -> bool:
    return metric in ("accuracy", "mc_accuracy", "f1", "matthews", "pearson", "spearman")


# ---------------------------------------------------------------------- reading runs
def _resolve(path: str | None, base: Path) -> Path | None:
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else base / p


def read_run(run: str | Path) -> RunResult:
    """What one run trained on and what it reached; ``ValueError`` names the folder when that cannot be told."""
    root = Path(run).expanduser()
    if not root.is_dir():
        raise not_found("run folder", root)
    folders = run_folders(root)
    search, export = folders.search, folders.export
    exported = export.read_record() if export else {}
    if search is None and exported.get("subnet"):  # an export folder alone: the search that picked its subnet
        picked = SearchFolder(_resolve(exported["subnet"], root).parent)  # type: ignore[union-attr]
        search = picked if picked.log.is_file() else None
    final = search.final() if search else None
    supernet = folders.supernet
    if supernet is None:  # only a search or an export folder: its record names the supernet
        named = _searched_supernet(search) if search else None
        ckpt = _resolve(named or exported.get("supernet"), root)
        supernet = SupernetFolder(ckpt.parent) if ckpt is not None else None
    if supernet is None or not supernet.config.is_file():
        raise ValueError(f"{str(root)!r}: cannot find the supernet's config.yaml (what the run trained on)")
    options = supernet.options()
    try:  # the run's data as the train command read them: the dataset's own options
        own = DataSpec.recorded_options(options)
    except ValueError:  # a dataset this version does not know: its name only
        own = None
    lora = tuple(int(r) for r in options.get("lora_ranks") or ())
    gift = tuple(int(r) for r in options.get("gift_ranks") or ())
    parts = (f"lora {','.join(map(str, lora))}" if lora else "", f"gift {','.join(map(str, gift))}" if gift else "")
    space = " + ".join(p for p in parts if p) or "vector/scalar"
    result = RunResult(
        run=str(root),
        dataset=str(options.get("dataset", "?")),
        task=getattr(own, "task", None) or _data_name(getattr(own, "train_file", None)),
        shot=getattr(own, "shot", None),
        seed=int(options.get("seed", 0)),
        space=space,
        lora_ranks=lora,
        model=str(options.get("model", "?")),
        gift_ranks=gift,
    )
    if final is not None:
        metric = final.get("metric", "accuracy")
        result.metric, result.test, result.params = metric, final.get(f"test_{result_key(metric)}"), final.get("params")
        result.finished = True
        result.eval_sets = dict(final.get("eval_sets") or {})
        result.val_metrics = dict(final.get("val_metrics") or {})
        result.test_metrics = dict(final.get("test_metrics") or {})
    if exported:  # the folded export's numbers are what ships
        result.params = exported.get("glora_params", result.params)
        result.eval_sets = dict(exported.get("eval_sets") or result.eval_sets)
    return result


def _searched_supernet(search: SearchFolder) -> str | None:
    """The supernet a search (finished or not) read: its config.yaml says, else its resumable state."""
    try:
        return search.options().get("supernet")
    except ValueError:
        pass
    try:
        return search.read_state().get("supernet")
    except (OSError, ValueError):
        return None


def find_results(runs: Iterable[str | Path]) -> list[RunResult]:
    """Every run given, read; a run without a finished search is kept (shown as missing)."""
    out = [read_run(r) for r in runs]
    if not out:
        raise ValueError("no runs given")
    return out


# ---------------------------------------------------------------------- aggregation
AGGREGATES = ("mean", "median")


@dataclass
class Cell:
    """One table cell: a metric over seeds, summarised by its mean or (the GIFT paper's GLUE protocol) its median."""

    values: list[float]
    how: str = "mean"

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def center(self) -> float:
        """The value the tables show: the mean or the median over seeds."""
        return statistics.median(self.values) if self.how == "median" else self.mean


def _cells(results: Sequence[RunResult], key, how: str = "mean", metric: str | None = None) -> dict[Any, Cell]:
    """The runs' test figures for ``metric`` (default: each run's search metric), grouped by ``key``."""
    grouped: dict[Any, list[float]] = defaultdict(list)
    for r in results:
        value = r.test_value(metric)
        if value is not None and math.isfinite(value):
            grouped[key(r)].append(100 * value if _percent(metric or r.metric) else value)
    return {k: Cell(v, how) for k, v in grouped.items()}


def _fmt(cell: Cell | None, digits: int = 1) -> str:
    if cell is None:
        return "—"
    text = f"{cell.center:.{digits}f}"
    return text + (f" ± {cell.std:.{digits}f} (n={cell.n})" if cell.n > 1 else "")


def _summary_words(how: str) -> str:
    """How a report's cells summarise seeds, as its sections say it."""
    return "Mean ± std over seeds (n = seeds)" if how == "mean" else "Median over seeds, ± std (n = seeds)"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _params(results: Sequence[RunResult], how: str = "mean") -> float | None:
    """The runs' parameter counts in millions, summarised as the cells are (mean or median)."""
    counts = [r.params for r in results if r.params is not None]
    if not counts:
        return None
    return (statistics.median(counts) if how == "median" else statistics.fmean(counts)) / 1e6


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class Report:
    """The tables of a report: Markdown sections, CSV files by name, PNG figures by name."""

    markdown: list[str] = field(default_factory=list)
    csv: dict[str, str] = field(default_factory=dict)
    png: dict[str, bytes] = field(default_factory=dict)
    aggregate: str = "mean"  # how a cell summarises seeds (AGGREGATES)


def _vtab(results: Sequence[RunResult], report: Report) -> None:
    runs = [r for r in results if r.dataset == "vtab"]
    if not runs:
        return
    by_space: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in runs:
        by_space[(r.model, r.space)].append(r)
    header = ["method", "# params (M)", *_TASK_ORDER, *VTAB_GROUPS, "Average"]
    csv_header = ["method", "# params (M)", *_spread_header(_TASK_ORDER), *VTAB_GROUPS, "Average"]
    md_rows, csv_rows = [], []
    for (model, space), group in sorted(by_space.items()):
        cells = _cells(group, lambda r: r.task, report.aggregate, "accuracy")
        means = {
            g: statistics.fmean([cells[t].center for t in ts]) if all(t in cells for t in ts) else None
            for g, ts in VTAB_GROUPS.items()
        }
        complete = [m for m in means.values() if m is not None]
        average = statistics.fmean(complete) if len(complete) == len(VTAB_GROUPS) else None
        name = f"{model.split('/')[-1]} {space}"
        params = _params(group, report.aggregate)
        md_rows.append(
            [
                name,
                _num(params, 3),
                *(_fmt(cells.get(t)) for t in _TASK_ORDER),
                *(_group_text(means[g], VTAB_GROUPS[g], cells) for g in VTAB_GROUPS),
                _num(average),
            ]
        )
        csv_rows.append([name, params, *_spread(cells.get(t) for t in _TASK_ORDER), *means.values(), average])
        paper = _paper_row(model, group[0].lora_ranks, group[0].gift_ranks)
        if paper is not None:
            label, per_task, groups, paper_avg = paper
            md_rows.append(
                [
                    f"paper: {label}",
                    "",
                    *(_num(per_task.get(t)) for t in _TASK_ORDER),
                    *(_num(groups.get(g)) for g in VTAB_GROUPS),
                    _num(paper_avg),
                ]
            )
            diff = [_diff(cells[t].center if t in cells else None, per_task.get(t)) for t in _TASK_ORDER]
            gdiff = [_diff(means[g], groups.get(g)) for g in VTAB_GROUPS]
            md_rows.append(["difference (ours − paper)", "", *diff, *gdiff, _diff(average, paper_avg)])
    report.markdown.append(
        f"## VTAB-1k (test accuracy, %)\n\n{_summary_words(report.aggregate)}; group means as the paper's Table 1 "
        "forms them, the average is the mean of the three group means. — : not run (a group mean needs all its "
        "tasks).\n\n" + _table(header, md_rows)
    )
    report.csv["vtab.csv"] = _csv(csv_header, csv_rows)


def _group_text(mean: float | None, tasks: Sequence[str], cells: Mapping[str, Cell]) -> str:
    if mean is not None:
        return f"{mean:.1f}"
    return f"— ({sum(t in cells for t in tasks)}/{len(tasks)})"


def _spread_header(columns: Iterable[str]) -> list[str]:
    """A CSV keeps each cell's spread: every column ``X`` becomes ``X``, ``X std`` and ``X n``."""
    return [name for c in columns for name in (c, f"{c} std", f"{c} n")]


def _spread(cells: Iterable[Cell | None]) -> list[str]:
    """The CSV values of :func:`_spread_header`'s columns (empty where nothing ran)."""
    out: list[str] = []
    for cell in cells:  # one seed has no spread: its std is left blank, not 0
        std = f"{cell.std:.4f}" if cell is not None and cell.n > 1 else ""
        out += ["", "", ""] if cell is None else [f"{cell.center:.4f}", std, str(cell.n)]
    return out


def _diff(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return "—"
    return f"{round(ours - paper, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _paper_row(model: str, lora_ranks: tuple[int, ...], gift_ranks: tuple[int, ...] = ()):
    """(label, per task, group means, average) of the paper row this run compares with, or None."""
    if gift_ranks and not lora_ranks and "vit_base_patch16_224" in model:
        groups = {g: PAPER_GIFT[g] for g in VTAB_GROUPS}
        return "GIFT (GIFT paper Table 3; its average, 74.09, is over the 19 tasks)", {}, groups, None
    if "swin" in model.lower():
        groups = {g: PAPER_SWIN[g] for g in VTAB_GROUPS}
        return "GLoRA, Swin-B (Table 5)", {}, groups, PAPER_SWIN["Average"]
    row = _SPACE_ROW.get(tuple(sorted(lora_ranks, reverse=True)))
    if row is None or "vit_base_patch16_224" not in model:
        return None
    per_task = PAPER_VTAB[row]
    groups = {g: statistics.fmean(per_task[t] for t in ts) for g, ts in VTAB_GROUPS.items()}
    return f"{row} (Table 1)", per_task, groups, PAPER_VTAB_AVERAGE[row]


def _fewshot(results: Sequence[RunResult], report: Report) -> None:
    runs = [r for r in results if r.dataset == "fewshot"]
    if not runs:
        return
    cells = _cells(runs, lambda r: (r.task, r.space, r.shot), report.aggregate, "accuracy")
    rows_keys = sorted({(t, s) for t, s, _ in cells} | {(r.task, r.space) for r in runs}, key=str)
    shots = sorted({*FEWSHOT_SHOTS, *(sh for _, _, sh in cells if sh is not None)})
    header = ["dataset", "space", *(f"{s}-shot" for s in shots)]
    md = [[t, s, *(_fmt(cells.get((t, s, sh))) for sh in shots)] for t, s in rows_keys]
    report.markdown.append(
        f"## Few-shot fine-grained classification (test accuracy, %)\n\n{_summary_words(report.aggregate)}. The "
        "paper gives these "
        "as curves (its Figure 2), not numbers, so there is nothing to difference against; see fewshot.png.\n\n"
        + _table(header, md)
    )
    report.csv["fewshot.csv"] = _csv(
        ["dataset", "space", *_spread_header(f"{s}-shot" for s in shots)],
        [[t, s, *_spread(cells.get((t, s, sh)) for sh in shots)] for t, s in rows_keys],
    )
    report.png["fewshot.png"] = _fewshot_png(cells, rows_keys)


def _fewshot_png(cells: Mapping[Any, Cell], rows: Sequence[tuple[str, str]]) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    for task, space in rows:
        points = sorted((sh, c) for (t, s, sh), c in cells.items() if (t, s) == (task, space) and sh is not None)
        if points:
            xs = [p for p, _ in points]
            ax.errorbar(
                xs,
                [c.center for _, c in points],
                yerr=[c.std for _, c in points],
                marker="o",
                capsize=3,
                label=f"{task} ({space})",
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(FEWSHOT_SHOTS), [str(s) for s in FEWSHOT_SHOTS])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _dg(results: Sequence[RunResult], report: Report) -> None:
    runs = [r for r in results if r.eval_sets]
    if not runs:
        return
    names: list[str] = []
    for r in runs:
        names += [n for n in r.eval_sets if n not in names]
    masked = {n for r in runs for n, v in r.eval_sets.items() if v.get("masked")}
    by: dict[tuple[str, str, str | None], list[RunResult]] = defaultdict(list)
    for r in runs:
        by[(r.dataset, r.space, r.task)].append(r)
    header = ["source", "space", "source test", *(n + ("*" if n in masked else "") for n in names)]
    md, rows = [], []
    for (dataset, space, task), group in sorted(by.items(), key=str):
        test = _cells(group, lambda r: 0, report.aggregate, "accuracy").get(0)
        sets = {
            n: Cell([100 * r.eval_sets[n]["acc"] for r in group if n in r.eval_sets], report.aggregate) for n in names
        }
        sets = {n: c for n, c in sets.items() if c.n}
        label = f"{dataset}/{task}" if task else dataset
        md.append([label, space, _fmt(test), *(_fmt(sets.get(n)) for n in names)])
        rows.append([label, space, *_spread([test, *(sets.get(n) for n in names)])])
    paper = {n: PAPER_DG.get(_DG_NAMES.get(n.lower(), "")) for n in names}
    if any(v is not None for v in paper.values()):
        md.append(["paper: GLoRA (0.29M) (Table 2)", "", _num(PAPER_DG["ImageNet"]), *(_num(paper[n]) for n in names)])
    note = (
        "\n\n\\* masked: the argmax was restricted to the classes of the set, not comparable with the paper's unmasked "
        "1000-way figures."
        if masked
        else ""
    )
    report.markdown.append(
        "## Domain generalization (accuracy, %)\n\nThe exported model on each extra evaluation set, beside its own "
        "test split (ImageNet for the paper's 16-shot source).\n\n" + _table(header, md) + note
    )
    report.csv["dg.csv"] = _csv(["source", "space", *_spread_header(header[2:])], rows)


def _data_name(train_file: Any) -> str | None:
    """What a text run trained on, from its train file: the folder of a split named train (data/glue/cola/train or
    .../cola/train.csv -> cola), else the file's stem."""
    if not train_file:
        return None
    path = Path(str(train_file))
    return path.parent.name if path.stem.lower() == "train" and path.parent.name else path.stem


def _short_model(model: str) -> str:
    """A model as a table shows it: a local folder or file by its name, a timm or hub name as it is."""
    return Path(model).name if Path(model).is_absolute() else model


def _others(results: Sequence[RunResult], report: Report) -> None:
    runs = [r for r in results if r.dataset not in ("vtab", "fewshot")]
    if not runs:
        return

    def key(r: RunResult) -> tuple:  # runs of one model on one task in one space are seeds of one cell
        return (r.dataset, r.task, _short_model(r.model), r.space, r.metric)

    header = ["dataset", "task", "model", "space", "metric", "test", "# params (M)"]
    md, spreads = [], []
    for k in sorted({key(r) for r in runs}, key=str):
        d, t, model, s, searched = k
        group = [r for r in runs if key(r) == k]
        shown = list(dict.fromkeys(m for r in group for m in r.shown_metrics()))
        for m in shown:  # the search's metric, then the task's headline one when that was another
            cell = _cells(group, lambda r: 0, report.aggregate, m).get(0)
            label = m + (" (%)" if _percent(m) else "") + (" (searched by)" if len(shown) > 1 and m == searched else "")
            params = _params(group, report.aggregate)
            md.append([d, t or "", model, s, label, _fmt(cell, 1 if _percent(m) else 2), _num(params, 4)])
            spreads.append((cell, "" if params is None else f"{params:.4f}"))
    report.markdown.append(f"## Other tasks\n\n{_summary_words(report.aggregate)}.\n\n" + _table(header, md))
    report.csv["other.csv"] = _csv(
        [*header[:5], *_spread_header(["test"]), header[6]],
        [[*row[:5], *_spread([cell]), params] for row, (cell, params) in zip(md, spreads)],
    )


def _runs_csv(results: Sequence[RunResult], report: Report) -> None:
    """One row per run (every seed, every metric of its pick), for plots and tables of one's own."""
    metrics = {kind: sorted({m for r in results for m in getattr(r, f"{kind}_metrics")}) for kind in ("val", "test")}
    sets = sorted({n for r in results for n in r.eval_sets})
    header = ["run", "dataset", "task", "shot", "model", "space", "seed", "params", "metric",
              *(f"{kind} {m}" for kind, names in metrics.items() for m in names),
              *(f"{n} acc" for n in sets)]  # fmt: skip
    rows = []
    for r in sorted(results, key=lambda r: (r.dataset, str(r.task), str(r.shot), r.model, r.space, r.seed, r.run)):
        values = [r.val_metrics.get(m) for m in metrics["val"]] + [r.test_metrics.get(m) for m in metrics["test"]]
        if not r.test_metrics and r.test is not None and r.metric in metrics["test"]:  # an older record: test only
            values[len(metrics["val"]) + metrics["test"].index(r.metric)] = r.test
        rows.append([r.run, r.dataset, r.task or "", "" if r.shot is None else r.shot, r.model, r.space, r.seed,
                     "" if r.params is None else r.params, r.metric,
                     *("" if v is None else v for v in values),
                     *(r.eval_sets[n]["acc"] if n in r.eval_sets else "" for n in sets)])  # fmt: skip
    report.csv["runs.csv"] = _csv(header, rows)


def build_report(results: Sequence[RunResult], aggregate: str = "mean") -> Report:
    """Every table the results fill; ``aggregate``: how a cell summarises seeds (mean, or median as the GIFT paper
    reports GLUE); every run also as a row of runs.csv."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    report = Report(aggregate=aggregate)
    pending = [r.run for r in results if not r.finished]
    untested = [r.run for r in results if r.finished and r.test is None]
    report.markdown.append(
        f"# GLoRA results\n\n{len(results)} runs read, {len(results) - len(pending)} with a finished search."
        + (f" Not finished (shown as missing): {', '.join(pending)}." if pending else "")
        + (f" Finished without a test split (no test figure): {', '.join(untested)}." if untested else "")
    )
    for section in (_vtab, _fewshot, _dg, _others, _runs_csv):
        section(results, report)
    return report


def write_report(report: Report, out: Path) -> list[Path]:
    """Write every file atomically; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md"]
    atomic_write_text(written[0], "\n\n".join(report.markdown) + "\n")
    for name, text in report.csv.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    for name, data in report.png.items():
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    return written
