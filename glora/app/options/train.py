"""The options of ``glora-train`` / ``train_supernet.py``, and the objects they describe (data, backbone,
adapter, augmentation): the command reads as the steps of its job, the option names live here.

Each option is declared once, as a field of the object it builds (:class:`~glora.app.trainer.Recipe`,
:class:`~glora.app.sampling.Sampling`, :class:`~glora.app.data.TrainAugment`, a data source's options, the shared
:class:`~glora.app.options.runtime.Runtime`) or of one of the small groups below.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glora.config import ALL_LINEAR, AdapterConfig
from glora.space import GIFT_SHARING, SearchSpace

from ..backbone import BIAS_FREE_OPTIONS, EMBEDDED_PREFIX, BackboneSpec
from ..data import DATASETS, TrainAugment
from ..data.sources import get_source
from ..data.sources.options import option_names, option_owners, source_groups
from ..declared import Group, declared, option
from ..hf_backbone import (
    DTYPES,
    QUANTIZE_OPTIONS,
    QUANTIZED_EXTRA,
    TASK_TYPES,
    is_transformers_model,
    require_text_packages,
)
from ..sampling import Sampling
from ..tasks import METRICS
from ..trainer import Recipe
from ..values import positive_float, yaml_mapping
from . import (
    Command,
    ConfigError,
    Parsed,
    Runtime,
    parse_choices,
    program_name,
    resolve_config,
    support_choices,
)

__all__ = [
    "build_parser",
    "DEFAULT_MODEL",
    "adapter_from_args",
    "augment_from_args",
    "backbone_from_args",
    "check_applicable",
    "check_init_from",
    "resolve_warmup",
    "SAMPLING_OPTIONS",
    "parse_train_args",
    "sampling_from_args",
    "inherited_options",
    "inputs_of",
]


_logger = logging.getLogger(__name__)

DEFAULT_MODEL = f"{EMBEDDED_PREFIX}digits-vit"

# --support-dtype -> AdapterConfig.support_dtype (same: the frozen weights' dtype).
SUPPORT_DTYPE_OPTIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "same": None}


@dataclass
class BackboneOptions:
    """The model the supernet is built on."""

    model: str = option(
        DEFAULT_MODEL,
        "timm name (e.g. vit_base_patch16_224.orig_in21k), hf-hub:<repo>, local-dir:<folder> or embedded:<name> (a "
        "backbone shipped with glora: embedded:digits-vit); or a transformers model: a save_pretrained folder or a "
        "hub id owner/name",
    )
    pretrained: bool = option(True, "load the model's pretrained weights")
    gradient_checkpointing: bool = option(
        False,
        "recompute the backbone's block activations in the backward instead of keeping them (less memory, about a "
        "third more compute; the same results)",
        resume="may-change",
    )
    support_dtype: str = option(
        "fp32",
        "the trained tensors (supports, GIFT generators): fp32 keeps them and AdamW's state in full precision over a "
        "bf16/fp16 --dtype backbone; same = the frozen weights' dtype",
        choices=tuple(SUPPORT_DTYPE_OPTIONS),
    )


@dataclass
class TimmOptions:
    """Options of timm models only."""

    pretrained_file: str | None = option(None, "load pretrained weights from this local file (offline)")
    img_size: int | None = option(None, "input size, if not the model's", min=1)
    drop_path: float = option(0.0, "stochastic depth rate of the backbone", min=0, max=1)
    model_kwargs: dict = option(
        {},
        "more timm.create_model arguments as a YAML/JSON mapping, e.g. '{embed_dim: 32, depth: 2}'",
        type=yaml_mapping,
    )


@dataclass
class TransformersOptions:
    """Options of transformers models only."""

    dtype: str = option("auto", "the frozen weights' dtype (auto: the checkpoint's)", choices=tuple(DTYPES))
    quantize: str | None = option(
        None,
        "store the frozen weights quantized with bitsandbytes (QLoRA-style; nf4, fp4: 4-bit, int8: 8-bit): the "
        "supports train in --support-dtype over them and the export folds into the dequantized weights",
        choices=QUANTIZE_OPTIONS,
    )
    double_quant: bool = option(True, "4-bit: quantize the block scales too (QLoRA's double quantization)")
    task_type: str | None = option(
        None, "deprecated: the --dataset decides it (text: text-classification, instructions: causal-lm)",
        choices=TASK_TYPES,
    )  # fmt: skip


@dataclass
class SpaceOptions:
    """The search space and the layers it adapts."""

    lora_ranks: list[int] = option([8, 4], "LoRA ranks (paper: 8 4 | 4 2 | 2)", min=1)
    gift_ranks: list[int] = option([], "GIFT ranks offered to A", min=1)
    gift_sharing: str = option("type", "which layers share a GIFT generator", choices=GIFT_SHARING)
    bias_free: str = option(
        "auto",
        "layers without a bias (Llama-style projections): allow = every choice (C and E then add a bias, which the "
        "export declares with the config's attention_bias / mlp_bias); exclude = C, D, E only none there, so the "
        "export keeps the architecture's keys; auto = allow where the model's bias flags can hold every such bias, "
        "else exclude",
        choices=BIAS_FREE_OPTIONS,
    )
    choices: list[str] | None = option(
        None,
        "narrow the space per support, e.g. A=none B=lora_8 C=none D=none E=none (LoRA r=8); one choice per support "
        "trains a fixed adapter (presets: -c methods/lora, ...); unnamed supports keep every choice",
        type=support_choices,
        nargs="+",
        metavar="SUPPORT=NAMES",
    )
    targets: list[str] | None = option(
        None,
        "layer-name suffixes to adapt, spaced or comma-separated (q_proj,v_proj); default / all-linear: every linear "
        "layer but the heads and the output layer",
        nargs="+",
    )
    targets_regex: str | None = option(None, "regex the whole layer name must match (instead of --targets)")


@dataclass
class DataChoice:
    """Which data a run trains on."""

    dataset: str = option(
        "digits",
        "where the data come from: digits (embedded), vtab, fewshot (FGVC lists), folder (images); text "
        "(classification / regression files), instructions (causal-LM instruction data); each dataset's own options "
        "are in the groups below, and an option of another dataset is refused",
        choices=DATASETS,
    )


@dataclass
class ImageInputs:
    """How images reach the model."""

    mean: list[float] | None = option(
        None,
        "normalisation mean per channel (or one for all); default: the model's (VTAB presets: ImageNet's)",
        nargs="+",
        metavar="MEAN",
    )
    std: list[float] | None = option(
        None,
        "normalisation std per channel (or one for all); default: the model's (VTAB presets: ImageNet's)",
        type=positive_float,
        nargs="+",
        metavar="STD",
    )
    augment: bool = option(
        False,
        "augment training images with timm's create_transform (the options below; images are then read from files "
        "every epoch); off = the VTAB-1k recipe",
    )


@dataclass
class Ranking:
    """How the validation split ranks subnets."""

    metric: str | None = option(
        None,
        "the validation metric that ranks subnets (default: accuracy; regression pearson; causal LM loss); every "
        "metric of the task is reported",
        choices=tuple(METRICS),
    )


@dataclass
class Retraining:
    """A searched subnet (retraining the pick)."""

    subnet: str | None = option(
        None,
        "train this subnet alone, as a fixed adapter (a subnet.yaml of glora-search): with --init-from, retrain the "
        "pick from its inherited weights; without, train it from scratch (a stand-alone score)",
        metavar="YAML",
    )
    init_from: str | None = option(
        None,
        "a supernet checkpoint (last.pt) whose trained tensors this run starts from; its options (model, data, "
        "space, recipe) are this run's defaults, so only what changes is given (--epochs, --lr, ...)",
        metavar="CKPT",
    )
    teacher_weight: float = option(
        0.0,
        "with --subnet and --init-from: the pick also learns the outputs of the supernet's largest subnet (frozen as "
        "loaded; knowledge distillation), loss = (1 - W) * labels' + W * teacher's (0: labels only)",
        min=0,
        max=1,
        metavar="W",
    )


@dataclass
class TrainOutput:
    """Where the run writes, and when it stops."""

    memory_check: bool = option(
        True,
        "refuse a supernet whose training state (values, gradients, AdamW) exceeds the free memory",
        resume="may-change",
    )
    out: str = option("runs/default/supernet", "output folder (last.pt, log.jsonl, config.yaml)")
    resume: bool = option(False, "continue from <out>/last.pt", action="store_true")
    force: bool = option(False, "start over even if <out> already holds a checkpoint", action="store_true")
    stop_after: int | None = option(
        None,
        "stop (resumably) after this many epochs in this run, e.g. to fit a job time limit",
        min=1,
        resume="this-run",
    )


def build_parser() -> Command:
    """``glora-train``'s options, in the groups ``--help`` shows."""
    sources = [(name, get_source(name).Options) for name in DATASETS]
    return Command(
        program_name("train_supernet.py", "glora-train"),
        "Train a GLoRA supernet: a random subnet per step over a frozen backbone.",
        [
            Group.of("backbone", BackboneOptions),
            Group.of("timm models", TimmOptions),
            Group.of("transformers models", TransformersOptions),
            Group.of("search space", SpaceOptions),
            Group.of("data", DataChoice),
            *source_groups(sources),
            Group("image inputs (image datasets)", declared(ImageInputs, only=("mean", "std"))),
            Group(
                "augmentation (timm train.py names; with --augment)",
                [*declared(ImageInputs, only=("augment",)), *declared(TrainAugment)],
            ),
            Group.of("training", Recipe, Ranking),
            Group.of("supernet sampling (which subnets a step trains)", Sampling),
            Group.of("runtime", Runtime),
            Group.of("a searched subnet (retraining the pick)", Retraining),
            Group.of("output", TrainOutput),
        ],
    )


