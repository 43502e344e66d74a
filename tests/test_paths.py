"""The manual and static paths give the autograd path's outputs and gradients, for every choice."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import LAYER_IN, LAYER_OUT, all_choices, check_every_choice, make_layer, pairwise_choices
from torch import nn

import glora
import glora.paths.autograd
import glora.paths.manual
from glora.paths import Execution
from glora.space import LayerChoice

OUT, IN = LAYER_OUT, LAYER_IN


# Every form on a pairwise cover of the choices (every two supports in every two of their choices): the quick subset
# checks the whole-tensor forms so; the whole product of choices runs with the slow tests (which CI runs) for the
# whole-tensor forms, whose terms the CPU-chunked and accelerator forms compute with other reductions only.
@pytest.mark.parametrize(
    "forms",
    [
        "whole",
        pytest.param("every-choice", marks=pytest.mark.slow),
        pytest.param("chunked", marks=pytest.mark.slow),
        pytest.param("accelerator", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    "space", [glora.SearchSpace(lora_ranks=(8, 4)), glora.SearchSpace(lora_ranks=(3,), gift_ranks=(2,))]
)
def test_manual_equals_reference_for_every_choice(space, bias, forms, monkeypatch):
    if forms == "chunked":  # the CPU paths for many tokens, on 6 token rows
        manual = glora.paths.manual
        monkeypatch.setattr(manual, "_DOT_BLOCK_ELEMENTS", 4 * OUT)  # column dots: blocks of 4 rows and 2 rows
        monkeypatch.setattr(glora.paths.manual, "_CHUNK_MIN_ROWS", 4)  # token reductions: 4 chunks of 1 row + 2 rows
        monkeypatch.setattr(glora.paths.manual, "_TOKEN_CHUNKS", 4)
    layer = make_layer(space, bias)
    if forms == "accelerator":  # the forms GPUs run (separate reductions, one vecdot), checked here on CPU
        layer.execution = dataclasses.replace(layer.execution, forms="accelerator")
    x = torch.randn(2, 3, IN, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, OUT, dtype=torch.float64)
    check_every_choice(layer, x, g, None if forms == "every-choice" else pairwise_choices(space))


def test_the_pairwise_cover_covers_every_pair_with_few_choices():
    space = glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(2,))
    cover, every = pairwise_choices(space), list(all_choices(space))
    for s, t in itertools.combinations(glora.SUPPORTS, 2):
        wanted = {(e[s], e[t]) for e in every}
        assert {(e[s], e[t]) for e in cover} == wanted, (s, t)
    assert len(cover) < len(every) / 10


def _saved_by(layer: glora.GLoRALinear, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The layer's output and the tensors autograd keeps for its backward, parameters excluded."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    params = {p.data_ptr() for p in layer.parameters()}
    return y, [t for t in saved if t.data_ptr() not in params]


def test_manual_path_is_taken_and_keeps_one_weight_sized_tensor():
    """The manual forward keeps W_uni (for the input gradient, as autograd keeps a linear layer's weight), the inputs
    or outputs the choice needs and small tensors: no other weight-sized tensor (no weight gradient, no dense A/B)."""
    layer = make_layer(glora.SearchSpace(lora_ranks=(8, 4)), bias=True)
    x = torch.randn(64, IN, dtype=torch.float64, requires_grad=True)
    for combo in [("lora_8", "lora_4", "vector", "vector", "scalar"), ("vector", "lora_8", "none", "none", "none")]:
        layer.set_choice(LayerChoice(*map(glora.Choice.parse, combo)))
        y, saved = _saved_by(layer, x)
        assert type(y.grad_fn).__name__ == "_GLoRAFunctionBackward"
        weights = [t for t in saved if t.shape == (OUT, IN)]
        assert len(weights) == 1, [t.shape for t in saved]
        torch.testing.assert_close(weights[0], layer.merged()[0], rtol=0, atol=0)
        assert all(t.shape[0] == 64 for t in saved if t.numel() >= OUT * IN and t.shape != (OUT, IN))
        _, saved = _saved_by(layer, x.detach())  # a first layer (no input gradient) keeps no W_uni at all
        assert not [t for t in saved if t.shape == (OUT, IN)]


def test_guard_uses_the_reference_path_near_a_zero_scale():
    layer = make_layer(glora.SearchSpace(lora_ranks=(4,)), bias=True)
    with torch.no_grad():
        layer.Ad[3, 0] = -1.0 + 1e-4  # 1 + a almost 0: recovering h from the output would be ill-conditioned
    layer.set_choice(LayerChoice(*map(glora.Choice.parse, ("vector", "lora_4", "none", "vector", "none"))))
    x = torch.randn(4, IN, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ != "_GLoRAFunctionBackward"


def test_manual_under_bf16_autocast_is_close_to_reference():
    torch.manual_seed(0)
    layer = glora.GLoRALinear(nn.Linear(32, 48), glora.SearchSpace(lora_ranks=(8, 4)))
    with torch.no_grad():
        for p in layer.support_params():
            p.normal_(0, 0.05)
    x = torch.randn(16, 32, requires_grad=True)
    g = torch.randn(16, 48)
    for combo in [("lora_8", "vector", "lora_4", "vector", "vector"), ("scalar", "lora_4", "none", "scalar", "none")]:
        layer.set_choice(LayerChoice(*map(glora.Choice.parse, combo)))
        out = {}
        for path in ("autograd", "manual"):
            layer.execution = dataclasses.replace(layer.execution, path=path)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x)
            out[path] = (y.float(), torch.autograd.grad(y, [x, layer.Ad, layer.Bd], g.to(y.dtype)))
        torch.testing.assert_close(out["manual"][0], out["autograd"][0], rtol=0.05, atol=0.05)
        for a, b in zip(out["manual"][1], out["autograd"][1]):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a.float(), b.float(), rtol=0.1, atol=0.1)


def test_scale_guard_reads_once_per_step_and_sees_every_update(monkeypatch):
    """One device read answers the |1 + a| check for every layer of a model; a changed Ad (an optimizer step, an
    in-place edit) is noticed, and only the layer whose scale is near zero leaves the manual path."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="rank 4 exceeds min"):  # the 6 -> 3 layer: said, and harmless here
        model = glora.inject(
            nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)), glora.SearchSpace(lora_ranks=(4,))
        )
    layers = list(glora.glora_layers(model).values())
    assert len({id(m.path) for m in layers}) == 1 and isinstance(layers[0].path, glora.paths.manual.ManualPath)
    subnet = {
        name: {"A": "vector", "B": "lora_4", "C": "none", "D": "vector", "E": "none"} for name in model_names(model)
    }
    glora.set_subnet(model, subnet)
    reads = []
    refresh = glora.paths.manual.ScaleGuard._refresh
    guard = glora.paths.manual.ScaleGuard
    monkeypatch.setattr(guard, "_refresh", lambda self, layer: reads.append(1) or refresh(self, layer))
    kinds = {}
    for name, m in zip(model_names(model), layers):
        m.register_forward_hook(lambda mod, inp, out, name=name: kinds.__setitem__(name, type(out.grad_fn).__name__))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x = torch.randn(8, 5)
    loss = model(x).square().mean()
    assert len(reads) == 1 and set(kinds.values()) == {"_GLoRAFunctionBackward"}
    model(x)
    assert len(reads) == 1  # nothing changed since: no read
    loss.backward()
    opt.step()  # moves every Ad (an in-place update: the version counter changes)
    model(x)
    assert len(reads) == 2
    with torch.no_grad():
        layers[1].Ad[2, 0] = -1.0 + 1e-4
    model(x)
    assert len(reads) == 3
    assert [kinds[n] == "_GLoRAFunctionBackward" for n in model_names(model)] == [True, False, True]


