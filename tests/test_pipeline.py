"""The image commands end to end: the embedded default (reduced sizes), a fixed adapter (LoRA) and a random-init
backbone on an ImageFolder tree through train, search, export and retraining the pick; budgets, latency, plots."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import (
    METHOD_CHOICES,
    PRESETS,
    ROOT,
    SMALL_SEARCH,
    TINY_SEARCH,
    cli,
    independent_count,
    python,
    same_training,
    search_state,
    tiny_vit_kwargs,
)

import glora
from glora.app import load_supernet, read_checkpoint
from glora.app.cli import run
from glora.app.commands.export import main as export_main
from glora.app.commands.export import main as reparam_main
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.data import Normalizer, load_digits
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


# a fixed adapter through the same commands; latency and the per-type plot


@pytest.fixture(scope="module")
def lora_pipeline(tmp_path_factory):
    """The embedded task through train -> search -> export with the LoRA preset (a fixed adapter)."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("lora")
    sup = work / "supernet"
    lora = str(PRESETS / "methods/lora.yaml")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert run(train_main, ["-c", lora, "--epochs", "3", "--out", str(sup), "--no-progress"]) == 0
        assert (
            run(search_main, ["--supernet", str(sup / "last.pt"), "--out", str(work / "search"), "--no-progress"]) == 0
        )
        assert run(
            export_main,
            ["--supernet", str(sup / "last.pt"), "--subnet", str(work / "search" / "subnet.yaml"), "--out",
             str(work / "export"), "--latency-rounds", "2"],
        ) == 0  # fmt: skip
    return work, out.getvalue()


def test_a_fixed_adapter_trains_searches_and_exports(lora_pipeline):
    work, printed = lora_pipeline
    subnet = glora.load_subnet(work / "search" / "subnet.yaml")
    assert all(choices == METHOD_CHOICES["lora"] for choices in subnet.values())
    log = [json.loads(line) for line in (work / "search" / "search_log.jsonl").read_text().splitlines()]
    assert log[-1]["evaluated"] == 1  # nothing to search: the one subnet, evaluated once, whatever the budget
    stats = json.loads((work / "export" / "glora_export.json").read_text())
    model = glora.app.load_supernet(glora.app.read_checkpoint(work / "supernet" / "last.pt"))
    assert stats["glora_params"] == independent_count(model, METHOD_CHOICES["lora"]) > 30_000  # above the 0.03M budget
    assert "params" in printed


def test_search_narrows_a_full_supernet(tmp_path, capsys):
    from glora.app.commands.search import _search_space
    from search import Genome

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **tiny_vit_kwargs())
    glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2)))
    space = _search_space(glora.get_space(model), ["C=none", "D=vector,none"])
    genome = Genome(model, space)
    options = {s: set() for s in "ABCDE"}
    for (_, s), names in zip(genome.genes, genome.options):
        options[s] |= set(names)
    assert options["C"] == {"none"} and options["D"] == {"vector", "none"} and "lora_4" in options["B"]
    with pytest.raises(ValueError, match="'lora_8' is not allowed for support B"):
        _search_space(glora.get_space(model), ["B=lora_8"])
    narrow = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **tiny_vit_kwargs())
    glora.inject(narrow, glora.SearchSpace(lora_ranks=(4, 2), choices={"B": ["lora_4"]}))
    with pytest.raises(ValueError, match="'lora_2' for support B is not in the supernet's space; it offers: lora_4"):
        Genome(narrow, _search_space(glora.get_space(narrow), ["B=lora_2"]))


def test_export_records_interleaved_latency(lora_pipeline):
    work, printed = lora_pipeline
    lat = json.loads((work / "export" / "glora_export.json").read_text())["latency"]
    assert lat["rounds"] == 2 and lat["interleaved"] and lat["batch"] > 0
    for name in ("folded", "supernet", "base"):
        assert lat[name]["ms_per_batch"] > 0 and lat[name]["images_per_s"] > 0
    assert lat["folded_vs_base"] == pytest.approx(lat["folded"]["ms_per_batch"] / lat["base"]["ms_per_batch"], 1e-3)
    assert "latency on" in printed


