"""``glora-data check ROOT``: what a VTAB-1k or few-shot root holds, task by task, before a long run starts;
``glora-data check-text FILE...``: text data files checked as ``--dataset text`` reads them (labels and texts, row by
row, no model needed).

Exit status 0 when every task (file) that is there can be read (missing tasks are listed, not errors), 1 when one
is broken (its first problem is named).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli import run
from ..data.check import DATA_KINDS, check_root, check_text_files
from ..data.sources.text import PROBLEM_TYPES
from ..options.parsing import Parser

__all__ = ["build_parser", "main", "cli"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="glora-data", description="Check dataset roots before training on them.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="action", required=True, metavar="check | check-text")
    check = sub.add_parser("check", help="report per task what is present, missing or broken")
    check.add_argument("root", help="the folder holding the task folders (<root>/cifar, <root>/oxford_pets, ...)")
    check.add_argument(
        "--kind", choices=DATA_KINDS, default="auto", help="vtab or fewshot (default: told from the task folders)"
    )
    text = sub.add_parser("check-text", help="check text data files (train first) as --dataset text reads them")
    text.add_argument("files", nargs="+", metavar="FILE", help="CSV, TSV, JSON, JSONL, parquet or save_to_disk folders")
    text.add_argument("--text-column", nargs="+", default=["text"], metavar="COLUMN", help="one, or two for pairs")
    text.add_argument("--label-column", default="label")
    text.add_argument(
        "--problem-type",
        choices=PROBLEM_TYPES,
        default=None,
        help="classification or regression, as glora-train takes it (default: regression when the labels are real)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "check-text":
        return _check_text(args)
    kind, statuses = check_root(args.root, args.kind)
    width = max(len(s.task) for s in statuses)
    print(f"{kind} root {args.root}:")
    for s in statuses:
        detail = f"{s.images} images; {', '.join(s.splits)}" if s.state == "ok" else s.problem
        print(f"  {s.task:<{width}}  {s.state:<7}  {detail}".rstrip())
    counts = {state: sum(s.state == state for s in statuses) for state in ("ok", "missing", "broken")}
    print(f"{counts['ok']} ok, {counts['missing']} missing, {counts['broken']} broken")
    return 1 if counts["broken"] else 0


def _check_text(args: argparse.Namespace) -> int:
    statuses = check_text_files(args.files, args.text_column, args.label_column, args.problem_type)
    for s in statuses:
        detail = f"{s.rows} rows; {s.labels}" if s.state == "ok" else s.problem
        print(f"{s.path}  {s.state}  {detail}")
        for note in s.notes:
            print(f"  warning: {note}")
    counts = {state: sum(s.state == state for s in statuses) for state in ("ok", "broken", "skipped")}
    print(", ".join(f"{n} {state}" for state, n in counts.items() if n or state != "skipped"))
    return 0 if counts["ok"] == len(statuses) else 1


def cli() -> int:
    """Console entry point ``glora-data``."""
    return run(main)
