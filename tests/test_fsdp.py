"""``--fsdp``: the supernet sharded with FSDP2 over 2 CPU processes (gloo) against one unsharded process.

A sharded run must compute what one process computes (same losses, validation metrics, trained tensors and AdamW
state, up to float32 rounding), save whole tensors (the same checkpoint as without sharding), resume exactly, and
search to the same pick.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port, in_process, torchrun

from glora.app.checkpoint import read_checkpoint
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.distributed import Distributed
from glora.app.sharding import available, check_path, fsdp_wanted, shard_units, skeleton

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

needs_fsdp = pytest.mark.skipif(available() is not None, reason=f"no FSDP2 here: {available()}")


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama folder and Commonsense170k-style train/validation files (as test_lm builds them)."""
    from helpers import commonsense_rows, make_llama, write_jsonl

    root = tmp_path_factory.mktemp("fsdp")
    return {
        "model": make_llama(root / "llama"),
        "train": write_jsonl(root / "train.jsonl", commonsense_rows(16, 0)),
        "val": write_jsonl(root / "val.jsonl", commonsense_rows(5, 1)),  # 15 option sequences: uneven shares of a batch
    }


def _train_args(lm: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model", str(lm["model"]), "--dataset", "instructions", "--train-file", str(lm["train"]),
            "--validation-file", str(lm["val"]), "--max-seq-length", "96", "--epochs", "2", "--batch-size", "8",
            "--lr", "0.01", "--warmup-epochs", "0", "--no-progress", "--device", "cpu", "--bias-free", "exclude",
            "--gift-ranks", "2", "--clip-grad", "1.0", "--out", str(out), *extra]  # fmt: skip


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)
    den = sum((a[k].double() ** 2).sum() for k in a)
    return float((num / den).sqrt())


# ---------------------------------------------------------------------- without processes
def test_shard_units_are_the_blocks():
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    llama = transformers.LlamaForCausalLM(cfg)
    assert [type(m).__name__ for m in shard_units(llama)] == ["LlamaDecoderLayer"] * 3  # its _no_split_modules
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=3)
    assert shard_units(vit) == list(vit.blocks)  # the repeated blocks of the longest container
    assert shard_units(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())) == []  # the root alone
    bert = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    units = [type(m).__name__ for m in shard_units(transformers.BertForSequenceClassification(bert))]
    assert units == ["BertEmbeddings", "BertLayer", "BertLayer"]
    # Word embeddings tied to the MLM decoder (outside the embeddings block): that block stays with the root.
    assert [type(m).__name__ for m in shard_units(transformers.BertForMaskedLM(bert))] == ["BertLayer", "BertLayer"]


def test_fsdp_refuses_what_a_sharded_model_cannot_run(caplog):
    two = Distributed(rank=0, world=2)
    args = argparse.Namespace(fsdp=True, compile=None, execution="auto")
    assert fsdp_wanted(args, two) is (available() is None)
    assert not fsdp_wanted(argparse.Namespace(fsdp=False), two)
    with caplog.at_level("WARNING"):
        assert not fsdp_wanted(args, Distributed())  # one process: nothing to shard over, said so
    assert "nothing to shard" in caplog.text
    if available() is None:
        with pytest.raises(ValueError, match="--compile cannot be combined with --fsdp"):
            fsdp_wanted(argparse.Namespace(fsdp=True, compile=True, execution="auto"), two)
        with pytest.raises(ValueError, match="--execution manual cannot run under --fsdp"):
            fsdp_wanted(argparse.Namespace(fsdp=True, compile=None, execution="manual"), two)
    assert check_path("auto") == "static" and check_path("autograd") == "autograd"


def test_memory_check_counts_one_ranks_share_under_fsdp(lm, tmp_path, monkeypatch):
    """Under --fsdp each rank holds 1/world of the trainable state and of the frozen backbone: the memory check
    must size one rank's share (a model that fits split over 4 GPUs is not refused for one GPU's memory), and
    unsharded it must size the whole."""
    import glora.app.commands.train as train_cmd
    import glora.app.sharding as sharding
    from glora.app.options.train import backbone_from_args, build_parser, parse_train_args

    class SizedError(Exception):  # stops the build once the check has been asked
        pass

    seen: list[tuple[int, int]] = []

    def record(elements, device, out, *, enabled=True, element_size=4, frozen_bytes=0):
        seen.append((elements, frozen_bytes))
        raise SizedError

    monkeypatch.setattr(train_cmd, "check_training_size", record)
    monkeypatch.setattr(sharding, "align_to_rank0", lambda model, job: None)  # a collective: no process group here
    args = parse_train_args(build_parser(), _train_args(lm, tmp_path / "out")).args
    for dist, sharded in ((Distributed(), False), (Distributed(rank=0, world=4), True)):
        run = object.__new__(train_cmd._SupernetRun)
        run.args, run.dist, run.out, run.sharded = args, dist, tmp_path / "out", sharded
        run.spec = backbone_from_args(args, None)
        with pytest.raises(SizedError):
            run._build_model(torch.device("cpu"))
    (whole, frozen), (share, frozen_share) = seen
    assert whole > 0 and frozen > 0
    assert share == whole // 4 and frozen_share == frozen // 4


