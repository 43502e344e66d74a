"""One batch type for every modality, and the small object that knows how a modality reaches the model.

A batch is two mappings of named tensors, as transformers' ``BatchEncoding`` and its data collators make them:
``inputs`` are the model's ``forward`` arguments (``pixel_values`` for images; ``input_ids``, ``attention_mask``,
``token_type_ids`` and whatever else the tokenizer gave for text), ``targets`` are what the task's loss and metrics
read (``labels``, and for multiple choice ``choice_group`` and ``choice_correct``). A split (``ImageSet``,
``TextSet``) gathers its batches on the host (text padding is trimmed there, per batch, from lengths known when the
texts were tokenized: the device is never asked); the run's :class:`Modality` places a batch on the device
(images are normalised there) and calls the model with it.

The kind of data is decided once, by the source (``Source.modality``), and stored in every checkpoint as the
modality's record (:func:`modality_from_record` reads it back, older checkpoints included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch

__all__ = [
    "Batch",
    "Modality",
    "ImageModality",
    "TextModality",
    "MODALITIES",
    "modality_from_record",
    "batch_rows",
    "PIXELS",
    "TARGET_FIELDS",
]

PIXELS = "pixel_values"  # the image modality's one input (transformers' name for it)
# Fields of a batch's targets: the labels (classes, real values, or a causal LM's token labels) and, for a multiple-
# choice row scored as one sequence per option, its question's index and whether this option is the answer.
TARGET_FIELDS = ("labels", "choice_group", "choice_correct")


class Batch(NamedTuple):
    """Named model inputs and named targets of the same rows (unpacks as ``inputs, targets``)."""

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Every tensor on ``device``."""
        move = {k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()}
        return Batch(move, {k: v.to(device, non_blocking=non_blocking) for k, v in self.targets.items()})


def batch_rows(fields: Mapping[str, torch.Tensor]) -> int:
    """The number of rows a mapping of named tensors holds."""
    return int(next(iter(fields.values())).shape[0]) if fields else 0


