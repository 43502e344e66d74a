"""Paper-complete recipes: faithful presets and normalisation, baselines as narrowed spaces, few-shot lists and
training augmentation, extra evaluation sets with class masks, export latency and the per-type parameter plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from helpers import ROOT

import glora
from glora.app.cli import run
from glora.app.commands.export import main as export_main
from glora.app.commands.search import main as search_main
from glora.app.commands.train import build_parser as train_parser
from glora.app.commands.train import main as train_main
from glora.app.data import IMAGENET_MEAN, IMAGENET_STD, DataSpec, input_config
from glora.app.options import ConfigError, parse_args

MAIN = {"train": train_main, "search": search_main, "export": export_main}
TINY = "{img_size: 16, patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}"


def _cli(command: str, argv: list, capsys) -> tuple[int, str]:
    try:
        code = run(MAIN[command], [str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err + out.out


def _image(path: Path, color: tuple[int, int, int], size: int = 12) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


# ---------------------------------------------------------------------- faithful presets and normalisation
def test_mean_and_std_override_the_models_statistics():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, **_tiny())
    own = input_config(model)
    assert own["mean"] == (0.5, 0.5, 0.5)  # the model's own config
    cfg = input_config(model, IMAGENET_MEAN, IMAGENET_STD)
    assert cfg["mean"] == IMAGENET_MEAN and cfg["std"] == IMAGENET_STD and cfg["input_size"] == own["input_size"]
    assert input_config(model, [0.4], [0.2])["std"] == (0.2, 0.2, 0.2)  # one value for every channel
    with pytest.raises(ValueError, match="--mean has 2 values; the model takes 3 channel"):
        input_config(model, [0.4, 0.5], None)


def test_mean_std_reach_the_checkpoint_and_bad_values_are_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    for k, c in enumerate(("a", "b")):
        for i in range(4):
            _image(data / c / f"{i}.png", (60 * i, 120 * k, 30))
    base = [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY, "--dataset", "folder",
        "--data-root", data, "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--no-progress",
    ]  # fmt: skip
    code, _ = _cli("train", [*base, "--mean", *IMAGENET_MEAN, "--std", *IMAGENET_STD, "--out", tmp_path / "o"], capsys)
    assert code == 0
    ckpt = glora.app.read_checkpoint(tmp_path / "o" / "last.pt")
    assert tuple(ckpt["input"]["mean"]) == IMAGENET_MEAN and tuple(ckpt["input"]["std"]) == IMAGENET_STD
    code, err = _cli("train", [*base, "--std", "0", "--out", tmp_path / "p"], capsys)
    assert code == 2 and "--std" in err and "positive" in err and "Traceback" not in err
    code, err = _cli("train", [*base, "--mean", "0.1", "0.2", "--out", tmp_path / "q"], capsys)
    assert code != 0 and "--mean has 2 values" in err and "Traceback" not in err


def test_backbone_and_protocol_presets_stack_on_a_task():
    args = parse_args(
        train_parser(),
        ["-c", str(ROOT / "configs/vtab/cifar.yaml"), "-c", str(ROOT / "configs/backbones/swin-b.yaml")],
    )
    assert args.model == "swin_base_patch4_window7_224.ms_in22k" and args.drop_path == 0.1 and args.lr == 5e-4
    args = parse_args(
        train_parser(),
        ["-c", str(ROOT / "configs/vtab/dtd.yaml"), "-c", str(ROOT / "configs/protocols/paper-table1.yaml")],
    )
    assert (args.train_split, args.val_split, args.task) == ("train800val200", "val200", "dtd")


def test_swin_reduction_layers_are_adapted():
    """The paper adapts Swin's patch-merging reduction too: every linear but the head."""
    model = timm.create_model(
        "swin_base_patch4_window7_224", pretrained=False, num_classes=3, embed_dim=16, depths=(1, 1),
        num_heads=(1, 2), window_size=2, img_size=16, patch_size=2,
    )  # fmt: skip
    glora.inject(model, glora.SearchSpace(lora_ranks=(2,)))
    names = list(glora.glora_layers(model))
    assert any(n.endswith("downsample.reduction") for n in names) and "head.fc" not in names


def test_selecting_on_test_is_recognised():
    vtab = dict(dataset="vtab", data_root="x", task="dtd")
    assert DataSpec(**vtab, val_split="test", test_split="test.txt").selects_on_test
    assert not DataSpec(**vtab, val_split="val200", test_split="test").selects_on_test
    assert DataSpec(dataset="folder", data_root="x", val_split="test").selects_on_test


def _tiny() -> dict:
    return dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)


def test_default_options_still_have_no_mean_or_std(tmp_path):
    args = parse_args(train_parser(), [])
    assert args.mean is None and args.std is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("mean: [a]\n")
    with pytest.raises(ConfigError, match="mean: expected a number"):
        parse_args(train_parser(), ["-c", str(bad)])
