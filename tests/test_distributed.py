"""Data parallelism with 2 CPU processes (gloo) against a single process on the same global batch."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import ToyMLP, free_port, in_process, randomize_supports, torchrun

import glora
from glora.app import read_checkpoint
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.distributed import setup_distributed

pytestmark = pytest.mark.slow  # processes and process groups


def _model_and_batch(n: int):
    torch.manual_seed(0)
    model = glora.inject(ToyMLP().double(), glora.SearchSpace(lora_ranks=(4, 2)))
    randomize_supports(model, seed=1)
    glora.set_subnet(model, glora.sample_subnet(model, random.Random(2)))
    g = torch.Generator().manual_seed(3)
    return model, torch.randn(n, 5, 12, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _rank_main(rank: int, port: int, n: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    job, _ = setup_distributed(torch.device("cpu"))
    model, x, y = _model_and_batch(n)
    params = [p for p in model.parameters() if p.requires_grad]
    part = x[job.shard(n)]
    weight = 1.0 if len(part) else 0.0
    sel = job.shard(n) if len(part) else slice(0, 1)  # an empty share runs one item with weight 0
    logits = model(x[sel]).mean(1)
    (F.cross_entropy(logits, y[sel], reduction="sum") * weight / n).backward()
    job.all_reduce_grads(params)
    if rank == 0:
        ref, x, y = _model_and_batch(n)
        F.cross_entropy(ref(x).mean(1), y).backward()
        ref_params = [p for p in ref.parameters() if p.requires_grad]
        result = []
        for (name, p), q in zip(((n_, p) for n_, p in model.named_parameters() if p.requires_grad), ref_params):
            if q.grad is None:
                result.append([name, p.grad is None, 0.0])
            else:
                result.append([name, p.grad is not None, (p.grad - q.grad).abs().max().item()])
        Path(out).write_text(json.dumps(result))
    job.close()


@pytest.mark.parametrize("n", [7, 1], ids=["uneven-shares", "one-rank-empty"])
def test_all_reduced_gradients_equal_single_process(tmp_path, n):
    out = tmp_path / "grads.json"
    mp.spawn(_rank_main, args=(free_port(), n, str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    assert result
    for name, same_presence, diff in result:
        assert same_presence, f"{name}: gradient present on one side only (unused parameters must stay None)"
        assert diff < 1e-12, f"{name}: {diff}"


def test_torchrun_training_and_search_match_a_single_process(tmp_path):
    common = ["--epochs", "2", "--device", "cpu"]
    two = torchrun("train_supernet.py", *common, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    in_process(train_main, *common, "--out", str(tmp_path / "one"))
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    for ra, rb in zip(a["log"], b["log"], strict=True):
        assert ra["lr"] == rb["lr"]
        assert abs(ra["val_acc"] - rb["val_acc"]) <= 0.01  # at most 2 of 200 borderline images may flip
        assert abs(ra["loss"] - rb["loss"]) < 1e-4 * abs(ra["loss"])
    # Parameters: equal up to rounding that Adam's per-element normalisation can amplify on tiny gradients.
    num = sum(((a["trainable"][k] - b["trainable"][k]) ** 2).sum() for k in a["trainable"])
    den = sum((a["trainable"][k] ** 2).sum() for k in a["trainable"])
    assert (num / den).sqrt() < 1e-2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.yaml", "last.pt", "log.jsonl"]

    small = "--population 6 --parents 2 --mutations 2 --crossovers 2 --generations 2 --device cpu".split()
    small += ["--supernet", str(tmp_path / "one" / "last.pt")]
    two = torchrun("search.py", *small, "--out", str(tmp_path / "s2"))
    assert two.returncode == 0, two.stderr[-2000:]
    in_process(search_main, *small, "--out", str(tmp_path / "s1"))
    s1 = json.loads((tmp_path / "s1" / "search_state.json").read_text())
    s2 = json.loads((tmp_path / "s2" / "search_state.json").read_text())
    assert s1["cache"] == s2["cache"] and s1["population"] == s2["population"]
    assert (tmp_path / "s1" / "subnet.yaml").read_text() == (tmp_path / "s2" / "subnet.yaml").read_text()
