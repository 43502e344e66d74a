"""The options of ``glora-train`` / ``train_supernet.py``, and the objects they describe (data, backbone,
adapter, augmentation): the command reads as the steps of its job, the option names live here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glora.config import ALL_LINEAR, AdapterConfig
from glora.space import GIFT_SHARING, SearchSpace

from ..backbone import BIAS_FREE_OPTIONS, EMBEDDED_PREFIX, BackboneSpec
from ..data import DATASETS, TrainAugment
from ..data.sources import get_source
from ..data.sources.options import add_option_groups, option_names
from ..data.transforms import ERASE_MODES, TRAIN_INTERPOLATIONS
from ..evaluate import AMP_MODES
from ..hf_backbone import DTYPES, TASK_TYPES, is_transformers_model, require_text_packages
from ..sampling import MAX_SANDWICH_RANDOM, SAMPLINGS, Sampling
from ..tasks import METRICS
from ..trainer import SCHEDULES, UNUSED_SUPPORTS
from . import (
    ConfigError,
    add_progress_option,
    add_runtime_options,
    config_options,
    explicit_options,
    finite_float,
    make_parser,
    nonneg_float,
    nonneg_int,
    optional,
    parse_args,
    parse_choices,
    positive_float,
    positive_int,
    probability,
    program_name,
    resolve_config,
    support_choices,
    yaml_mapping,
)

__all__ = [
    "build_parser",
    "RESUMABLE_OPTIONS",
    "THIS_RUN_OPTIONS",
    "DEFAULT_MODEL",
    "adapter_from_args",
    "augment_from_args",
    "backbone_from_args",
    "check_applicable",
    "check_init_from",
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


# Options that may change when resuming (they do not alter what is computed); everything else comes from last.pt.
RESUMABLE_OPTIONS = {
    "epochs",
    "stop_after",
    "device",
    "workers",
    "progress",
    "resume",
    "force",
    "out",
    "compile",
    "compile_mode",
    "compile_backend",
    "execution",
    "fsdp",
    "data_on_device",
    "memory_check",
    "gradient_checkpointing",
}


# Options about this invocation only: a resumed run takes them from its own command line (or their defaults), never
# from the run it continues ("--stop-after N": N epochs in this run).
THIS_RUN_OPTIONS = {"stop_after"}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        program_name("train_supernet.py", "glora-train"),
        "Train a GLoRA supernet: a random subnet per step over a frozen backbone.",
    )
    _add_backbone_options(p)
    _add_space_options(p.add_argument_group("search space"))
    _add_data_options(p)
    _add_augment_options(p.add_argument_group("augmentation (timm train.py names; with --augment)"))
    _add_training_options(p.add_argument_group("training"))
    _add_sampling_options(p.add_argument_group("supernet sampling (which subnets a step trains)"))
    _add_runtime_options(p.add_argument_group("runtime"))
    _add_retrain_options(p.add_argument_group("a searched subnet (retraining the pick)"))
    _add_output_options(p.add_argument_group("output"))
    return p


# Options of a --init-from checkpoint a retraining run does not take over: where and how this run writes, and what it
# retrains (the rest, model, data, space and recipe, are its defaults).
_NOT_INHERITED = {
    "out", "resume", "force", "stop_after", "init_from", "subnet", "teacher_weight", "config", "debug", "progress"
}  # fmt: skip


def _add_retrain_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--subnet",
        default=None,
        metavar="YAML",
        help="train this subnet alone, as a fixed adapter (a subnet.yaml of glora-search): with --init-from, "
        "retrain the pick from its inherited weights; without, train it from scratch (a stand-alone score)",
    )
    g.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="a supernet checkpoint (last.pt) whose trained tensors this run starts from; its options (model, data, "
        "space, recipe) are this run's defaults, so only what changes is given (--epochs, --lr, ...)",
    )
    g.add_argument(
        "--teacher-weight",
        type=probability,
        default=0.0,
        metavar="W",
        help="with --subnet and --init-from: the pick also learns the outputs of the supernet's largest subnet "
        "(frozen as loaded; knowledge distillation), loss = (1 - W) * labels' + W * teacher's (0: labels only)",
    )


# How a supernet step samples its subnets: they cannot apply to a run that trains one fixed subnet (--subnet), so
# such a run refuses them and never inherits them from --init-from.
SAMPLING_OPTIONS = ("sampling", "sandwich_random", "param_limit", "min_param_limit", "distill")


def parse_train_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args`` with one more layer of defaults under the ``-c`` files: the options of the ``--init-from``
    checkpoint (a fresh run only; a resumed one keeps its own)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--init-from", default=None)
    pre.add_argument("--subnet", default=None)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.init_from and not known.resume:
        parser.set_defaults(**inherited_options(parser, known.init_from, retraining=known.subnet is not None))
    return parse_args(parser, argv)


def inherited_options(parser: argparse.ArgumentParser, path: str, retraining: bool = False) -> dict[str, Any]:
    """The options a supernet checkpoint was trained with, as this parser's defaults (names it does not know, and
    :data:`_NOT_INHERITED`, left out; ``retraining`` one subnet: the supernet's sampling too)."""
    from ..checkpoint import read_checkpoint

    saved = read_checkpoint(path).get("config") or {}
    dests = {a.dest for a in parser._actions}
    skip = _NOT_INHERITED | (set(SAMPLING_OPTIONS) if retraining else set())
    out = {}
    for key, value in saved.items():
        dest = str(key).replace("-", "_")
        if dest in dests and dest not in skip:
            out[dest] = value
    return out


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


