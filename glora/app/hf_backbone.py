"""Hugging Face transformers backbones: a ``save_pretrained`` folder or a hub id, loaded for a task type.

The image backbones (timm) live in :mod:`glora.app.backbone`; this module is the text side beside it, chosen by
:func:`is_transformers_model` and built by :func:`build_transformers`. A model is loaded with the ``AutoModelFor...``
class of its task type: ``text-classification`` (a new classifier head with ``num_classes`` labels, trained in
full) or ``causal-lm`` (the pretrained ``lm_head``, never adapted). Hub ids resolve through the local Hugging Face
cache when the machine is offline. ``pretrained=False`` builds a seeded random model from the config alone, for
tests and smoke runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._text import first_line

__all__ = [
    "TEXT_EXTRA",
    "require_text_packages",
    "TASK_TYPES",
    "QUANTIZE_OPTIONS",
    "QUANTIZED_EXTRA",
    "quantization_config",
    "restore_layer_classes",
    "DTYPES",
    "is_transformers_model",
    "infer_task_type",
    "build_transformers",
    "TokenModel",
    "check_causal",
    "unwrap",
    "SequenceClassifier",
    "classification_heads",
    "position_limit",
    "CausalLM",
    "BIAS_FLAGS",
    "bias_flags_for",
    "declare_biases",
    "export_transformers_folder",
    "reload_transformers_folder",
    "transformers_bars",
]

_logger = logging.getLogger(__name__)

TASK_TYPES = ("text-classification", "causal-lm")
# --dtype of the frozen weights ("auto": the checkpoint's own, as transformers' torch_dtype="auto").
DTYPES = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# --quantize: bitsandbytes' 4-bit schemes and its 8-bit one (glora.quantized adapts their layers).
QUANTIZE_OPTIONS = ("nf4", "fp4", "int8")
QUANTIZED_EXTRA = "pip install 'glora-toolkit[quantized]'"

# Architecture-name endings (config.json "architectures") that say the task type.
_ENDINGS = {
    "ForCausalLM": "causal-lm",
    "LMHeadModel": "causal-lm",
    "ForSequenceClassification": "text-classification",
}


def _local_config(name: str) -> dict[str, Any] | None:
    """The folder's config.json when ``name`` is a folder holding one, else None."""
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {str(path)!r}: {e}") from None
    return data if isinstance(data, dict) else None


def is_transformers_model(name: str) -> bool:
    """A transformers model: a folder whose config.json has a ``model_type`` (timm's exports have none), or a hub
    id ``owner/name`` that is not a folder here (timm names never hold a ``/``; ``hf-hub:`` stays timm's)."""
    if name.startswith(("hf-hub:", "local-dir:", "embedded:")):
        return False
    config = _local_config(name)
    if config is not None:
        return "model_type" in config
    if Path(name).expanduser().exists():
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


# What language models need beyond the core install, and the line that installs it.
TEXT_PACKAGES = ("transformers", "datasets")
TEXT_EXTRA = "pip install 'glora-toolkit[text]'"


def require_text_packages(what: str = "language models") -> None:
    """``ValueError`` naming the install command when the text extra's packages are missing: one line, not an
    ``ImportError`` from deep inside a run."""
    missing = [name for name in TEXT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"{what} need {' and '.join(missing)} (the text extra), not installed: {TEXT_EXTRA}")


def quantization_config(quantize: str, *, double_quant: bool, compute_dtype: torch.dtype, skip: Sequence[str] = ()):
    """transformers' ``BitsAndBytesConfig`` for ``--quantize`` (``skip``: module names kept in floating point: the
    task's new head trains in full); one line naming the extra to install when bitsandbytes is missing."""
    if quantize not in QUANTIZE_OPTIONS:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_OPTIONS)}; got {quantize!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--quantize {quantize} needs bitsandbytes (the quantized extra), not installed: "
                         f"{QUANTIZED_EXTRA}")  # fmt: skip
    from transformers import BitsAndBytesConfig

    from glora.quantized import quiet_optional_kernel_warning

    quiet_optional_kernel_warning()
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip) or None)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=list(skip) or None,  # (transformers reads this list for 4-bit too)
    )


def infer_task_type(architectures: list[str] | None) -> str | None:
    """The task type the config's ``architectures`` name, or None when they name none (or more than one)."""
    found = {task for arch in architectures or () for end, task in _ENDINGS.items() if arch.endswith(end)}
    return found.pop() if len(found) == 1 else None