def model_names(model: nn.Module) -> list[str]:
    return list(glora.glora_layers(model))


# ---------------------------------------------------------------------- the path registry and its fallbacks
def test_registry_lists_the_paths_and_reads_the_old_name():
    assert glora.paths.path_names() == ("auto", "autograd", "manual", "static")
    assert "folded" in glora.paths.path_names(selectable=False)  # a mode a merged layer is in, not a setting
    model = glora.inject(nn.Sequential(nn.Linear(5, 6)), glora.SearchSpace(lora_ranks=(2,)))
    with pytest.warns(DeprecationWarning, match="'manual'"):
        glora.set_execution(model, path="fused")
    layer = next(iter(glora.glora_layers(model).values()))
    assert layer.execution.path == "manual" and type(layer.path).__name__ == "ManualPath"
    with pytest.raises(ValueError, match="auto, autograd, manual, static; got 'fast'"):
        glora.set_execution(model, path="fast")


def test_a_registered_path_is_selectable_and_shared_by_the_model(monkeypatch):
    registry = glora.paths._REGISTRY
    monkeypatch.setattr(registry, "_entries", dict(registry.entries()))  # leave the real registry as it was

    @glora.paths.register_path
    class Doubled(glora.paths.LayerPath):
        """A toy path: twice the autograd path's output, and the layers it served."""

        name = "doubled"

        def forward(self, layer, x):
            self.served = [*getattr(self, "served", []), layer.name]
            return 2 * glora.paths.autograd.autograd_forward(layer, x)

    assert "doubled" in glora.paths.path_names()
    model = glora.inject(nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 3)), glora.SearchSpace(lora_ranks=(2,)))
    glora.set_subnet(model, glora.make_subnet(model, A="lora_2", B="vector", E="vector"))
    x = torch.randn(4, 5)
    glora.set_execution(model, path="autograd")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the supports (zero-initialised down factors would hide them)
                p.normal_(0, 0.1)
        first = model[0](x)
    glora.set_execution(model, path="doubled")
    paths = {id(m.path) for m in glora.glora_layers(model).values()}
    assert len(paths) == 1
    torch.testing.assert_close(model[0](x), 2 * first)
    assert model[0].path.served == [model[0].name]
    with pytest.raises(ValueError, match="already registered"):
        glora.paths.register_path(type("Other", (glora.paths.LayerPath,), {"name": "doubled"}))