def _tied_llama(dtype: torch.dtype | None = None):
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    return model if dtype is None else model.to(dtype)


def test_skeleton_takes_no_memory_and_rank0s_dtypes():
    from glora.app.sharding import _layout, _match

    meta = skeleton(lambda where: _tied_llama())
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    real = _tied_llama(torch.bfloat16)
    _match(meta, _layout(real))
    assert {p.dtype for p in meta.parameters()} == {torch.bfloat16}
    assert meta.lm_head.weight is meta.model.embed_tokens.weight  # still tied after the cast
    other = skeleton(lambda where: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2)))  # fmt: skip
    with pytest.raises(ValueError, match="another model than rank 0"):
        _match(other, _layout(real))


def _distribute_main(rank: int, port: int, out: str) -> None:
    """Rank 0 holds a bf16 model with tied embeddings; rank 1 a float32 skeleton of it. After distribution both
    hold rank 0's values (gathered whole again here), its dtypes, the tie, and the rotary buffers."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    from glora.app.distributed import setup_distributed
    from glora.app.sharding import build_on_ranks, distribute_from_rank0, full

    job, device = setup_distributed(torch.device("cpu"))
    reference = _tied_llama(torch.bfloat16)
    reads = []

    def whole():  # what reads the weights: rank 0 alone calls it
        reads.append(rank)
        return reference

    model = build_on_ranks(whole, lambda where: _tied_llama(), job, sharded=True)
    expected = {n: t.clone() for n, t in reference.state_dict().items()}
    buffers = {n: b.clone() for n, b in reference.named_buffers()}
    distribute_from_rank0(model, job, device)
    got = {n: full(t).detach() for n, t in model.state_dict().items()}
    ok = all(torch.equal(got[n], expected[n]) and got[n].dtype == expected[n].dtype for n in expected)
    ok &= all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    ok &= model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        plain = reference(input_ids=ids).logits if rank == 1 else logits
    ok &= torch.equal(logits, plain)
    ok &= reads == ([0] if rank == 0 else [])  # rank 1 built a skeleton and read nothing
    Path(f"{out}.{rank}").write_text(json.dumps(bool(ok)))
    job.close()


@pytest.mark.slow
@needs_fsdp
def test_only_rank0_reads_the_weights_and_every_rank_gets_them(tmp_path):
    mp.spawn(_distribute_main, args=(free_port(), str(tmp_path / "ok")), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"ok.{r}").read_text()) for r in (0, 1)] == [True, True]


def _adapter_main(rank: int, port: int, root: str) -> None:
    """An adapter saved from a sharded model equals the one saved before sharding (rank 0 writes), and loads onto a
    sharded fresh base, which then computes the saved model's outputs."""
    import random

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    from helpers import randomize_supports

    import glora
    from glora.app.distributed import setup_distributed
    from glora.app.sharding import shard_model

    job, device = setup_distributed(torch.device("cpu"))
    space = glora.SearchSpace(lora_ranks=(2,))
    model = glora.inject(_tied_llama(), space, ["q_proj", "v_proj"])
    randomize_supports(model, seed=3)
    subnet = glora.sample_subnet(model, random.Random(1))
    glora.set_subnet(model, subnet)
    ids = torch.arange(10).reshape(1, 10)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    if rank == 0:
        glora.save_adapter(model, Path(root) / "whole", subnet)
    job.barrier()
    shard_model(model, device, 2)
    glora.save_adapter(model, Path(root) / "sharded", subnet)  # every rank gathers, rank 0 writes
    fresh = glora.inject(_tied_llama(), space, ["q_proj", "v_proj"])
    shard_model(fresh, device, 2)
    glora.set_execution(fresh, path="static")  # a sharded model runs the static path (as the commands run it)
    glora.load_adapter(fresh, Path(root) / "whole")
    with torch.no_grad():
        ok = bool(torch.allclose(fresh(input_ids=ids).logits, expected, atol=1e-6))
    job.barrier()
    if rank == 0:
        a, b = glora.read_adapter(Path(root) / "whole")[1], glora.read_adapter(Path(root) / "sharded")[1]
        ok &= a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    Path(f"{root}/ok.{rank}").write_text(json.dumps(ok))
    job.close()


@pytest.mark.slow
@needs_fsdp
def test_an_adapter_saves_from_and_loads_into_a_sharded_model(tmp_path):
    mp.spawn(_adapter_main, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"ok.{r}").read_text()) for r in (0, 1)] == [True, True]