def _config(name: str):
    require_text_packages()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except OSError as e:  # offline and not in the cache, or no such repository
        first = first_line(e)
        raise ValueError(
            f"cannot read the transformers config of {name!r} ({first}); offline, give a folder written by "
            "save_pretrained, or a hub id already in the local Hugging Face cache"
        ) from None


def build_transformers(
    name: str,
    *,
    task_type: str | None,
    num_classes: int | None,
    pretrained: bool = True,
    dtype: str = "auto",
    init_seed: int | None = None,
    quantize: str | None = None,
    double_quant: bool = True,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The ``AutoModelFor...`` of ``task_type`` (inferred from the config when None and unambiguous). ``quantize``:
    the frozen weights loaded quantized by bitsandbytes, straight onto ``device`` (a quantized model is not moved
    after loading); the task's new head stays in floating point, as it trains in full."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    config = _config(name)
    task = task_type or infer_task_type(getattr(config, "architectures", None))
    if task is None:
        raise ValueError(
            f"cannot tell the task type of {name!r} from its config (architectures: "
            f"{getattr(config, 'architectures', None)}); give --task-type {' or '.join(TASK_TYPES)}"
        )
    if task not in TASK_TYPES:
        raise ValueError(f"task type must be one of {', '.join(TASK_TYPES)}; got {task!r}")
    import transformers

    kwargs: dict[str, Any] = {}  # from_pretrained only
    if task == "text-classification":
        if not num_classes:
            raise ValueError("a text-classification backbone needs the number of classes (labels) of the data")
        config.num_labels = num_classes
        # One output is a regression (STS-B); saying so keeps transformers' own loss right for the export's users.
        config.problem_type = "regression" if num_classes == 1 else "single_label_classification"
        if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
            eos = config.eos_token_id
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # decoders find the last token by it
        auto = transformers.AutoModelForSequenceClassification
        # A checkpoint's own classifier of another size (another label set) is replaced by a new one.
        kwargs["ignore_mismatched_sizes"] = True
    else:
        auto = transformers.AutoModelForCausalLM
    torch_dtype = DTYPES[dtype]
    if quantize is not None:
        if not pretrained:
            raise ValueError(f"--quantize {quantize} quantizes pretrained weights as they load; with --no-pretrained "
                             "there are none: leave out --quantize")  # fmt: skip
        compute = torch_dtype if torch_dtype != "auto" else _config_dtype(config)
        heads = _NEW_HEADS if task == "text-classification" else ()
        kwargs["quantization_config"] = quantization_config(
            quantize, double_quant=double_quant, compute_dtype=compute, skip=heads
        )
        kwargs["device_map"] = {"": str(torch.device(device))}
    with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
        if init_seed is not None:
            torch.manual_seed(init_seed)  # the new classifier's init (everything, without pretrained weights)
        try:
            if pretrained:
                model = _from_pretrained(auto, name, config=config, dtype=torch_dtype, **kwargs)
            else:
                model = auto.from_config(config)
                if torch_dtype != "auto":
                    model = model.to(torch_dtype)
        except (OSError, ValueError) as e:
            first = first_line(e)
            raise ValueError(f"cannot load the transformers model {name!r} for {task}: {first}") from None
    if quantize is not None:
        from glora.quantized import keep_trainable_layout

        keep_trainable_layout(model)  # before any eval pass: bitsandbytes' CPU repacking would stop the gradients
    if task == "causal-lm":
        check_causal(model, name)
    return model


def _config_dtype(config) -> torch.dtype:
    """The dtype a config's checkpoint stores (transformers' ``dtype``, formerly ``torch_dtype``), float32 when it
    says none: the compute dtype of a 4-bit model loaded with --dtype auto."""
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    return found if isinstance(found, torch.dtype) and found.is_floating_point else torch.float32


def check_causal(model: nn.Module, name: str) -> None:
    """A causal LM must not let a position see the tokens after it (an encoder such as BERT would learn to copy the
    token it predicts): two sequences that share only their first token must give the same logits there."""
    weights = next(model.parameters(), None)
    if weights is None or weights.is_meta:
        return
    vocab = model.get_input_embeddings().num_embeddings
    ids = (torch.arange(1, 9, device=weights.device) % vocab).unsqueeze(0)
    other = ids.clone()
    other[0, 1:] = (ids[0, 1:] * 3 + 1) % vocab
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a, b = model(input_ids=ids).logits[0, 0].float(), model(input_ids=other).logits[0, 0].float()
    finally:
        model.train(training)
    if float((a - b).abs().max()) > 1e-5 * float(a.abs().max().clamp(min=1.0)):
        raise ValueError(
            f"{name!r} ({type(model).__name__}) is not a causal (decoder) model: its positions see later tokens, "
            "so it cannot learn instructions; give a decoder (Llama, GPT-2, Qwen, ...) for --dataset instructions"
        )


# The heads a task model gets new (another task or label set than the checkpoint's): missing from it by design.
_NEW_HEADS = ("classifier", "score")


def _from_pretrained(auto, name: str, **kwargs) -> nn.Module:
    """``from_pretrained`` without transformers' load table and progress bar on every command: a new task head
    missing from the checkpoint is expected (noted at INFO); any other missing weight is a WARNING naming them."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = auto.from_pretrained(name, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or ())
    head = [k for k in missing if k.split(".", 1)[0] in _NEW_HEADS]
    other = [k for k in missing if k not in head]
    if head:
        _logger.info("new task head (not in %s's checkpoint, trained by this run): %s", name, ", ".join(head))
    resized = [k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys") or ()]
    if resized:
        _logger.info("replaced by a new one of this task's size: %s", ", ".join(map(str, resized)))
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        _logger.warning("%d weights missing from %s's checkpoint, newly initialised: %s", len(other), name, shown)
    if info.get("unexpected_keys"):
        _logger.info("%d weights of the checkpoint unused by this model", len(info["unexpected_keys"]))
    return model


class TokenModel(nn.Module):
    """A transformers model as the commands run it: the tokenizer's fields in by name (``input_ids``,
    ``attention_mask``, ``token_type_ids``, ...), logits out. A field the model's ``forward`` does not take (a
    tokenizer's ``token_type_ids`` for a model without segments) is left out, once noted in the log; batches come
    trimmed to their longest row (:class:`glora.app.data.TextSet`), so the forward never reads the mask's values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._takes: frozenset[str] | None = None  # the inner forward's named arguments; None: any (**kwargs only)
        self._dropped: set[str] = set()

    def get_output_embeddings(self) -> nn.Module | None:
        """The wrapped model's output layer (a causal LM's ``lm_head``), so injection finds and skips it."""
        get = getattr(self.model, "get_output_embeddings", None)
        return get() if callable(get) else None

    def accepts(self, name: str) -> bool:
        """Whether the transformers model's ``forward`` takes the input field ``name``."""
        if self._takes is None:
            import inspect

            params = inspect.signature(self.model.forward).parameters.values()
            named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            self._takes = frozenset(named)
        return name in self._takes

    def forward(self, input_ids: torch.Tensor, **fields: torch.Tensor) -> torch.Tensor:
        taken = {k: v for k, v in fields.items() if self.accepts(k)}
        for name in fields.keys() - taken.keys() - self._dropped:
            self._dropped.add(name)
            _logger.info("%s's forward takes no %r: the tokenizer's field is left out", type(self.model).__name__, name)
        return self.model(input_ids=input_ids, **taken).logits