# Options of a --init-from checkpoint a retraining run does not take over: where and how this run writes, and what it
# retrains (the rest, model, data, space and recipe, are its defaults).
_NOT_INHERITED = {"out", "resume", "force", "stop_after", "init_from", "subnet", "teacher_weight", "progress"}

# How a supernet step samples its subnets: they cannot apply to a run that trains one fixed subnet (--subnet), so
# such a run refuses them and never inherits them from --init-from.
SAMPLING_OPTIONS = tuple(f.name for f in dataclasses.fields(Sampling))


def parse_train_args(command: Command, argv: Sequence[str] | None) -> Parsed:
    """The command line parsed, with one more layer of defaults under its ``-c`` files: the options of the
    ``--init-from`` checkpoint (a fresh run only; a resumed one keeps its own)."""
    parsed = command.parse(argv)
    init_from, subnet = parsed.get("init_from"), parsed.get("subnet")
    if init_from and not parsed.get("resume"):
        parsed = parsed.layered_under(inherited_options(init_from, retraining=subnet is not None))
    return parsed


def inherited_options(path: str, retraining: bool = False) -> dict[str, Any]:
    """The options a supernet checkpoint was trained with, by their names (:data:`_NOT_INHERITED` left out;
    ``retraining`` one subnet: the supernet's sampling too)."""
    from ..checkpoint import read_checkpoint

    saved = read_checkpoint(path).get("config") or {}
    skip = _NOT_INHERITED | (set(SAMPLING_OPTIONS) if retraining else set())
    return {dest: value for key, value in saved.items() if (dest := str(key).replace("-", "_")) not in skip}


