"""The two named protocols (the paper's, the reference code's) value for value, and the training-loop semantics
the reference code's protocol needs: the schedule stepped per epoch with its one-epoch lag, the last incomplete
batch dropped."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glora.app.commands.train import build_parser
from glora.app.data import ImageModality, ImageSet, make_loader
from glora.app.options import parse_args
from glora.app.trainer import Recipe, Trainer

# (option, value, source): what each protocol must set on top of a VTAB-1k task preset.
PAPER = [
    ("lr", 5e-4, "GLoRA paper, Table 4 / Appendix A: 5e-4 for cifar (1e-4 for four tasks), via vtab/cifar"),
    ("sched_on_updates", True, "this toolkit's reading of Appendix A: the cosine schedule per update"),
    ("drop_last", False, "not stated by the paper: every image every epoch"),
    ("amp", "auto", "not stated by the paper: this toolkit's default, written out"),
    ("unused_supports", "skip", "not stated by the paper: this toolkit's default, written out"),
    ("lora_ranks", [8, 4], "GLoRA paper: the {8, 4} space, via vtab/cifar"),
]
REFERENCE_CODE = [
    ("lr", 1e-4, "reference code: default --lr and the README's command for every task"),
    ("sched_on_updates", False, "reference code: lr_scheduler.step(epoch) after each epoch"),
    ("drop_last", True, "reference code: its DataLoader drops the last batch"),
    ("amp", "off", "reference code: float32 training and evaluation"),
    ("unused_supports", "update", "reference code: zero_grad() zero-fills every support"),
    ("lora_ranks", [4], "reference code: one LoRA rank, default --rank 4"),
    ("crop_mode", "squash", "reference code: few-shot evaluation squashes to 256 x 256, then crops 224"),
]
SHARED = [  # both protocols keep the task preset's values (the reference code and the paper agree on these)
    ("epochs", 500), ("batch_size", 64), ("weight_decay", 1e-4), ("warmup_epochs", 10), ("warmup_lr", 1e-6),
    ("min_lr", 1e-5), ("drop_path", 0.1), ("mean", [0.485, 0.456, 0.406]), ("std", [0.229, 0.224, 0.225]),
]  # fmt: skip


@pytest.mark.parametrize("protocol, table", [("paper", PAPER), ("reference-code", REFERENCE_CODE)])
def test_each_protocol_sets_its_values(protocol, table):
    args = parse_args(build_parser(), ["-c", "vtab/cifar", "-c", f"protocols/{protocol}"])
    for option, value, source in table:
        assert getattr(args, option) == value, f"{protocol}: --{option.replace('_', '-')} ({source})"
    for option, value in SHARED:
        assert getattr(args, option) == value, f"{protocol}: --{option.replace('_', '-')}"


def test_the_gift_method_preset_carries_gifts_recipe():
    args = parse_args(build_parser(), ["-c", "vtab/cifar", "-c", "methods/gift"])
    assert (args.epochs, args.batch_size, args.lr, args.weight_decay) == (100, 32, 1e-4, 0.0)
    assert (args.warmup_epochs, args.warmup_lr, args.min_lr) == (5, 1e-7, 1e-6)
    assert args.gift_ranks == [16] and args.lora_ranks == [] and args.targets == ["attn.proj"]


def _trainer(**recipe) -> Trainer:
    data = ImageSet(
        labels=torch.arange(800) % 2, num_classes=2, images=torch.zeros(800, 3, 4, 4, dtype=torch.uint8), size=(3, 4, 4)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    base = dict(epochs=6, batch_size=64, lr=1.0, warmup_epochs=2, warmup_lr=0.1, min_lr=0.0, amp="off", workers=0)
    as_float = ImageModality({"input_size": (3, 4, 4), "mean": (0.0,) * 3, "std": (1 / 255,) * 3})  # x -> float(x)
    return Trainer(model, data, Recipe(**(base | recipe)), modality=as_float, device=torch.device("cpu"))


def _cosine(t: float, total: float, warmup: float, lr=1.0, warmup_lr=0.1, min_lr=0.0) -> float:
    """timm's cosine with warm-up prefix, written out: linear warm-up, then cosine over ``total`` units."""
    if t < warmup:
        return warmup_lr + t * (lr - warmup_lr) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / total))


