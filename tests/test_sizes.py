"""Sizes checked before anything is allocated: ranks no layer can use, a training state the machine cannot hold, a
disk that cannot hold two checkpoints (glora.supernet_size, glora.app.sizes)."""

from __future__ import annotations

import logging
import time

import pytest
import timm
import torch
from helpers import cli
from torch import nn

import glora
from glora.app.sizes import check_training_size


def test_ranks_no_layer_can_use_are_refused_by_inject():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, embed_dim=16, depth=1, num_heads=2
    )
    with pytest.raises(ValueError, match=r"LoRA rank 100000 exceeds min\(in, out\) of every adapted layer .*1\.\.16"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(100000,)))
    with pytest.raises(ValueError, match="GIFT rank 128 exceeds the input width of every adapted layer .*1..64"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(4,), gift_ranks=(128,)))
    assert not glora.glora_layers(model)  # refused before anything changed
    glora.inject(model, glora.SearchSpace(lora_ranks=(16,)))  # full rank is allowed


def test_a_rank_only_some_layers_can_use_is_a_warning():
    model = nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 4), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"LoRA rank 8 exceeds min\(in, out\) of 1 adapted layer\(s\): '2' \(4\)"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(8,)), heads=["3"])


@pytest.mark.parametrize(
    "space, targets",
    [
        (glora.SearchSpace(lora_ranks=(8, 4)), None),
        (glora.SearchSpace(lora_ranks=(4,), gift_ranks=(8, 4)), None),
        (glora.SearchSpace(lora_ranks=(2,), gift_ranks=(4,), gift_sharing="layer"), ["qkv", "fc2"]),
        (glora.SearchSpace(lora_ranks=(8,), choices={"A": ["vector"], "C": ["none"], "E": ["none"]}), None),
    ],
)
def test_supernet_size_counts_what_inject_allocates(space, targets):
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, depth=2)  # noqa: E731
    model = make()
    predicted = glora.supernet_size(model, space, targets)
    assert not glora.glora_layers(model)  # nothing allocated
    glora.inject(model, space, targets)
    assert predicted == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_memory_check_refuses_what_does_not_fit(monkeypatch, tmp_path, caplog):
    import glora.app.sizes as sizes

    monkeypatch.setattr(sizes, "available_memory", lambda device: 10**6)
    with pytest.raises(ValueError, match=r"1,000,000 trainable elements need about .* --no-memory-check"):
        check_training_size(10**6, torch.device("cpu"), tmp_path)
    with caplog.at_level(logging.WARNING):
        check_training_size(10**6, torch.device("cpu"), tmp_path, enabled=False)
        check_training_size(20_000, torch.device("cpu"), tmp_path)  # 560 KB of 1 MB: more than half
    assert "trying anyway" in caplog.text and "more than half" in caplog.text


def test_a_disk_that_cannot_hold_two_checkpoints_is_warned_about(monkeypatch, tmp_path, caplog):
    """The old checkpoint stays until the new one is complete: a disk with room for less than two is warned
    about (and one with room is not)."""
    import shutil

    import glora.app.sizes as sizes

    monkeypatch.setattr(sizes, "available_memory", lambda device: 10**12)
    usage = shutil.disk_usage(tmp_path)
    ckpt = round(10**6 * sizes.SAVE_BYTES_PER_ELEMENT)
    monkeypatch.setattr(sizes.shutil, "disk_usage", lambda p: usage._replace(free=ckpt + 1))
    with caplog.at_level(logging.WARNING):
        check_training_size(10**6, torch.device("cpu"), tmp_path / "not-yet" / "out")
    assert "saving may run out of space" in caplog.text
    caplog.clear()
    monkeypatch.setattr(sizes.shutil, "disk_usage", lambda p: usage._replace(free=3 * ckpt))
    with caplog.at_level(logging.WARNING):
        check_training_size(10**6, torch.device("cpu"), tmp_path)
    assert "saving may run out of space" not in caplog.text


def test_memory_check_counts_the_frozen_backbone_and_the_support_dtype(monkeypatch, tmp_path):
    """On an accelerator the frozen weights must fit beside the training state; bf16 supports take half of fp32's
    (value, gradient and two AdamW moments each in the supports' dtype)."""
    import glora.app.sizes as sizes

    free = {"cuda": 10**9, "cpu": 10**12}
    monkeypatch.setattr(sizes, "available_memory", lambda device: free[device.type])
    cuda = torch.device("cuda")
    check_training_size(50 * 10**6, cuda, tmp_path)  # 800 MB of fp32 training state: fits in 1 GB
    with pytest.raises(ValueError, match=r"the frozen backbone's 381.5 MB\); 953.7 MB is free"):
        check_training_size(50 * 10**6, cuda, tmp_path, frozen_bytes=4 * 10**8)
    check_training_size(50 * 10**6, cuda, tmp_path, frozen_bytes=4 * 10**8, element_size=2)  # 400 + 400 MB
    with pytest.raises(ValueError, match="trainable elements need about"):
        check_training_size(70 * 10**6, cuda, tmp_path, element_size=4)


def test_absurd_ranks_fail_at_once_from_the_command_line(tmp_path, capsys):
    started = time.time()
    code, err = cli("train", ["--lora-ranks", "100000", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "exceeds min(in, out) of every adapted layer" in err and "allowed LoRA ranks here: 1.." in err
    assert time.time() - started < 30 and not (tmp_path / "o").exists()


def test_memory_check_from_the_command_line(monkeypatch, tmp_path, capsys):
    import glora.app.sizes as sizes

    monkeypatch.setattr(sizes, "available_memory", lambda device: 1000)
    code, err = cli("train", ["--out", tmp_path / "o"], capsys)
    assert code == 2 and "--no-memory-check" in err and not (tmp_path / "o").exists()
