"""The data package (glora.app.data): sources in a registry (a new format is one module, nothing else changes),
DataSpec built from options and from checkpoints, the per-source rules (crops, split names); the embedded task,
VTAB-1k, few-shot and ImageFolder layouts, training augmentation, data errors; glora-data's checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
from helpers import (
    PRESETS,
    TINY_SEARCH,
    TINY_VIT,
    cli,
    fewshot_tree,
    image_folder,
)

import glora
from glora.app import data, load_supernet, read_checkpoint
from glora.app.cli import run
from glora.app.commands.train import main as train_main
from glora.app.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSpec,
    ImageSet,
    Normalizer,
    Source,
    load_digits,
    load_folder,
    register_source,
)
from glora.app.data.sources import _REGISTRY
from glora.app.data.sources.options import SplitOptions, option
from glora.app.embedded import BACKBONE_DIR
from glora.app.options import parse_args
from glora.app.options.train import build_parser


@pytest.fixture
def toy_source(monkeypatch):
    """A source registered for one test: four 1x2x2 images per split, split names echoed in the labels."""
    monkeypatch.setattr(_REGISTRY, "_entries", dict(_REGISTRY.entries()))

    @dataclass
    class ToyOptions(SplitOptions):
        """Toy images."""

        task: str | None = option(None, "even or odd")

    @register_source
    class Toy(Source):
        name = "toy"
        needs_root = False
        files = False
        Options = ToyOptions

        def check(self, spec):
            if spec.task not in (None, "even", "odd"):
                raise ValueError(f"toy task must be even or odd; got {spec.task!r}")

        def num_classes(self, spec):
            return 2

        def load(self, spec, split, progress, *, size, crop_pct):
            start = {"train": 0, "val": 1, "test": 2}.get(split, 3)
            labels = torch.tensor([start % 2, 1, 0, 1])
            return ImageSet(labels=labels, num_classes=2, images=torch.zeros(4, *size, dtype=torch.uint8), size=size)

    return Toy


def test_sources_are_listed_in_order_and_unknown_names_are_one_line():
    assert data.DATASETS == data.source_names() == ("digits", "vtab", "fewshot", "folder", "text", "instructions")
    allowed = "digits, vtab, fewshot, folder, text, instructions"
    with pytest.raises(ValueError, match=f"dataset must be one of {allowed}; got 'cifar'"):
        DataSpec(dataset="cifar")


def test_a_registered_source_is_a_dataset_for_the_spec(toy_source):
    assert "toy" in data.source_names()
    spec = DataSpec(dataset="toy", task="odd")
    assert spec.num_classes() == 2 and spec.source.name == "toy"
    assert spec.load("val", (1, 2, 2)).labels.tolist() == [1, 1, 0, 1]
    with pytest.raises(ValueError, match="toy task must be even or odd; got 'prime'"):
        DataSpec(dataset="toy", task="prime")
    with pytest.raises(ValueError, match=r"--augment needs image files \(vtab, fewshot or folder\); toy"):
        spec.load("train", (1, 2, 2), augment=data.TrainAugment(aa=None))
    with pytest.raises(ValueError, match="already registered"):
        register_source(type("Other", (Source,), {"name": "toy"}))


def test_from_options_reads_every_field_by_name():
    args = parse_args(build_parser(), ["--dataset", "folder", "--data-root", "/d", "--val-fraction", "0.3"])
    spec = DataSpec.from_options(args)
    assert (spec.dataset, spec.data_root, spec.val_fraction) == ("folder", "/d", 0.3)
    assert DataSpec.from_options(argparse.Namespace(dataset="digits", unrelated=1)) == DataSpec()
    with pytest.raises(AttributeError, match="dataset folder has no option 'shot'"):
        spec.shot  # noqa: B018 (a few-shot option)


def test_a_spec_holds_its_sources_options_only():
    """DataSpec = the dataset's name + its source's options; another source's option is refused, and a checkpoint
    written when every source's fields were stored reads back with its own."""
    spec = DataSpec(dataset="text", train_file="t.csv", max_seq_length=64)
    assert type(spec.options).__name__ == "TextOptions" and spec.max_seq_length == 64
    assert spec.to_dict() == {"dataset": "text", **dataclasses.asdict(spec.options)}
    with pytest.raises(ValueError, match=r"crop-pct, data-root: not an option of dataset text \(its options: "):
        DataSpec(dataset="text", train_file="t.csv", crop_pct=0.9, data_root="d")
    old = {"dataset": "vtab", "data_root": "/v", "task": "dtd", "max_seq_length": 128, "train_file": None,
           "text_column": ["text"], "packing": False, "crop_pct": None, "shot": None}  # fmt: skip
    assert DataSpec.from_dict(old) == DataSpec(dataset="vtab", data_root="/v", task="dtd")
    assert spec.replace(max_seq_length=32).max_seq_length == 32 and spec.max_seq_length == 64
    with pytest.raises(ValueError, match="--data-root: dataset text reads no data root"):
        DataSpec.from_checkpoint(spec.to_dict(), "/elsewhere")