def test_per_epoch_schedule_lags_one_epoch_as_the_reference_steps_it():
    """Epoch e runs at the schedule's value for epoch e - 1 (and epoch 0 at its start): the first two epochs at the
    warm-up's initial rate. A trainer rebuilt from the state after any epoch continues at the same rate."""
    t = _trainer(sched_on_updates=False)
    seen = []
    for _ in range(6):
        seen.append(t.optimizer.param_groups[0]["lr"])
        state = t.state_dict()
        t.fit(stop_after=1)
    expected = [_cosine(max(e - 1, 0), total=6, warmup=2) for e in range(6)]
    assert seen == pytest.approx(expected, abs=1e-12) and seen[0] == seen[1] == 0.1
    resumed = _trainer(sched_on_updates=False)
    resumed.load_state_dict(state)  # after epoch 5
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(seen[-1], abs=1e-12)


def test_per_update_schedule_is_unchanged():
    t = _trainer()
    assert t.steps_per_epoch == 13
    t.fit(stop_after=1)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(_cosine(13, total=6 * 13, warmup=26), abs=1e-12)


def test_drop_last_gives_the_reference_steps_per_epoch():
    t = _trainer(drop_last=True)
    assert t.steps_per_epoch == 12  # 800 images at 64: 12 full batches, the 32 left over dropped
    t.fit(stop_after=1)
    assert t.step == 12
    data = t.train_set
    meta = make_loader(data, 64, shuffle=True, seed=0, drop_last=True)[1]
    assert len(meta) == 12 and all(n == 64 for n, _ in meta)
    assert len(make_loader(data, 64, shuffle=True, seed=0)[1]) == 13
    halves = [make_loader(data, 64, shuffle=True, seed=0, drop_last=True, shard=lambda n, r=r: slice(r * n // 2,
              (r + 1) * n // 2))[1] for r in range(2)]  # fmt: skip
    assert all(len(h) == 12 for h in halves)  # every rank drops the same global batch
    with pytest.raises(ValueError, match="--drop-last with --batch-size 1000 leaves no batch of the 800"):
        _trainer(drop_last=True, batch_size=1000)


@pytest.mark.parametrize("task", sorted({*(f"vtab/{t}" for t in ("cifar", "dmlab", "smallnorb_ele")),
                                         *(f"fewshot/{t}" for t in ("oxford_pets", "imagenet"))}))  # fmt: skip
def test_the_reference_code_protocol_composes_with_task_presets(task):
    args = parse_args(build_parser(), ["-c", task, "-c", "protocols/reference-code"])
    got = {option: getattr(args, option) for option, _, _ in REFERENCE_CODE}
    assert got == {option: value for option, value, _ in REFERENCE_CODE}
    own = parse_args(build_parser(), ["-c", task])
    kept = ("epochs", "batch_size", "dataset", "task")
    assert [getattr(args, k) for k in kept] == [getattr(own, k) for k in kept]


def test_crop_modes_are_timms():
    """``--crop-mode squash`` resizes both sides to size / crop-pct (the few-shot reference's 256 x 256), ``center``
    the shorter side (this toolkit's few-shot default); VTAB-1k's squash-resize is squash at 1.0."""
    from torchvision.transforms import CenterCrop, Resize

    from glora.app.data import DataSpec
    from glora.app.data.transforms import EvalCrop, eval_transform

    fewshot = dict(dataset="fewshot", data_root="x", task="oxford_pets", shot=1)
    assert DataSpec(**fewshot).eval_crop_pct == 0.875
    assert DataSpec(**fewshot, crop_mode="squash").eval_crop_pct == EvalCrop("squash", 0.875)
    assert DataSpec(dataset="vtab", data_root="x", task="cifar", crop_mode="squash").eval_crop_pct == EvalCrop("squash")
    first = {mode: eval_transform((3, 224, 224), EvalCrop(mode, 0.875)).transforms[:2] for mode in ("squash", "center")}
    assert isinstance(first["squash"][0], Resize) and tuple(first["squash"][0].size) == (256, 256)
    assert isinstance(first["center"][0], Resize) and first["center"][0].size in (256, [256], (256,))
    assert all(isinstance(ops[1], CenterCrop) for ops in first.values())
    vtab = eval_transform((3, 224, 224), None).transforms[0]
    assert tuple(vtab.size) == (224, 224)  # squash-resize, no crop
    with pytest.raises(ValueError, match="crop-mode must be one of center, squash, border; got 'middle'"):
        DataSpec(**fewshot, crop_mode="middle")
