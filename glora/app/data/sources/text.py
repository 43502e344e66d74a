"""``text``: sentence(-pair) classification from CSV, TSV, JSON, JSONL or parquet files, or a ``save_to_disk``
folder, read with the ``datasets`` library and tokenized once by the model's own tokenizer (``AutoTokenizer``).

A split is kept as the tokenizer's fields (``input_ids``, ``attention_mask``, and ``token_type_ids`` where the
tokenizer gives them: BERT's sentence pairs), right-padded to ``max_seq_length`` (longer texts are truncated); every
batch is cut to its longest row on the host, so padding costs nothing.
Labels are integers used as they are (classes 0..max; a ``datasets.ClassLabel`` column, as GLUE's, also names
them), strings mapped in sorted order (the class names), or real numbers: a regression (STS-B), one output trained
with mean squared error. Whole-number labels are classes unless ``--problem-type regression`` says otherwise.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glora._text import first_line

from ...hf_backbone import require_text_packages
from ..batch import TextModality
from ..sequences import TextSet
from . import Source, register_source
from .options import TextFileOptions, option

__all__ = [
    "TextSource",
    "TextOptions",
    "read_table",
    "train_labels",
    "split_labels",
    "load_tokenizer",
    "split_file",
    "TEXT_SUFFIXES",
    "PROBLEM_TYPES",
]

_logger = logging.getLogger(__name__)

# file suffix -> datasets builder (and its options)
TEXT_SUFFIXES = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def read_table(path: str):
    """A ``datasets.Dataset`` from a data file or a ``save_to_disk`` folder; ``ValueError`` says what is wrong."""
    require_text_packages("text data")
    import datasets

    p = Path(path).expanduser()
    if p.is_dir():
        try:
            data = datasets.load_from_disk(str(p))
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{str(p)!r} is not a folder written by datasets' save_to_disk ({e})") from None
        if isinstance(data, datasets.DatasetDict):
            raise ValueError(f"{str(p)!r} holds several splits ({', '.join(data)}); give the folder of one split")
        return data
    if not p.is_file():
        raise FileNotFoundError(f"text file {str(p)!r} does not exist")
    builder = TEXT_SUFFIXES.get(p.suffix.lower())
    if builder is None:
        raise ValueError(f"text file {str(p)!r}: unknown format; give one of {', '.join(TEXT_SUFFIXES)} or a folder")
    name, options = builder
    datasets.disable_progress_bars()
    quiet = logging.getLogger("datasets")  # it logs the reader's failure itself; the one error line says it instead
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(name, data_files=str(p), split="train", **options)
    except Exception as e:  # the builders raise many kinds on a malformed file, the cause wrapped in their own
        raise ValueError(f"cannot read {str(p)!r} as {p.suffix[1:]}: {_reader_cause(e)}") from None
    finally:
        quiet.setLevel(level)


def _reader_cause(e: BaseException) -> str:
    """What went wrong in a ``datasets`` reader: the innermost cause (``DatasetGenerationError`` only says that an
    error occurred), in one line, with the fix for a file that is not UTF-8."""
    seen = [e]
    while (seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 10:
        seen.append(seen[-1].__cause__ or seen[-1].__context__)  # type: ignore[arg-type]
    root = next((c for c in reversed(seen) if str(c).strip()), e)
    text = " ".join(str(root).split())[:300]
    if isinstance(root, UnicodeDecodeError) or "utf8" in text.lower().replace("-", ""):
        text += " (the file is not UTF-8: save it as UTF-8)"
    return text


def _column(table, name: str, what: str, path: str) -> list:
    if name not in table.column_names:
        raise ValueError(f"{path}: no {what} column {name!r}; columns: {', '.join(table.column_names)}")
    return list(table[name])


PROBLEM_TYPES = ("classification", "regression")


def _label_names(path: str, column: str, problem_type: str | None = None) -> tuple[str, ...] | int | None:
    """The train file's labels: the number of classes for integer labels, the sorted label names for strings, None
    for a regression (real-valued labels; read once per file version: every split's load asks)."""
    p = Path(path).expanduser()
    return _label_names_of(path, column, problem_type, p.stat().st_mtime_ns if p.exists() else 0)


@functools.lru_cache(maxsize=8)
def _label_names_of(path: str, column: str, problem_type: str | None, _version: int) -> tuple[str, ...] | int | None:
    labels, notes = train_labels(path, column, problem_type)
    for note in notes:
        _logger.warning("%s", note)
    if labels is None and problem_type is None:
        _logger.info("%s: label column %r holds real numbers: a regression task", path, column)
    return labels


def train_labels(path: str, column: str, problem_type: str | None = None) -> tuple[tuple[str, ...] | int | None, list]:
    """The train file's labels as training decides them (the number of classes for integer labels, the sorted names
    for strings, None for a regression), every check applied, and the warnings they raise (an id-like column)."""
    table = read_table(path)
    values = _integral(_column(table, column, "label", path))
    if not values:
        raise ValueError(f"{path}: no rows")
    check_labels(path, column, values)
    names = _class_label_names(table, column)
    if names is not None and problem_type != "regression":  # a datasets ClassLabel (GLUE): its names, in order
        return names, []
    real = any(isinstance(v, float) for v in values)
    if problem_type == "regression" or (problem_type is None and real):
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
        if bad is not None:
            raise ValueError(
                f"{path}: row {bad + 1}: label {values[bad]!r} in column {column!r} is not a finite number (a "
                "regression needs numbers)"
            )
        return None, []
    if real:
        bad = next(v for v in values if isinstance(v, float))
        raise ValueError(
            f"{path}: label {bad!r} in column {column!r} is not a class (whole numbers or names); real-valued labels "
            "are a regression: --problem-type regression"
        )
    notes = _check_classes(path, column, values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if min(values) < 0:
            raise ValueError(f"{path}: label {min(values)} is negative; integer labels are classes 0, 1, ...")
        return max(values) + 1, notes
    return tuple(sorted({str(v) for v in values})), notes


def _missing(v) -> bool:
    """An absent label: null, NaN (pandas' blank cell in a number column) or a blank string."""
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def check_labels(path: str, column: str, values: list) -> None:
    """What every split's labels must be, whatever the task: present, one value each, and one kind (numbers or
    names), each failure named by its row (1 = the first data row)."""
    for i, v in enumerate(values):
        if _missing(v):
            raise ValueError(f"{path}: row {i + 1} has no label in column {column!r} ({v!r})")
        if isinstance(v, (list, tuple, dict)):
            raise ValueError(
                f"{path}: row {i + 1}: label {v!r} in column {column!r} is a {type(v).__name__}; a label is one "
                "class or one number"
            )
    names = next((i for i, v in enumerate(values) if isinstance(v, str)), None)
    numbers = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if names is not None and numbers is not None:
        raise ValueError(
            f"{path}: column {column!r} mixes numbers and names (row {numbers + 1}: {values[numbers]!r}, row "
            f"{names + 1}: {values[names]!r}); give every label as a class index or every label as a name"
        )


def _check_classes(path: str, column: str, values: list) -> list[str]:
    """A classification needs two classes or more (else ValueError); as many classes as rows looks like an id
    column (returned as a warning)."""
    present = {str(v) for v in values}
    if len(present) < 2:
        raise ValueError(
            f"{path}: column {column!r} holds one class ({next(iter(present))!r}); a classification needs at least "
            "two (numbers to predict? --problem-type regression)"
        )
    if len(present) == len(values) > 2:
        return [f"{path}: column {column!r} has as many classes as rows ({len(values)}): an id rather than a label?"]
    return []


def read_checked(path: str, text_columns, label_column: str) -> tuple[Any, list[list], list]:
    """A text file's table, its text columns and its labels (whole-number floats as ints), every row checked
    (:func:`check_labels`, :func:`check_texts`): what training and ``glora-data check-text`` both read."""
    table = read_table(path)
    columns = [_column(table, c, "text", path) for c in text_columns]
    labels = _integral(_column(table, label_column, "label", path))
    if not labels:
        raise ValueError(f"{path}: no rows")
    check_labels(path, label_column, labels)
    for column, values in zip(text_columns, columns):
        check_texts(path, column, values)
    return table, columns, labels


def check_texts(path: str, column: str, values: list) -> None:
    """Each row's text is a non-empty string; a failure names the row, the column and what is there instead."""
    for i, v in enumerate(values):
        if v is None:
            raise ValueError(
                f"{path}: row {i + 1} has no {column!r} text (a missing value: a short row, or a separator too many "
                "in the row before?)"
            )
        if not isinstance(v, str):
            raise ValueError(f"{path}: row {i + 1}: {column!r} holds {v!r} (a {type(v).__name__}), not a text")
        if not v.strip():
            raise ValueError(f"{path}: row {i + 1} has an empty {column!r} text")


def _class_label_names(table, column: str) -> tuple[str, ...] | None:
    """The class names of a ``datasets.ClassLabel`` column (index i is class i), else None."""
    import datasets

    feature = getattr(table, "features", {}).get(column)
    return tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _integral(values: list) -> list:
    """Whole-number floats (1.0, written by a tool that typed the column float) as ints; anything else as it is."""
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]


def split_labels(
    path: str, vocab: tuple[str, ...] | int | None, text_columns, label_column: str
) -> tuple[list[list], list, tuple[str, ...] | None]:
    """A split file's text columns, labels (class indices or reals) and class names, judged against the train file's
    labels ``vocab`` (:func:`train_labels`): every check training makes, without a tokenizer."""
    table, columns, raw = read_checked(path, text_columns, label_column)
    if vocab is None:
        bad = next((v for v in raw if not _is_number(v)), None)
        if bad is not None:
            raise ValueError(f"{path}: label {bad!r} is not a number (this is a regression task)")
        labels, names = [float(v) for v in raw], None
    elif isinstance(vocab, int):  # a class index written as text ("1" in a JSON file) is that class, as in a CSV
        raw = [int(v) if isinstance(v, str) and v.strip().isdigit() else v for v in raw]
        bad = next((v for v in raw if not isinstance(v, int) or not 0 <= v < vocab), None)
        if bad is not None:
            raise ValueError(f"{path}: label {bad!r} is not one of the train file's classes 0..{vocab - 1}")
        labels, names = list(raw), None
    elif _class_label_names(table, label_column) is not None:  # class indices of the train file's names
        bad = next((v for v in raw if not isinstance(v, int) or not 0 <= v < len(vocab)), None)
        if bad is not None:
            raise ValueError(
                f"{path}: label {bad!r} is not one of the train file's classes 0..{len(vocab) - 1} "
                f"({', '.join(vocab)}){' (hidden test labels?)' if bad == -1 else ''}"
            )
        labels, names = list(raw), vocab
    else:
        index = {n: i for i, n in enumerate(vocab)}
        bad = next((v for v in raw if str(v) not in index), None)
        if bad is not None:
            raise ValueError(f"{path}: label {bad!r} is not in the train file's labels ({', '.join(vocab)})")
        labels, names = [index[str(v)] for v in raw], vocab
    return columns, labels, names


# A tokenizer saved by transformers or tokenizers writes at least one of these (fast, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")  # fmt: skip


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str):
    """The model's own tokenizer, padding on the right (with eos where it has no pad token)."""
    require_text_packages()
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(
            f"{name!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); give --tokenizer <folder or "
            "hub id> (the model's own tokenizer)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        first = first_line(e)
        raise ValueError(
            f"cannot load the tokenizer of {name!r} ({first}); give --tokenizer <folder or hub id>"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"the tokenizer of {name!r} has no pad token and no eos token to pad with")
        tok.pad_token = tok.eos_token  # what decoder-only models are padded with
    tok.padding_side = "right"  # the wrapper trims every batch to its longest row
    return tok


def split_file(spec, split: str) -> str:
    """The file a split name means for the text sources (--train-file, --validation-file, --test-file); another
    name is a file of its own. ``ValueError`` names the option a missing split needs."""
    files = {"train": spec.train_file, "val": spec.validation_file, "test": spec.test_file}
    if split not in files:
        return split
    if files[split] is None:
        option = {"val": "--validation-file", "test": "--test-file"}.get(split, "--train-file")
        raise ValueError(f"dataset {spec.dataset} has no {split} split: give {option}")
    return str(files[split])


@dataclass
class TextOptions(TextFileOptions):
    """Text classification or regression columns."""

    text_column: list[str] = option(["text"], "one column, or two for sentence pairs", nargs="+", metavar="COLUMN")
    label_column: str = option("label", "integer classes 0..n-1, names (sorted into classes) or real numbers")
    problem_type: str | None = option(
        None,
        "classification or regression (default: regression when the labels are real numbers)",
        choices=PROBLEM_TYPES,
    )

    def __post_init__(self) -> None:
        self.text_column = [self.text_column] if isinstance(self.text_column, str) else list(self.text_column)


@register_source
class TextSource(Source):
    name = "text"
    order = 4
    needs_root = False
    files = False  # tokenized once, cached; no image augmentation
    modality = TextModality
    task_type = "text-classification"
    Options = TextOptions

    def check(self, spec) -> None:
        if not spec.train_file:
            raise ValueError(
                "dataset text needs --train-file (CSV, TSV, JSON, JSONL, parquet or a save_to_disk folder)"
            )
        if not 1 <= len(spec.text_column) <= 2:
            raise ValueError(f"--text-column takes one column or two (sentence pairs); got {list(spec.text_column)}")
        if spec.max_seq_length < 2:
            raise ValueError(f"--max-seq-length must be at least 2, got {spec.max_seq_length}")
        if spec.problem_type not in (None, *PROBLEM_TYPES):
            raise ValueError(f"--problem-type must be one of {', '.join(PROBLEM_TYPES)}; got {spec.problem_type!r}")

    def num_classes(self, spec) -> int:
        labels = _label_names(spec.train_file, spec.label_column, spec.problem_type)
        return 1 if labels is None else labels if isinstance(labels, int) else len(labels)

    def task_kind(self, spec) -> str:
        labels = _label_names(spec.train_file, spec.label_column, spec.problem_type)
        return "regression" if labels is None else "classification"

    def split_name(self, spec, role: str) -> str:
        return role  # split_file maps it to --train-file etc.

    def split_key(self, spec, split: str) -> str:
        return split_file(spec, split)

    def preflight(self, spec, split: str) -> None:
        self._labels(spec, split)

    def _labels(self, spec, split: str) -> tuple[str, list[list], list, tuple[str, ...] | None, bool]:
        """The split's file, text columns, labels (classes or reals), class names and whether it is a regression;
        every check of the file's content, without tokenizing."""
        path = split_file(spec, split)
        vocab = _label_names(spec.train_file, spec.label_column, spec.problem_type)
        columns, labels, names = split_labels(path, vocab, spec.text_column, spec.label_column)
        return path, columns, labels, names, vocab is None

    def load(self, spec, split, progress) -> TextSet:
        path, columns, labels, names, regression = self._labels(spec, split)
        if not spec.tokenizer:
            raise ValueError("dataset text needs the model's tokenizer (--tokenizer, default: the --model)")
        tok = load_tokenizer(spec.tokenizer)
        length = spec.max_seq_length
        enc = tok(*columns, truncation=True, max_length=length, padding="max_length", return_tensors="pt")
        # Every field the tokenizer gives per token (BERT's token_type_ids for sentence pairs included): the model
        # sees in training what run_glue, a pipeline or lm-eval will feed the export.
        fields = {k: v.long() for k, v in enc.items() if torch.is_tensor(v) and v.dim() == 2}
        lengths = fields["attention_mask"].sum(1)
        cut = int((lengths >= length).sum())
        if cut:
            _logger.info("%s: %d of %d rows cut to --max-seq-length %d tokens", path, cut, len(labels), length)
        return TextSet(
            fields=fields,
            targets={"labels": torch.tensor(labels, dtype=torch.float32 if regression else torch.long)},
            lengths=lengths,
            num_classes=self.num_classes(spec),
            class_names=names,
        )
