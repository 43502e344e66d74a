"""Hugging Face transformers backbones: a ``save_pretrained`` folder or a hub id, loaded for a task type.

The image backbones (timm) live in :mod:`glora.app.backbone`; this module is the text side beside it, chosen by
:func:`is_transformers_model` and built by :func:`build_transformers`. A model is loaded with the ``AutoModelFor...``
class of its task type: ``text-classification`` (a new classifier head with ``num_classes`` labels, trained in
full) or ``causal-lm`` (the pretrained ``lm_head``, never adapted). Hub ids resolve through the local Hugging Face
cache when the machine is offline. ``pretrained=False`` builds a seeded random model from the config alone, for
tests and smoke runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glora._text import first_line

__all__ = [
    "TASK_TYPES",
    "DTYPES",
    "is_transformers_model",
    "infer_task_type",
    "build_transformers",
    "SequenceClassifier",
    "export_transformers_folder",
    "reload_transformers_folder",
]

TASK_TYPES = ("text-classification", "causal-lm")
# --dtype of the frozen weights ("auto": the checkpoint's own, as transformers' torch_dtype="auto").
DTYPES = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

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


def infer_task_type(architectures: list[str] | None) -> str | None:
    """The task type the config's ``architectures`` name, or None when they name none (or more than one)."""
    found = {task for arch in architectures or () for end, task in _ENDINGS.items() if arch.endswith(end)}
    return found.pop() if len(found) == 1 else None


def _config(name: str):
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
) -> nn.Module:
    """The ``AutoModelFor...`` of ``task_type`` (inferred from the config when None and unambiguous)."""
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

    kwargs: dict[str, Any] = {}
    if task == "text-classification":
        if not num_classes:
            raise ValueError("a text-classification backbone needs the number of classes (labels) of the data")
        config.num_labels = num_classes
        if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
            eos = config.eos_token_id
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos  # decoders find the last token by it
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModelForCausalLM
    torch_dtype = DTYPES[dtype]
    with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
        if init_seed is not None:
            torch.manual_seed(init_seed)  # the new classifier's init (everything, without pretrained weights)
        try:
            if pretrained:
                model = auto.from_pretrained(name, config=config, dtype=torch_dtype, **kwargs)
            else:
                model = auto.from_config(config, **kwargs)
                if torch_dtype != "auto":
                    model = model.to(torch_dtype)
        except (OSError, ValueError) as e:
            first = first_line(e)
            raise ValueError(f"cannot load the transformers model {name!r} for {task}: {first}") from None
    return model


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier as the commands run it: one int64 batch (B, 2, L) of token ids and
    attention mask (right-padded) in, logits out, each batch trimmed to its longest row first.

    The classification layer is named in ``pretrained_cfg["classifier"]`` (as timm models name theirs), so
    :func:`glora.inject` trains it in full and never adapts it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = next((h for h in ("classifier", "score") if isinstance(getattr(model, h, None), nn.Module)), None)
        if head is None:
            raise ValueError(f"{type(model).__name__} has no classifier or score layer to train")
        self.pretrained_cfg = {"classifier": f"model.{head}"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        n = max(int(mask.sum(1).max()), 1)
        return self.model(input_ids=ids[:, :n], attention_mask=mask[:, :n]).logits


def export_transformers_folder(
    model: nn.Module, folder: Path, tokenizer: str | None, class_names: list[str] | None = None
) -> None:
    """``save_pretrained`` (safetensors) of a folded transformers model, with its tokenizer and, for a classifier,
    the class names as ``id2label`` / ``label2id``: a folder plain transformers loads without this toolkit."""
    inner = model.model if isinstance(model, SequenceClassifier) else model
    if class_names:
        inner.config.id2label = dict(enumerate(class_names))
        inner.config.label2id = {name: i for i, name in enumerate(class_names)}
    inner.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)


def reload_transformers_folder(folder: Path, like: nn.Module) -> nn.Module:
    """The exported folder loaded back with plain transformers, in the form of ``like`` (the commands' wrapper for a
    classifier), for the after-writing check."""
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
    return SequenceClassifier(model) if isinstance(like, SequenceClassifier) else model