def check_init_from(init_from: str | None, subnet_file: str | None) -> None:
    """A run never starts from mixed tensors: ``--init-from`` a retrained checkpoint (one subnet trained further
    than the rest of its supernet's tensors) takes that very subnet as ``--subnet``, or is refused in one line."""
    if not init_from:
        return
    from glora.subnet import load_subnet, subnet_difference

    from ..checkpoint import read_checkpoint

    ckpt = read_checkpoint(init_from)
    trained = ckpt.get("subnet")
    if not trained:
        return
    origin = (ckpt.get("config") or {}).get("subnet") or "its --subnet"
    if subnet_file is None:
        raise ConfigError(
            f"--init-from {init_from} holds one retrained subnet ({origin}): its other tensors were never trained "
            "with it, so a supernet cannot start from them; give --subnet with that subnet to train it further, or "
            "--init-from the supernet it was retrained from"
        )
    wanted = load_subnet(subnet_file)
    differ = subnet_difference(wanted, trained)
    if differ:
        raise ConfigError(
            f"--subnet {subnet_file} is not the subnet --init-from {init_from} retrained ({origin}; {differ}): "
            "training it from there would start from tensors of two trainings; --init-from the supernet instead"
        )


def resolve_warmup(parsed: Parsed, args: argparse.Namespace) -> None:
    """``--warmup-epochs`` and ``--warmup-ratio`` say one thing in two ways: the one given at the higher layer wins
    (the command line over a ``-c`` preset over the ``--init-from`` run's options), so a retraining that inherits a
    ratio and is given ``--warmup-epochs 0`` warms up for 0 epochs; both given at one layer is refused."""
    ratio, epochs = parsed.layer("warmup_ratio"), parsed.layer("warmup_epochs")
    if args.warmup_ratio is None:
        return
    if epochs > ratio:
        args.warmup_ratio = None
    elif epochs == ratio >= 2:  # (an --init-from run records both; there the ratio had won)
        where = "the command line" if epochs == 2 + len(parsed.files) else "one -c file"
        raise ConfigError(
            f"--warmup-epochs and --warmup-ratio both given by {where}: give one (the ratio follows --epochs)"
        )


