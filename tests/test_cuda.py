"""The same exactness checks on a CUDA device, and the training paths a GPU takes (bf16 autocast, nccl, compile).

Skipped without a GPU (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from helpers import (
    CASE_IDS,
    CASES,
    TINY_SEARCH,
    build,
    check_every_choice,
    layer_grads,
    make_layer,
    perturb,
    python,
    randomize_supports,
    rel_err,
    tiny_vit,
)

import glora
from glora.app import read_checkpoint
from glora.space import LayerChoice

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    "space", [glora.SearchSpace(lora_ranks=(8, 4)), glora.SearchSpace(lora_ranks=(3,), gift_ranks=(2,))]
)
def test_manual_equals_reference_on_cuda_float64(space, bias):
    layer = make_layer(space, bias).to(CUDA)
    if layer.gift is not None:  # shared by its group, so not a submodule of the layer
        layer.gift.to(CUDA)
    g = torch.Generator(CUDA).manual_seed(0)
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64, device=CUDA, generator=g).requires_grad_()
    gy = torch.randn(2, 3, layer.out_features, dtype=torch.float64, device=CUDA, generator=g)
    check_every_choice(layer, x, gy)


def test_manual_bf16_autocast_on_cuda_is_as_close_to_float64_as_autograd():
    """Under bf16 autocast the manual path's error against a float64 reference is that of plain autograd."""
    torch.manual_seed(0)
    layer = glora.GLoRALinear(torch.nn.Linear(256, 384), glora.SearchSpace(lora_ranks=(8, 4)))
    with torch.no_grad():
        for p in layer.support_params():
            p.normal_(0, 0.05)
    x = torch.randn(4, 197, 256)
    gy = torch.randn(4, 197, 384)
    for combo in [
        ("lora_8", "vector", "lora_4", "vector", "vector"),
        ("vector", "lora_8", "none", "vector", "none"),
        ("scalar", "scalar", "vector", "none", "scalar"),
    ]:
        layer.set_choice(LayerChoice(*map(glora.Choice.parse, combo)))
        exact = layer_grads(layer.double(), x.double().requires_grad_(), gy.double(), "autograd")
        layer.float().to(CUDA)
        xc = x.to(CUDA).requires_grad_()
        err = {}
        for path in ("autograd", "manual", "static"):
            layer.execution = dataclasses.replace(layer.execution, path=path)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = layer(xc)
            grads = torch.autograd.grad(y, [xc, *layer.support_params()], gy.to(CUDA, y.dtype), allow_unused=True)
            pairs = [(y, exact[0]), *zip(grads, exact[1])]
            err[path] = max(
                rel_err(a.double().cpu(), b) for a, b in pairs if a is not None and b is not None and b.any()
            )
        layer.cpu()
        for path in ("manual", "static"):
            assert err[path] < 2e-2, (combo, err)
            assert err[path] <= 2 * err["autograd"] + 1e-3, (combo, err)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fold_matches_supernet_float64_on_cuda(case):
    _, supernet = build(case)
    randomize_supports(supernet, seed=1)
    supernet.to(CUDA)
    x = case.input(seed=2).to(CUDA)
    for i in range(4):
        subnet = glora.sample_subnet(supernet, random.Random(i))
        glora.set_subnet(supernet, subnet)
        y = supernet(x)
        assert rel_err(glora.fold(supernet, subnet)(x), y) < 1e-9
        with torch.no_grad(), glora.folded(supernet, subnet):
            assert rel_err(supernet(x), y) < 1e-9


def test_compiled_step_with_cuda_graphs_equals_eager_without_recompiling():
    """The captured path (torch.compile, mode reduce-overhead: CUDA graphs) against the eager static path, over
    random subnets: outputs and every gradient agree in float32, and switching subnets replays the same graph."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = tiny_vit(num_classes=5)
    perturb(model, seed=1)
    glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,)))
    randomize_supports(model, seed=2)
    model.to(CUDA).train()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(8, 3, 16, 16, device=CUDA, generator=torch.Generator(CUDA).manual_seed(3))
    rng = random.Random(4)
    graphs = None

    def step(forward):
        model.zero_grad(set_to_none=True)
        y = forward(x)
        y.square().sum().backward()
        return y.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for _ in range(12):
        glora.set_subnet(model, glora.sample_subnet(model, rng))
        y_c, g_c = step(compiled)
        graphs = counters["stats"]["unique_graphs"] if graphs is None else graphs
        glora.set_execution(model, path="static")
        y_s, g_s = step(model)
        glora.set_execution(model, path="auto")
        torch.testing.assert_close(y_c, y_s, rtol=1e-4, atol=1e-4)
        scale = max(g.abs().max().item() for g in g_s.values())
        for name in g_s:
            torch.testing.assert_close(
                g_c[name], g_s[name], rtol=1e-3, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}"
            )
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize(
    "launch",
    [
        ["train_supernet.py"],
        ["train_supernet.py", "--no-compile"],
        ["train_supernet.py", "--unused-supports", "update", "--execution", "static"],
        ["-m", "torch.distributed.run", "--nproc_per_node=1", "train_supernet.py"],
    ],
    ids=["default-compiled", "eager-manual", "update-semantics", "torchrun-nccl"],
)
@pytest.mark.slow
def test_training_on_cuda(tmp_path, launch):
    """bf16 autocast on CUDA (the default there) trains the embedded task: compiled with CUDA graphs by default,
    eagerly, with the reference optimizer semantics, and under torchrun (nccl); then a compiled search runs."""
    out = tmp_path / "run"
    done = python(*launch, "--epochs", "3", "--device", "cuda", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = read_checkpoint(out / "last.pt")
    assert len(ckpt["log"]) == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in ckpt["log"])
    assert ckpt["log"][-1]["val_acc"] > 0.3  # chance is 0.2: the adapted classes are being learned
    if launch == ["train_supernet.py"]:
        search = [*TINY_SEARCH, "--device", "cuda", "--no-progress", "--out", str(tmp_path / "search")]
        done = python("search.py", "--supernet", str(out / "last.pt"), *search)
        assert done.returncode == 0, done.stderr[-3000:]
