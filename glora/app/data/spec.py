"""Which data a run uses (:class:`DataSpec`): built from the options, stored in checkpoints, read back by search
and export; every dataset-specific decision is its source's.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .batch import ImageModality, Modality, TextModality
from .images import ImageSet
from .sequences import TextSet
from .sources import Source, get_source, source_names
from .transforms import CROP_MODES, EvalCrop, TrainAugment, input_config

__all__ = ["DataSpec"]

_logger = logging.getLogger(__name__)


@dataclass
class DataSpec:
    """Which data a run uses; stored in checkpoints so search and export see the same splits.

    ``train_split`` / ``val_split`` / ``test_split`` name VTAB-1k list files (train800, val200, test) or, for the
    other datasets, the split (train, val, test). The supernet trains on train, the search ranks on val, and
    test is looked at once, for the final pick.
    """

    dataset: str = "digits"
    data_root: str | None = None
    task: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    cache_images: bool = True
    shot: int | None = None  # few-shot: images per class of the train list
    crop_pct: float | None = None  # evaluation crop; None: the dataset's (few-shot 0.875, else squash-resize)
    crop_mode: str | None = None  # timm's center / squash / border; None: the dataset's (few-shot center, else squash)
    # text (dataset "text"): the split files, read with the datasets library, and how they are tokenized
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_column: tuple[str, ...] = ("text",)  # one column, or two for sentence pairs
    label_column: str = "label"
    problem_type: str | None = None  # text: classification or regression; None: regression for real-valued labels
    max_seq_length: int = 128
    tokenizer: str | None = None  # the model's own (a save_pretrained folder or hub id); default: the --model
    packing: bool = False  # instructions: the training split packed into full rows of max_seq_length tokens

    def __post_init__(self) -> None:
        if isinstance(self.text_column, str):
            self.text_column = (self.text_column,)
        self.text_column = tuple(self.text_column)
        source = get_source(self.dataset)  # an unknown name: "dataset must be one of ..."
        if source.needs_root and not self.data_root:
            raise ValueError(f"dataset {self.dataset!r} needs --data-root")
        source.check(self)
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.crop_mode is not None and self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop-mode must be one of {', '.join(CROP_MODES)}; got {self.crop_mode!r}")

    @property
    def source(self) -> Source:
        """Where the rows come from (:mod:`glora.app.data.sources`)."""
        return get_source(self.dataset)

    @property
    def modality(self) -> str:
        """What the splits hold, ``images`` or ``text``: the source's, decided once."""
        return self.source.modality

    def model_inputs(
        self, model: Any = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> Modality:
        """The run's :class:`~glora.app.data.batch.Modality`: for images the ``model``'s input configuration (size,
        mean, std; ``mean`` / ``std`` override it), for text the sequence length."""
        if self.modality == "text":
            return TextModality(self.max_seq_length)
        return ImageModality(input_config(model, mean, std))

    @property
    def selects_on_test(self) -> bool:
        """Whether the validation split is the test split (the paper's Table 1 protocol): a search then picks on
        the very images it reports, so its test accuracy is not held out."""
        key = functools.partial(self.source.split_key, self)
        try:
            return key(self.val_split) == key(self.test_split)
        except ValueError:  # no test split (a text run without --test-file)
            return False

    @property
    def eval_crop_pct(self) -> float | EvalCrop | None:
        """How evaluation images are cut: None = squash-resize (VTAB-1k), a float = timm's center crop, or with
        ``crop_mode`` an :class:`EvalCrop` (``crop_pct`` default: the dataset's, else 1)."""
        default = self.source.default_crop_pct
        if self.crop_mode is not None:
            return EvalCrop(self.crop_mode, self.crop_pct or default or 1.0)
        if self.crop_pct is None or (self.crop_pct == 1.0 and default is None):
            return default
        return self.crop_pct

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        return cls(**data)

    @classmethod
    def from_options(cls, args: argparse.Namespace | Mapping[str, Any]) -> DataSpec:
        """The spec a command's options describe: every field read by its name (``--data-root`` -> ``data_root``),
        the defaults for the ones a command does not offer."""
        values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if values.get(f.name) is not None})

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any], data_root: str | os.PathLike | None = None) -> DataSpec:
        """The spec a checkpoint stored (its ``"data"`` entry), with the data found at ``data_root`` instead when
        given (the same dataset moved, or another machine's copy)."""
        stored = dict(data)
        if data_root:
            stored["data_root"] = str(data_root)
        return cls(**stored)

    def to_dict(self) -> dict:
        return asdict(self)

    def preflight(self, splits: Sequence[str] = ("train", "val")) -> None:
        """Check the files of ``splits`` (train / val / test) before any work: one line names the file and what is
        wrong with it."""
        names = {"train": self.train_split, "val": self.val_split, "test": self.test_split}
        for split in splits:
            self.source.preflight(self, names[split])

    def task_kind(self) -> str:
        """classification, regression or causal-lm: what the source's labels ask a model to learn."""
        return self.source.task_kind(self)

    def num_classes(self) -> int | None:
        """The number of classes, read without decoding images (a folder's classes are counted)."""
        return self.source.num_classes(self)

    def load_for(
        self, split: str, inputs: Modality, progress: bool | None = None, augment: TrainAugment | None = None
    ) -> ImageSet | TextSet:
        """Load ``split`` as the run's :class:`Modality` takes it (images at its input size; ``augment``: image
        files transformed afresh every epoch, normalised with its mean / std)."""
        if isinstance(inputs, ImageModality):
            return self.load(split, inputs.input_size, progress, augment=augment, mean=inputs.mean, std=inputs.std)
        if augment is not None:
            raise ValueError(f"--augment needs image files; dataset {self.dataset} holds {inputs.name}")
        return self.load(split, progress=progress)

    def load(
        self,
        split: str,
        input_size: Sequence[int] | None = None,
        progress: bool | None = None,
        *,
        augment: TrainAugment | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> ImageSet | TextSet:
        """Load ``split`` (train / val / test); images at the model's input size (``progress``: the caching bar;
        None: on a terminal only). ``augment``: the split's image files are transformed afresh every epoch
        (normalised with ``mean`` / ``std`` there), never cached."""
        source = self.source
        if source.modality == "images" and input_size is None:
            raise ValueError(f"dataset {self.dataset}: loading images needs the model's input size")
        if augment is not None:
            if not source.files:
                readers = [n for n in source_names() if get_source(n).files]
                allowed = ", ".join(readers[:-1]) + f" or {readers[-1]}" if len(readers) > 1 else "".join(readers)
                raise ValueError(f"--augment needs image files ({allowed}); {self.dataset} images are not files")
            plain = dataclasses.replace(self, cache_images=False).load(split, input_size, progress)
            return dataclasses.replace(plain, augment=augment, mean=tuple(mean), std=tuple(std))
        name = {"train": self.train_split, "val": self.val_split, "test": self.test_split}[split]
        size = None if input_size is None else tuple(input_size)
        return source.load(self, name, size, progress, self.eval_crop_pct)