class Modality:
    """What a run's data are and how they reach the model: device placement, the call, the unit's name.

    Subclasses set :attr:`name` (stored in checkpoints) and :attr:`unit` (what a row is called in logs and errors:
    images, sequences), and implement :meth:`record`. The rest works for any batch of named tensors.
    """

    name: ClassVar[str] = ""
    unit: ClassVar[str] = "rows"  # plural; the singular is unit without its last letter
    # The library whose models take these inputs: "timm" (images) or "transformers" (token sequences).
    family: ClassVar[str] = ""
    # Whether the image options apply (--mean, --std, augmentation, --eval-set folders of images).
    image_inputs: ClassVar[bool] = False

    @classmethod
    def for_run(cls, spec: Any, model: Any = None, **overrides: Any) -> Modality:
        """This modality for a run on ``spec``'s data with ``model`` (image statistics may be overridden)."""
        raise NotImplementedError

    @classmethod
    def source_inputs(cls, spec: Any, input_size: Any = None) -> dict[str, Any]:
        """What a source's ``load`` needs from the modality besides the split (images: size and evaluation crop)."""
        return {}

    @classmethod
    def with_model(cls, spec: Any, model: str) -> Any:
        """``spec`` completed with what its data take from the model named ``model`` (text: its tokenizer, unless
        another was given)."""
        return spec

    def load(self, spec: Any, split: str, progress: bool | None = None, augment: Any = None) -> Any:
        """Split ``split`` of ``spec``'s data as this modality takes it (``augment``: a training augmentation)."""
        if augment is not None:
            raise ValueError(f"--augment needs image files; dataset {spec.dataset} holds {self.name}")
        return spec.load(split, progress=progress)

    def check_model(self, model: Any, spec: Any) -> None:
        """Refuse, before any row is read, a model that cannot take these inputs as ``spec`` gives them."""

    @property
    def unit_singular(self) -> str:
        return self.unit[:-1]

    def place(self, inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """The inputs on ``device``, as the model takes them (non-blocking copies: no wait for the host)."""
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}

    def __call__(self, forward: Callable[..., torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's outputs (logits) for placed ``inputs``: every field passed by its name."""
        return forward(**inputs)

    def first(self, inputs: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """The first ``n`` rows of ``inputs`` (one example for a FLOP count, a few for a check)."""
        return {k: v[:n] for k, v in inputs.items()}

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this object (:func:`modality_from_record`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} modality>"


class ImageModality(Modality):
    """Images: one ``pixel_values`` input, uint8 on the host, normalised on the device with the model's mean/std
    (as timm's prefetcher does); the model is called with it positionally (timm models' ``forward(x)``).

    ``config`` is the model's input configuration (``input_size``, ``mean``, ``std``, ... as
    :func:`glora.app.data.input_config` gives it); the export writes it beside the weights.
    """

    name = "images"
    unit = "images"
    family = "timm"
    image_inputs = True

    @classmethod
    def for_run(cls, spec: Any, model: Any = None, **overrides: Any) -> ImageModality:
        """The model's input configuration (size, mean, std), ``mean`` / ``std`` overriding it."""
        from .transforms import input_config

        return cls(input_config(model, overrides.get("mean"), overrides.get("std")))

    @classmethod
    def source_inputs(cls, spec: Any, input_size: Any = None) -> dict[str, Any]:
        if input_size is None:
            raise ValueError(f"dataset {spec.dataset}: loading images needs the model's input size")
        return {"size": tuple(input_size), "crop_pct": spec.eval_crop_pct}

    def load(self, spec: Any, split: str, progress: bool | None = None, augment: Any = None) -> Any:
        return spec.load(split, self.input_size, progress, augment=augment, mean=self.mean, std=self.std)

    def __init__(self, config: Mapping[str, Any]) -> None:
        from .transforms import Normalizer

        self.config = {k: v for k, v in config.items() if k not in ("modality", "kind")}
        self.input_size = tuple(int(v) for v in self.config["input_size"])
        self.mean, self.std = tuple(self.config["mean"]), tuple(self.config["std"])
        self._normalize = Normalizer(self.mean, self.std)

    def place(self, inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        if self._normalize.mean.device != torch.device(device):
            self._normalize = self._normalize.to(device)
        pixels = inputs[PIXELS].to(device, non_blocking=True)
        return {PIXELS: self._normalize(pixels)}

    def __call__(self, forward: Callable[..., torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return forward(inputs[PIXELS])

    def record(self) -> dict[str, Any]:
        return {"modality": self.name} | {k: v if isinstance(v, str) else _plain(v) for k, v in self.config.items()}


class TextModality(Modality):
    """Token sequences: every field the tokenizer gave (``input_ids``, ``attention_mask``, ``token_type_ids``, ...),
    right-padded and trimmed per batch on the host; the model wrapper (:class:`glora.app.hf_backbone.TokenModel`)
    takes them by name and passes on those its transformers model accepts."""

    name = "text"
    unit = "sequences"
    family = "transformers"

    def __init__(self, max_seq_length: int) -> None:
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def for_run(cls, spec: Any, model: Any = None, **overrides: Any) -> TextModality:
        return cls(spec.max_seq_length)

    @classmethod
    def with_model(cls, spec: Any, model: str) -> Any:
        return spec.replace(tokenizer=spec.tokenizer or model)

    def check_model(self, model: Any, spec: Any) -> None:
        """The sequence length against the model's positions, the tokenizer against its embedding table."""
        from ..backbone import check_sequence_length, check_tokenizer
        from .sources.text import load_tokenizer

        check_sequence_length(model, spec.max_seq_length)
        check_tokenizer(model, load_tokenizer(spec.tokenizer))

    def record(self) -> dict[str, Any]:
        return {"modality": self.name, "max_seq_length": self.max_seq_length}


MODALITIES: dict[str, type[Modality]] = {"images": ImageModality, "text": TextModality}


def modality_from_record(record: Mapping[str, Any]) -> Modality:
    """The modality a checkpoint's ``"input"`` record describes. Records written before modalities existed are
    an image input configuration, or ``{"kind": "tokens", "input_size": [2, L]}`` for text."""
    name = record.get("modality") or ("text" if record.get("kind") == "tokens" else "images")
    if name == "text":
        length = record.get("max_seq_length") or record["input_size"][-1]
        return TextModality(int(length))
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r} in the checkpoint; known: {', '.join(MODALITIES)}")
    return ImageModality(record)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v