def test_from_checkpoint_moves_the_data_root_only_when_given():
    stored = DataSpec(dataset="vtab", data_root="/old", task="dtd").to_dict()
    assert DataSpec.from_checkpoint(stored).data_root == "/old"
    moved = DataSpec.from_checkpoint(stored, "/new")
    assert moved.data_root == "/new" and moved.task == "dtd"
    assert stored["data_root"] == "/old"  # the checkpoint's record is not edited


@pytest.mark.parametrize(
    "dataset, crop, expected",
    [("vtab", None, None), ("vtab", 1.0, None), ("vtab", 0.9, 0.9), ("fewshot", None, 0.875), ("fewshot", 1.0, 1.0)],
)
def test_evaluation_crop_follows_the_source(dataset, crop, expected):
    extra = {"task": "dtd"} if dataset == "vtab" else {"task": "oxford_pets", "shot": 1}
    assert DataSpec(dataset=dataset, data_root="x", crop_pct=crop, **extra).eval_crop_pct == expected


def test_vtab_split_aliases_name_the_same_list():
    spec = DataSpec(dataset="vtab", data_root="x", task="dtd", val_split="val200", test_split="test.txt")
    assert not spec.selects_on_test
    assert DataSpec(dataset="vtab", data_root="x", task="dtd", val_split="test", test_split="test.txt").selects_on_test


def test_list_files_read_with_a_byte_order_mark_and_crlf(tmp_path):
    """A list file saved by a Windows editor (UTF-8 with BOM, CRLF line ends) reads as the same paths and labels;
    undecodable bytes are one line naming the file and the line."""
    from glora.app.data import read_list_file

    listing = tmp_path / "train800.txt"
    listing.write_bytes("\ufeffimages/c0/a.png 0\r\nimages/c1/b.png 1\r\n".encode())
    files, labels = read_list_file(listing, tmp_path, 2, "task")
    assert files == [tmp_path / "images/c0/a.png", tmp_path / "images/c1/b.png"] and labels == [0, 1]
    listing.write_bytes(b"images/a.png 0\nimages/b.png 1\nimages/\xe9.png 1\n")
    with pytest.raises(ValueError, match=r"train800.txt', line 3: byte 0xe9 is not UTF-8 text"):
        read_list_file(listing, tmp_path, 2, "task")


def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, 0, 0)).save(path)


