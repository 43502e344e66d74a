"""Where a run's data come from: one :class:`Source` per dataset format, registered by name.

Every module in this package is imported the first time a source is looked up, so adding a format (a text corpus
for language models, another list-file layout) is adding a module here that subclasses :class:`Source`, declares
its options (:attr:`Source.Options`, a dataclass built from the parts in :mod:`.options`) and decorates it with
:func:`register_source`; :class:`glora.app.data.DataSpec`, the ``--dataset`` option and the data option groups read
the registry and change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from glora._registry import Registry

from ..batch import ImageModality, Modality
from .options import SplitOptions

if TYPE_CHECKING:
    from ..images import ImageSet
    from ..sequences import TextSet
    from ..spec import DataSpec

__all__ = ["Source", "register_source", "source_names", "get_source", "SplitOptions"]

_REGISTRY: Registry[Source] = Registry(__name__, "dataset")


class Source:
    """A dataset format: its options, how they are checked, how many classes it has and how a split is read.

    Subclasses set :attr:`name` and :attr:`Options` and override :meth:`load`; the rest has defaults that fit an
    image source. The methods get the run's :class:`~glora.app.data.DataSpec`, whose attributes are the options.
    """

    name: ClassVar[str] = ""
    # The options this source owns: a dataclass whose fields are option names (--dash-names, YAML keys); an option
    # of another source is refused.
    Options: ClassVar[type] = SplitOptions
    order: ClassVar[int] = 100  # position in listings (help text, error messages); ties by name
    needs_root: ClassVar[bool] = True  # --data-root is required
    files: ClassVar[bool] = True  # splits are image files (so a training augmentation can read them afresh)
    # What its splits hold: ImageModality (ImageSet: uint8 pixel_values) or TextModality (TextSet: the tokenizer's
    # fields). Decided here, once; the run's Modality object is this class's, and is asked, never named.
    modality: ClassVar[type[Modality]] = ImageModality
    # The transformers task type its data train (text-classification, causal-lm); None: image data (timm).
    task_type: ClassVar[str | None] = None
    # Evaluation crop when --crop-pct is not given: None = squash-resize to the input size (VTAB-1k's pipeline),
    # else timm's resize-and-center-crop at that fraction. With a None default, --crop-pct 1 also squashes.
    default_crop_pct: ClassVar[float | None] = None

    def check(self, spec: DataSpec) -> None:
        """Refuse options this source cannot use (one clear ``ValueError``), before anything is read."""

    def num_classes(self, spec: DataSpec) -> int | None:
        """The number of classes, known without decoding images where possible."""
        return None

    def task_kind(self, spec: DataSpec) -> str:
        """What is learnt from it (a :data:`glora.app.tasks.TASK_KINDS` name): classification for images."""
        return "classification"

    def preflight(self, spec: DataSpec, split: str) -> None:
        """Read what split ``split`` names (list files, tables) without decoding images or tokenizing, so a bad file
        is reported before a model is built or anything is written. Default: nothing to read ahead."""

    def split_name(self, spec: DataSpec, role: str) -> str:
        """The split a role (train, val, test) reads: the ``--train-split`` etc. name by default."""
        return getattr(spec, f"{role}_split")

    def split_key(self, spec: DataSpec, split: str) -> str:
        """The file or part a split name refers to (two names with one key are the same images)."""
        return split

    def load(self, spec: DataSpec, split: str, progress: bool | None, **inputs: Any) -> ImageSet | TextSet:
        """The rows of split ``split`` (:meth:`split_name` of a role). ``inputs`` are what the modality gives
        (:meth:`~glora.app.data.batch.Modality.source_inputs`): an image source takes ``size`` (the model's input
        size) and ``crop_pct`` (the evaluation crop); a text source takes nothing more."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<data source {self.name!r}>"


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: make (one instance of) ``cls`` available as ``--dataset <cls.name>``."""
    _REGISTRY.add(cls.name, cls(), same=lambda a, b: type(a) is type(b))
    return cls


def source_names() -> tuple[str, ...]:
    """The registered sources' names, in listing order."""
    entries = _REGISTRY.entries()
    return tuple(sorted(entries, key=lambda n: (entries[n].order, n)))


def get_source(name: str) -> Source:
    """The source registered as ``name``."""
    return _REGISTRY.get(name, ", ".join(source_names()))