# ---------------------------------------------------------------------- two processes
@pytest.mark.slow
@needs_fsdp
def test_sharded_training_resume_and_search_match_one_process(lm, tmp_path):
    """Train (GIFT, clipping, gradient checkpointing) sharded and unsharded; stop a sharded run after one epoch and
    resume it sharded, and once more unsharded (the checkpoint is the same file either way); search both ways."""
    ckpt = ["--gradient-checkpointing"]
    _ok(torchrun("train_supernet.py", *_train_args(lm, tmp_path / "two", "--fsdp", *ckpt)))
    in_process(train_main, *_train_args(lm, tmp_path / "one", "--execution", "static", *ckpt))
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    for ra, rb in zip(a["log"], b["log"], strict=True):
        assert ra["lr"] == rb["lr"] and ra["val_mc_accuracy"] == rb["val_mc_accuracy"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
    assert _rel(a["trainable"], b["trainable"]) < 1e-5
    assert any("glora_gift" in k for k in b["trainable"])  # the generators at the root, sharded with it
    # The optimizer state saved whole, index by index as an unsharded run saves it.
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sb
    for i in sa:
        torch.testing.assert_close(sb[i]["exp_avg"], sa[i]["exp_avg"], rtol=1e-3, atol=1e-9)
        torch.testing.assert_close(sb[i]["exp_avg_sq"], sa[i]["exp_avg_sq"], rtol=1e-3, atol=1e-12)
        assert float(sa[i]["step"]) == float(sb[i]["step"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["config.yaml", "last.pt", "log.jsonl"]

    # Resume: sharded -> sharded is the uninterrupted run exactly; sharded -> one process within rounding.
    _ok(torchrun("train_supernet.py", *_train_args(lm, tmp_path / "r", "--fsdp", *ckpt, "--stop-after", "1")))
    assert len(read_checkpoint(tmp_path / "r" / "last.pt")["log"]) == 1 < len(b["log"])  # it stopped after one
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "last.pt").write_bytes((tmp_path / "r" / "last.pt").read_bytes())
    (tmp_path / "r1" / "config.yaml").write_bytes((tmp_path / "r" / "config.yaml").read_bytes())
    _ok(torchrun("train_supernet.py", "--resume", "--out", str(tmp_path / "r")))
    c = read_checkpoint(tmp_path / "r" / "last.pt")
    assert [r["loss"] for r in c["log"]] == [r["loss"] for r in b["log"]]
    assert all(torch.equal(c["trainable"][k], b["trainable"][k]) for k in b["trainable"])
    in_process(train_main, "--resume", "--no-fsdp", "--execution", "static", "--out", str(tmp_path / "r1"))
    assert _rel(read_checkpoint(tmp_path / "r1" / "last.pt")["trainable"], b["trainable"]) < 1e-5

    # Search: every candidate evaluated by both ranks together, on shares of each batch; the same evolution.
    small = ["--population", "6", "--parents", "2", "--mutations", "2", "--crossovers", "2", "--generations", "2",
             "--device", "cpu", "--no-progress", "--param-limit", "none",
             "--supernet", str(tmp_path / "one" / "last.pt")]  # fmt: skip
    _ok(torchrun("search.py", *small, "--fsdp", "--out", str(tmp_path / "s2")))
    in_process(search_main, *small, "--out", str(tmp_path / "s1"))
    s1 = json.loads((tmp_path / "s1" / "search_state.json").read_text())
    s2 = json.loads((tmp_path / "s2" / "search_state.json").read_text())
    assert s1["population"] == s2["population"]
    assert [g for g, _ in s1["cache"]] == [g for g, _ in s2["cache"]]
    for (_, f1), (_, f2) in zip(s1["cache"], s2["cache"], strict=True):
        assert f1 == pytest.approx(f2, rel=1e-5)  # folded (one process) vs the static path (sharded)
    assert (tmp_path / "s1" / "subnet.yaml").read_text() == (tmp_path / "s2" / "subnet.yaml").read_text()
    f1, f2 = (json.loads((tmp_path / d / "search_log.jsonl").read_text().splitlines()[-1]) for d in ("s1", "s2"))
    assert f2["final"] and f2["val_metrics"]["mc_accuracy"] == f1["val_metrics"]["mc_accuracy"]


def test_sharded_search_refuses_eval_sets_before_reading_anything(tmp_path):
    from glora.app.commands.search import _SearchRun
    from glora.app.options import parse_args
    from glora.app.options.search import build_parser

    if available() is not None:
        pytest.skip(available())
    (tmp_path / "dg").mkdir()
    argv = ["--supernet", str(tmp_path / "none.pt"), "--fsdp", "--eval-set", f"dg={tmp_path / 'dg'}"]
    args = parse_args(build_parser(), argv)
    with pytest.raises(ValueError, match="--eval-set cannot be combined with --fsdp"):
        _SearchRun(args, Distributed(rank=0, world=2), torch.device("cpu"), None)