class SequenceClassifier(TokenModel):
    """A sequence classifier (or, with one output, regressor): logits (B, classes).

    The head is every module the task class adds beside its base model (``base_model_prefix``): RoBERTa's and
    BERT's ``classifier``, GPT-2's and Llama's ``score``, BART's ``classification_head``, DistilBERT's
    ``pre_classifier`` and ``classifier``, DeBERTa's ``pooler`` and ``classifier``; none of them is in a base
    checkpoint, so all are new and train in full (PEFT's ``modules_to_save``). They are named in
    ``pretrained_cfg["classifier"]`` (as timm models name theirs), so :func:`glora.inject` never adapts them.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        heads = classification_heads(model)
        if not heads:
            raise ValueError(f"{type(model).__name__} has no classification layer beside its base model to train")
        self.pretrained_cfg = {"classifier": [f"model.{h}" for h in heads]}


def classification_heads(model: nn.Module) -> list[str]:
    """The children of a transformers task model that hold parameters outside its base model."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):  # (no base model to tell apart)
        return [h for h in ("classifier", "score") if isinstance(getattr(model, h, None), nn.Module)]
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def position_limit(model: nn.Module) -> tuple[int | None, bool]:
    """The longest sequence a transformers model was built for (``max_position_embeddings``, ``n_positions``), and
    whether it is a hard limit: a learned position table of that size (BERT, GPT-2, OPT) fails beyond it, where
    rotary positions (Llama) only leave the trained context. ``(None, False)`` when the config does not say."""
    inner = _inner(model)[0]
    config = getattr(inner, "config", None)
    limit = next(
        (v for k in ("max_position_embeddings", "n_positions") if isinstance(v := getattr(config, k, None), int)),
        None,
    )
    if limit is None:
        return None, False
    tables = [
        m
        for name, m in inner.named_modules()
        if isinstance(m, nn.Embedding) and _is_position_table(name) and m.num_embeddings <= limit + 2
    ]
    if not tables:
        return limit, False
    # Rows before the first position: RoBERTa's padding_idx + 1, OPT's and BART's offset of 2.
    m = tables[0]
    skip = m.padding_idx + 1 if m.padding_idx is not None else int(getattr(m, "offset", 0) or 0)
    return min(limit, m.num_embeddings - skip), True


