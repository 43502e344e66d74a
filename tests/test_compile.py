"""torch.compile captures a GLoRA supernet whole (fullgraph, inductor on the CPU): one graph for every subnet, no
recompilation when the subnet changes or a search candidate is evaluated, and compiled steps equal eager ones."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import extreme_subnets, perturb, randomize_supports, tiny_vit
from torch._dynamo.utils import counters

import glora

pytestmark = pytest.mark.slow  # inductor compiles C++ kernels: about a minute on 2 cores

SPACE = glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,))  # every kind of choice, GIFT included


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    model = tiny_vit(num_classes=5)
    perturb(model, seed=1)  # stands in for pretrained weights (no structural zeros in the gradients)
    glora.inject(model, SPACE)
    randomize_supports(model, seed=2)
    rng = random.Random(3)
    subnets = [*extreme_subnets(model).values(), *(glora.sample_subnet(model, rng) for _ in range(10))]
    return model, torch.compile(model, fullgraph=True), subnets


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _step(model, forward, x):
    """Output and every trainable tensor's gradient (zeros where the subnet does not use it)."""
    model.zero_grad(set_to_none=True)
    y = forward(x)
    y.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), grads


def test_compiled_training_step_equals_eager_for_every_subnet_without_recompiling(supernet):
    model, compiled, subnets = supernet
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    model.train()
    graphs = None
    for subnet in subnets:  # 3 extremes + 10 random subnets
        glora.set_subnet(model, subnet)
        y_c, g_c = _step(model, compiled, x)
        graphs = _graphs() if graphs is None else graphs
        glora.set_execution(model, path="static")
        y_s, g_s = _step(model, model, x)
        glora.set_execution(model, path="manual")
        y_f, _ = _step(model, model, x)
        glora.set_execution(model, path="auto")
        torch.testing.assert_close(y_c, y_s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y_c, y_f, rtol=1e-5, atol=1e-5)
        assert g_c.keys() == g_s.keys()
        # float32: each gradient to 1e-4 relative, or to 1e-5 of the largest one. Scalar/vector shifts of a block's
        # output feed only LayerNorms, which remove them: those gradients are zero in exact arithmetic and rounding
        # noise in float32, on either side.
        scale = max(g.abs().max().item() for g in g_s.values())
        for name in g_s:
            torch.testing.assert_close(
                g_c[name], g_s[name], rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
            )
    assert _graphs() == graphs, "switching subnets recompiled the model"


def test_folded_candidates_under_the_compiled_model_need_no_recompilation(supernet):
    model, compiled, subnets = supernet
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    model.eval()
    graphs = None
    try:
        with torch.no_grad():
            for subnet in subnets[:5]:
                with glora.folded(model, subnet):
                    y = compiled(x)
                graphs = _graphs() if graphs is None else graphs
                torch.testing.assert_close(y, glora.fold(model, subnet).eval()(x), rtol=1e-5, atol=1e-5)
    finally:
        model.train()
    assert _graphs() == graphs, "a new candidate recompiled the model"