def _add_backbone_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="timm name (e.g. vit_base_patch16_224.orig_in21k), hf-hub:<repo>, local-dir:<folder> or "
        "embedded:<name> (a backbone shipped with glora: embedded:digits-vit); or a transformers model: a "
        "save_pretrained folder or a hub id owner/name",
    )
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True, help="load the model's pretrained weights"
    )
    g.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="recompute the backbone's block activations in the backward instead of keeping them (less memory, "
        "about a third more compute; the same results)",
    )
    g.add_argument(
        "--support-dtype",
        choices=tuple(SUPPORT_DTYPE_OPTIONS),
        default="fp32",
        help="the trained tensors (supports, GIFT generators): fp32 keeps them and AdamW's state in full precision "
        "over a bf16/fp16 --dtype backbone; same = the frozen weights' dtype",
    )
    g = p.add_argument_group("timm models")
    g.add_argument("--pretrained-file", default=None, help="load pretrained weights from this local file (offline)")
    g.add_argument("--img-size", type=optional(positive_int), default=None, help="input size, if not the model's")
    g.add_argument("--drop-path", type=probability, default=0.0, help="stochastic depth rate of the backbone")
    g.add_argument(
        "--model-kwargs",
        type=yaml_mapping,
        default={},
        help="more timm.create_model arguments as a YAML/JSON mapping, e.g. '{embed_dim: 32, depth: 2}'",
    )
    g = p.add_argument_group("transformers models")
    g.add_argument(
        "--dtype", choices=tuple(DTYPES), default="auto", help="the frozen weights' dtype (auto: the checkpoint's)"
    )
    g.add_argument(
        "--task-type",
        choices=TASK_TYPES,
        default=None,
        help="deprecated: the --dataset decides it (text: text-classification, instructions: causal-lm)",
    )


def _add_space_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--lora-ranks", type=positive_int, nargs="*", default=[8, 4], help="LoRA ranks (paper: 8 4 | 4 2 | 2)"
    )
    g.add_argument("--gift-ranks", type=positive_int, nargs="*", default=[], help="GIFT ranks offered to A")
    g.add_argument("--gift-sharing", choices=GIFT_SHARING, default="type", help="which layers share a GIFT generator")
    g.add_argument(
        "--bias-free",
        choices=BIAS_FREE_OPTIONS,
        default="auto",
        help="layers without a bias (Llama-style projections): allow = every choice (C and E then add a bias, which "
        "the export declares with the config's attention_bias / mlp_bias); exclude = C, D, E only none there, so the "
        "export keeps the architecture's keys; auto = allow where the model's bias flags can hold every such bias, "
        "else exclude",
    )
    g.add_argument(
        "--choices",
        type=support_choices,
        nargs="+",
        default=None,
        metavar="SUPPORT=NAMES",
        help="narrow the space per support, e.g. A=none B=lora_8 C=none D=none E=none (LoRA r=8); one choice per "
        "support trains a fixed adapter (presets: -c methods/lora, ...); unnamed supports keep every choice",
    )
    g.add_argument(
        "--targets",
        nargs="+",
        default=None,
        help="layer-name suffixes to adapt, spaced or comma-separated (q_proj,v_proj); default / all-linear: every "
        "linear layer but the heads and the output layer",
    )
    g.add_argument("--targets-regex", default=None, help="regex the whole layer name must match (instead of --targets)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="where the data come from: digits (embedded), vtab, fewshot (FGVC lists), folder (images); text "
        "(classification / regression files), instructions (causal-LM instruction data); each dataset's own "
        "options are in the groups below, and an option of another dataset is refused",
    )
    g.add_argument("--workers", type=nonneg_int, default=2, help="data-loading workers when images are not cached")
    add_option_groups(p, [(name, get_source(name).Options) for name in DATASETS])
    g = p.add_argument_group("image inputs (image datasets)")
    g.add_argument(
        "--mean",
        type=finite_float,
        nargs="+",
        default=None,
        metavar="MEAN",
        help="normalisation mean per channel (or one for all); default: the model's (VTAB presets: ImageNet's)",
    )
    g.add_argument(
        "--std",
        type=positive_float,
        nargs="+",
        default=None,
        metavar="STD",
        help="normalisation std per channel (or one for all); default: the model's (VTAB presets: ImageNet's)",
    )