def augment_from_args(args: argparse.Namespace) -> TrainAugment | None:
    """The training augmentation the options describe (None without ``--augment``)."""
    if not getattr(args, "augment", False):
        return None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainAugment)}  # same names as the options
    return TrainAugment(**values | {"scale": tuple(args.scale), "ratio": tuple(args.ratio)})


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The supernet sampling the options describe (older runs' options lack them: the paper's uniform draw)."""
    return Sampling(**{n: getattr(args, n) for n in SAMPLING_OPTIONS if hasattr(args, n)})


def adapter_from_args(args: argparse.Namespace, heads: Sequence[str] | None = None) -> AdapterConfig:
    """The adapter the options describe (search space, target layers); ``heads`` as resolved on the model."""
    if args.targets and args.targets_regex:
        raise ConfigError("give --targets or --targets-regex, not both")
    if not args.lora_ranks:  # an empty list is allowed (GIFT-only spaces) but never silent
        gift = ", and GIFT for A" if args.gift_ranks else ""
        _logger.info("note: --lora-ranks is empty, so no support offers a LoRA choice (vector, scalar, none%s)", gift)
    space = SearchSpace(
        lora_ranks=tuple(args.lora_ranks),
        gift_ranks=tuple(args.gift_ranks),
        gift_sharing=args.gift_sharing,
        choices=parse_choices(getattr(args, "choices", None)),
        # auto is decided against the model (backbone.resolve_bias_free); until then the space allows
        bias_free="allow" if getattr(args, "bias_free", "auto") == "auto" else args.bias_free,
    )
    # Suffixes as listed or comma-separated, as PEFT users write them (q_proj,v_proj); all-linear = the default.
    names = [t for entry in args.targets or () for t in entry.split(",") if t]
    targets = args.targets_regex or (None if not names or names == [ALL_LINEAR] else names)
    dtype = SUPPORT_DTYPE_OPTIONS[getattr(args, "support_dtype", "fp32")]
    return AdapterConfig(space, targets, None if heads is None else tuple(heads), support_dtype=dtype)


# Options one kind of backbone or data cannot use: set for another (on the command line or in a -c file), they are
# refused in one line before anything is loaded, never ignored.
TIMM_ONLY = tuple(f.name for f in dataclasses.fields(TimmOptions))
TRANSFORMERS_ONLY = tuple(f.name for f in dataclasses.fields(TransformersOptions))
IMAGE_ONLY = ("mean", "std", "augment", *(f.name for f in dataclasses.fields(TrainAugment)))


def _flags(dests: Sequence[str]) -> str:
    return ", ".join("--" + d.replace("_", "-") for d in dests)


def check_applicable(parsed: Parsed) -> None:
    """Refuse, in one line, options set for a dataset or a kind of model the run does not use (``--crop-pct`` with
    ``--dataset text``, ``--drop-path`` with a transformers model), options that cannot apply to this run
    (``--sampling`` with ``--subnet``, ``--distill`` for a causal LM), and a model that cannot read the data. Only
    what the command line and its ``-c`` files set counts; defaults never do."""
    args, explicit = parsed.args, parsed.explicit()
    _check_training_kind(parsed, args, explicit)
    source = get_source(args.dataset)
    own = set(option_names(source.Options))
    hf = is_transformers_model(str(args.model))
    family = "transformers" if hf else "timm"
    if hf or source.modality.family == "transformers":
        try:
            require_text_packages()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if family != source.modality.family:
        raise ConfigError(
            f"--model {args.model!r} is a transformers model; it trains on --dataset text or instructions"
            if hf
            else f"--dataset {args.dataset} needs a transformers --model (save_pretrained folder or hub id), not "
            f"{args.model!r}"
        )
    owners = option_owners([(d, get_source(d).Options) for d in DATASETS])
    foreign = sorted(d for d in explicit if d in owners and d not in own)
    if foreign:
        users = sorted({u for d in foreign for u in owners[d]}, key=DATASETS.index)
        raise ConfigError(
            f"{_flags(foreign)}{parsed.set_by(foreign)}: not an option of --dataset {args.dataset} (used by --dataset "
            f"{', '.join(users)}); its options: {_flags(option_names(source.Options)) or 'none'}"
        )
    other = sorted(d for d in explicit if d in (TIMM_ONLY if hf else TRANSFORMERS_ONLY))
    if other:
        kind, model_kind = ("timm", "a transformers") if hf else ("transformers", "a timm")
        raise ConfigError(f"{_flags(other)}: for {kind} models only; --model {args.model} is {model_kind} model")
    images = sorted(d for d in explicit if d in IMAGE_ONLY)
    if images and not source.modality.image_inputs:
        raise ConfigError(
            f"{_flags(images)}: for image data only; --dataset {args.dataset} holds {source.modality.name}"
        )
    if args.quantize:
        _check_quantized(parsed, args)
    if "task_type" in explicit:
        wanted = source.task_type
        if args.task_type != wanted:
            raise ConfigError(
                f"--task-type {args.task_type} does not fit --dataset {args.dataset}: it trains a {wanted} model"
            )
        _logger.warning("--task-type is deprecated: --dataset %s decides it (%s)", args.dataset, wanted)


def _check_quantized(parsed: Parsed, args: argparse.Namespace) -> None:
    """What a quantized base cannot do, refused before the model loads: shard (bitsandbytes' packed weights are not
    split by FSDP here), compile (its matmuls break the graph), start without pretrained weights (nothing to
    quantize); and bitsandbytes must be installed."""
    flag = f"--quantize {args.quantize}{parsed.set_by(['quantize'])}"
    if getattr(args, "fsdp", False):
        raise ConfigError(f"{flag}: a quantized base is not sharded here; leave out --fsdp (a 4-bit base of a 7B model "
                          "fits one 24 GB GPU) or --quantize")  # fmt: skip
    if getattr(args, "compile", False):
        raise ConfigError(f"{flag}: a quantized base runs eagerly; leave out --compile")
    if not args.pretrained:
        raise ConfigError(f"{flag}: quantizes pretrained weights as they load; with --no-pretrained there are none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs bitsandbytes (the quantized extra), not installed: {QUANTIZED_EXTRA}")


def _check_training_kind(parsed: Parsed, args: argparse.Namespace, explicit: set[str]) -> None:
    """Options of one kind of training that another cannot use: a supernet's sampling with one fixed subnet, the
    sandwich rule's count with uniform sampling, distillation and a teacher for a causal LM."""
    if args.subnet:
        given = [d for d in SAMPLING_OPTIONS if d in explicit]
        if given:
            raise ConfigError(
                f"{_flags(given)}{parsed.set_by(given)}: how a supernet step samples its subnets; --subnet trains one "
                "fixed subnet, so they cannot apply: leave them out"
            )
    elif "sandwich_random" in explicit and args.sampling != "sandwich":
        raise ConfigError(
            f"--sandwich-random{parsed.set_by(['sandwich_random'])}: the random subnets of a sandwich step; this run "
            f"samples {args.sampling}: give --sampling sandwich or leave it out"
        )
    if get_source(args.dataset).task_type == "causal-lm":
        if args.distill and not args.subnet:
            raise ConfigError(
                f"--distill{parsed.set_by(['distill'])}: in-place distillation is for classification and regression; "
                "a causal LM trains on its labels: add --no-distill"
            )
        if args.teacher_weight:
            raise ConfigError("--teacher-weight is for classification and regression; a causal LM trains on its labels")


