"""Where commands write: one writer per output folder, outputs that never clobber inputs, atomic writes when the
disk is full."""

from __future__ import annotations

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
import torch
from helpers import ROOT, TINY_SEARCH, cli, folder_train_args, snapshot

from glora import _io
from glora._io import DiskFullError, atomic_write_text
from glora.app import read_checkpoint
from glora.app.checkpoint import write_checkpoint
from glora.app.outputs import OutputBusyError, OutputLock, check_no_overlap, lock_path

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
        "train": folder_train_args(folder_pipeline / "imgs", out, "--epochs", "1"),
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
        ("train", folder_train_args(p / "imgs", p / "imgs" / "run", "--epochs", "1")),
        ("train", folder_train_args(p / "imgs", p, "--epochs", "1", "--force")),
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