def _is_position_table(name: str) -> bool:
    last = name.rsplit(".", 1)[-1].lower()
    return "pos" in last or last == "wpe"  # position_embeddings, embed_positions; GPT-2's wpe


class CausalLM(TokenModel):
    """A causal language model: logits (B, n, vocabulary) for a batch of n tokens. Its ``lm_head`` is the pretrained
    one, frozen and never adapted; only the GLoRA supports train."""


# Config flags that give a family of bias-free projections a bias: Llama-style attention_bias / mlp_bias, Falcon's
# bias, Ernie's use_bias, StableLM's use_qkv_bias, ModernBERT's classifier_bias (its head's dense layer). A flag is
# only used where turning it on gives the architecture exactly the keys a subnet needs (checked on the meta device).
BIAS_FLAGS = (
    "attention_bias",
    "mlp_bias",
    "bias",
    "use_bias",
    "qkv_bias",
    "use_qkv_bias",
    "attention_out_bias",
    "classifier_bias",
)


def _keys_with(cls: type, config, flags: dict[str, bool]) -> set[str]:
    """The state-dict keys of model class ``cls`` built from ``config`` with ``flags`` set, on the meta device (no
    memory, no init)."""
    import copy

    changed = copy.deepcopy(config)
    for flag, value in flags.items():
        setattr(changed, flag, value)
    with torch.device("meta"):
        return set(cls(changed).state_dict())


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside the commands' wrapper (:class:`TokenModel`), or ``model`` itself."""
    return model.model if isinstance(model, TokenModel) else model


