"""Supernet sampling: the paper's uniform draw unchanged, the sandwich rule (largest, smallest, random subnets, their
gradients averaged into one update), draws inside a training-time budget, and in-place distillation."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from helpers import cli, tiny_vit

import glora
from glora.app.data import ImageModality, ImageSet
from glora.app.sampling import Sampling, SubnetSampler
from glora.app.tasks import Task
from glora.app.trainer import Recipe, Trainer

SPACE = glora.SearchSpace(lora_ranks=(4, 2))


def _supernet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = glora.inject(tiny_vit(), SPACE)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model


def test_uniform_draws_are_the_papers_draws():
    model = _supernet()
    sampler = SubnetSampler(model, Sampling())
    a, b = random.Random(3), random.Random(3)
    assert [sampler.draw(a) for _ in range(5)] == [[glora.sample_subnet(model, b)] for _ in range(5)]


def test_the_sandwich_is_the_largest_the_smallest_and_random_ones_and_a_budget_is_kept():
    model = _supernet()
    sampler = SubnetSampler(model, Sampling(sampling="sandwich", sandwich_random=3, param_limit=0.0012))
    step = sampler.draw(random.Random(0))
    assert len(step) == sampler.size == 5
    largest, smallest = step[0], step[1]
    assert all(c == {"A": "lora_4", "B": "lora_4", "C": "lora_4", "D": "vector", "E": "vector"}
               for c in largest.values())  # fmt: skip
    assert glora.count_params(model, smallest) == 0
    genome = sampler.genome
    assert glora.count_params(model, largest) == genome.max_cost()
    rng = random.Random(1)
    costs = [glora.count_params(model, sampler.random(rng)) for _ in range(30)]
    assert max(costs) <= 1200 and len(set(costs)) > 5  # inside the budget, and still varied
    with pytest.raises(ValueError, match="--param-limit at training time: no subnet reaches --min-param-limit 10M"):
        SubnetSampler(model, Sampling(min_param_limit=10))
    with pytest.raises(ValueError, match="--distill .* needs --sampling sandwich"):
        Sampling(distill=True)
    with pytest.raises(ValueError, match="sampling must be one of uniform, sandwich"):
        Sampling(sampling="progressive")


def _data(n: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return ImageSet(labels=torch.arange(n) % 3, num_classes=3, images=images, size=(3, 16, 16))


def _trainer(model, sampling: Sampling) -> Trainer:
    recipe = Recipe(epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0, amp="off", workers=0, seed=5)
    modality = ImageModality({"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    return Trainer(model, _data(), recipe, modality=modality, device=torch.device("cpu"), sampling=sampling)


@pytest.mark.parametrize("distill", [False, True])
def test_a_sandwich_step_averages_its_subnets_gradients(distill):
    """One sandwich step's gradients are the mean of each subnet's own (the others learn the largest one's outputs
    under distillation); a support no subnet of the step reads gets no gradient (AdamW leaves it alone)."""
    model = _supernet()
    trainer = _trainer(model, Sampling(sampling="sandwich", sandwich_random=1, distill=distill))
    rng_state = trainer.rng.getstate()
    subnets = trainer.sampler.draw(random.Random(0))  # (the sampler only reads the RNG it is given)
    trainer.rng.setstate(rng_state)
    subnets = trainer.sampler.draw(trainer.rng)
    trainer.rng.setstate(rng_state)
    batch = next(iter(trainer.train_set.batches([list(range(8))])))
    x = trainer.modality.place(batch.inputs, torch.device("cpu"))["pixel_values"]
    y = batch.targets["labels"]
    ref = copy.deepcopy(model)
    task = Task(num_classes=3)
    expected: dict[str, torch.Tensor] = {}
    teacher = None
    for subnet in subnets:
        glora.set_subnet(ref, subnet)
        ref.zero_grad(set_to_none=True)
        out = ref(x)
        loss = task.distill_loss(out, teacher) if teacher is not None else task.loss(out, y)
        if distill and teacher is None:
            teacher = out.detach()
        (loss / 8).backward()
        for n, p in ref.named_parameters():
            if p.grad is not None:
                expected[n] = expected.get(n, 0) + p.grad / len(subnets)
    captured: dict[str, torch.Tensor | None] = {}
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: captured.update(
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    ) or step()  # fmt: skip
    trainer._step(batch, global_n=8, weight=1.0)
    for n, g in captured.items():
        if n in expected:
            torch.testing.assert_close(g, expected[n], rtol=1e-5, atol=1e-7)
        else:
            assert g is None, n  # no subnet of the step read it


def test_the_train_command_refuses_bad_sampling_in_one_line(tmp_path, capsys):
    code, err = cli("train", ["--distill", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--distill teaches the step's subnets the largest one's outputs" in err, err
    code, err = cli("train", ["--sampling", "sandwich", "--param-limit", "0.001", "--min-param-limit", "0.002",
                              "--out", tmp_path / "o"], capsys)  # fmt: skip
    assert code == 2 and "error: --param-limit at training time: inverted budget: --min-param-limit" in err, err


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_a_pick_learning_from_a_teacher_follows_the_mixed_loss(weight):
    """Retraining with a teacher: a fixed subnet's gradients are those of (1 - w) * cross-entropy to the labels +
    w * cross-entropy to the frozen teacher's class probabilities; the teacher itself never changes."""
    model = _supernet()
    pick = glora.make_subnet(model, A="lora_2", B="vector", C="none", D="scalar", E="none")
    teacher = copy.deepcopy(model).requires_grad_(False).eval()
    glora.set_subnet(teacher, SubnetSampler(teacher, Sampling()).largest)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    recipe = Recipe(epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0, amp="off", workers=0, seed=5)
    modality = ImageModality({"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    cpu = torch.device("cpu")
    trainer = Trainer(model, _data(), recipe, modality=modality, device=cpu, subnet=pick, teacher=teacher,
                      teacher_weight=weight)  # fmt: skip
    batch = next(iter(trainer.train_set.batches([list(range(8))])))
    x = trainer.modality.place(batch.inputs, cpu)["pixel_values"]
    ref = copy.deepcopy(model)
    glora.set_subnet(ref, pick)
    task = Task(num_classes=3)
    with torch.no_grad():
        taught = teacher(x)
    out = ref(x)
    loss = (1 - weight) * task.loss(out, batch.targets["labels"]) + weight * task.distill_loss(out, taught)
    (loss / 8).backward()
    captured: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: captured.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ) or step()  # fmt: skip
    trainer._step(batch, global_n=8, weight=1.0)
    assert captured
    for n, p in ref.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(captured[n], p.grad, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="a teacher trains one fixed subnet"):
        Trainer(_supernet(), _data(), recipe, modality=modality, device=cpu, teacher=teacher)
