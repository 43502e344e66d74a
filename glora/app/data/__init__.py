"""Datasets: the embedded digits transfer task, VTAB-1k and few-shot FGVC (the reference's list-file layouts),
any ImageFolder tree, text classification / regression and instruction files, and extra evaluation sets.

The package is in layers, each in its own module:

* :mod:`.sources`: one module per dataset format (``digits``, ``vtab``, ``fewshot``, ``folder``), in a registry
  that ``--dataset`` and :class:`DataSpec` read; a new format is a new module there.
* :mod:`.spec`: :class:`DataSpec`, which data a run uses (from the options, stored in and read back from
  checkpoints).
* :mod:`.batch`: :class:`Batch` (named model inputs and named targets, for every modality) and the run's
  :class:`Modality` (images or text: device placement, the model call, the unit's name in logs).
* :mod:`.images`: :class:`ImageSet` (one split of images, cached or on disk) and the helpers sources build it with.
* :mod:`.sequences`: :class:`TextSet` (one split of tokenized text: the tokenizer's fields, trimmed per batch).
* :mod:`.transforms`: decoding, timm's eval transform, the seeded training augmentation, the device-side
  normaliser.
* :mod:`.loading`: seeded, resumable, shardable batches, and where cached images live during a run.

Images go through timm's eval transform once (bicubic squash-resize to the model's input size, as the paper's VTAB
pipeline does, or resize and center crop with ``crop_pct``; prefetcher mode, so uint8 tensors come out) and stay in
memory; normalisation with the model's mean/std happens on the device, batch by batch, as timm's prefetcher does.
That keeps a VTAB-1k task (1000 images) in ~150 MB and makes 500 epochs cheap on a CPU. A training split with
augmentation (:class:`TrainAugment`, timm's ``create_transform``) is read from its files every epoch instead, each
image drawn from a generator seeded by (run seed, epoch, index), so the same seed gives the same images whatever the
number of workers.
"""

from __future__ import annotations

from .batch import PIXELS, Batch, ImageModality, Modality, TextModality, modality_from_record
from .images import IMAGE_EXTENSIONS, ImageSet, read_list_file
from .loading import DATA_ON_DEVICE, Split, make_loader, place
from .sequences import TextSet
from .sources import Source, get_source, register_source, source_names
from .sources.digits import DIGITS_PRETRAIN_CLASSES, DIGITS_TRANSFER_CLASSES, load_digits
from .sources.fewshot import FEWSHOT_SHOTS, FEWSHOT_TASKS, imagenet_class_names, load_fewshot
from .sources.folder import load_folder
from .sources.vtab import VTAB_SMALL_LR_TASKS, VTAB_TASKS, load_vtab
from .spec import DataSpec
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Normalizer, TrainAugment, input_config

__all__ = [
    "DATASETS",
    "VTAB_TASKS",
    "VTAB_SMALL_LR_TASKS",
    "DIGITS_PRETRAIN_CLASSES",
    "DIGITS_TRANSFER_CLASSES",
    "DataSpec",
    "Batch",
    "Modality",
    "ImageModality",
    "TextModality",
    "modality_from_record",
    "PIXELS",
    "ImageSet",
    "TextSet",
    "Split",
    "Normalizer",
    "input_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "load_digits",
    "load_vtab",
    "load_fewshot",
    "FEWSHOT_TASKS",
    "FEWSHOT_SHOTS",
    "imagenet_class_names",
    "TrainAugment",
    "load_folder",
    "make_loader",
    "read_list_file",
    "place",
    "DATA_ON_DEVICE",
    "Source",
    "register_source",
    "source_names",
    "get_source",
]

# The dataset names --dataset accepts, in listing order (the registry's, read once the sources are imported).
DATASETS = source_names()
