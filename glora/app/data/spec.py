"""Which data a run uses (:class:`DataSpec`): built from the options, stored in checkpoints, read back by search
and export; every dataset-specific decision is its source's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .batch import Modality
from .images import ImageSet
from .sequences import TextSet
from .sources import Source, get_source, source_names
from .sources.options import option_names, options_from
from .transforms import EvalCrop, TrainAugment

__all__ = ["DataSpec", "PATH_OPTIONS"]

# The data options that name files or folders (glora-train records them absolute).
PATH_OPTIONS = ("data_root", "train_file", "validation_file", "test_file", "tokenizer")

_logger = logging.getLogger(__name__)


class DataSpec:
    """Which data a run uses: the source's name (``dataset``) and that source's options (``options``, an instance of
    its :attr:`~glora.app.data.sources.Source.Options`); stored in checkpoints so search and export see the same
    splits.

    ``DataSpec(dataset="vtab", data_root="/data/vtab-1k", task="cifar")`` builds the options from keywords; one the
    source does not own is refused with a ``ValueError`` that lists the ones it does. The options read as the spec's
    own attributes (``spec.task``). The supernet trains on the train split, the search ranks on val, and test is
    looked at once, for the final pick.
    """

    def __init__(self, dataset: str = "digits", options: Any = None, **values: Any) -> None:
        source = get_source(dataset)  # an unknown name: "dataset must be one of ..."
        if options is None:
            options = options_from(source.Options, values, what=f"dataset {dataset}")
        elif values or not isinstance(options, source.Options):
            raise ValueError(f"dataset {dataset}: give its options as {source.Options.__name__} or as keywords")
        self.dataset, self.options = dataset, options
        if source.needs_root and not getattr(options, "data_root", None):
            raise ValueError(f"dataset {dataset!r} needs --data-root")
        source.check(self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the spec itself lacks: the source's options.
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("_") and hasattr(options, name):
            return getattr(options, name)
        dataset = self.__dict__.get("dataset", "?")
        raise AttributeError(f"dataset {dataset} has no option {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"DataSpec(dataset={self.dataset!r}, options={self.options!r})"

    def replace(self, **changes: Any) -> DataSpec:
        """A copy with some options changed."""
        return DataSpec(self.dataset, dataclasses.replace(self.options, **changes))

    @property
    def source(self) -> Source:
        """Where the rows come from (:mod:`glora.app.data.sources`)."""
        return get_source(self.dataset)

    @property
    def modality(self) -> type[Modality]:
        """What the splits hold, ``images`` or ``text``: the source's, decided once."""
        return self.source.modality

    def model_inputs(
        self, model: Any = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> Modality:
        """The run's :class:`~glora.app.data.batch.Modality`: for images the ``model``'s input configuration (size,
        mean, std; ``mean`` / ``std`` override it), for text the sequence length."""
        return self.modality.for_run(self, model, mean=mean, std=std)

    @property
    def selects_on_test(self) -> bool:
        """Whether the validation split is the test split (the paper's Table 1 protocol): a search then picks on
        the very images it reports, so its test accuracy is not held out."""
        try:
            return self.split_key("val") == self.split_key("test")
        except ValueError:  # no test split (a text run without --test-file)
            return False

    def split_key(self, role: str) -> str:
        """The list file, split name or data file a role (train, val, test) reads; ``ValueError`` when the data
        have no such split."""
        return self.source.split_key(self, self.source.split_name(self, role))

    @property
    def eval_crop_pct(self) -> float | EvalCrop | None:
        """How evaluation images are cut: None = squash-resize (VTAB-1k), a float = timm's center crop, or with
        ``crop_mode`` an :class:`EvalCrop` (``crop_pct`` default: the dataset's, else 1)."""
        default = self.source.default_crop_pct
        crop_pct, crop_mode = getattr(self.options, "crop_pct", None), getattr(self.options, "crop_mode", None)
        if crop_mode is not None:
            return EvalCrop(crop_mode, crop_pct or default or 1.0)
        if crop_pct is None or (crop_pct == 1.0 and default is None):
            return default
        return crop_pct

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        """A spec from its :meth:`to_dict` form. Checkpoints written before sources owned their options hold every
        source's fields; those of other sources are dropped (they were never read)."""
        data = dict(data)
        dataset = data.pop("dataset", "digits")
        own = set(option_names(get_source(dataset).Options))
        return cls(dataset, **{k: v for k, v in data.items() if k in own})

    @classmethod
    def from_options(cls, args: argparse.Namespace | Mapping[str, Any]) -> DataSpec:
        """The spec a command's options describe: the chosen source's options read by their names (``--data-root``
        -> ``data_root``); the defaults for the ones a command does not offer."""
        values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        dataset = values.get("dataset") or "digits"
        own = option_names(get_source(dataset).Options)
        return cls(dataset, **{k: values[k] for k in own if values.get(k) is not None})

    @staticmethod
    def recorded_options(values: Mapping[str, Any]) -> Any:
        """The options a run's record (its saved config, option names as dests) gives its dataset, unchecked: what a
        report reads, not a run to start. An unknown dataset or option value is kept as it is."""
        options = get_source(str(values.get("dataset") or "digits")).Options
        own = {k: values[k] for k in option_names(options) if values.get(k) is not None}
        try:
            return options(**own)
        except (TypeError, ValueError):
            return options()

    @classmethod
    def from_checkpoint(cls, data: Mapping[str, Any], data_root: str | os.PathLike | None = None) -> DataSpec:
        """The spec a checkpoint stored (its ``"data"`` entry), with the data found at ``data_root`` instead when
        given (the same dataset moved, or another machine's copy)."""
        spec = cls.from_dict(data)
        if data_root:
            if "data_root" not in option_names(spec.source.Options):
                raise ValueError(
                    f"--data-root: dataset {spec.dataset} reads no data root (its options: "
                    f"{', '.join('--' + n.replace('_', '-') for n in option_names(spec.source.Options))})"
                )
            spec = spec.replace(data_root=str(data_root))
        return spec

    def to_dict(self) -> dict:
        """``{"dataset": ..., **options}``: what checkpoints store."""
        return {"dataset": self.dataset, **dataclasses.asdict(self.options)}

    def preflight(self, splits: Sequence[str] = ("train", "val"), given_test: bool = True) -> None:
        """Check the files of ``splits`` (train / val / test) before any work: one line names the file and what is
        wrong with it. ``given_test``: a ``--test-file`` that was given is checked too (a missing or broken one is
        an error now, not a "test metrics not reported" at the end of a search)."""
        if given_test and "test" not in splits and getattr(self.options, "test_file", None):
            splits = (*splits, "test")
        for split in splits:
            self.source.preflight(self, self.source.split_name(self, split))

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
        return inputs.load(self, split, progress, augment)

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
        inputs = source.modality.source_inputs(self, input_size)  # images: their size and evaluation crop
        if augment is not None:
            if not source.files:
                readers = [n for n in source_names() if get_source(n).files]
                allowed = ", ".join(readers[:-1]) + f" or {readers[-1]}" if len(readers) > 1 else "".join(readers)
                raise ValueError(f"--augment needs image files ({allowed}); {self.dataset} images are not files")
            plain = self.replace(cache_images=False).load(split, input_size, progress)
            return dataclasses.replace(plain, augment=augment, mean=tuple(mean), std=tuple(std))
        return source.load(self, source.split_name(self, split), progress, **inputs)
