"""Reliability: one writer per output folder, outputs that never clobber inputs, sizes checked before allocation,
disk-full and data errors in one line, exact resume with drop-path, random-init backbones through every command."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import timm
import torch
from helpers import ROOT, TINY_SEARCH, cli, image_folder, snapshot
from torch import nn

import glora
from glora import _io
from glora._io import DiskFullError, atomic_write_text
from glora.app import read_checkpoint
from glora.app.checkpoint import write_checkpoint
from glora.app.cli import run
from glora.app.commands.export import build_parser as export_parser
from glora.app.commands.export import main as export_main
from glora.app.commands.search import build_parser as search_parser
from glora.app.commands.search import main as search_main
from glora.app.commands.train import build_parser as train_parser
from glora.app.commands.train import main as train_main
from glora.app.data import DataSpec, load_folder
from glora.app.outputs import OutputBusyError, OutputLock, check_no_overlap, lock_path
from glora.app.sizes import check_training_size

TINY = "{img_size: 16, patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}"


def _folder_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY, "--dataset", "folder",
        "--data-root", str(data), "--out", str(out), "--no-progress", "--batch-size", "8", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def folder_pipeline(tmp_path_factory):
    """A random-init backbone on an ImageFolder tree through train, search and export (the --no-pretrained path)."""
    root = tmp_path_factory.mktemp("rand")
    data = image_folder(root / "imgs")
    assert run(train_main, _folder_train_args(data, root / "supernet", "--epochs", "2")) == 0
    sup = root / "supernet" / "last.pt"
    assert run(search_main, ["--supernet", str(sup), "--out", str(root / "search"), "--no-progress", *TINY_SEARCH]) == 0
    sub = root / "search" / "subnet.yaml"
    assert run(export_main, ["--supernet", str(sup), "--subnet", str(sub), "--out", str(root / "export")]) == 0
    return root


# ---------------------------------------------------------------------- random init and class names
def test_random_init_backbone_goes_through_every_command(folder_pipeline):
    ckpt = read_checkpoint(folder_pipeline / "supernet/last.pt")
    assert ckpt["backbone"]["pretrained"] is False and ckpt["backbone"]["init_seed"] == 0
    model = timm.create_model(f"local-dir:{folder_pipeline / 'export'}", pretrained=True)
    assert model.num_classes == 3


def test_class_names_reach_the_export(folder_pipeline):
    assert read_checkpoint(folder_pipeline / "supernet/last.pt")["class_names"] == ["cat", "dog", "emu"]
    config = json.loads((folder_pipeline / "export/config.json").read_text())
    assert config["label_names"] == ["cat", "dog", "emu"]


def test_unseeded_random_init_is_explained(folder_pipeline, tmp_path, capsys):
    ckpt = torch.load(folder_pipeline / "supernet/last.pt", weights_only=True)
    ckpt["backbone"]["init_seed"] = None  # as an older version saved it
    ckpt["fingerprint"] = "0" * 16
    torch.save(ckpt, tmp_path / "old.pt")
    code, err = cli("search", ["--supernet", tmp_path / "old.pt", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "random-init backbone saved without its init seed" in err
    assert not (tmp_path / "s").exists()


def test_offline_hub_model_names_the_ways_out(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise FileNotFoundError("An error happened while trying to locate the file on the Hub")
        raise AssertionError("only the pretrained build is expected")

    monkeypatch.setattr(timm, "create_model", offline)
    code, err = cli("train", ["--model", "vit_tiny_patch16_224.augreg_in21k", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--pretrained-file" in err and "--no-pretrained" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- one writer per folder
def test_lock_refuses_a_second_writer_and_names_it(tmp_path):
    with OutputLock(tmp_path / "out", command="glora-train"):
        holder = json.loads(lock_path(tmp_path / "out").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputBusyError, match=rf"in use by glora-train \(pid {os.getpid()} on "):
            OutputLock(tmp_path / "out").acquire()
    assert not lock_path(tmp_path / "out").exists()  # released and removed
    with OutputLock(tmp_path / "out"):  # free again
        pass


def test_lock_is_shared_by_every_path_to_the_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with OutputLock(tmp_path / "real"), pytest.raises(OutputBusyError):
        OutputLock(tmp_path / "alias").acquire()


def test_stale_lock_is_reported_and_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "command": "glora-search", "started": time.time()}
    lock_path(tmp_path / "out").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING), OutputLock(tmp_path / "out"):
        assert json.loads(lock_path(tmp_path / "out").read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and f"pid {dead.pid}" in caplog.text


def test_lock_released_when_the_holder_is_killed(tmp_path):
    # The holder is a forked child (another process, without a second interpreter start and torch import): it takes
    # the lock, says so through a pipe, and is SIGKILLed while holding it.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of pytest runs here, it leaves only by the kill (or os._exit)
        try:
            os.close(read)
            OutputLock(tmp_path / "out").acquire()
            os.write(write, b"held")
            time.sleep(60)
        finally:
            os._exit(1)
    try:
        os.close(write)
        assert os.read(read, 4) == b"held"
        with pytest.raises(OutputBusyError, match=f"pid {pid}"):
            OutputLock(tmp_path / "out").acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
    with OutputLock(tmp_path / "out"):  # the kernel released it; the record is stale
        pass


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "search", "export"])
def test_second_writer_into_the_same_folder_is_refused(folder_pipeline, tmp_path, capsys, command):
    out = tmp_path / "busy"
    sup, sub = folder_pipeline / "supernet/last.pt", folder_pipeline / "search/subnet.yaml"
    argv = {
        "train": _folder_train_args(folder_pipeline / "imgs", out, "--epochs", "1"),
        "search": ["--supernet", sup, "--out", out, *TINY_SEARCH],
        "export": ["--supernet", sup, "--subnet", sub, "--out", out],
    }[command]
    with OutputLock(out, command="glora-train"):
        code, err = cli(command, argv, capsys)
    assert code == 2 and "is in use by glora-train" in err and f"pid {os.getpid()}" in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_two_trainings_at_once_one_refused(tmp_path, capsys):
    out = tmp_path / "sup"
    log = tmp_path / "first.log"
    first = subprocess.Popen(
        [sys.executable, "train_supernet.py", "--epochs", "60", "--out", str(out), "--no-progress"],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while "epoch 1/60" not in log.read_text():
            assert first.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        code, err = cli("train", ["--epochs", "2", "--out", out, "--force"], capsys)
        assert code == 2 and f"in use by glora-train (pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert read_checkpoint(out / "last.pt")["config"]["epochs"] == 60  # the first run's files, untouched


# ---------------------------------------------------------------------- outputs never clobber inputs
def _overlap_cases(p: Path, t: Path) -> list[tuple[str, list]]:
    sup, sub = p / "supernet/last.pt", p / "search/subnet.yaml"
    (t / "link").symlink_to(p / "supernet")
    return [
        ("search", ["--supernet", sup, "--out", p / "supernet", "--force"]),
        ("search", ["--supernet", sup, "--out", p, "--force"]),
        ("search", ["--supernet", t / "link/last.pt", "--out", p / "supernet", "--force"]),
        ("export", ["--supernet", sup, "--subnet", sub, "--out", p / "supernet", "--force"]),
        ("export", ["--supernet", sup, "--subnet", sub, "--out", t / "link", "--force"]),
        ("export", ["--supernet", sup, "--subnet", sub, "--out", p / "search", "--force"]),
        ("train", _folder_train_args(p / "imgs", p / "imgs" / "run", "--epochs", "1")),
        ("train", _folder_train_args(p / "imgs", p, "--epochs", "1", "--force")),
        ("train", ["--pretrained-file", sup, "--out", p / "supernet", "--force"]),
    ]


@pytest.mark.parametrize("i", range(9))
def test_output_that_is_an_input_is_refused_before_writing(folder_pipeline, tmp_path, capsys, i):
    before = snapshot(folder_pipeline)
    command, argv = _overlap_cases(folder_pipeline, tmp_path)[i]
    code, err = cli(command, argv, capsys)
    assert code == 2 and "overlaps" in err and "Traceback" not in err, err
    assert snapshot(folder_pipeline) == before
    assert not list(folder_pipeline.parent.glob(".*.lock"))


def test_overlap_rules(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "w.pt").write_bytes(b"x")
    check_no_overlap(tmp_path / "out", [("--data-root", tmp_path / "data"), ("--file", tmp_path / "w.pt")])
    check_no_overlap(tmp_path / "data2", [("--data-root", tmp_path / "data")])  # a shared name prefix is fine
    for out in (tmp_path / "data", tmp_path / "data/sub", tmp_path):
        with pytest.raises(ValueError, match="overlaps --data-root"):
            check_no_overlap(out, [("--data-root", tmp_path / "data")])
    with pytest.raises(ValueError, match="overlaps --file"):
        check_no_overlap(tmp_path, [("--file", tmp_path / "w.pt")])


# ---------------------------------------------------------------------- sizes
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


# ---------------------------------------------------------------------- disk full
@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write lands on /dev/full (ENOSPC on the first flush), as on a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(_io.tempfile, "mkstemp", mkstemp)


def test_disk_full_is_one_clear_error_and_keeps_the_old_file(tmp_path, full_disk):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(DiskFullError, match=r"disk full: could not write .*last.pt \(.* free there\)") as info:
        write_checkpoint(target, {"trainable": {"a": torch.zeros(100_000)}})
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(DiskFullError):
        atomic_write_text(tmp_path / "log.jsonl", "x" * 100_000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_disk_full_during_training_is_one_line(tmp_path, capsys, full_disk):
    code, err = cli("train", ["--epochs", "1", "--out", tmp_path / "o"], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and lines and lines[0].startswith("error: disk full: could not write"), err
    assert "enforce fail" not in err and "Traceback" not in err


# ---------------------------------------------------------------------- data sanity
def test_empty_class_folder_is_refused(tmp_path):
    data = image_folder(tmp_path / "imgs")
    (data / "zebra").mkdir()
    with pytest.raises(ValueError, match="class folder\\(s\\) 'zebra' hold no images"):
        DataSpec(dataset="folder", data_root=str(data)).num_classes()


def test_single_class_tree_is_refused(tmp_path):
    data = image_folder(tmp_path / "imgs", classes=("cat",))
    with pytest.raises(ValueError, match="one class \\('cat'\\); a classifier needs at least 2"):
        load_folder(data, "train", (3, 8, 8))


def test_vtab_labels_using_fewer_classes_warn(tmp_path, caplog):
    from PIL import Image

    base = tmp_path / "vtab" / "eurosat"
    (base / "img").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8)).save(base / "img" / f"{i}.png")
    (base / "train800.txt").write_text("".join(f"img/{i}.png {i % 2}\n" for i in range(4)))
    with caplog.at_level(logging.WARNING):
        DataSpec(dataset="vtab", data_root=str(tmp_path / "vtab"), task="eurosat").load("train", (3, 8, 8))
    assert "uses 2 of eurosat's 10 classes" in caplog.text


def test_misspelled_task_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'cifr'; did you mean 'cifar'"):
        DataSpec(dataset="vtab", data_root="x", task="cifr")
    with pytest.raises(ValueError, match="needs --task"):
        DataSpec(dataset="vtab", data_root="x")


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    from PIL import Image

    data = image_folder(tmp_path / "imgs")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 12x12 images are now > 2x the limit
    with pytest.raises(ValueError, match=r"cannot read image '.*cat/0.png': .*decompression bomb"):
        load_folder(data, "train", (3, 8, 8))


def test_caching_bars_follow_the_progress_option(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs")
    load_folder(data, "train", (3, 8, 8), progress=False)
    assert capsys.readouterr().err == ""
    load_folder(data, "train", (3, 8, 8), progress=True)
    assert "imgs/train" in capsys.readouterr().err
    load_folder(data, "train", (3, 8, 8))  # default: a terminal only (pytest's capture is none)
    assert capsys.readouterr().err == ""


def test_model_kwargs_that_break_the_model_are_one_line(tmp_path, capsys):
    argv = ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", "{depth: -2}", "--out", tmp_path]
    code, err = cli("train", argv, capsys)
    assert code == 2 and "cannot build 'vit_tiny_patch16_224' with depth=-2" in err and "Traceback" not in err


@pytest.mark.parametrize("parser", [train_parser, search_parser, export_parser], ids=["train", "search", "export"])
def test_every_option_has_help_and_shows_its_default(parser):
    command = parser()
    text = " ".join(command.format_help().split())
    for option in command.options.values():
        assert option.help, f"{option.flag} has no help"
        if option.help == argparse.SUPPRESS or option.kwargs.get("action") == "store_true":
            continue  # a hidden old name; a switch that is off unless given
        assert "default" in option.help_text(), f"{option.flag} shows no default"
        if isinstance(option.default, int) and not isinstance(option.default, bool):
            assert f"(default: {option.default})" in text, option.flag  # --epochs, --population, ...


# ---------------------------------------------------------------------- exact resume, drop-path on


# ---------------------------------------------------------------------- signals