def _add_augment_options(g: argparse._ArgumentGroup) -> None:
    # The defaults as declared (not an instance: its check of the policy would import timm for every --help)
    ref = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(TrainAugment)})
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="augment training images with timm's create_transform (the options below; images are then read "
        "from files every epoch); off = the VTAB-1k recipe",
    )
    g.add_argument("--aa", type=optional(str), default=ref.aa, help="timm auto-augment policy (none: off)")
    g.add_argument("--color-jitter", type=nonneg_float, default=ref.color_jitter, help="color jitter strength")
    g.add_argument("--reprob", type=probability, default=ref.reprob, help="random erasing probability")
    g.add_argument("--remode", choices=ERASE_MODES, default=ref.remode, help="random erasing mode")
    g.add_argument("--recount", type=positive_int, default=ref.recount, help="random erasing count")
    g.add_argument("--scale", type=positive_float, nargs=2, default=list(ref.scale), help="random resized crop scale")
    g.add_argument("--ratio", type=positive_float, nargs=2, default=list(ref.ratio), help="random resized crop ratio")
    g.add_argument("--hflip", type=probability, default=ref.hflip, help="horizontal flip probability")
    g.add_argument("--vflip", type=probability, default=ref.vflip, help="vertical flip probability")
    g.add_argument(
        "--train-interpolation",
        choices=TRAIN_INTERPOLATIONS,
        default=ref.train_interpolation,
        help="interpolation of the training crop",
    )


def augment_from_args(args: argparse.Namespace) -> TrainAugment | None:
    """The training augmentation the options describe (None without ``--augment``)."""
    if not getattr(args, "augment", False):
        return None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainAugment)}  # same names as the options
    return TrainAugment(**values | {"scale": tuple(args.scale), "ratio": tuple(args.ratio)})


def _add_training_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=positive_int, default=120, help="supernet epochs (paper VTAB-1k: 500)")
    g.add_argument(
        "--batch-size", type=positive_int, default=64, help="images or sequences per step (all processes together)"
    )
    g.add_argument("--lr", type=positive_float, default=5e-3, help="peak learning rate (paper VTAB-1k: 5e-4 or 1e-4)")
    g.add_argument("--weight-decay", type=nonneg_float, default=1e-4, help="AdamW weight decay")
    g.add_argument(
        "--sched",
        choices=SCHEDULES,
        default="cosine",
        help="learning-rate decay after the warmup (timm's name): cosine (the paper's), or linear to --min-lr "
        "(transformers' linear schedule, the GLUE recipes')",
    )
    g.add_argument(
        "--sched-on-updates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step the schedule every update (timm's name); --no-sched-on-updates: once per epoch, after it, as the "
        "reference code does (its one-epoch lag included: the first two epochs run at --warmup-lr)",
    )
    g.add_argument(
        "--drop-last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="drop each epoch's last incomplete batch (the reference code does: 12 steps on 800 images at 64)",
    )
    g.add_argument("--warmup-epochs", type=nonneg_float, default=2.0, help="linear warmup before the schedule")
    g.add_argument("--warmup-lr", type=nonneg_float, default=1e-6, help="learning rate the warmup starts from")
    g.add_argument("--min-lr", type=nonneg_float, default=1e-6, help="learning rate the schedule ends at")
    g.add_argument("--smoothing", type=probability, default=0.0, help="label smoothing")
    g.add_argument("--clip-grad", type=optional(positive_float), default=None, help="max gradient norm")
    g.add_argument("--amp", choices=AMP_MODES, default="auto", help="auto: bf16 autocast on CUDA only")
    g.add_argument(
        "--unused-supports",
        choices=UNUSED_SUPPORTS,
        default="skip",
        help="supports a step's subnet does not use: skip = AdamW leaves them untouched; update = zero gradients, "
        "so AdamW still applies momentum and weight decay (the paper's reference code)",
    )
    g.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default=None,
        help="the validation metric that ranks subnets (default: accuracy; regression pearson; causal LM loss); "
        "every metric of the task is reported",
    )
    g.add_argument("--seed", type=nonneg_int, default=0, help="seeds the head init, data order and subnet sampling")


