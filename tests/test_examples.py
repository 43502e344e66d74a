"""GLoRA in a user's own training code: the samplers and the search from Python, and docs/examples run as written on
tiny models (a plain loop, transformers' Trainer with its checkpoints and resume, TRL's SFTTrainer)."""

from __future__ import annotations

import json
import random
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT, ToyMLP, alpaca_rows, sentiment_files, write_jsonl

import glora
from glora.app.sampling import Sampling, SubnetSampler
from search import search_subnets

EXAMPLES = ROOT / "docs" / "examples"


def _example(name: str, *argv: str, monkeypatch) -> None:
    """Run docs/examples/NAME as ``python docs/examples/NAME ARGV`` does, in this process."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *map(str, argv)])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_every_example_is_run_by_a_test():
    here = Path(__file__).read_text(encoding="utf-8")
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["hf_trainer.py", "plain_loop.py", "trl_sft.py"]
    assert all(f'"{p.name}"' in here for p in EXAMPLES.glob("*.py"))


def test_a_sandwich_step_in_a_loop_of_ones_own_averages_its_subnets_gradients():
    """SubnetSampler.train_step: the gradients are the mean of the step's subnets' (the others learning the largest
    one's outputs with distillation), computed here by hand."""
    torch.manual_seed(0)
    model = glora.inject(ToyMLP(), glora.SearchSpace(lora_ranks=(2,)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    x, y = torch.randn(4, 5, 12), torch.randint(0, 3, (4,))
    sampler = SubnetSampler(model, Sampling("sandwich", sandwich_random=1, distill=True))
    loss = sampler.train_step(lambda: model(x).mean(1), lambda out: F.cross_entropy(out, y), random.Random(3))
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    subnets = sampler.draw(random.Random(3))
    glora.set_subnet(model, subnets[0])
    teacher = model(x).mean(1)
    losses = [F.cross_entropy(teacher, y)]
    for subnet in subnets[1:]:
        glora.set_subnet(model, subnet)
        out = model(x).mean(1)
        losses.append(-(teacher.detach().softmax(-1) * out.log_softmax(-1)).sum(-1).mean())
    (sum(losses) / len(losses)).backward()
    assert loss == pytest.approx(float(sum(losses) / len(losses)), rel=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7)


def test_search_subnets_takes_a_scoring_function_and_a_budget():
    torch.manual_seed(0)
    model = glora.inject(ToyMLP(), glora.SearchSpace(lora_ranks=(4, 2)))
    calls = []

    def lora_everywhere(subnet):  # prefers lora A: a score the search can climb
        calls.append(subnet)
        return sum(c["A"].startswith("lora") for c in subnet.values()) - 0.001 * glora.count_params(model, subnet)

    result = search_subnets(model, lora_everywhere, max_params=200, population=8, parents=2, mutations=3,
                            crossovers=3, generations=3, seed=1)  # fmt: skip
    assert result.params <= 200 and result.params == glora.count_params(model, result.subnet)
    assert result.evaluated == len(calls) and result.score == max(lora_everywhere(s) for s in calls[:-1])
    assert result.front and all(p <= 200 for p, _, _ in result.front)
    assert [layer.choice for layer in glora.glora_layers(model).values()] == [
        glora.parse_subnet(model, result.subnet)[n] for n in glora.glora_layers(model)
    ]  # the model is left set to the pick
    losses = search_subnets(model, lambda s: glora.count_params(model, s), greater_is_better=False, metric="loss",
                            population=6, parents=2, mutations=2, crossovers=2, generations=2)  # fmt: skip
    assert losses.params == min(p for p, _, _ in losses.front) and losses.log[-1]["metric"] == "loss"


@pytest.mark.slow
def test_the_plain_loop_example(tmp_path, monkeypatch, capsys):
    _example("plain_loop.py", "--epochs", "1", "--generations", "1", "--out", tmp_path, monkeypatch=monkeypatch)
    assert "pick:" in capsys.readouterr().out
    assert (tmp_path / "adapter" / "glora_adapter.json").is_file()


@pytest.mark.slow
def test_the_trainer_example_checkpoints_resume_and_search(tiny_bert, tmp_path, monkeypatch, capsys):
    """transformers.Trainer with GLoRATrainer: an adapter folder and the sampler's state at each checkpoint; a run
    resumed from the first checkpoint ends with the uninterrupted run's supernet, bit for bit."""
    files = sentiment_files(tmp_path)
    common = ["--model", tiny_bert, "--train-file", files["train"], "--validation-file", files["val"],
              "--generations", "1"]  # fmt: skip
    _example("hf_trainer.py", *common, "--epochs", "2", "--out", tmp_path / "full", monkeypatch=monkeypatch)
    assert "pick:" in capsys.readouterr().out
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "full").glob("checkpoint-*"))
    assert len(steps) == 2 and (tmp_path / "full" / f"checkpoint-{steps[0]}" / "glora_sampler.json").is_file()
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full" / f"checkpoint-{steps[0]}", cut / f"checkpoint-{steps[0]}")
    _example("hf_trainer.py", *common, "--epochs", "2", "--out", cut, "--resume", monkeypatch=monkeypatch)
    last = f"checkpoint-{steps[1]}/glora_adapter"
    a, b = glora.read_adapter(tmp_path / "full" / last)[1], glora.read_adapter(cut / last)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "full" / "adapter" / "glora_adapter.json").read_text())
    assert record["subnet"] and record["base"]["class"] == "BertForSequenceClassification"


@pytest.mark.slow
def test_the_trl_example(tiny_llama, tmp_path, monkeypatch, capsys):
    pytest.importorskip("trl")
    for split, n, seed in (("train", 16, 0), ("val", 6, 1)):
        rows = [{"prompt": r["instruction"] + " " + r["input"], "completion": " " + r["output"]}
                for r in alpaca_rows(n, seed)]  # fmt: skip
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    _example("trl_sft.py", "--model", tiny_llama, "--train-file", tmp_path / "train.jsonl", "--validation-file",
             tmp_path / "val.jsonl", "--out", tmp_path / "sft", "--epochs", "1", "--generations", "1",
             monkeypatch=monkeypatch)  # fmt: skip
    assert "pick:" in capsys.readouterr().out
    subnet = glora.load_adapter(__import__("transformers").AutoModelForCausalLM.from_pretrained(tiny_llama),
                                tmp_path / "sft" / "adapter")  # fmt: skip
    assert subnet and all(name.endswith(("q_proj", "v_proj")) for name in subnet)