def _inner(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside the commands' wrapper, and the prefix its names carry there."""
    return unwrap(model), "model." if isinstance(model, TokenModel) else ""


def _covering_flags(inner: nn.Module, wanted: set[str]) -> tuple[tuple[str, ...], set[str]] | None:
    """The fewest of the config's off bias flags whose architecture has every state-dict key in ``wanted``, and the
    keys those flags add; None when no such flags exist."""
    import itertools

    config = getattr(inner, "config", None)
    available = [f for f in BIAS_FLAGS if getattr(config, f, None) is False]
    base = _keys_with(type(inner), config, {}) if available else set()
    for n in range(1, len(available) + 1):
        for flags in itertools.combinations(available, n):
            added = _keys_with(type(inner), config, dict.fromkeys(flags, True)) - base
            if wanted <= base | added and all(k.endswith(".bias") for k in added):  # flags that only add biases
                return flags, added
    return None


def bias_flags_for(model: nn.Module, layers: list[str]) -> tuple[str, ...] | None:
    """The bias flags (``attention_bias``, ``mlp_bias``) a transformers ``model`` would have to turn on so that
    every named bias-free layer may have a bias: ``()`` for no layers, None when no flag of its class covers them
    (Mistral, Qwen2 and Phi-3 have none; Qwen3 and Gemma only ``attention_bias``), or when it is no transformers
    model. Decides ``--bias-free auto`` before the supernet is built."""
    if not layers:
        return ()
    inner, prefix = _inner(model)
    if getattr(inner, "config", None) is None or not hasattr(inner, "save_pretrained"):
        return None
    found = _covering_flags(inner, {f"{n.removeprefix(prefix)}.bias" for n in layers})
    return None if found is None else found[0]


def declare_biases(model: nn.Module, extra: list[str]) -> list[str]:
    """Make a folded transformers model whose subnet gave bias-free layers a bias (``extra``: the new state-dict
    keys) loadable by its plain architecture: turn on the fewest of the config's bias flags (``attention_bias``,
    ``mlp_bias``) whose architecture holds every new key, and give the other layers the flag adds a zero bias (the
    same function). Returns the flags turned on; ``ValueError`` when no flag of this model class covers the keys.
    """
    inner, prefix = _inner(model)
    wanted = {k.removeprefix(prefix) for k in extra}
    config = inner.config
    found = _covering_flags(inner, wanted)
    if found is None:
        available = [f for f in BIAS_FLAGS if getattr(config, f, None) is False]
        shown = ", ".join(sorted(wanted)[:3]) + (", ..." if len(wanted) > 3 else "")
        flags_txt = (
            f"its bias flags ({', '.join(available)}) do not cover them" if available else "it has no bias flags"
        )
        raise ValueError(
            f"the subnet gives bias-free layer(s) a bias ({shown}) and {type(inner).__name__} has no place for it "
            f"({flags_txt}); choose C and E none there (or train with --bias-free exclude)"
        )
    flags, added = found
    modules = dict(inner.named_modules())
    own = set(inner.state_dict())
    for key in sorted(added - own):
        layer = modules[key.rsplit(".", 1)[0]]
        w = layer.weight
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    for flag in flags:
        setattr(config, flag, True)
    return list(flags)


@contextlib.contextmanager
def transformers_bars(progress: bool | None) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Writing model shards") on for the block only where the
    command's ``--progress`` says (None: only on a terminal), as the command's own bars are."""
    from transformers.utils import logging as hf_logging

    shown = sys.stderr.isatty() if progress is None else progress
    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if shown else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def export_transformers_folder(
    model: nn.Module, folder: Path, tokenizer: str | None, class_names: list[str] | None = None
) -> None:
    """``save_pretrained`` (safetensors) of a folded transformers model, with its tokenizer and, for a classifier,
    the class names as ``id2label`` / ``label2id``: a folder plain transformers loads without this toolkit."""
    inner = unwrap(model)
    if class_names:
        inner.config.id2label = dict(enumerate(class_names))
        inner.config.label2id = {name: i for i, name in enumerate(class_names)}
    inner.save_pretrained(folder, safe_serialization=True)
    if isinstance(model, SequenceClassifier):
        _keep_label_count(Path(folder) / "config.json", inner.config.num_labels)
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        if tok.pad_token is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token  # as training padded: batched pipelines need a pad token (GPT-2 has none)
        tok.save_pretrained(folder)


def restore_layer_classes(model: nn.Module, architecture: nn.Module) -> list[str]:
    """Give back transformers' ``Conv1D`` (GPT-2's linear layers, weights stored in x out) where a quantized load
    replaced it by a linear layer that folding or dequantizing then left as ``nn.Linear``: the weight transposed into
    the layout ``architecture`` (the same model built plain) holds, so the export loads as that architecture. Returns
    the names changed; a model without such layers is left as it is."""
    wanted = dict(architecture.named_modules())
    changed = []
    for name, module in list(model.named_modules()):
        target = wanted.get(name)
        if type(module) is not nn.Linear or target is None or type(target).__name__ != "Conv1D":
            continue
        with torch.device("meta"):
            conv = type(target)(module.out_features, module.in_features)  # Conv1D(nf=out, nx=in)
        conv.weight = nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
        bias = module.bias if module.bias is not None else module.weight.new_zeros(module.out_features)
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=module.weight.requires_grad)
        conv.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, conv)
        changed.append(name)
    return changed


def _keep_label_count(path: Path, num_labels: int) -> None:
    """transformers leaves two default labels (LABEL_0, LABEL_1) out of config.json, and a config class whose own
    default is another count (BART's 3) then reloads with a head of the wrong size: write them in."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if len(data.get("id2label") or {}) == num_labels:
        return
    data["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    data["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def reload_transformers_folder(folder: Path, like: nn.Module) -> nn.Module:
    """The exported folder loaded back with plain transformers, in the form of ``like`` (the commands' wrapper), for
    the after-writing check."""
    import transformers

    auto = (
        transformers.AutoModelForSequenceClassification
        if isinstance(like, SequenceClassifier)
        else transformers.AutoModelForCausalLM
    )
    model, info = auto.from_pretrained(folder, output_loading_info=True)
    odd = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if odd:  # a key the architecture does not have, or one it lacks, would be silently dropped or re-initialised
        shown = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, list(v)[:3]))}" for k, v in odd.items())
        raise ValueError(f"the export does not load cleanly into {type(model).__name__} ({shown})")
    return type(like)(model) if isinstance(like, TokenModel) else model
