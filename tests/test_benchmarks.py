"""Every benchmark runs as a module of the ``benchmarks`` package at a toy size and writes the shared JSON layout
(the figures themselves are measured by hand, alone on a machine, and recorded in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import python

pytestmark = pytest.mark.slow  # each runs in its own process

TOY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "4", "--device", "cpu"]
PEAK_METHODS = ["--memory-samples", "1", "--methods", "bias-only", "glora-supernet"]


@pytest.mark.parametrize(
    "name, args, rows",
    [
        (  # every method, timed and its saved tensors counted in one process
            "train_step",
            [*TOY, "--num-classes", "5", "--rounds", "1", "--warmup", "0", "--memory-samples", "1"],
            ["bias-only", "glora-supernet", "glora-static", "glora-reference", "glora-lora8"],
        ),
        (  # --peak: each method's peak memory in a process of its own (two methods: each process costs an import)
            "train_step",
            [*TOY, "--num-classes", "5", "--rounds", "1", "--warmup", "0", "--peak", *PEAK_METHODS],
            ["bias-only", "glora-supernet"],
        ),
        ("candidate_eval", [*TOY, "--images", "8", "--rounds", "1"], ["plain model", "glora.folded (search)"]),
        ("layer_costs", [*TOY[:6], "--rounds", "1", "--warmup", "0"], ["shapes", "uniform_all_layers"]),
        (
            "lm_step",
            [
                "--layers",
                "1",
                "--hidden",
                "32",
                "--heads",
                "2",
                "--intermediate",
                "48",
                "--vocab",
                "64",
                "--seq",
                "16",
                "--batch-size",
                "2",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--peak",
                "--dtype",
                "bf16",
                "--support-dtype",
                "float32",
                "--gradient-checkpointing",
                "--methods",
                "norms-only",
                "glora-supernet",
                "glora-supernet-nf4",
            ],
            ["norms-only", "glora-supernet", "glora-supernet-nf4"],
        ),
        (
            "profile_step",
            [*TOY, "--num-classes", "5", "--steps", "1", "--methods", "bias-only", "glora-supernet"],
            ["bias-only", "glora-supernet"],
        ),
    ],
)
def test_benchmark_runs_and_writes_json(tmp_path, name, args, rows):
    out = tmp_path / f"{name}.json"
    done = python("-m", f"benchmarks.perf.{name}", *args, "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == name and f"benchmarks.perf.{name}" in record["command"]
    assert {"date", "machine", "args", "results"} <= set(record)
    assert set(rows) <= set(record["results"])
    if name in ("train_step", "lm_step"):
        assert all(r["step_ms"] > 0 for r in record["results"].values())
    if name == "lm_step":  # a 4-bit base holds fewer frozen bytes than the bf16 one
        assert record["results"]["glora-supernet-nf4"]["frozen_mib"] < record["results"]["glora-supernet"]["frozen_mib"]
    if "--peak" in args:
        assert all(r["peak_mib"] is not None for r in record["results"].values())


def test_the_7b_memory_count_checks_its_formula_against_real_quantized_layers(tmp_path):
    pytest.importorskip("bitsandbytes")
    done = python("-m", "benchmarks.perf.lm_memory", "--models", "llama2-7b", "--json", str(tmp_path / "m.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "m.json").read_text())["results"]
    assert results["formula_checked"] == 12 and results["formula_mismatches"] == 0
    llama = results["models"]["llama2-7b"]
    assert llama["linear_bytes"]["nf4+dq"] <= 0.3 * llama["linear_bytes"]["bf16"]
    assert llama["trainable"] == 11_010_560  # the Q/V supernet counted in RESULTS.md


def test_fsdp_benchmark_shards_what_each_rank_holds(tmp_path):
    from helpers import torchrun

    from glora.app.sharding import available

    if available() is not None:
        pytest.skip(available())
    args = ["--layers", "2", "--hidden", "32", "--heads", "2", "--intermediate", "48", "--vocab", "64", "--seq", "16",
            "--batch-size", "3", "--rounds", "1", "--warmup", "0"]  # fmt: skip
    done = torchrun("-m", "benchmarks.perf.fsdp_step", *args, "--json", str(tmp_path / "f.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "f.json").read_text())["results"]
    whole, shard = rows["data parallel"], rows["fsdp"]
    assert shard["frozen_mib"] <= 0.55 * whole["frozen_mib"]  # each of 2 ranks holds about half
    assert shard["trainable_mib"] <= 0.55 * whole["trainable_mib"]
    assert whole["step_ms"] > 0 and shard["step_ms"] > 0


def test_vtab_e2e_runs_the_three_commands_on_synthetic_data(tmp_path):
    args = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--train", "20", "--val", "10", "--test", "10"]
    args += ["--epochs", "1", "--batch-size", "8", "--population", "4", "--generations", "1", "--device", "cpu"]
    work, out = str(tmp_path / "w"), str(tmp_path / "e.json")
    done = python("-m", "benchmarks.perf.vtab_e2e", *args, "--work", work, "--json", out)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = json.loads((tmp_path / "e.json").read_text())["results"]["seconds"]
    assert set(seconds) == {"data", "train", "search", "export"}
    assert (tmp_path / "w" / "export" / "model.safetensors").is_file()


def test_accuracy_benchmark_runs_through_the_trainer(tmp_path):
    args = ["--seeds", "0", "--epochs", "1", "--tau-subnets", "2", "--generations", "1", "--out", str(tmp_path)]
    done = python("-m", "benchmarks.studies.accuracy", *args, "--json", str(tmp_path / "a.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["methods"]) >= {"linear probe", "full fine-tuning"}
    assert (tmp_path / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "a.json").read_text())["results"]["kendall_tau"] == result["kendall_tau"]


def test_rank_faithfulness_benchmark_scores_every_strategy_on_the_same_candidates(tmp_path):
    args = ["--epochs", "1", "--alone-epochs", "1", "--candidates", "2", "--generations", "1", "--seeds", "0",
            "--strategies", "uniform (paper)", "recommended preset", "--search-metric", "loss"]  # fmt: skip
    done = python("-m", "benchmarks.studies.rank_faithfulness", *args, "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "r.json").read_text())["results"]
    result = record["seeds"]["0"]
    assert set(result["strategies"]) == {"uniform (paper)", "recommended preset"}
    assert set(record["summary"]) == {"lora_test_acc", "uniform (paper)", "recommended preset"}
    # the candidates lie in the space both supernets trained: the preset's leaves C's lora out
    assert not any(str(c["C"]).startswith("lora") for subnet in result["candidates"] for c in subnet.values())
    assert len(result["candidates"]) == len(result["stand_alone"]) == 2
    assert all(a["loss"] > 0 and 0 <= a["accuracy"] <= 1 for a in result["stand_alone"])
    for r in result["strategies"].values():
        for key in ("kendall_tau", "kendall_tau_loss_vs_acc", "kendall_tau_loss"):
            tau = r[key]  # NaN when every candidate ties on one side
            assert tau != tau or -1 <= tau <= 1
        assert len(r["inherited"]) == 2 and r["pick"]["params"] <= result["budget"]
        # two candidates: their losses differ, so the loss taus are +-1 (the accuracies may tie)
        assert abs(r["kendall_tau_loss"]) == 1


def test_budget_fair_benchmark_counts_every_stage_and_resumes(tmp_path):
    """Each method at the same total epochs (GLoRA: supernet + retraining), the searched ones inside LoRA r=8's
    parameter count; a rerun with the same --work reads the finished stages back instead of training again."""
    work = tmp_path / "w"
    tiny = "--population 4 --parents 2 --mutations 2 --crossovers 2 --generations 1"
    args = ["--task", "embedded", "--epochs", "2", "--seeds", "0", "--methods", "lora", "ssf", "glora", "--work",
            str(work), "--search", tiny, "--retrain-warmup", "0"]  # fmt: skip
    done = python("-m", "benchmarks.studies.budget_fair", *args, "--json", str(tmp_path / "b.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "b.json").read_text())["results"]["runs"]["2"]
    lora, glora = runs["lora"]["0"], runs["glora"]["0"]
    assert glora["params"] <= lora["params"] and set(glora["seconds"]) == {"supernet", "search", "retrain", "score"}
    assert set(runs["ssf"]["0"]["seconds"]) == {"train", "search"}
    root = work / "glora-e2-s0-rw0-Cvectornone"  # a retraining schedule and a space of their own: their own folder
    supernet = (root / "supernet" / "log.jsonl").read_text().splitlines()
    retrain = (root / "retrain" / "log.jsonl").read_text().splitlines()
    assert len(supernet) + len(retrain) == 2  # the same total epochs as every fixed method
    assert yaml.safe_load((root / "retrain" / "config.yaml").read_text())["warmup-epochs"] == 0
    supernet_config = yaml.safe_load((root / "supernet" / "config.yaml").read_text())
    assert supernet_config["warmup-epochs"] == 2
    # the recommended preset: the sandwich rule in the budget, distilled, C without lora, subnets ranked by loss
    assert supernet_config["sampling"] == "sandwich" and supernet_config["distill"] is True
    assert supernet_config["metric"] == "loss"
    assert json.loads((root / "search" / "search_log.jsonl").read_text().splitlines()[-1])["metric"] == "loss"
    assert supernet_config["choices"] == ["C=vector,none"]
    assert float(supernet_config["param-limit"]) * 1e6 == pytest.approx(lora["params"], abs=1)
    assert "C: lora" not in (root / "search" / "subnet.yaml").read_text()
    again = python("-m", "benchmarks.studies.budget_fair", *args, "--json", str(tmp_path / "c.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "c.json").read_text())["results"]["runs"]["2"] == runs  # read back, not rerun
    # another evolution in the same --work is refused, not read back as its result
    other = [*args[: args.index("--search") + 1], tiny.replace("--generations 1", "--generations 2"),
             *args[args.index("--search") + 2 :]]  # fmt: skip
    refused = python("-m", "benchmarks.studies.budget_fair", *other)
    assert refused.returncode != 0 and "give another --work" in refused.stderr, refused.stderr[-3000:]


@pytest.mark.parametrize("options, folder, extra", [
    ([], "glora-e8-s0-rw0-Cvectornone", []),
    (["--search-targets", "query", "key", "dense"], "glora-e8-s0-rw0-Cvectornone-tquerykeydense",
     ["--targets", "query", "key", "dense"]),
    (["--lora-ranks", "16", "8", "4"], "glora-e8-s0-rw0-Cvectornone-r16-8-4", ["--lora-ranks", "16", "8", "4"]),
])  # fmt: skip
def test_budget_fair_space_options_reach_the_searched_methods_only(tmp_path, monkeypatch, options, folder, extra):
    """--search-targets and --lora-ranks widen the searched methods' space (the supernet's glora-train), never a
    fixed method's; each space runs in its own work folder, and the budget stays LoRA's on the task's layers."""
    from benchmarks.studies import budget_fair

    trained: list[list[str]] = []
    record = {"params": 100, "val_metrics": {"accuracy": 0.5}, "test_metrics": {"accuracy": 0.5}}
    monkeypatch.setattr(budget_fair, "_train", trained.append)
    monkeypatch.setattr(budget_fair, "_search", lambda *a: record)
    args = budget_fair.parse(["--retrain-warmup", "0", *options])
    task = ["--model", "m", "--targets", "query", "value", "--lr", "1e-3"]
    budget_fair.run_method("lora", 8, 0, task, None, args, tmp_path)
    budget_fair.run_method("glora", 8, 0, task, 73728, args, tmp_path)
    lora, supernet, retrain = trained
    last = max(i for i, a in enumerate(lora) if a == "--targets")  # the one argparse keeps
    assert "--lora-ranks" not in lora and lora[last + 1 : last + 3] == ["query", "value"]
    if extra:
        at = supernet.index(extra[0], supernet.index("--seed"))
        assert supernet[at : at + len(extra)] == extra  # given after the task's: argparse keeps the last
    assert supernet[supernet.index("--param-limit") + 1] == "0.073728"
    assert (tmp_path / folder / "supernet.stage.json").is_file()
    assert retrain[:2] == ["--init-from", str(tmp_path / folder / "supernet" / "last.pt")]  # the space comes along


def test_budget_fair_refuses_search_targets_on_the_embedded_task(capsys):
    from benchmarks.studies import budget_fair

    with pytest.raises(SystemExit):
        budget_fair.parse(["--task", "embedded", "--search-targets", "qkv"])
    assert "--search-targets is for --task sentiment" in capsys.readouterr().err