def test_measure_latency_rotates_the_order_and_times_every_model():
    from glora.app.timm_folder import measure_latency

    calls = []
    models = {n: (lambda x, n=n: calls.append(n)) for n in ("a", "b", "c")}
    out = measure_latency(models, torch.zeros(4, 1), rounds=3, warmup=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(out) >= {"a", "b", "c"} and out["batch"] == 4
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        measure_latency(models, torch.zeros(1), rounds=0)


def test_search_writes_the_params_by_type_plot(lora_pipeline):
    work, _ = lora_pipeline
    png = work / "search" / "plots" / "params_by_type.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


# a random-init backbone on an ImageFolder tree; class names


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


def test_every_line_describes_this_run(lora_pipeline, pipeline, tmp_path, capsys):
    """The figures and bounds a command prints are this run's: a fixed adapter's search has no budget (the default
    --param-limit is not one), a given --param-limit that cannot apply says so, and a retrained pick is counted as
    the paper counts it (not the supernet's allocated tensors)."""
    from helpers import cli

    work, _ = lora_pipeline
    search = ["--supernet", work / "supernet" / "last.pt", "--no-progress"]
    code, out = cli("search", [*search, "--out", tmp_path / "s"], capsys, stdout=True)
    assert code == 0, out
    assert "the space holds one subnet (" in out and "evaluated once, with no search and no budget" in out
    assert "budget 0-" not in out and "outside" not in out and "kept anyway" not in out
    assert "the one subnet: " in out and "(evaluated once, no search)" in out and "(1 point)" in out
    pareto = json.loads((tmp_path / "s" / "pareto.json").read_text())
    assert pareto["param_limit"] is None and pareto["min_param_limit"] is None
    code, out = cli("search", [*search, "--out", tmp_path / "s2", "--param-limit", "0.01"], capsys, stdout=True)
    assert code == 0 and "--param-limit does not apply: the one subnet (" in out, out
    code, out = cli("train", ["-c", PRESETS / "methods/lora.yaml", "--epochs", "1", "--no-progress", "--out",
                              tmp_path / "fixed"], capsys)  # fmt: skip
    assert code == 0 and "fixed adapter: " in out and "supernet:" not in out, out

    sup, pick = pipeline / "supernet" / "last.pt", pipeline / "search" / "subnet.yaml"
    code, err = cli("train", ["--init-from", sup, "--subnet", pick, "--epochs", "1", "--no-progress", "--out",
                              tmp_path / "re"], capsys)  # fmt: skip
    assert code == 0, err
    model = load_supernet(read_checkpoint(sup))
    count, layers = glora.count_params(model, glora.load_subnet(pick)), len(glora.glora_layers(model))
    assert f"one subnet: {layers} adapted layers, {count:,} params trained (the paper's count)" in err, err


def test_the_adapter_only_export_rebuilds_the_pick_on_a_fresh_base(pipeline, tmp_path, capsys):
    """glora-export --adapter-only on the embedded default: the folder's backbone record rebuilds the base, the
    adapter loads onto it, and the result computes the pick exactly (folded: the folded export's outputs)."""
    from helpers import cli

    from glora.app import BackboneSpec, build_backbone

    sup, pick = pipeline / "supernet" / "last.pt", pipeline / "search" / "subnet.yaml"
    code, out = cli("export", ["--supernet", sup, "--subnet", pick, "--out", tmp_path / "a", "--adapter-only"], capsys,
                    stdout=True)  # fmt: skip
    assert code == 0, out
    record = json.loads((tmp_path / "a" / "glora_adapter.json").read_text())
    base = build_backbone(BackboneSpec.from_dict(record["extra"]["backbone"])).eval()
    subnet = glora.load_adapter(base, tmp_path / "a")
    supernet = load_supernet(read_checkpoint(sup)).eval()
    glora.set_subnet(supernet, subnet)
    x = torch.randn(4, *base.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    plain = timm.create_model(f"local-dir:{pipeline / 'export'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(base(x), supernet(x))
        torch.testing.assert_close(glora.fold(base, subnet)(x), plain(x), rtol=1e-5, atol=1e-5)
    stats = json.loads((tmp_path / "a" / "glora_export.json").read_text())
    assert stats["adapter_bytes"] < stats["folded_bytes"] and stats["glora_params"] == glora.count_params(
        supernet, subnet
    )
