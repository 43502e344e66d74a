"""``glora-report`` / ``report.py``: the papers' tables from finished runs (see :mod:`glora.app.report`).

    glora-report runs/vtab/* runs/vtab-seed1/* --out runs/report

Writes ``report.md`` (every table, the paper's numbers beside ours and the difference), one CSV per table (each
cell's value, std and number of seeds), ``runs.csv`` (one row per run, every metric) and ``fewshot.png``; reads
nothing but the runs' small records (config.yaml, search_log.jsonl, glora_export.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cli import run
from ..declared import Group, option
from ..options import Command, program_name
from ..outputs import check_no_overlap, output_lock
from ..report import AGGREGATES, build_report, find_results, write_report

__all__ = ["build_parser", "main", "cli"]


@dataclass
class ReportOptions:
    """The runs and where their tables go."""

    runs: list[str] = option(
        [],
        "a run folder (supernet/, search/, export/ inside) or one of those folders; seeds of one task are averaged",
        nargs="+",
        metavar="RUN",
        positional=True,
    )
    out: str = option("runs/report", "folder for report.md, the CSV tables and fewshot.png")
    aggregate: str = option(
        "mean",
        "how a cell summarises the seeds of a task (median: the GIFT paper's GLUE protocol, five seeds)",
        choices=AGGREGATES,
    )
    force: bool = option(False, "replace a report already in --out", action="store_true")


def build_parser() -> Command:
    return Command(
        program_name("report.py", "glora-report"),
        "Tables of finished runs: VTAB-1k groups, few-shot per shot, domain generalization, beside the papers'.",
        [Group.of("", ReportOptions)],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse(argv).args
    out = Path(args.out)
    check_no_overlap(out, [("RUN", r) for r in args.runs])
    with output_lock(out, command="glora-report"):
        if (out / "report.md").exists() and not args.force:
            raise FileExistsError(f"{str(out)!r} already holds a report; pass --force to replace it")
        results = find_results(args.runs)
        written = write_report(build_report(results, args.aggregate), out)
    done = sum(r.finished for r in results)
    print(f"{len(results)} runs ({done} with a finished search); wrote {', '.join(p.name for p in written)} to {out}/")
    return 0


def cli() -> int:
    """Console entry point ``glora-report``."""
    return run(main)