def _add_sampling_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default="uniform",
        help="uniform: one subnet per step, every choice drawn uniformly (the paper's); sandwich: the largest, the "
        "smallest and --sandwich-random random subnets per step, gradients averaged (BigNAS)",
    )
    g.add_argument(
        "--sandwich-random",
        type=nonneg_int,
        default=2,
        help=f"random subnets per sandwich step, besides the two ends (0-{MAX_SANDWICH_RANDOM})",
    )
    g.add_argument(
        "--param-limit",
        type=optional(positive_float),
        default=None,
        help="millions of params (the paper's count): random subnets are drawn among those the search's "
        "--param-limit will allow (default: the whole space)",
    )
    g.add_argument(
        "--min-param-limit", type=nonneg_float, default=0.0, help="millions: and among those at least this large"
    )
    g.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="in-place distillation (with --sampling sandwich): the largest subnet learns the labels, the others "
        "its outputs",
    )


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The supernet sampling the options describe (older runs' options lack them: the paper's uniform draw)."""
    names = ("sampling", "sandwich_random", "param_limit", "min_param_limit", "distill")
    return Sampling(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def _add_runtime_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_runtime_options(g)


def _add_output_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refuse a supernet whose training state (values, gradients, AdamW) exceeds the free memory",
    )
    g.add_argument("--out", default="runs/default/supernet", help="output folder (last.pt, log.jsonl, config.yaml)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    g.add_argument("--force", action="store_true", help="start over even if <out> already holds a checkpoint")
    g.add_argument(
        "--stop-after",
        type=optional(positive_int),
        default=None,
        help="stop (resumably) after this many epochs in this run, e.g. to fit a job time limit",
    )
    add_progress_option(g)


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
TIMM_ONLY = ("pretrained_file", "img_size", "drop_path", "model_kwargs")
TRANSFORMERS_ONLY = ("dtype", "task_type")
IMAGE_ONLY = ("mean", "std", "augment", *(f.name for f in dataclasses.fields(TrainAugment)))


def _flags(dests: Sequence[str]) -> str:
    return ", ".join("--" + d.replace("_", "-") for d in dests)


def _set_by(parser: argparse.ArgumentParser, argv: Sequence[str] | None, dests: Sequence[str]) -> str:
    """Where options came from when a ``-c`` file set them (" (set by -c protocols/recommended)"), else ""."""
    typed = explicit_options(parser, argv)
    files = [c for c in _config_files(argv) if any(d not in typed and d in _keys(c) for d in dests)]
    return f" (set by {', '.join('-c ' + c for c in files)})" if files else ""


def _config_files(argv: Sequence[str] | None) -> list[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", action="append", default=[])
    return pre.parse_known_args(argv)[0].config


def _keys(config: str) -> set[str]:
    from . import read_yaml

    return {str(k).replace("-", "_") for k in read_yaml(config)}


def check_applicable(parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace) -> None:
    """Refuse, in one line, options set for a dataset or a kind of model the run does not use (``--crop-pct`` with
    ``--dataset text``, ``--drop-path`` with a transformers model), options that cannot apply to this run
    (``--sampling`` with ``--subnet``, ``--distill`` for a causal LM), and a model that cannot read the data. Only
    what the command line and its ``-c`` files set counts; defaults never do."""
    explicit = explicit_options(parser, argv) | config_options(parser, argv)
    _check_training_kind(parser, argv, args, explicit)
    source = get_source(args.dataset)
    own = set(option_names(source.Options))
    hf = is_transformers_model(str(args.model))
    text = source.modality == "text"
    if hf or text:
        try:
            require_text_packages()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if hf != text:
        raise ConfigError(
            f"--model {args.model!r} is a transformers model; it trains on --dataset text or instructions"
            if hf
            else f"--dataset {args.dataset} needs a transformers --model (save_pretrained folder or hub id), not "
            f"{args.model!r}"
        )
    every = {n for d in DATASETS for n in option_names(get_source(d).Options)}
    owners = {n: [d for d in DATASETS if n in option_names(get_source(d).Options)] for n in every}
    foreign = sorted(d for d in explicit if d in owners and d not in own)
    if foreign:
        users = sorted({u for d in foreign for u in owners[d]}, key=DATASETS.index)
        raise ConfigError(
            f"{_flags(foreign)}: not an option of --dataset {args.dataset} (used by --dataset {', '.join(users)}); "
            f"its options: {_flags(option_names(source.Options)) or 'none'}"
        )
    other = sorted(d for d in explicit if d in (TIMM_ONLY if hf else TRANSFORMERS_ONLY))
    if other:
        kind, model_kind = ("timm", "a transformers") if hf else ("transformers", "a timm")
        raise ConfigError(f"{_flags(other)}: for {kind} models only; --model {args.model} is {model_kind} model")
    images = sorted(d for d in explicit if d in IMAGE_ONLY)
    if images and source.modality != "images":
        raise ConfigError(f"{_flags(images)}: for image data only; --dataset {args.dataset} holds {source.modality}")
    if "task_type" in explicit:
        wanted = source.task_type
        if args.task_type != wanted:
            raise ConfigError(
                f"--task-type {args.task_type} does not fit --dataset {args.dataset}: it trains a {wanted} model"
            )
        _logger.warning("--task-type is deprecated: --dataset %s decides it (%s)", args.dataset, wanted)


def _check_training_kind(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace, explicit: set[str]
) -> None:
    """Options of one kind of training that another cannot use: a supernet's sampling with one fixed subnet, the
    sandwich rule's count with uniform sampling, distillation and a teacher for a causal LM."""
    if args.subnet:
        given = [d for d in SAMPLING_OPTIONS if d in explicit]
        if given:
            raise ConfigError(
                f"{_flags(given)}{_set_by(parser, argv, given)}: how a supernet step samples its subnets; --subnet "
                "trains one fixed subnet, so they cannot apply: leave them out"
            )
    elif "sandwich_random" in explicit and args.sampling != "sandwich":
        raise ConfigError(
            f"--sandwich-random{_set_by(parser, argv, ['sandwich_random'])}: the random subnets of a sandwich step; "
            f"this run samples {args.sampling}: give --sampling sandwich or leave it out"
        )
    if get_source(args.dataset).task_type == "causal-lm":
        if args.distill and not args.subnet:
            raise ConfigError(
                f"--distill{_set_by(parser, argv, ['distill'])}: in-place distillation is for classification and "
                "regression; a causal LM trains on its labels: add --no-distill"
            )
        if args.teacher_weight:
            raise ConfigError("--teacher-weight is for classification and regression; a causal LM trains on its labels")


def backbone_from_args(args: argparse.Namespace, num_classes: int | None) -> BackboneSpec:
    """The backbone the options describe: a timm model for image data, a transformers model for text of the task
    type the dataset trains (a sequence classifier or regressor for --dataset text, a causal LM for --dataset
    instructions)."""
    source = get_source(args.dataset)
    if source.modality == "text":
        model = Path(args.model).expanduser()
        return BackboneSpec(  # a local folder as an absolute path: search and export may run from another folder
            model=str(model.resolve()) if model.is_dir() else args.model,
            num_classes=num_classes if source.task_type == "text-classification" else None,
            pretrained=args.pretrained,
            init_seed=args.seed,
            task_type=source.task_type,
            dtype=getattr(args, "dtype", "auto"),
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
    for option in ("train_file", "validation_file", "test_file", "tokenizer"):
        value = getattr(args, option, None)
        if value and Path(value).expanduser().exists():
            found.append(("--" + option.replace("_", "-"), value))
    for option in ("init_from", "subnet"):
        found.append(("--" + option.replace("_", "-"), getattr(args, option, None)))
    if configs:
        found += [("--config", str(resolve_config(c))) for c in args.config]
    return found