def backbone_from_args(args: argparse.Namespace, num_classes: int | None) -> BackboneSpec:
    """The backbone the options describe: a timm model for image data, a transformers model for text of the task
    type the dataset trains (a sequence classifier or regressor for --dataset text, a causal LM for --dataset
    instructions)."""
    source = get_source(args.dataset)
    if source.modality.family == "transformers":
        model = Path(args.model).expanduser()
        return BackboneSpec(  # a local folder as an absolute path: search and export may run from another folder
            model=str(model.resolve()) if model.is_dir() else args.model,
            num_classes=num_classes if source.task_type == "text-classification" else None,
            pretrained=args.pretrained,
            init_seed=args.seed,
            task_type=source.task_type,
            dtype=getattr(args, "dtype", "auto"),
            quantize=getattr(args, "quantize", None),
            double_quant=getattr(args, "double_quant", True),
        )
    kwargs: dict[str, Any] = dict(args.model_kwargs)
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.drop_path:
        kwargs["drop_path_rate"] = args.drop_path
    return BackboneSpec(
        model=args.model,
        num_classes=num_classes,
        pretrained=args.pretrained,
        pretrained_file=args.pretrained_file,
        model_kwargs=kwargs,
        init_seed=args.seed,
    )


def inputs_of(args: argparse.Namespace, configs: bool = True) -> list[tuple[str, str | None]]:
    """What a training run reads, as (option, path): the output folder must not overlap any of them."""
    found: list[tuple[str, str | None]] = [("--data-root", args.data_root), ("--pretrained-file", args.pretrained_file)]
    if str(args.model).startswith("local-dir:"):
        found.append(("--model", str(args.model).removeprefix("local-dir:")))
    elif is_transformers_model(str(args.model)) and Path(args.model).expanduser().is_dir():
        found.append(("--model", str(args.model)))
    for name in ("train_file", "validation_file", "test_file", "tokenizer"):
        value = getattr(args, name, None)
        if value and Path(value).expanduser().exists():
            found.append(("--" + name.replace("_", "-"), value))
    for name in ("init_from", "subnet"):
        found.append(("--" + name.replace("_", "-"), getattr(args, name, None)))
    if configs:
        found += [("--config", str(resolve_config(c))) for c in args.config]
    return found
