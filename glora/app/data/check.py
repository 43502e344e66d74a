"""What a dataset root holds, task by task, before a 500-epoch run starts: ``glora-data check ROOT``.

VTAB-1k (``<root>/<task>/{train800,val200,train800val200,test}.txt``) and few-shot FGVC (``<root>/<task>/
annotations/...`` over the layouts :mod:`glora.app.data.sources.fewshot` reads) are checked as the commands would
read them: every list parsed (labels in range, lines well formed), every listed image present on disk (a stat, no
decoding). Each task is ``ok``, ``missing`` (not there: fine if you do not run it) or ``broken`` (there, but a run
would fail: the first problem is named).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..values import not_found
from .images import read_list_file
from .sources.fewshot import FEWSHOT_TASKS, split_files
from .sources.vtab import VTAB_TASKS

__all__ = [
    "TaskStatus",
    "check_vtab",
    "check_fewshot",
    "check_root",
    "DATA_KINDS",
    "TextFileStatus",
    "check_text_files",
]

DATA_KINDS = ("auto", "vtab", "fewshot")
_VTAB_LISTS = ("train800", "val200", "train800val200", "test")


@dataclass
class TaskStatus:
    """One task of a root: ``ok``, ``missing`` or ``broken``, what was found and the first problem."""

    task: str
    state: str
    images: int = 0
    splits: list[str] = field(default_factory=list)
    problem: str = ""


def _missing(files: list[Path]) -> str:
    absent = [f for f in files if not f.is_file()]
    if not absent:
        return ""
    return f"{len(absent)} of {len(files)} listed images are missing, e.g. {str(absent[0])!r}"


def check_vtab(root: Path) -> list[TaskStatus]:
    out = []
    for task, classes in VTAB_TASKS.items():
        base = root / task
        if not base.is_dir():
            out.append(TaskStatus(task, "missing"))
            continue
        status = TaskStatus(task, "ok")
        for name in _VTAB_LISTS:
            listing = base / f"{name}.txt"
            if not listing.is_file():
                status.state, status.problem = "broken", f"no {name}.txt"
                break
            try:
                files, _ = read_list_file(listing, base, classes, task)
            except (ValueError, FileNotFoundError) as e:
                status.state, status.problem = "broken", str(e)
                break
            status.splits.append(name)
            status.images += len(files) if name != "train800val200" else 0
            problem = _missing(files)
            if problem:
                status.state, status.problem = "broken", f"{name}.txt: {problem}"
                break
        out.append(status)
    return out


def check_fewshot(root: Path) -> list[TaskStatus]:
    out = []
    for task, classes in FEWSHOT_TASKS.items():
        base = root / task
        if not base.is_dir():
            out.append(TaskStatus(task, "missing"))
            continue
        status = TaskStatus(task, "ok")
        trains = sorted((base / "annotations").glob("train_meta.list.num_shot_*"))
        if not trains:
            where = str(base / "annotations")
            status.state, status.problem = "broken", f"no train_meta.list.num_shot_*.seed_* in {where!r}"
            out.append(status)
            continue
        splits = [("train", int(t.name.split("num_shot_")[1].split(".")[0]), int(t.name.rsplit("seed_", 1)[1]))
                  for t in trains]  # fmt: skip
        splits += [("val", None, 0), ("test", None, 0)]
        for split, shot, seed in splits:
            try:
                files, _, where = split_files(base, task, split, shot, seed, classes)
            except (ValueError, FileNotFoundError) as e:
                status.state, status.problem = "broken", str(e)
                break
            problem = _missing(files)
            if problem:
                status.state, status.problem = "broken", f"{where}: {problem}"
                break
            status.splits.append(f"{shot}-shot seed {seed}" if split == "train" else split)
            status.images += len(files)
        out.append(status)
    return out


def check_root(root: str | Path, kind: str = "auto") -> tuple[str, list[TaskStatus]]:
    """(the kind checked, one status per task); ``auto`` tells VTAB-1k from few-shot by what the root holds."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise not_found("data root", path)
    if kind not in DATA_KINDS:
        raise ValueError(f"kind must be one of {', '.join(DATA_KINDS)}; got {kind!r}")
    vtab = sum((path / t).is_dir() for t in VTAB_TASKS)
    fewshot = sum((path / t).is_dir() for t in FEWSHOT_TASKS)
    named = {"vtab": ("VTAB-1k", vtab), "fewshot": ("few-shot", fewshot)}
    if kind != "auto" and not named[kind][1]:  # the wrong kind, or nothing: not a root of "every task missing"
        other = "fewshot" if kind == "vtab" else "vtab"
        holds = (
            f"holds {named[other][0]} task folders, not {named[kind][0]} ones; --kind {other}"
            if named[other][1]
            else (f"holds no {named[kind][0]} task folder; give the root that holds the task folders")
        )
        raise ValueError(f"{str(path)!r} {holds}")
    if kind == "auto":
        if not vtab and not fewshot:
            raise ValueError(
                f"{str(path)!r} holds no VTAB-1k task folder (cifar, dtd, ...) and no few-shot one (oxford_pets, "
                "...); give the root that holds the task folders"
            )
        kind = "vtab" if vtab >= fewshot else "fewshot"
    return kind, check_vtab(path) if kind == "vtab" else check_fewshot(path)


@dataclass
class TextFileStatus:
    """One text data file as ``glora-data check-text`` reports it: ``ok``, ``broken`` or ``skipped``."""

    path: str
    state: str  # ok | broken
    rows: int = 0
    labels: str = ""  # "2 classes: neg 10, pos 12" or "regression: -1.5..4.0"
    problem: str = ""
    notes: list[str] = field(default_factory=list)  # warnings training would give (an id-like label column)


def check_text_files(
    paths: Sequence[str],
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    problem_type: str | None = None,
) -> list[TextFileStatus]:
    """Every file read and checked exactly as ``--dataset text`` will (labels and texts, row by row), without a model
    or a tokenizer: the first file as the train file (two classes at least, an id-like column warned about, the task
    told from its labels), each other one as a split judged against it."""
    from .sources.text import split_labels, train_labels

    out: list[TextFileStatus] = []
    vocab: tuple[str, ...] | int | None = None
    for i, path in enumerate(paths):
        try:
            notes: list[str] = []
            if i == 0:
                vocab, notes = train_labels(path, label_column, problem_type)
            elif out[0].state != "ok":
                out.append(TextFileStatus(path, "skipped", problem="judged against the train file, which is broken"))
                continue
            _, labels, names = split_labels(path, vocab, text_columns, label_column)
            if vocab is None:
                summary = f"regression: {min(labels):g}..{max(labels):g}"
            else:
                counts = Counter(names[v] if names else str(v) for v in labels)
                total = vocab if isinstance(vocab, int) else len(vocab)
                shown = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
                summary = f"{total} classes{f' ({len(counts)} present)' if len(counts) < total else ''}: {shown}"
            out.append(TextFileStatus(path, "ok", len(labels), summary, notes=notes))
        except (ValueError, FileNotFoundError) as e:
            out.append(TextFileStatus(path, "broken", problem=str(e)))
    return out
