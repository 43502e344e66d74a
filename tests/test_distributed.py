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


def _empty_share_main(rank: int, port: int, out: str) -> None:
    """Each task kind's statistics gathered from two ranks, rank 1 holding no validation row."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    from glora.app.tasks import Task, lm_targets

    job, _ = setup_distributed(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batches = {
        "classification": (torch.randn(3, 2, generator=g), {"labels": torch.tensor([0, 1, 1])}),
        "regression": (torch.randn(3, 1, generator=g), {"labels": torch.randn(3, generator=g)}),
        "causal-lm": (torch.randn(3, 4, 5, generator=g), lm_targets(torch.randint(0, 5, (3, 4), generator=g))),
    }
    result = {}
    for kind, (logits, targets) in batches.items():
        task = Task(kind, num_classes=2 if kind == "classification" else None)
        mine = task.stats(logits, targets) if rank == 0 else task.empty_stats()
        result[kind] = [task.compute(job.gather(mine)), task.compute(task.stats(logits, targets))]
    if rank == 1:
        Path(out).write_text(json.dumps(result))
    job.close()


def test_a_rank_with_no_validation_row_gathers_with_the_others(tmp_path):
    """A validation split smaller than the number of ranks leaves a rank without rows: its empty statistics have
    the same columns and types as the others' (every task kind), so the gather and the metrics are the split's."""
    out = tmp_path / "metrics.json"
    mp.spawn(_empty_share_main, args=(free_port(), str(out)), nprocs=2, join=True)
    for kind, (gathered, alone) in json.loads(out.read_text()).items():
        assert gathered == alone, kind


def test_torchrun_validates_a_split_smaller_than_the_ranks(tmp_path, tiny_bert):
    """End to end: two processes, one validation row (the second rank's share is empty)."""
    from helpers import sentiment_rows, text_train_args, write_csv

    files = {s: write_csv(tmp_path / f"{s}.csv", sentiment_rows(n, i)) for i, (s, n) in
             enumerate([("train", 16), ("val", 1), ("test", 4)])}  # fmt: skip
    argv = text_train_args(tiny_bert, files, tmp_path / "two", "--device", "cpu")
    argv[argv.index("--epochs") + 1] = "1"
    two = torchrun("train_supernet.py", *argv)
    assert two.returncode == 0, two.stderr[-2000:]
    assert read_checkpoint(tmp_path / "two" / "last.pt")["log"][0]["val_acc"] in (0.0, 1.0)


def test_a_stop_asked_of_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """SIGTERM to one worker only: the flag travels with the step's loss, so both ranks stop at the same step
    (no all-reduce waits for a rank that left), rank 0 saves, and the run resumes to its end."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    log = tmp_path / "log.txt"
    argv = ["--epochs", "40", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "two")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    proc = subprocess.Popen([*launcher, "train_supernet.py", *argv], cwd=Path(__file__).parent.parent,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 300
    while "epoch 2/40" not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    text = log.read_text()
    assert "interrupted at epoch" in text and "continue with --resume" in text, text[-2000:]
    ckpt = read_checkpoint(tmp_path / "two" / "last.pt")
    assert 2 <= ckpt["epoch"] < 40
    done = torchrun("train_supernet.py", *argv, "--epochs", "3" if ckpt["epoch"] < 3 else str(ckpt["epoch"] + 1),
                    "--resume")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
