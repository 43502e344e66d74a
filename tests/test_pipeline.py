"""The three commands end to end on the embedded default (reduced sizes), configs, resume, budgets, export."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import ROOT, SMALL_SEARCH, TINY_SEARCH, python, same_training, search_state

import glora
from glora.app import load_supernet, read_checkpoint
from glora.app.cli import run
from glora.app.commands.export import main as reparam_main
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.data import DataSpec, Normalizer, load_digits
from glora.app.embedded import BACKBONE_DIR
from search.genome import Genome

pytestmark = pytest.mark.slow  # trains, searches and exports, in this process and in others


def _train(out: Path, *extra: str) -> int:
    return run(train_main, ["--epochs", "3", "--out", str(out), *extra])


def _search(supernet: Path, out: Path, *extra: str) -> int:
    return run(search_main, ["--supernet", str(supernet), "--out", str(out), *SMALL_SEARCH, *extra])


# ---------------------------------------------------------------------- training
def test_training_outputs(pipeline):
    out = pipeline / "supernet"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert set(log[0]) == {"epoch", "loss", "lr", "val_acc", "val_matthews", "val_loss", "seconds"}  # every metric
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["backbone"]["model"] == "embedded:digits-vit"
    assert all(not k.endswith((".weight", ".bias")) or k.startswith("head.") for k in ckpt["trainable"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["out"] == str(out)
    model = load_supernet(out / "last.pt")
    assert len(glora.glora_layers(model)) == 16  # 4 blocks x qkv, proj, fc1, fc2


def test_version_1_checkpoints_still_load(pipeline, tmp_path):
    """Checkpoints written before the adapter record (separate space/targets/heads keys, and the embedded backbone
    named by its source-tree path) rebuild the same supernet."""
    ckpt = torch.load(pipeline / "supernet" / "last.pt", weights_only=True)
    adapter = ckpt.pop("adapter")
    ckpt |= {"version": 1, "space": adapter["space"], "targets": adapter["targets"], "heads": adapter["heads"]}
    ckpt["backbone"]["model"] = "local-dir:assets/digits-vit"
    torch.save(ckpt, tmp_path / "v1.pt")
    old, new = load_supernet(tmp_path / "v1.pt"), load_supernet(pipeline / "supernet" / "last.pt")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True))
    migrated = read_checkpoint(tmp_path / "v1.pt")["adapter"]
    assert migrated == adapter | {"support_dtype": None}  # v1 had none: the supports take the weights' dtype


def test_training_refuses_to_overwrite(pipeline, capsys):
    before = (pipeline / "supernet" / "last.pt").read_bytes()
    assert _train(pipeline / "supernet") == 2
    assert "already holds a supernet checkpoint" in capsys.readouterr().err
    assert (pipeline / "supernet" / "last.pt").read_bytes() == before


# ---------------------------------------------------------------------- search
def test_search_outputs_and_budget(pipeline):
    out = pipeline / "search"
    for name in ("subnet.yaml", "search_log.jsonl", "pareto.json", "config.yaml", "search_state.json"):
        assert (out / name).is_file(), name
    for name in ("progress.png", "metric_vs_params.png", "choices.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_supernet(pipeline / "supernet" / "last.pt")
    limit = 0.03e6
    subnet = glora.load_subnet(out / "subnet.yaml")
    assert glora.count_params(model, subnet) <= limit
    genome = Genome(model)
    state = json.loads((out / "search_state.json").read_text())
    assert state["cache"] and all(genome.cost(g) <= limit for g, _ in state["cache"])
    lines = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in lines[:-1]] == [1, 2, 3]
    final = lines[-1]
    assert final["final"] and final["params"] == glora.count_params(model, subnet) and 0 <= final["test_acc"] <= 1
    best = max(acc for _, acc in state["cache"])
    assert final["val_acc"] == round(best, 6)
    front = json.loads((out / "pareto.json").read_text())["front"]
    params = [p["params"] for p in front]
    accs = [p["val_acc"] for p in front]
    assert params == sorted(params) and accs == sorted(accs) and all(p <= limit for p in params)


def test_pareto_objective(pipeline, tmp_path):
    out = tmp_path / "pareto"
    assert _search(pipeline / "supernet" / "last.pt", out, "--objective", "pareto", "--param-limit", "none") == 0
    front = json.loads((out / "pareto.json").read_text())["front"]
    for a, b in itertools.pairwise(front):
        assert a["params"] < b["params"] and a["val_acc"] < b["val_acc"]


def test_narrow_budget_is_met_exactly(pipeline, tmp_path):
    """A window far from where uniform samples land still yields only feasible candidates (repair)."""
    out = tmp_path / "narrow"
    assert _search(pipeline / "supernet" / "last.pt", out, "--param-limit", "0.003", "--min-param-limit", "0.002") == 0
    model = load_supernet(pipeline / "supernet" / "last.pt")
    genome = Genome(model)
    state = json.loads((out / "search_state.json").read_text())
    assert all(2000 <= genome.cost(g) <= 3000 for g, _ in state["cache"])


# ---------------------------------------------------------------------- export
def test_export_loads_with_plain_timm_and_matches_the_supernet(pipeline):
    out = pipeline / "export"
    assert {"config.json", "model.safetensors", "subnet.yaml", "glora_export.json"} <= {p.name for p in out.iterdir()}
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert not any(isinstance(m, glora.GLoRALinear) for m in plain.modules())
    supernet = load_supernet(pipeline / "supernet" / "last.pt")
    glora.set_subnet(supernet, glora.load_subnet(pipeline / "search" / "subnet.yaml"))
    images = load_digits("transfer", "test").images
    x = Normalizer((0.5,), (0.5,))(images)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), supernet(x), rtol=1e-5, atol=1e-5)
    stats = json.loads((out / "glora_export.json").read_text())
    assert stats["params"] == stats["base_params"] and stats["flops"] == stats["base_flops"]
    assert sum(p.numel() for p in plain.parameters()) == stats["base_params"]


def test_export_refuses_to_overwrite_unless_forced(pipeline, tmp_path, capsys):
    out = tmp_path / "export"  # a copy: the shared pipeline stays as conftest made it
    shutil.copytree(pipeline / "export", out)
    before = (out / "model.safetensors").read_bytes()
    argv = [
        "--supernet",
        str(pipeline / "supernet" / "last.pt"),
        "--subnet",
        str(pipeline / "search" / "subnet.yaml"),
        "--out",
        str(out),
    ]
    assert run(reparam_main, argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    (out.parent / ".export.k1ll3d00").mkdir()  # what a SIGKILLed export leaves: a half-written temporary folder
    (out.parent / ".export.old-99").mkdir()  # and a set-aside previous export whose swap finished
    assert run(reparam_main, [*argv, "--force"]) == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".export")]  # no temp folders left


def test_an_export_killed_mid_swap_is_put_back(tmp_path):
    """Killed between setting the old export aside and moving the new one in: the next export restores the old."""
    from glora.app.timm_folder import remove_stale

    old = tmp_path / ".export.old-123"
    old.mkdir()
    (old / "model.safetensors").write_text("the previous export")
    (tmp_path / ".export.abcdefgh").mkdir()  # the new one, half-written
    remove_stale(tmp_path / "export")
    assert (tmp_path / "export" / "model.safetensors").read_text() == "the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_train_and_search_force_replace_only_their_own_files(pipeline, tmp_path, capsys):
    """``--force`` over a finished run rewrites what the command writes and leaves every other file in the folder
    (the user's notes, another command's outputs) as it was."""
    sup, found = tmp_path / "supernet", tmp_path / "search"
    shutil.copytree(pipeline / "supernet", sup)
    shutil.copytree(pipeline / "search", found)
    for folder in (sup, found):
        (folder / "notes.txt").write_text("mine")
    (found / "last.pt").write_bytes(b"not the search's")
    old_ckpt = (sup / "last.pt").read_bytes()
    train = ["--epochs", "1", "--seed", "7", "--no-progress", "--out", str(sup)]
    assert run(train_main, train) == 2 and "--force" in capsys.readouterr().err
    assert run(train_main, [*train, "--force"]) == 0
    assert (sup / "last.pt").read_bytes() != old_ckpt and (sup / "notes.txt").read_text() == "mine"
    assert len((sup / "log.jsonl").read_text().splitlines()) == 1  # the new run's log, not appended to the old
    old_log = (found / "search_log.jsonl").read_text()
    search = ["--supernet", str(sup / "last.pt"), "--out", str(found), *TINY_SEARCH, "--no-progress"]
    assert run(search_main, search) == 2 and "--force" in capsys.readouterr().err
    assert run(search_main, [*search, "--force"]) == 0
    assert (found / "search_log.jsonl").read_text() != old_log
    assert (found / "notes.txt").read_text() == "mine" and (found / "last.pt").read_bytes() == b"not the search's"


def test_export_rejects_a_subnet_that_does_not_fit(pipeline, tmp_path, capsys):
    bad = glora.load_subnet(pipeline / "search" / "subnet.yaml")
    bad["blocks.0.attn.qkv"]["A"] = "lora_16"
    glora.save_subnet(bad, tmp_path / "bad.yaml")
    code = run(
        reparam_main,
        [
            "--supernet",
            str(pipeline / "supernet" / "last.pt"),
            "--subnet",
            str(tmp_path / "bad.yaml"),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert code == 2
    assert "layer 'blocks.0.attn.qkv'" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- data and backbones
def test_embedded_backbone_is_really_pretrained():
    model = timm.create_model(f"local-dir:{BACKBONE_DIR}", pretrained=True).eval()
    val = load_digits("pretrain", "val")
    with torch.no_grad():
        acc = (model(Normalizer((0.5,), (0.5,))(val.images)).argmax(-1) == val.labels).float().mean().item()
    assert acc > 0.9  # trained on digits 0-4; a random init would be near 0.2


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


# ---------------------------------------------------------------------- the commands as users run them
@pytest.mark.parametrize(
    "script, args, match",
    [
        ("train_supernet.py", ["--epochs", "-1"], "expected a positive integer, got '-1'"),
        ("train_supernet.py", ["--dataset", "vtab"], "needs --data-root"),
        ("search.py", ["--supernet", "nope.pt"], "does not exist"),
        ("reparam.py", ["--subnet", "nope.yaml", "--supernet", "nope.pt"], "does not exist"),
    ],
)
def test_scripts_fail_with_one_line(script, args, match, tmp_path):
    proc = python(str(ROOT / script), *args, "--out", str(tmp_path / "o"), cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr


def test_compile_path_gives_the_same_training(tmp_path, pipeline):
    """--compile traces the whole supernet (the layers' static path); with dynamo's eager backend the result equals
    an eager run on the static path bit for bit, and both end close to the fused path's run."""
    assert _train(tmp_path / "c", "--compile", "--compile-backend", "eager") == 0
    assert _train(tmp_path / "s", "--execution", "static") == 0
    compiled = read_checkpoint(tmp_path / "c" / "last.pt")["trainable"]
    static = read_checkpoint(tmp_path / "s" / "last.pt")["trainable"]
    fused = read_checkpoint(pipeline / "supernet" / "last.pt")["trainable"]
    assert all(torch.equal(compiled[k], static[k]) for k in static)
    # Equal up to rounding that Adam's per-element normalisation amplifies on tiny gradients (as across processes).
    num = sum(((static[k] - fused[k]) ** 2).sum() for k in fused)
    den = sum((fused[k] ** 2).sum() for k in fused)
    assert (num / den).sqrt() < 1e-2


def test_compiled_search_equals_the_static_path(tmp_path, pipeline):
    """A compiled search evaluates every candidate with the same graph (codes, no fold on the host): with dynamo's
    eager backend it equals an eager search on the static path exactly."""
    supernet = pipeline / "supernet" / "last.pt"
    assert _search(supernet, tmp_path / "c", "--compile", "--compile-backend", "eager") == 0
    assert _search(supernet, tmp_path / "s", "--execution", "static") == 0
    assert search_state(tmp_path / "c" / "search_state.json") | {"config": None} == search_state(
        tmp_path / "s" / "search_state.json"
    ) | {"config": None}


def test_gradient_checkpointing_gives_the_same_training(tmp_path, pipeline):
    """Recomputing the blocks' activations in the backward changes memory, not results: the same tensors, bit for
    bit, as the shared pipeline's run (its supports sit inside every checkpointed block)."""
    assert _train(tmp_path / "ckpt", "--gradient-checkpointing") == 0
    same_training(tmp_path / "ckpt" / "last.pt", pipeline / "supernet" / "last.pt")


# ---------------------------------------------------------------------- retraining the pick
def test_the_pick_retrains_from_its_inherited_weights_and_exports(pipeline, tmp_path, capsys):
    """glora-train --init-from SUPERNET --subnet PICK: the supernet's options are the defaults, the pick starts from
    the supernet's tensors (at a vanishing learning rate it scores exactly what the search reported), only its own
    supports change, and the export folds the subnet the checkpoint was trained as."""
    from helpers import cli

    sup, pick = pipeline / "supernet" / "last.pt", pipeline / "search" / "subnet.yaml"
    final = json.loads((pipeline / "search" / "search_log.jsonl").read_text().splitlines()[-1])
    still = ["--epochs", "1", "--lr", "1e-12", "--warmup-epochs", "0", "--min-lr", "1e-12", "--no-progress"]
    code, err = cli("train", ["--init-from", sup, "--subnet", pick, *still, "--out", tmp_path / "still"], capsys)
    assert code == 0, err
    assert "training one subnet" in err and "random subnet" not in err
    log = json.loads((tmp_path / "still" / "log.jsonl").read_text().splitlines()[0])
    assert log["val_acc"] == pytest.approx(final["val_acc"], abs=1e-9)  # inherited: the search's score
    config = yaml.safe_load((tmp_path / "still" / "config.yaml").read_text())
    saved = yaml.safe_load((pipeline / "supernet" / "config.yaml").read_text())
    assert config["model"] == saved["model"] and config["lora-ranks"] == saved["lora-ranks"]
    assert config["epochs"] == 1 and config["init-from"] == str(sup)

    code, err = cli("train", ["--init-from", sup, "--subnet", pick, "--epochs", "2", "--warmup-epochs", "0",
                              "--lr", "1e-3", "--no-progress", "--out", tmp_path / "re"], capsys)  # fmt: skip
    assert code == 0, err
    before, after = read_checkpoint(sup), read_checkpoint(tmp_path / "re" / "last.pt")
    assert after["subnet"] == glora.load_subnet(pick) and after["trainable"].keys() == before["trainable"].keys()
    model = load_supernet(after)
    glora.set_subnet(model, after["subnet"])
    unused = {n for n, p in model.named_parameters() if any(p is q for q in glora.unused_params(model))}
    assert unused and all(torch.equal(after["trainable"][n], before["trainable"][n]) for n in unused)
    assert any(
        not torch.equal(after["trainable"][n], before["trainable"][n]) for n in set(before["trainable"]) - unused
    )
    code, err = cli("export", ["--supernet", tmp_path / "re" / "last.pt", "--out", tmp_path / "e"], capsys)
    assert code == 0, err
    assert glora.load_subnet(tmp_path / "e" / "subnet.yaml") == after["subnet"]
    record = json.loads((tmp_path / "e" / "glora_export.json").read_text())
    assert record["glora_params"] == glora.count_params(model, after["subnet"]) == final["params"]
    # the search scores the retrained subnet alone (the space's other subnets hold the supernet's stale tensors)
    argv = ["--supernet", tmp_path / "re" / "last.pt", "--out", tmp_path / "s", "--param-limit", "none"]
    code, err = cli("search", [*argv, "--no-progress"], capsys)
    assert code == 0 and "the checkpoint trained one subnet" in err, err
    scored = json.loads((tmp_path / "s" / "search_log.jsonl").read_text().splitlines()[-1])
    assert scored["evaluated"] == 1 and scored["params"] == final["params"]
    assert glora.load_subnet(tmp_path / "s" / "subnet.yaml") == after["subnet"]


def test_a_retraining_run_resumes_exactly(pipeline, tmp_path, capsys):
    from helpers import cli

    common = ["--init-from", pipeline / "supernet" / "last.pt", "--subnet", pipeline / "search" / "subnet.yaml",
              "--epochs", "2", "--no-progress"]  # fmt: skip
    assert cli("train", [*common, "--out", tmp_path / "full"], capsys)[0] == 0
    assert cli("train", [*common, "--stop-after", "1", "--out", tmp_path / "cut"], capsys)[0] == 0
    assert cli("train", ["--resume", "--out", tmp_path / "cut"], capsys)[0] == 0
    same_training(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


def test_the_pick_can_learn_from_the_supernets_largest_subnet(pipeline, tmp_path, capsys):
    """--teacher-weight: the retraining also learns the largest subnet's outputs (a frozen copy of the supernet as
    loaded); it trains differently from the labels alone, resumes exactly, and is refused in one line where no
    supernet and pick are given or the weight is not in [0, 1]."""
    from helpers import cli

    sup, pick = pipeline / "supernet" / "last.pt", pipeline / "search" / "subnet.yaml"
    common = ["--init-from", sup, "--subnet", pick, "--epochs", "2", "--no-progress"]
    code, err = cli("train", [*common, "--teacher-weight", "0.5", "--out", tmp_path / "kd"], capsys)
    assert code == 0 and "largest subnet (weight 0.5)" in err, err
    assert yaml.safe_load((tmp_path / "kd" / "config.yaml").read_text())["teacher-weight"] == 0.5
    assert cli("train", [*common, "--out", tmp_path / "labels"], capsys)[0] == 0
    kd, labels = read_checkpoint(tmp_path / "kd" / "last.pt"), read_checkpoint(tmp_path / "labels" / "last.pt")
    assert any(not torch.equal(kd["trainable"][k], labels["trainable"][k]) for k in labels["trainable"])
    cut = [*common, "--teacher-weight", "0.5", "--stop-after", "1", "--out", tmp_path / "cut"]
    assert cli("train", cut, capsys)[0] == 0
    assert cli("train", ["--resume", "--out", tmp_path / "cut"], capsys)[0] == 0
    same_training(tmp_path / "cut" / "last.pt", tmp_path / "kd" / "last.pt")
    code, err = cli("train", ["--teacher-weight", "0.5", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: --teacher-weight distils a supernet into its pick: give --subnet and --init-from"
    ), err
    code, err = cli("train", [*common, "--teacher-weight", "1.5", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--teacher-weight" in err and "[0, 1]" in err, err
    assert not (tmp_path / "o").exists()


def test_a_subnet_that_does_not_fit_is_refused_before_training(pipeline, tmp_path, capsys):
    from helpers import cli

    subnet = glora.load_subnet(pipeline / "search" / "subnet.yaml")
    subnet["blocks.0.attn.qkv"]["A"] = "lora_64"  # the supernet's space offers ranks 8 and 4
    glora.save_subnet(subnet, bad := tmp_path / "bad.yaml")
    argv = ["--init-from", pipeline / "supernet" / "last.pt", "--subnet", bad, "--out", tmp_path / "o"]
    code, err = cli("train", argv, capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ") and "lora_64" in err, err
    assert not (tmp_path / "o" / "last.pt").exists()
