"""Every user error as a row of one table: one clear line, exit 2, outputs and inputs untouched; loading is safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_SEARCH, cli, snapshot

import glora
from glora.app.checkpoint import write_checkpoint
from glora.app.cli import run
from glora.app.commands.search import main as search_main

pytestmark = pytest.mark.slow  # every case runs a command against a finished pipeline


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


def _search(d: Path, t: Path, *extra: str) -> list[str]:
    return ["--supernet", str(d / SUP), "--out", str(t / "s"), *TINY_SEARCH, *extra]


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
        "is not a supernet checkpoint: not a file torch.save writes",
    ),
    (
        "supernet-text-file",
        "search",
        lambda d, t: ["--supernet", str(_write(t / "last.pt", "this is a note, not weights\n")), "--out", str(t / "s")],
        "is not a supernet checkpoint: not a file torch.save writes",
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
        "supernet-is-a-folder",
        "search",
        lambda d, t: ["--supernet", str(d / "supernet"), "--out", str(t / "s")],
        "is a folder, not a file",
    ),
    (
        "data-root-is-a-file",
        "train",
        lambda d, t: ["--dataset", "vtab", "--task", "cifar", "--data-root", str(_write(t / "root.txt", "x"))],
        "is a file, not a folder",
    ),
    (
        "folder-root-is-a-file",
        "train",
        lambda d, t: ["--dataset", "folder", "--data-root", str(_write(t / "root.txt", "x"))],
        "is a file, not a folder",
    ),
    (
        "supernet-empty-file",
        "search",
        lambda d, t: ["--supernet", str(_write(t / "empty.pt", b"")), "--out", str(t / "s")],
        "not a file torch.save writes (empty, text or another format",
    ),
    (
        "supernet-malicious-pickle",
        "search",
        lambda d, t: ["--supernet", str(_evil_checkpoint(t)), "--out", str(t / "s")],
        "refusing to load",
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
    # the search's budget and evolution settings
    (
        "budget-inverted",
        "search",
        lambda d, t: _search(d, t, "--param-limit", "0.001", "--min-param-limit", "0.002"),
        "inverted budget",
    ),
    (
        "budget-inverted-at-the-default-limit",
        "search",
        lambda d, t: _search(d, t, "--param-limit", "0.03", "--min-param-limit", "0.04"),
        "inverted budget",
    ),
    (
        "budget-unreachable-minimum",
        "search",
        lambda d, t: _search(d, t, "--min-param-limit", "5", "--param-limit", "none"),
        "no subnet reaches --min-param-limit 5M",
    ),
    ("parents-above-population", "search", lambda d, t: _search(d, t, "--parents", "9"), "cannot exceed --population"),
    # presets by name
    ("preset-unknown", "train", lambda d, t: ["-c", "vtab/cifr"], "nor is it a preset name"),
    ("execution-unknown", "train", lambda d, t: ["--execution", "fast"], "invalid choice: 'fast'"),
    ("model-is-transformers", "train", lambda d, t: ["--model", "meta-llama/Llama-2-7b-hf"], "is a transformers model"),
    # reliability round 3: inputs checked up front, named, never silently ignored
    (
        "seed-out-of-range",
        "train",
        lambda d, t: ["--seed", "99999999999999999999"],
        "expected an integer >= 0 up to 9223372036854775807 (2**63 - 1), got '99999999999999999999'",
    ),
    (
        "model-kwargs-without-values",
        "train",
        lambda d, t: ["--model-kwargs", "{img_size:32,depth:2}"],
        "key 'img_size:32' in '{img_size:32,depth:2}' has no value; write 'key: value'",
    ),
    (
        "resume-changes-an-option-through-a-config-file",
        "train",
        lambda d, t: ["--resume", "--out", str(d / "supernet"), "-c", str(_write(t / "c.yaml", "lr: 0.5\n"))],
        "cannot change --lr when resuming",
    ),
    (
        "search-inside-the-supernet-run-folder",
        "search",
        lambda d, t: ["--supernet", str(d / SUP), "--out", str(d / "supernet" / "sub"), "--force"],
        "overlaps the --supernet's run folder",
    ),
    (
        "export-inside-the-search-folder",
        "reparam",
        lambda d, t: ["--supernet", str(d / SUP), "--subnet", str(d / SUB), "--out", str(d / "search" / "e")],
        "overlaps the --subnet's search folder",
    ),
    (
        "out-under-a-file",
        "train",
        lambda d, t: ["--out", str(_write(t / "afile", "x") / "sup")],
        "lies under",
    ),
    (
        "list-file-not-utf8",
        "train",
        lambda d, t: ["--dataset", "vtab", "--task", "cifar", "--data-root", str(_vtab_bad_bytes(t))],
        "line 2: byte 0xff is not UTF-8 text",
    ),
    (
        "fewshot-unknown-task",
        "train",
        lambda d, t: ["--dataset", "fewshot", "--data-root", str(_fewshot_root(t)), "--task", "nope", "--shot", "1"],
        "task folders there: pets",
    ),
    (
        "pretrained-file-is-text",
        "train",
        lambda d, t: ["--pretrained-file", str(_write(t / "w.bin", "not weights\n"))],
        "is not a weights file (neither safetensors nor a torch checkpoint)",
    ),
    (
        "eval-set-missing",
        "search",
        lambda d, t: _search(d, t, "--eval-set", f"A={t / 'nowhere'}"),
        "--eval-set A:",
    ),
    (
        "eval-set-named-twice",
        "reparam",
        lambda d, t: [*_reparam(d, t, d / SUB), "--eval-set", f"A={_images(t)}", f"A={_images(t)}"],
        "--eval-set name 'A' is given twice",
    ),
    (
        "eval-set-unknown-key",
        "search",
        lambda d, t: _search(d, t, "--eval-set", f"A={t},foo=bar"),
        "unknown key 'foo'",
    ),
    (
        "eval-set-mask-not-utf8",
        "reparam",
        lambda d, t: [*_reparam(d, t, d / SUB), "--eval-set", f"A={_images(t)},mask={_bad_mask(t)}"],
        "mask file",
    ),
    (
        "export-force-over-foreign-files",
        "reparam",
        lambda d, t: ["--supernet", str(d / SUP), "--subnet", str(d / SUB), "--out", str(_foreign(t)), "--force"],
        "--force replaces a previous export only",
    ),
    # reliability round 5: every option either applies or is refused; never a run from mixed tensors
    (
        "sandwich-random-unbounded",
        "train",
        lambda d, t: ["--sampling", "sandwich", "--sandwich-random", "100000"],
        "argument --sandwich-random: expected an integer from 0 to 16, got '100000'",
    ),
    (
        "sandwich-random-without-the-sandwich",
        "train",
        lambda d, t: ["--sandwich-random", "3"],
        "--sandwich-random: the random subnets of a sandwich step; this run samples uniform",
    ),
    (
        "subnet-with-a-sampling-option",
        "train",
        lambda d, t: ["--subnet", str(d / SUB), "--sampling", "sandwich", "--param-limit", "0.02"],
        "--sampling, --param-limit: how a supernet step samples its subnets; --subnet trains one fixed subnet",
    ),
    (
        "subnet-with-a-preset-that-samples",
        "train",
        lambda d, t: ["--subnet", str(d / SUB), "-c", "protocols/recommended"],
        "--sampling, --sandwich-random, --distill (set by -c protocols/recommended): how a supernet step samples",
    ),
    (
        "init-from-a-retrained-checkpoint-as-a-supernet",
        "train",
        lambda d, t: ["--init-from", str(_retrained(d, t))],
        "holds one retrained subnet",
    ),
    (
        "init-from-a-retrained-checkpoint-with-another-subnet",
        "train",
        lambda d, t: [
            "--init-from",
            str(_retrained(d, t, _all_b_lora)),
            "--subnet",
            str(_subnet_edit(d, t, _all_b_none)),
        ],
        "is not the subnet --init-from",
    ),
    (
        "export-another-subnet-of-a-retrained-checkpoint",
        "reparam",
        lambda d, t: [
            "--supernet",
            str(_retrained(d, t, _all_b_lora)),
            "--subnet",
            str(_subnet_edit(d, t, _all_b_none)),
            "--out",
            str(t / "e"),
        ],
        "which would fold retrained tensors with ones the retraining never touched",
    ),
    (
        "search-a-retrained-checkpoint-narrowed-away-from-its-pick",
        "search",
        lambda d, t: ["--supernet", str(_retrained(d, t, _all_b_lora)), "--out", str(t / "s"), "--choices", "B=none"],
        "holds one retrained subnet (scored as it is: no other subnet was trained with it), whose choice for layer",
    ),
]


def _all_b_none(subnet: dict) -> None:
    for choices in subnet.values():
        choices["B"] = "none"


def _all_b_lora(subnet: dict) -> None:
    for choices in subnet.values():
        choices["B"] = "lora_8"


def _retrained(done: Path, tmp: Path, edit=None) -> Path:
    """A checkpoint as glora-train --subnet writes it: one subnet (the search's pick, or ``edit``-ed) trained."""
    subnet = glora.load_subnet(done / SUB)
    if edit is not None:
        edit(subnet)
    return _edited_checkpoint(done, tmp, lambda c: c.update(subnet=subnet))


def _fewshot_root(tmp: Path) -> Path:
    _write(tmp / "fs/pets/annotations/val_meta.list", "images/a.jpg 0\n")
    return tmp / "fs"


def _images(tmp: Path) -> Path:
    return _write(tmp / "imgs" / ".keep", "").parent


def _bad_mask(tmp: Path) -> Path:
    return _write(tmp / "m.txt", b"1 2\n\xff")


def _foreign(tmp: Path) -> Path:
    """A folder of the user's own files, not an export."""
    return _write(tmp / "mine" / "notes.txt", "keep me").parent


def _vtab_bad_bytes(tmp: Path) -> Path:
    """A VTAB-1k task whose list file has a byte that is not UTF-8 on its second line."""
    _write(tmp / "vtab/cifar/train800.txt", b"images/a.jpg 0\nimages/\xffb.jpg 1\n")
    return tmp / "vtab"


def _torch_save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _subnet_edit(done: Path, tmp: Path, edit) -> Path:
    subnet = glora.load_subnet(done / SUB)
    edit(subnet)
    glora.save_subnet(subnet, tmp / "edited.yaml")
    return tmp / "edited.yaml"


def test_every_case_has_its_own_id():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("name, command, argv, message", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_touch_nothing(pipeline, tmp_path, capsys, name, command, argv, message):
    if name == "supernet-malicious-pickle":
        _EVIL_MARK.unlink(missing_ok=True)
    done = pipeline
    before = snapshot(done)
    args = argv(done, tmp_path)
    if command == "train" and "--out" not in args:
        args += ["--out", str(tmp_path / "never")]
    inputs = snapshot(tmp_path)
    code, err = cli(command, args, capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("searching", "resuming"))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err
    assert snapshot(done) == before  # earlier results untouched
    assert {k: v for k, v in snapshot(tmp_path).items() if k in inputs} == inputs  # inputs untouched
    if name == "supernet-malicious-pickle":
        assert not _EVIL_MARK.exists(), "the pickle's payload ran"


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        run(search_main, ["--supernet", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s"), "--debug"])


def test_divergence_stops_without_writing_a_checkpoint(tmp_path, capsys):
    code, err = cli("train", ["--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "loss became nan" in err and "Traceback" not in err
    assert not (tmp_path / "d" / "last.pt").exists()


def test_non_finite_tensors_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        write_checkpoint(tmp_path / "x.pt", {"trainable": {"a": torch.tensor([float("inf")])}})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------- interruption


@pytest.mark.parametrize("missing", ["transformers", "datasets"])
def test_a_text_run_without_the_text_extra_names_the_install(tiny_bert, tmp_path, capsys, monkeypatch, missing):
    """Language models need the ``text`` extra: without it, one line that gives the install command, before any
    work (not an ImportError from inside the run)."""
    import importlib.util

    from helpers import sentiment_files, text_train_args

    from glora.app.hf_backbone import TEXT_EXTRA

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    files = sentiment_files(tmp_path)
    code, err = cli("train", text_train_args(tiny_bert, files, tmp_path / "o"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and missing in lines[0] and TEXT_EXTRA in lines[0], err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- errors of backbones


def test_offline_hub_model_names_the_ways_out(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise FileNotFoundError("An error happened while trying to locate the file on the Hub")
        raise AssertionError("only the pretrained build is expected")

    monkeypatch.setattr(timm, "create_model", offline)
    code, err = cli("train", ["--model", "vit_tiny_patch16_224.augreg_in21k", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--pretrained-file" in err and "--no-pretrained" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_model_kwargs_that_break_the_model_are_one_line(tmp_path, capsys):
    argv = ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", "{depth: -2}", "--out", tmp_path]
    code, err = cli("train", argv, capsys)
    assert code == 2 and "cannot build 'vit_tiny_patch16_224' with depth=-2" in err and "Traceback" not in err
