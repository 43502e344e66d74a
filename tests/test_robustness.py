"""Bad input gets one clear line and leaves outputs untouched; interrupted runs resume exactly; loading is safe."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_SEARCH

import glora
from glora.app import read_checkpoint
from glora.app.checkpoint import write_checkpoint
from glora.app.cli import run
from glora.app.commands.export import main as reparam_main
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main

pytestmark = pytest.mark.slow  # every case runs a command against a finished pipeline

MAIN = {"train": train_main, "search": search_main, "reparam": reparam_main}
SMALL = TINY_SEARCH


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished small pipeline: supernet, search and export, for the error cases to bump into."""
    root = tmp_path_factory.mktemp("done")
    assert run(train_main, ["--epochs", "2", "--out", str(root / "supernet")]) == 0
    assert run(search_main, ["--supernet", str(root / "supernet/last.pt"), "--out", str(root / "search"), *SMALL]) == 0
    args = ["--supernet", str(root / "supernet/last.pt"), "--subnet", str(root / "search/subnet.yaml")]
    assert run(reparam_main, [*args, "--out", str(root / "export")]) == 0
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cli(command: str, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = run(MAIN[command], argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- the catalogue of user errors
def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _edited_checkpoint(done: Path, tmp: Path, edit) -> Path:
    ckpt = torch.load(done / "supernet/last.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp / "edited.pt")
    return tmp / "edited.pt"


def _nan_checkpoint(ckpt: dict) -> None:
    key = next(k for k in ckpt["trainable"] if k.endswith(".Bd"))
    ckpt["trainable"][key][0, 0] = float("nan")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_EVIL_MARK}",))


_EVIL_MARK = Path("/tmp/glora-evil-pickle-ran")


def _evil_checkpoint(tmp: Path) -> Path:
    torch.save({"format": "glora-supernet", "payload": _Evil()}, tmp / "evil.pt")
    return tmp / "evil.pt"


SUP = "supernet/last.pt"
SUB = "search/subnet.yaml"


def _reparam(d: Path, t: Path, subnet: Path) -> list[str]:
    return ["--supernet", str(d / SUP), "--out", str(t / "e"), "--subnet", str(subnet)]


def _edited(d: Path, t: Path, edit) -> list[str]:
    return _reparam(d, t, _subnet_edit(d, t, edit))


# (id, command, argv(done, tmp), message fragment)
CASES = [
    ("config-missing", "train", lambda d, t: ["-c", str(t / "nope.yaml")], "config file"),
    ("config-malformed", "train", lambda d, t: ["-c", str(_write(t / "c.yaml", "epochs: [1,\n"))], "not valid YAML"),
    (
        "config-unknown-key",
        "train",
        lambda d, t: ["-c", str(_write(t / "c.yaml", "epoch: 3\n"))],
        "unknown key 'epoch'",
    ),
    ("config-wrong-type", "train", lambda d, t: ["-c", str(_write(t / "c.yaml", "lr: fast\n"))], "lr: expected"),
    ("option-wrong-type", "train", lambda d, t: ["--epochs", "ten"], "expected a positive integer, got 'ten'"),
    ("option-out-of-range", "train", lambda d, t: ["--smoothing", "1.5"], "expected a number in [0, 1]"),
    ("option-bad-choice", "train", lambda d, t: ["--gift-sharing", "all"], "invalid choice: 'all'"),
    ("train-output-exists", "train", lambda d, t: ["--out", str(d / "supernet")], "already holds a supernet"),
    ("resume-nothing", "train", lambda d, t: ["--resume", "--out", str(t / "empty")], "does not exist"),
    ("resume-and-force", "train", lambda d, t: ["--resume", "--force", "--out", str(d / "supernet")], "contradict"),
    (
        "unknown-model",
        "train",
        lambda d, t: ["--model", "vit_nonexistent_42", "--out", str(t / "x")],
        "unknown timm model",
    ),
    (
        "data-root-missing",
        "train",
        lambda d, t: ["--dataset", "folder", "--data-root", str(t / "none")],
        "does not exist",
    ),
    (
        "data-folder-empty",
        "train",
        lambda d, t: ["--dataset", "folder", "--data-root", str(_write(t / "f/.keep", "").parent)],
        "no class sub-folders",
    ),
    ("vtab-no-task", "train", lambda d, t: ["--dataset", "vtab", "--data-root", str(t / "vtab")], "needs --task"),
    (
        "targets-match-nothing",
        "train",
        lambda d, t: ["--targets", "nothing", "--out", str(t / "x")],
        "matched no adaptable",
    ),
    (
        "supernet-missing",
        "search",
        lambda d, t: ["--supernet", str(t / "none.pt"), "--out", str(t / "s")],
        "does not exist",
    ),
    (
        "supernet-truncated",
        "search",
        lambda d, t: ["--supernet", str(_write(t / "cut.pt", (d / SUP).read_bytes()[:5000])), "--out", str(t / "s")],
        "truncated or corrupt",
    ),
    (
        "supernet-not-a-checkpoint",
        "search",
        lambda d, t: ["--supernet", str(_write(t / "x.pt", b"hello")), "--out", str(t / "s")],
        "truncated or corrupt",
    ),
    (
        "supernet-other-tool",
        "search",
        lambda d, t: ["--supernet", str(_torch_save(t / "o.pt", {"model": {}})), "--out", str(t / "s")],
        "is not a GLoRA supernet checkpoint",
    ),
    (
        "supernet-other-architecture",
        "search",
        lambda d, t: [
            "--supernet",
            str(_edited_checkpoint(d, t, lambda c: c["backbone"]["model_kwargs"].update(depth=2))),
            "--out",
            str(t / "s"),
        ],
        "do not fit",
    ),
    (
        "supernet-other-space",
        "search",
        lambda d, t: [
            "--supernet",
            str(_edited_checkpoint(d, t, lambda c: c["adapter"]["space"].update(lora_ranks=[4, 2]))),
            "--out",
            str(t / "s"),
        ],
        "has shape",
    ),
    (
        "supernet-malicious-pickle",
        "search",
        lambda d, t: ["--supernet", str(_evil_checkpoint(t)), "--out", str(t / "s")],
        "refusing to load",
    ),
    (
        "budget-inverted",
        "search",
        lambda d, t: [
            "--supernet",
            str(d / SUP),
            "--out",
            str(t / "s"),
            "--param-limit",
            "0.01",
            "--min-param-limit",
            "0.02",
        ],
        "inverted budget",
    ),
    (
        "budget-unreachable",
        "search",
        lambda d, t: [
            "--supernet",
            str(d / SUP),
            "--out",
            str(t / "s"),
            "--min-param-limit",
            "9",
            "--param-limit",
            "none",
        ],
        "no subnet reaches",
    ),
    (
        "search-output-exists",
        "search",
        lambda d, t: ["--supernet", str(d / SUP), "--out", str(d / "search")],
        "already holds search results",
    ),
    (
        "search-state-corrupt",
        "search",
        lambda d, t: ["--resume", "--out", str(_write(t / "s/search_state.json", "{not json").parent)],
        "is corrupt",
    ),
    (
        "subnet-unknown-choice",
        "reparam",
        lambda d, t: _edited(d, t, lambda s: s["blocks.0.mlp.fc1"].update(A="lora8")),
        "unknown choice 'lora8'",
    ),
    (
        "subnet-rank-too-high",
        "reparam",
        lambda d, t: _edited(d, t, lambda s: s["blocks.1.attn.qkv"].update(B="lora_16")),
        "rank 16, above the supernet's largest lora rank 8",
    ),
    (
        "subnet-missing-layer",
        "reparam",
        lambda d, t: _edited(d, t, lambda s: s.pop("blocks.3.mlp.fc2")),
        "missing layer 'blocks.3.mlp.fc2'",
    ),
    (
        "subnet-unknown-layer",
        "reparam",
        lambda d, t: _edited(d, t, lambda s: s.update({"blocks.9.attn.qkv": s["blocks.0.attn.qkv"]})),
        "'blocks.9.attn.qkv', which is not a GLoRA layer",
    ),
    (
        "subnet-not-yaml",
        "reparam",
        lambda d, t: _reparam(d, t, _write(t / "s.yaml", "a: [b\n")),
        "not valid YAML",
    ),
    (
        "export-exists",
        "reparam",
        lambda d, t: ["--supernet", str(d / SUP), "--subnet", str(d / SUB), "--out", str(d / "export")],
        "already exists",
    ),
    (
        "export-non-finite",
        "reparam",
        lambda d, t: [
            "--supernet",
            str(_edited_checkpoint(d, t, _nan_checkpoint)),
            "--subnet",
            str(d / SUB),
            "--out",
            str(t / "e"),
        ],
        "NaN or inf",
    ),
]


def _torch_save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _subnet_edit(done: Path, tmp: Path, edit) -> Path:
    subnet = glora.load_subnet(done / SUB)
    edit(subnet)
    glora.save_subnet(subnet, tmp / "edited.yaml")
    return tmp / "edited.yaml"


@pytest.mark.parametrize("name, command, argv, message", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_touch_nothing(done, tmp_path, capsys, name, command, argv, message):
    if name == "supernet-malicious-pickle":
        _EVIL_MARK.unlink(missing_ok=True)
    before = _snapshot(done)
    args = argv(done, tmp_path)
    if command == "train" and "--out" not in args:
        args += ["--out", str(tmp_path / "never")]
    inputs = _snapshot(tmp_path)
    code, err = _cli(command, args, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("searching", "resuming"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(done) == before  # earlier results untouched
    assert {k: v for k, v in _snapshot(tmp_path).items() if k in inputs} == inputs  # inputs untouched
    if name == "supernet-malicious-pickle":
        assert not _EVIL_MARK.exists(), "the pickle's payload ran"


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        run(search_main, ["--supernet", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s"), "--debug"])


def test_divergence_stops_without_writing_a_checkpoint(tmp_path, capsys):
    code, err = _cli("train", ["--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "loss became nan" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "last.pt").exists()


def test_non_finite_tensors_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        write_checkpoint(tmp_path / "x.pt", {"trainable": {"a": torch.tensor([float("inf")])}})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- interruption
def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {text!r}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {text!r}")


def _same_training(a: Path, b: Path) -> None:
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert all(torch.equal(ca["trainable"][k], cb["trainable"][k]) for k in cb["trainable"])
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(ca["log"]) == strip(cb["log"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "supernet"
    assert run(train_main, ["--epochs", "5", "--out", str(out)]) == 0
    return out / "last.pt"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "term"])
def test_interrupted_training_resumes_exactly(tmp_path, uninterrupted, sig):
    out = tmp_path / "supernet"
    log = tmp_path / "log.txt"
    proc = _start(["train_supernet.py", "--epochs", "5", "--out", str(out)], log)
    _wait_for(log, "epoch 2/5", proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # a clean stop at the next step boundary, with a resumable save
        assert proc.returncode == 130, log.read_text()
        assert "saved; continue with --resume" in log.read_text()
    ckpt = read_checkpoint(out / "last.pt")  # the file is whole whatever the moment of the kill
    assert ckpt["epoch"] >= 2
    assert run(train_main, ["--resume", "--out", str(out)]) == 0
    _same_training(out / "last.pt", uninterrupted)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_search_resumes_exactly(done, tmp_path, sig):
    args = ["search.py", "--supernet", str(done / SUP), *SMALL[:-1], "6"]
    full = tmp_path / "full"
    assert subprocess.run([*map(str, [sys.executable, *args]), "--out", str(full)], cwd=ROOT).returncode == 0
    out = tmp_path / "killed"
    log = tmp_path / "log.txt"
    proc = _start([*args, "--out", str(out)], log)
    _wait_for(log, "generation 3/6", proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), log.read_text()[-1000:]
    assert run(search_main, ["--resume", "--out", str(out)]) == 0
    a = json.loads((out / "search_state.json").read_text())
    b = json.loads((full / "search_state.json").read_text())
    for key in ("cache", "population", "rng", "generation"):
        assert a[key] == b[key], key
    assert (out / "subnet.yaml").read_text() == (full / "subnet.yaml").read_text()
