"""Invariants over every (model, space) case: zero-init, exact folding, parameter counts."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import CASE_IDS, CASES, build, extreme_subnets, randomize_supports, rel_err
from torch import nn

import glora
from glora.gift import GiftBank, gift_group
from glora.inject import GIFT_ATTR

N_RANDOM = 12


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_injection_adapts_expected_layers(case):
    base, supernet = build(case)
    layers = glora.glora_layers(supernet)
    if case.n_layers >= 0:
        assert len(layers) == case.n_layers
    assert glora.head_names(base) == list(case.heads)
    trainable = {n for n, p in supernet.named_parameters() if p.requires_grad}
    for n, _ in supernet.named_parameters():
        owner = n.rsplit(".", 1)[0]
        is_support = owner in layers and n.rsplit(".", 1)[1] not in ("weight", "bias")
        is_head = any(n.startswith(h + ".") for h in case.heads)
        is_gift = n.startswith(GIFT_ATTR + ".")
        assert (n in trainable) == (is_support or is_head or is_gift), n
    for h in case.heads:
        assert not isinstance(supernet.get_submodule(h), glora.GLoRALinear)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_init_equals_base_model(case):
    base, supernet = build(case)
    x = case.input()
    expected = base(x)
    subnets = list(extreme_subnets(supernet).values())
    subnets += [glora.sample_subnet(supernet, random.Random(i)) for i in range(4)]
    for subnet in subnets:
        glora.set_subnet(supernet, subnet)
        torch.testing.assert_close(supernet(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fold_matches_supernet_float64(case):
    base, supernet = build(case)
    randomize_supports(supernet, seed=1)
    x = case.input(seed=2)
    subnets = extreme_subnets(supernet)
    subnets |= {f"random{i}": glora.sample_subnet(supernet, random.Random(i)) for i in range(N_RANDOM)}
    base_keys = set(base.state_dict())
    base_numel = sum(p.numel() for p in base.parameters())
    bias_free = {n for n, m in base.named_modules() if isinstance(m, nn.Linear) and m.bias is None}
    for tag, subnet in subnets.items():
        glora.set_subnet(supernet, subnet)
        y = supernet(x)
        folded = glora.fold(supernet, subnet)
        err = rel_err(folded(x), y)
        assert err < 1e-9, f"{tag}: folded output differs from the supernet by {err:.2e} (relative)"
        assert type(folded) is type(base)
        assert not any(isinstance(m, (glora.GLoRALinear, GiftBank)) for m in folded.modules())
        # Same keys and size as the base, except a bias that C/E created on a layer that had none.
        created = {
            f"{n}.bias" for n in bias_free if n in subnet and (subnet[n]["C"] != "none" or subnet[n]["E"] != "none")
        }
        assert set(folded.state_dict()) == base_keys | created, tag
        extra = sum(folded.get_submodule(k.rsplit(".", 1)[0]).bias.numel() for k in created)
        assert sum(p.numel() for p in folded.parameters()) == base_numel + extra


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fold_leaves_supernet_untouched(case):
    _, supernet = build(case)
    randomize_supports(supernet, seed=3)
    subnet = glora.sample_subnet(supernet, random.Random(5))
    current = glora.sample_subnet(supernet, random.Random(6))
    glora.set_subnet(supernet, current)
    before = {k: v.clone() for k, v in supernet.state_dict().items() if torch.is_tensor(v)}
    flags = {n: p.requires_grad for n, p in supernet.named_parameters()}
    glora.fold(supernet, subnet)
    after = supernet.state_dict()
    assert before.keys() == {k for k, v in after.items() if torch.is_tensor(v)}
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert flags == {n: p.requires_grad for n, p in supernet.named_parameters()}
    parsed = glora.parse_subnet(supernet, current)
    assert all(layer.choice == parsed[n] for n, layer in glora.glora_layers(supernet).items())


def _count_by_gradient(model: nn.Module, subnet, x: torch.Tensor) -> int:
    """Independent count: elements of support/GIFT tensors that receive a non-zero gradient.

    The loss is a random projection of every adapted layer's own output, so no architecture detail (like
    softmax ignoring a shift of the keys) can hide a parameter that the layer really uses.
    """
    glora.set_subnet(model, subnet)
    model.zero_grad(set_to_none=True)
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for m in glora.glora_layers(model).values()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.rand(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    if not loss.requires_grad:  # the all-none subnet uses no support tensor
        return 0
    loss.backward()
    head = {id(p) for h in glora.head_names(model) for p in model.get_submodule(h).parameters()}
    n = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in head and p.grad is not None:
            n += int((p.grad != 0).sum())
    return n


def _count_by_formula(model: nn.Module, subnet) -> int:
    """The DESIGN.md formula written out again, independently of glora.count_params."""
    space = glora.get_space(model)
    total, gift = 0, {}
    for name, layer in glora.glora_layers(model).items():
        out_f, in_f = layer.weight.shape
        for s, c in subnet[name].items():
            kind, _, r = c.partition("_")
            if kind == "lora":
                total += int(r) * (in_f + 1 if s == "C" else out_f + in_f)
            elif kind == "vector" and not (s == "D" and layer.bias is None):
                total += in_f if s == "C" else out_f
            elif kind == "scalar" and not (s == "D" and layer.bias is None):
                total += 1
            elif kind == "gift":
                key = gift_group(name, in_f, space.gift_sharing)
                gift[key] = max(gift.get(key, (0, in_f))[0], int(r)), in_f
    return total + sum(2 * r * i for r, i in gift.values())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_count_params_matches_independent_counts(case):
    _, supernet = build(case)
    randomize_supports(supernet, seed=7)
    x = case.input(seed=8)
    subnets = list(extreme_subnets(supernet).values())
    subnets += [glora.sample_subnet(supernet, random.Random(100 + i)) for i in range(6)]
    for subnet in subnets:
        n = glora.count_params(supernet, subnet)
        assert n == _count_by_formula(supernet, subnet)
        assert n == _count_by_gradient(supernet, subnet, x)
    assert glora.count_params(supernet, extreme_subnets(supernet)["none"]) == 0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_folded_context_equals_fold_and_restores(case):
    _, supernet = build(case)
    randomize_supports(supernet, seed=11)
    x = case.input(seed=12)
    current = glora.sample_subnet(supernet, random.Random(1))
    glora.set_subnet(supernet, current)
    before = supernet(x)
    for i in range(3):
        subnet = glora.sample_subnet(supernet, random.Random(20 + i))
        with torch.no_grad(), glora.folded(supernet, subnet):
            y = supernet(x)
        assert rel_err(y, glora.fold(supernet, subnet)(x)) < 1e-12
    torch.testing.assert_close(supernet(x), before, rtol=0, atol=0)
    parsed = glora.parse_subnet(supernet, current)
    assert all(layer.choice == parsed[n] for n, layer in glora.glora_layers(supernet).items())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unused_params_are_exactly_what_a_step_leaves_without_gradient(case):
    """Eager paths: the tensors the subnet does not read get no gradient; the static path gives them zeros."""
    _, supernet = build(case)
    randomize_supports(supernet, seed=3)
    x = case.input(seed=4)
    trainable = [p for layer in glora.glora_layers(supernet).values() for p in layer.support_params()]
    trainable += [p for m in supernet.modules() if isinstance(m, GiftBank) for p in m.parameters()]
    rng = random.Random(5)
    for subnet in [*extreme_subnets(supernet).values(), *(glora.sample_subnet(supernet, rng) for _ in range(6))]:
        glora.set_subnet(supernet, subnet)
        unused = {id(p) for p in glora.unused_params(supernet)}
        for path in ("manual", "autograd", "static"):
            glora.set_execution(supernet, path=path)
            supernet.zero_grad(set_to_none=True)
            supernet(x).square().sum().backward()
            if path == "static":  # every tensor gets a gradient, zero where unused; D of a bias-free layer is inert
                inert = {id(m.D) for m in glora.glora_layers(supernet).values() if m.bias is None and m.D is not None}
                assert {id(p) for p in trainable if p.grad is None} == inert
                assert all(not p.grad.any() for p in trainable if id(p) in unused and p.grad is not None)
            else:
                assert {id(p) for p in trainable if p.grad is None} == unused, (path, subnet)
    glora.set_execution(supernet, path="auto")
