"""Extra evaluation sets (domain generalization): folders, lists, class masks, reported by the search and the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_SEARCH, TINY_VIT, cli, fewshot_tree, solid_image

import glora
from glora.app.data import DataSpec


def test_masked_accuracy_takes_the_argmax_inside_the_mask():
    from glora.app.evalsets import masked_accuracy

    logits = torch.tensor([[0.0, 5.0, 1.0, 0.5], [3.0, 0.0, 0.2, 2.0], [0.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([2, 3, 3])
    assert masked_accuracy(logits, labels, None) == pytest.approx(1 / 3)
    assert masked_accuracy(logits, labels, [2, 3]) == 1.0  # class 1 and 0 are not in the set's label space


def _dg_sets(root: Path, classes=("cat", "dog", "emu")) -> dict[str, Path]:
    """Three layouts of an out-of-domain set: named class folders (part of the classes), integer folders (like
    ImageNet-V2) and a list file."""
    for k, c in enumerate(classes[:2]):
        for i in range(3):
            solid_image(root / "named" / c / f"{i}.png", (i * 40, 100 * k, 90))
    for k in range(3):
        for i in range(2):
            solid_image(root / "numbered" / str(k) / f"{i}.png", (k * 60, i * 90, 30))
    lines = []
    for i in range(4):
        solid_image(root / "listed" / "imgs" / f"{i}.png", (i * 50, 50, 200))
        lines.append(f"imgs/{i}.png {i % 3}\n")
    (root / "listed" / "list.txt").write_text("".join(lines))
    (root / "mask.txt").write_text("cat\n1\n")
    return {"named": root / "named", "numbered": root / "numbered", "listed": root / "listed" / "list.txt"}


def test_eval_sets_map_folders_lists_and_masks(tmp_path):
    from glora.app.evalsets import load_eval_set, parse_eval_set

    paths = _dg_sets(tmp_path)
    names = ("cat", "dog", "emu")
    named, mask = load_eval_set(parse_eval_set(f"r={paths['named']},mask=present"), (3, 8, 8), 3, names)
    assert named.labels.tolist() == [0, 0, 0, 1, 1, 1] and mask == [0, 1]
    _, mask = load_eval_set(parse_eval_set(f"r={paths['named']},mask={tmp_path / 'mask.txt'}"), (3, 8, 8), 3, names)
    assert mask == [0, 1]  # by name (cat) and by index (1)
    numbered, mask = load_eval_set(parse_eval_set(f"v2={paths['numbered']}"), (3, 8, 8), 3, names)
    assert sorted(set(numbered.labels.tolist())) == [0, 1, 2] and mask is None
    listed, _ = load_eval_set(parse_eval_set(f"l={paths['listed']}"), (3, 8, 8), 3, names)
    assert listed.labels.tolist() == [0, 1, 2, 0] and listed.files[0].name == "0.png"
    with pytest.raises(ValueError, match="outside the mask"):
        load_eval_set(parse_eval_set(f"x={paths['numbered']},mask={tmp_path / 'mask.txt'}"), (3, 8, 8), 3, names)
    with pytest.raises(ValueError, match="neither class names the model was trained with nor label indices"):
        load_eval_set(parse_eval_set(f"x={paths['named']}"), (3, 8, 8), 3, ("ant", "bee", "cow"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_eval_set(parse_eval_set(f"x={tmp_path / 'nope'}"), (3, 8, 8), 3, names)
    import argparse

    for bad in ("noequals", "=path", "a b=path", "x=p,mask="):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_eval_set(bad)


def test_search_and_export_report_eval_sets_side_by_side(tmp_path, capsys):
    data = tmp_path / "data"
    for k, c in enumerate(("cat", "dog", "emu")):
        for i in range(6):
            solid_image(data / c / f"{i}.png", (i * 30, 80 * k, 40))
    paths = _dg_sets(tmp_path / "dg")
    sets = [f"sketchy={paths['named']},mask=present", f"v2={paths['numbered']}", f"listed={paths['listed']}"]
    train = [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--dataset", "folder",
        "--data-root", data, "--epochs", "2", "--batch-size", "6", "--lora-ranks", "2", "--out", tmp_path / "sup",
        "--no-progress",
    ]  # fmt: skip
    assert cli("train", train, capsys, stdout=True)[0] == 0
    code, out = cli(
        "search",
        ["--supernet", tmp_path / "sup" / "last.pt", "--out", tmp_path / "s", "--no-progress", *TINY_SEARCH,
         "--eval-set", *sets],
        capsys, stdout=True)  # fmt: skip
    assert code == 0, out
    final = [json.loads(x) for x in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()][-1]
    assert list(final["eval_sets"]) == ["sketchy", "v2", "listed"]
    assert final["eval_sets"]["sketchy"]["classes"] == 2 and final["eval_sets"]["v2"]["images"] == 6
    assert final["eval_sets"]["sketchy"]["masked"] and not final["eval_sets"]["v2"]["masked"]  # marked as such
    assert "sketchy " in out and "v2 " in out
    code, out = cli(
        "export",
        ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out",
         tmp_path / "e", "--latency-rounds", "1", "--eval-set", *sets],
        capsys, stdout=True)  # fmt: skip
    assert code == 0, out
    stats = json.loads((tmp_path / "e" / "glora_export.json").read_text())
    assert stats["eval_sets"] == final["eval_sets"]  # the folded export equals the folded supernet the search saw
    # Recomputed by hand on the exported plain timm model, with the mask applied to its logits.
    model = timm.create_model(f"local-dir:{tmp_path / 'e'}", pretrained=True).eval()
    from glora.app.data import Normalizer
    from glora.app.evalsets import load_eval_set, parse_eval_set

    ckpt = glora.app.read_checkpoint(tmp_path / "sup" / "last.pt")
    images, mask = load_eval_set(parse_eval_set(sets[0]), ckpt["input"]["input_size"], 3, ckpt["class_names"])
    x = torch.stack([images.dataset()[i][0] for i in range(len(images))])
    with torch.no_grad():
        logits = model(Normalizer(ckpt["input"]["mean"], ckpt["input"]["std"])(x))
    logits[:, [c for c in range(3) if c not in mask]] = -torch.inf
    expected = (logits.argmax(-1) == images.labels).float().mean().item()
    assert stats["eval_sets"]["sketchy"]["acc"] == pytest.approx(expected, abs=1e-6)
    code, err = cli(
        "export",
        ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out",
         paths["named"] / "out", "--eval-set", sets[0]],
        capsys, stdout=True)  # fmt: skip
    assert code != 0 and "--eval-set" in err  # an output inside an input set is refused


def test_imagenet_fewshot_labels_are_wnids_so_wnid_folders_evaluate(tmp_path):
    from glora.app.evalsets import load_eval_set, parse_eval_set

    root = fewshot_tree(tmp_path / "fs", task="imagenet", shots=(16,), seeds=(0,))
    spec = DataSpec(dataset="fewshot", data_root=str(root), task="imagenet", shot=16, split_seed=0)
    train = spec.load("train", (3, 8, 8))
    assert train.num_classes == 1000 and train.class_names[:2] == ("n01440764", "n01443537")
    solid_image(tmp_path / "r" / "n01443537" / "0.png", (9, 9, 9))  # ImageNet-R's layout: a folder per wnid
    images, mask = load_eval_set(parse_eval_set(f"r={tmp_path / 'r'},mask=present"), (3, 8, 8), 1000, train.class_names)
    assert images.labels.tolist() == [1] and mask == [1]