def test_noah_layouts_read_as_they_ship(tmp_path):
    """Stanford Cars' lists are relative to the dataset folder (not images/); ImageNet's training lists to train/ and
    its validation split is val/<wnid>/*.JPEG without a list; a domain-generalization list in <set>/annotations/
    names paths relative to the set's root."""
    from glora.app.data import DataSpec
    from glora.app.data.sources.fewshot import imagenet_class_names
    from glora.app.evalsets import load_eval_set, parse_eval_set

    cars = tmp_path / "fs" / "stanford_cars"
    for i in range(2):
        _png(cars / "cars_train" / f"{i}.jpg", i)
    for name in ("train_meta.list.num_shot_1.seed_0", "val_meta.list", "test_meta.list"):
        (cars / "annotations").mkdir(parents=True, exist_ok=True)
        (cars / "annotations" / name).write_text("cars_train/0.jpg 0\ncars_train/1.jpg 5\n")
    spec = DataSpec(dataset="fewshot", data_root=str(tmp_path / "fs"), task="stanford_cars", shot=1)
    spec.preflight(("train", "val", "test"))
    assert spec.load("train", (3, 8, 8)).labels.tolist() == [0, 5]

    net = tmp_path / "fs" / "imagenet"
    wnids = imagenet_class_names()
    _png(net / "train" / wnids[3] / "a.JPEG")
    (net / "annotations").mkdir(parents=True)
    (net / "annotations" / "train_meta.list.num_shot_16.seed_0").write_text(f"{wnids[3]}/a.JPEG 3\n")
    _png(net / "val" / wnids[7] / "b.JPEG")
    _png(net / "val" / wnids[2] / "c.JPEG")
    spec = DataSpec(dataset="fewshot", data_root=str(tmp_path / "fs"), task="imagenet", shot=16)
    spec.preflight(("train", "val", "test"))
    assert spec.load("train", (3, 8, 8)).labels.tolist() == [3]
    val = spec.load("val", (3, 8, 8))
    assert val.labels.tolist() == [2, 7] and val.class_names == wnids  # sorted folders, labels by wnid order

    sketch = tmp_path / "sketch"
    _png(sketch / "images" / "x.png")
    (sketch / "annotations").mkdir()
    (sketch / "annotations" / "test.txt").write_text("images/x.png 4\n")
    images, mask = load_eval_set(parse_eval_set(f"s={sketch / 'annotations' / 'test.txt'}"), (3, 8, 8), 10, None)
    assert images.labels.tolist() == [4] and mask is None
    (sketch / "annotations" / "bad.txt").write_text("images/nowhere.png 4\n")
    with pytest.raises(FileNotFoundError, match="listed image 'images/nowhere.png' is in none of"):
        load_eval_set(parse_eval_set(f"s={sketch / 'annotations' / 'bad.txt'}"), (3, 8, 8), 10, None)