def _fallback_case(reason: str) -> tuple[glora.GLoRALinear, torch.Tensor]:
    """A layer and an input that make the manual path fall back to autograd for ``reason``."""
    gift = reason == "gift"
    dtype = torch.float32 if reason == "mixed-precision" else torch.float64
    layer = make_layer(
        glora.SearchSpace(lora_ranks=(4,), gift_ranks=(2,) if gift else ()), bias=True, support_dtype=dtype
    )
    a = "gift_2" if gift else "vector"
    layer.set_choice(LayerChoice(*map(glora.Choice.parse, (a, "lora_4", "vector", "vector", "scalar"))))
    if reason == "weight-trains":
        layer.weight.requires_grad_(True)
    elif reason == "scale-guard":
        with torch.no_grad():
            layer.Ad[3, 0] = -1.0 + 1e-4  # 1 + a almost 0: recovering h from the output would be ill-conditioned
    elif reason == "frozen-b":
        layer.Bd.requires_grad_(False)
        layer.Bu.requires_grad_(False)
    return layer, torch.randn(2, 3, IN, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("reason", ["gift", "weight-trains", "scale-guard", "frozen-b", "mixed-precision"])
def test_each_fallback_is_named_counted_and_exact(reason, caplog):
    layer, x = _fallback_case(reason)
    path = glora.paths.make_path(Execution(path="manual"), [layer])
    layer.use_path(path)
    assert path.unsupported(layer, x) == reason
    with caplog.at_level("INFO", logger="glora.paths.manual"):
        y = layer(x)
        layer(x)
    assert path.fallbacks == {reason: 2}
    why = glora.paths.manual.FALLBACKS[reason]
    assert [(r.levelname, r.message) for r in caplog.records] == [
        ("INFO", f"GLoRA: layers run on the autograd path where the manual path cannot: {why} (first: 'layer')")
    ]  # logged once per reason at INFO (a run's log says it), counted every time
    assert type(y.grad_fn).__name__ != "_GLoRAFunctionBackward"
    params = [x, *(p for p in layer.parameters() if p.requires_grad)]
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, g, allow_unused=True)
    layer.execution = Execution(path="autograd")
    y_ref = layer(x)
    ref = torch.autograd.grad(y_ref, params, g, allow_unused=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    for a, b in zip(grads, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_non_float_input_is_a_named_fallback():
    layer, _ = _fallback_case("none")
    path = glora.paths.make_path(Execution(path="manual"), [layer])
    assert path.unsupported(layer, torch.ones(2, IN, dtype=torch.long)) == "non-float-input"
    assert path.unsupported(layer, torch.ones(2, IN, dtype=torch.float64)) is None


@pytest.mark.parametrize("path", ["static", "autograd", "manual"])
def test_supports_in_another_dtype_than_the_weight(path):
    """float32 supports over a float64 weight (as fp32 supports over a bf16 backbone): W_uni is formed in the
    supports' dtype from the weight cast to it, then cast back; the output keeps the weight's dtype, gradients
    reach the supports in theirs, folding gives the same function."""
    space = glora.SearchSpace(lora_ranks=(4,))
    layer = make_layer(space, bias=False, support_dtype=torch.float32)
    assert layer.mixed_precision and layer.weight.dtype == torch.float64
    assert {p.dtype for p in layer.support_params()} == {torch.float32}
    choice = LayerChoice(*map(glora.Choice.parse, ("lora_4", "vector", "vector", "vector", "scalar")))
    layer.set_choice(choice)
    layer.use_path(glora.paths.make_path(Execution(path=path), [layer]))
    x = torch.randn(2, 3, IN, dtype=torch.float64)
    y = layer(x)
    assert y.dtype == torch.float64
    t = layer.terms(choice)
    w = layer.weight.float()
    expected = F.linear(x, glora.formula.uni_weight(w, t).double(), glora.formula.uni_bias(None, w, t).double())
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    y.sum().backward()
    assert layer.Ad.grad is not None and layer.Ad.grad.dtype == torch.float32 and layer.weight.grad is None
    layer.merge(choice)  # folded mode: the (W_uni, b_uni) folding writes, in the weight's dtype
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y.detach(), rtol=0, atol=0)
    assert {t.dtype for t in layer.folded_weights()} == {torch.float64}