def test_data_check_reports_each_task_present_missing_or_broken(tmp_path, capsys):
    from glora.app.commands.data import main

    vtab = tmp_path / "vtab"
    for task in ("cifar", "dtd"):
        _png(vtab / task / "images" / "a.jpg")
        for name in ("train800", "val200", "train800val200", "test"):
            (vtab / task / f"{name}.txt").write_text("images/a.jpg 1\n")
    (vtab / "dtd" / "test.txt").write_text("images/a.jpg 1\nimages/gone.jpg 2\n")
    assert main(["check", str(vtab)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"vtab root {vtab}:"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out[1:-1]}
    assert rows["cifar"][0] == "ok" and rows["cifar"][1].startswith("3 images; train800, val200, train800val200")
    assert rows["dtd"][0] == "broken" and "test.txt: 1 of 2 listed images are missing" in rows["dtd"][1]
    assert rows["svhn"] == ["missing"] and out[-1] == "1 ok, 17 missing, 1 broken"

    fs = tmp_path / "fs"
    _png(fs / "oxford_pets" / "images" / "x.jpg")
    (fs / "oxford_pets" / "annotations").mkdir(parents=True)
    for name in ("train_meta.list.num_shot_1.seed_0", "train_meta.list.num_shot_2.seed_1", "val_meta.list",
                 "test_meta.list"):  # fmt: skip
        (fs / "oxford_pets" / "annotations" / name).write_text("x.jpg 0\n")
    assert main(["check", str(fs)]) == 0
    out = capsys.readouterr().out
    pets = next(line.split(None, 2) for line in out.splitlines() if line.strip().startswith("oxford_pets"))
    assert pets == ["oxford_pets", "ok", "4 images; 1-shot seed 0, 2-shot seed 1, val, test"]
    assert out.splitlines()[-1] == "1 ok, 5 missing, 0 broken"

    # the wrong --kind, or a root of neither kind, is an error (never "every task missing" with exit 0)

    assert run(main, ["check", str(vtab), "--kind", "fewshot"]) == 2
    assert "holds VTAB-1k task folders, not few-shot ones; --kind vtab" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(main, ["check", str(tmp_path / "empty"), "--kind", "vtab"]) == 2
    assert "holds no VTAB-1k task folder" in capsys.readouterr().err


def test_checkpoint_records_written_before_modalities_read_back():
    """The "input" record of older checkpoints (an image input configuration; for text a (2, L) stand-in with a
    "kind") and their "data" record (every source's fields) give today's modality and spec."""
    from glora.app.data import ImageModality, TextModality, modality_from_record

    text = modality_from_record({"input_size": [2, 96], "mean": [], "std": [], "kind": "tokens"})
    assert isinstance(text, TextModality) and text.max_seq_length == 96 and text.unit == "sequences"
    assert modality_from_record(text.record()).record() == {"modality": "text", "max_seq_length": 96}
    image = modality_from_record({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0})
    assert isinstance(image, ImageModality) and image.input_size == (3, 32, 32) and image.unit == "images"
    assert image.record()["modality"] == "images" and image.record()["crop_pct"] == 1.0
    old = {"dataset": "text", "data_root": None, "task": None, "train_split": "train", "val_split": "val",
           "test_split": "test", "val_fraction": 0.2, "test_fraction": 0.0, "split_seed": 0, "cache_images": True,
           "shot": None, "crop_pct": None, "crop_mode": None, "train_file": "t.csv", "validation_file": "v.csv",
           "test_file": None, "text_column": ["a", "b"], "label_column": "y", "problem_type": None,
           "max_seq_length": 96, "tokenizer": "/m", "packing": False}  # fmt: skip
    spec = DataSpec.from_dict(old)
    assert spec.text_column == ["a", "b"] and spec.max_seq_length == 96 and spec.split_key("val") == "v.csv"
    with pytest.raises(ValueError, match="has no test split: give --test-file"):
        spec.split_key("test")


def test_data_check_text_reads_files_as_training_will(tmp_path, capsys):
    """glora-data check-text: per file, rows and classes (or the regression's range), or the first problem with its
    row; the first file is the train file and every other one is judged against it, as training judges its splits;
    exit 1 when a file is broken."""
    from helpers import write_csv, write_jsonl

    from glora.app.commands.data import main

    train = write_csv(tmp_path / "train.csv", [{"text": f"t{i}", "label": "pos" if i % 3 else "neg"} for i in range(9)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    assert main(["check-text", str(train), str(val)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{train}  ok  9 rows; 2 classes: neg 3, pos 6" and out[-1] == "2 ok, 0 broken"
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "a", "label": "meh"}, {"text": "b", "label": "pos"}])
    blank = tmp_path / "blank.csv"
    blank.write_text("text,label\nfine,pos\n,neg\n")
    scores = write_csv(tmp_path / "scores.csv", [{"text": "a", "label": 0.5}, {"text": "b", "label": 4.25}])
    assert main(["check-text", str(train), str(other), str(blank), str(scores)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "label 'meh' is not in the train file's labels (neg, pos)" in out[1]
    assert "row 2 has no 'text' text" in out[2] and "label 0.5 is not in the train file's labels" in out[3]
    assert out[-1] == "1 ok, 3 broken"
    assert main(["check-text", str(scores)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("ok  2 rows; regression: 0.5..4.25")


def test_data_check_text_refuses_what_training_refuses_and_warns_as_it_warns(tmp_path, capsys, caplog):
    """Training's checks, not a look-alike: a one-class train file is broken (the splits after it are not judged), an
    id-like label column is warned about, and a class index written as text in a JSON file is the CSV's class."""
    from helpers import write_csv, write_jsonl

    from glora.app.commands.data import main
    from glora.app.data import DataSpec

    one = write_csv(tmp_path / "one.csv", [{"text": f"t{i}", "label": "pos"} for i in range(4)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": "pos"}])
    assert main(["check-text", str(one), str(val)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "holds one class ('pos'); a classification needs at least two" in out[0] and "broken" in out[0]
    assert out[1].startswith(f"{val}  skipped") and out[-1] == "0 ok, 1 broken, 1 skipped"
    with pytest.raises(ValueError, match="holds one class"):  # what training says of the same file
        DataSpec(dataset="text", train_file=str(one), validation_file=str(val)).num_classes()
    ids = write_csv(tmp_path / "ids.csv", [{"text": f"t{i}", "label": f"row{i}"} for i in range(5)])
    assert main(["check-text", str(ids)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "warning:" in out[1] and "as many classes as rows (5): an id rather than a label?" in out[1]
    ints = write_csv(tmp_path / "ints.csv", [{"text": f"t{i}", "label": i % 2} for i in range(6)])
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}])
    assert main(["check-text", str(ints), str(texts)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"{texts}  ok  2 rows; 2 classes: 0 1, 1 1"
    spec = DataSpec(dataset="text", train_file=str(ints), validation_file=str(texts))
    assert spec.source._labels(spec, "val")[2] == [1, 0]  # training reads them as the same classes


# ---------------------------------------------------------------------- few-shot FGVC lists and training augmentation


def test_fewshot_lists_pick_shot_and_seed(tmp_path):
    root = fewshot_tree(tmp_path / "fs")
    spec = DataSpec(dataset="fewshot", data_root=str(root), task="toy_birds", shot=2, split_seed=1)
    assert spec.num_classes() == 3  # not a known dataset: counted from its val and test lists
    train = spec.load("train", (3, 16, 16))
    assert len(train) == 6 and train.labels.tolist() == [0, 0, 1, 1, 2, 2] and train.images.dtype == torch.uint8
    assert len(spec.load("val", (3, 16, 16))) == 6 and len(spec.load("test", (3, 16, 16))) == 3
    missing = DataSpec(dataset="fewshot", data_root=str(root), task="toy_birds", shot=8, split_seed=0)
    with pytest.raises(
        FileNotFoundError, match=r"num_shot_8.seed_0' does not exist; shots and seeds there: num_shot_1"
    ):
        missing.load("train", (3, 16, 16))
    with pytest.raises(ValueError, match="needs --shot"):
        DataSpec(dataset="fewshot", data_root=str(root), task="toy_birds")
    assert DataSpec(dataset="fewshot", data_root="x", task="oxford_pets", shot=1).num_classes() == 37


def test_fewshot_evaluation_center_crops():
    """crop-pct 0.5 at 16 px: resize the shorter side to 32, keep the middle 16 (the border is cut away)."""

    from PIL import Image, ImageDraw

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "framed.png"
        img = Image.new("RGB", (64, 64), (255, 0, 0))
        ImageDraw.Draw(img).rectangle([16, 16, 47, 47], fill=(0, 255, 0))
        img.save(path)
        from glora.app.data.transforms import load_image as _load_image

        cropped = _load_image(path, (3, 16, 16), 0.5)
        squashed = _load_image(path, (3, 16, 16), None)
    assert cropped[1].min() > 200 and cropped[0].max() < 50  # all green
    assert squashed[0, 0, 0] > 200  # the red frame is still there


def test_augmented_items_depend_on_the_seed_only(tmp_path):
    from glora.app.data import TrainAugment, make_loader

    root = fewshot_tree(tmp_path / "fs")
    spec = DataSpec(dataset="fewshot", data_root=str(root), task="toy_birds", shot=2, split_seed=0)
    train = spec.load("train", (3, 16, 16), augment=TrainAugment(), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert train.images is None and train.augment is not None

    def epoch(seed: int, workers: int) -> torch.Tensor:
        loader, _ = make_loader(train, 4, shuffle=True, seed=seed, workers=workers)
        return torch.cat([inputs["pixel_values"] for inputs, _ in loader])

    state = torch.random.get_rng_state()
    a = epoch(7, 0)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's own generator is untouched
    assert a.dtype == torch.float32 and a.shape == (6, 3, 16, 16)
    assert torch.equal(a, epoch(7, 0)) and torch.equal(a, epoch(7, 2))  # same seed, any number of workers
    assert not torch.equal(a, epoch(8, 0))
    plain = spec.load("train", (3, 16, 16))
    assert not torch.equal(a, plain.images.float())  # really augmented (and normalised by the transform)


def test_bad_augmentation_options_are_one_line(tmp_path, capsys):
    root = fewshot_tree(tmp_path / "fs")
    base = [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--dataset", "fewshot",
        "--data-root", root, "--task", "toy_birds", "--shot", "2", "--epochs", "1", "--no-progress",
    ]  # fmt: skip
    code, err = cli("train", [*base, "--augment", "--aa", "bogus", "--out", tmp_path / "a"], capsys, stdout=True)
    assert code != 0 and "--aa 'bogus'" in err and "Traceback" not in err
    code, err = cli(
        "train", [*base, "--augment", "--scale", "0.9", "0.1", "--out", tmp_path / "b"], capsys, stdout=True
    )
    assert code != 0 and "--scale must be two positive numbers, low first" in err
    no_task = [a for a in base if a not in ("--task", "toy_birds")]
    code, err = cli("train", [*no_task, "--out", tmp_path / "c"], capsys, stdout=True)
    assert code != 0 and "needs --task" in err


def test_fewshot_preset_end_to_end_on_tiny_data(tmp_path, capsys):
    """A few-shot preset with augmentation, on a tiny random-init ViT: train, search, export."""
    root = fewshot_tree(tmp_path / "fs")
    preset = str(PRESETS / "fewshot/oxford_pets.yaml")
    train = [
        "-c", preset, "--task", "toy_birds", "--data-root", root, "--shot", "2", "--split-seed", "1",
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--epochs", "2",
        "--batch-size", "4", "--workers", "0", "--lora-ranks", "2", "--out", tmp_path / "sup", "--no-progress",
    ]  # fmt: skip
    code, err = cli("train", train, capsys, stdout=True)
    assert code == 0, err
    ckpt = glora.app.read_checkpoint(tmp_path / "sup" / "last.pt")
    assert ckpt["data"]["shot"] == 2 and ckpt["data"]["crop_pct"] == 0.875 and ckpt["config"]["augment"] is True
    search = ["--supernet", tmp_path / "sup" / "last.pt", "--out", tmp_path / "s", "--no-progress", *TINY_SEARCH]
    code, err = cli("search", search, capsys, stdout=True)
    assert code == 0, err
    export = ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out",
              tmp_path / "e", "--latency-rounds", "0"]  # fmt: skip
    code, err = cli("export", export, capsys, stdout=True)
    assert code == 0, err
    assert "latency" not in json.loads((tmp_path / "e" / "glora_export.json").read_text())


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


# ---------------------------------------------------------------------- the embedded task, VTAB-1k and ImageFolder data


@pytest.mark.slow
def test_embedded_backbone_is_really_pretrained():
    model = timm.create_model(f"local-dir:{BACKBONE_DIR}", pretrained=True).eval()
    val = load_digits("pretrain", "val")
    with torch.no_grad():
        acc = (model(Normalizer((0.5,), (0.5,))(val.images)).argmax(-1) == val.labels).float().mean().item()
    assert acc > 0.9  # trained on digits 0-4; a random init would be near 0.2


@pytest.mark.slow
def test_digits_splits_are_disjoint_and_fixed():
    seen = set()
    for split in ("train", "val", "test"):
        s = load_digits("transfer", split)
        keys = {bytes(img.numpy().tobytes()) + bytes([lab]) for img, lab in zip(s.images, s.labels.tolist())}
        assert not keys & seen
        seen |= keys
        assert torch.equal(s.labels, load_digits("transfer", split).labels)
    assert len(load_digits("transfer", "val")) == 200 and len(load_digits("transfer", "test")) == 300


def _fake_vtab(root: Path, task: str = "eurosat", n_classes: int = 10) -> Path:
    from PIL import Image

    rng = random.Random(0)
    (root / task / "images").mkdir(parents=True)
    lines = {"train800": [], "val200": [], "test": []}
    for i in range(60):
        name = f"images/{i}.png"
        Image.new("RGB", (20 + i % 7, 24), tuple(rng.randrange(256) for _ in range(3))).save(root / task / name)
        split = "train800" if i < 36 else ("val200" if i < 48 else "test")
        lines[split].append(f"{name} {i % n_classes}")
    for split, ls in lines.items():
        (root / task / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return root


@pytest.mark.slow
def test_vtab_layout_with_a_local_pretrained_file(tmp_path):
    """The VTAB-1k list-file layout, and a timm model name whose pretrained weights come from a local file."""
    root = _fake_vtab(tmp_path / "vtab")
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, **kw)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    out = tmp_path / "supernet"
    argv = [
        "--pretrained-file",
        str(tmp_path / "weights.pth"),
        "--model-kwargs",
        json.dumps(kw),
        "--data-root",
        str(root),
    ]
    argv += (
        "--model vit_tiny_patch16_224 --dataset vtab --task eurosat --train-split train800 --val-split val200".split()
    )
    code = run(train_main, [*argv, "--epochs", "1", "--out", str(out)])
    assert code == 0
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["data"]["task"] == "eurosat" and ckpt["input"]["input_size"] == [3, 32, 32]
    with pytest.raises(ValueError, match="backbone"):
        load_supernet(ckpt | {"backbone": ckpt["backbone"] | {"pretrained_file": None, "pretrained": False}})
    model = load_supernet(ckpt)
    backbone = {k: v for k, v in model.state_dict().items() if k.endswith((".weight", ".bias")) and "head" not in k}
    for k, v in backbone.items():
        assert torch.equal(v, source.state_dict()[k]), k
    data = DataSpec.from_dict(ckpt["data"])
    assert len(data.load("train", (3, 32, 32))) == 36 and len(data.load("test", (3, 32, 32))) == 12


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: (r / "eurosat" / "val200.txt").unlink(), "val200.txt does not exist"),
        (lambda r: (r / "eurosat" / "train800.txt").write_text("images/0.png 12\n"), "label 12 out of range"),
        (lambda r: (r / "eurosat" / "train800.txt").write_text("images/0.png\n"), "expected 'relative/path.jpg label'"),
        (lambda r: (r / "eurosat" / "train800.txt").write_text("\n"), "lists no images"),
        (lambda r: (r / "eurosat" / "train800.txt").write_text("images/nope.png 1\n"), "does not exist"),
    ],
)
def test_bad_vtab_data(tmp_path, capsys, change, match):
    root = _fake_vtab(tmp_path / "vtab")
    change(root)
    kw = "{img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}"
    argv = ["--model-kwargs", kw, "--data-root", str(root), "--out", str(tmp_path / "out")]
    argv += "--model vit_tiny_patch16_224 --no-pretrained --dataset vtab --task eurosat --epochs 1".split()
    code = run(train_main, argv)
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err


@pytest.mark.slow
def test_image_folder_stratified_split(tmp_path):
    from PIL import Image

    for c in ("cat", "dog", "emu"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / "imgs" / c / f"{i}.jpg")
    spec = DataSpec(dataset="folder", data_root=str(tmp_path / "imgs"), val_fraction=0.2, test_fraction=0.1)
    splits = {s: spec.load(s, (3, 8, 8)) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [21, 6, 3]
    for s in splits.values():
        assert sorted(s.labels.tolist()) == sorted([0, 1, 2] * (len(s) // 3))
    assert spec.num_classes() == 3
