"""One GLoRA layer against a naive dense implementation of the paper's formula, for every choice."""

from __future__ import annotations

import pytest
import torch
from helpers import LAYER_IN, LAYER_OUT, all_choices, make_layer, pairwise_choices
from torch import nn

import glora
from glora.gift import GiftGenerator
from glora.inject import GIFT_ATTR
from glora.space import LayerChoice

OUT, IN = LAYER_OUT, LAYER_IN


def _naive(layer: glora.GLoRALinear, choice: dict[str, str], x: torch.Tensor) -> torch.Tensor:
    """W_uni = W0 + W0 ⊙ A + B, b_uni = b0 + W0 C + D ⊙ b0 + E, every support built as a dense tensor."""
    W0 = layer.weight
    b0 = layer.bias if layer.bias is not None else torch.zeros(OUT, dtype=W0.dtype)

    def dense(support: str, shape: tuple[int, int]) -> torch.Tensor:
        c = choice[support]
        if c == "none":
            return torch.zeros(shape, dtype=W0.dtype)
        if support in "DE":
            vec = getattr(layer, support)
            return vec.reshape(shape) if c == "vector" else torch.full(shape, vec[0].item(), dtype=W0.dtype)
        down, up = getattr(layer, support + "d"), getattr(layer, support + "u")
        if c == "scalar":
            return torch.full(shape, down[0, 0].item(), dtype=W0.dtype)
        if c == "vector":
            return down[:, 0:1].expand(shape).clone()
        r = int(c.split("_")[1])
        return down[:, :r] @ up[:r, :]

    if choice["A"].startswith("gift"):
        r = int(choice["A"].split("_")[1])
        W = W0 + W0 @ layer.gift.phi[:, :r] @ layer.gift.psi[:r, :] + dense("B", (OUT, IN))
    else:
        W = W0 + W0 * dense("A", (OUT, IN)) + dense("B", (OUT, IN))
    C = dense("C", (IN, 1))
    b = b0 + (W0 @ C).squeeze(1) + dense("D", (OUT, 1)).squeeze(1) * b0 + dense("E", (OUT, 1)).squeeze(1)
    return x @ W.T + b


# The quick subset checks a pairwise cover of the choices (every two supports in every two of their choices: each
# term of the formula depends on one support, so a wrong term or a wrong pairing of two shows); the whole product of
# choices runs with the slow tests, which CI runs.
@pytest.mark.parametrize("cover", ["pairs", pytest.param("every", marks=pytest.mark.slow)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(
    "space",
    [glora.SearchSpace(lora_ranks=(8, 4)), glora.SearchSpace(lora_ranks=(3,), gift_ranks=(4, 2))],
    ids=["lora84", "lora3-gift42"],
)
def test_every_choice_matches_naive_formula(space, bias, cover):
    layer = make_layer(space, bias=bias)
    x = torch.randn(2, 3, IN, dtype=torch.float64)
    choices = list(all_choices(space)) if cover == "every" else pairwise_choices(space)
    n = 0
    for choice in choices:
        parsed = LayerChoice(*(glora.Choice.parse(choice[s]) for s in glora.SUPPORTS))
        layer.set_choice(parsed)
        expected = _naive(layer, choice, x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12, msg=str(choice))
        W, b = layer.merged(parsed)
        folded = x @ W.T + (b if b is not None else 0)
        torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12, msg=str(choice))
        n += 1
    assert n == (space.layer_size if cover == "every" else len(choices)) > 0


def test_b_lora_subnet_is_plain_lora():
    """B = lora_8 with everything else none is exactly LoRA: W0 x + b0 + up(down(x))."""
    layer = make_layer(glora.SearchSpace(lora_ranks=(8, 4)))
    layer.set_choice(LayerChoice(*(glora.Choice.parse(c) for c in ("none", "lora_8", "none", "none", "none"))))
    x = torch.randn(4, IN, dtype=torch.float64)
    lora_down = nn.Linear(IN, 8, bias=False).double()  # LoRA's "A" (r x in)
    lora_up = nn.Linear(8, OUT, bias=False).double()  # LoRA's "B" (out x r)
    with torch.no_grad():
        lora_down.weight.copy_(layer.Bu)
        lora_up.weight.copy_(layer.Bd)
    expected = nn.functional.linear(x, layer.weight, layer.bias) + lora_up(lora_down(x))
    torch.testing.assert_close(layer(x), expected, rtol=1e-13, atol=1e-13)


def test_zero_init_every_choice_is_the_basemake_layer():
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT).double()
    space = glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(2,))
    layer = glora.GLoRALinear(base, space, gift=GiftGenerator(IN, 2, dtype=torch.float64))
    x = torch.randn(3, IN, dtype=torch.float64)
    for choice in all_choices(space):
        layer.set_choice(LayerChoice(*(glora.Choice.parse(choice[s]) for s in glora.SUPPORTS)))
        torch.testing.assert_close(layer(x), base(x), rtol=0, atol=1e-14)


def test_entanglement_small_rank_update_moves_large_rank():
    """Training lora_4 updates the first 4 columns/rows of the one storage that lora_8 also reads."""
    layer = make_layer(glora.SearchSpace(lora_ranks=(8, 4)), seed=1)
    x = torch.randn(6, IN, dtype=torch.float64)
    as_choice = {
        n: LayerChoice(*(glora.Choice.parse(c) for c in v))
        for n, v in {
            "lora4": ("lora_4", "lora_4", "lora_4", "vector", "vector"),
            "lora8": ("lora_8", "lora_8", "lora_8", "vector", "vector"),
            "vector": ("vector", "vector", "vector", "scalar", "scalar"),
        }.items()
    }
    outputs = {}
    for k, c in as_choice.items():
        layer.set_choice(c)
        outputs[k] = layer(x).detach()
    before = {n: p.detach().clone() for n, p in layer.named_parameters() if p.requires_grad}
    layer.set_choice(as_choice["lora4"])
    layer(x).pow(2).sum().backward()
    for name in ("Ad", "Bd", "Cd"):
        grad = getattr(layer, name).grad
        assert grad[:, 4:].abs().max() == 0 and grad[:, :4].abs().max() > 0, name
    for name in ("Au", "Bu", "Cu"):
        grad = getattr(layer, name).grad
        assert grad[4:].abs().max() == 0 and grad[:4].abs().max() > 0, name
    with torch.no_grad():
        for p in layer.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    for k, c in as_choice.items():
        layer.set_choice(c)
        assert not torch.allclose(layer(x), outputs[k]), f"{k} did not see the lora_4 update"
    assert torch.equal(layer.Ad[:, 4:], before["Ad"][:, 4:])


def test_gift_is_shared_and_its_update_reaches_every_member():
    space = glora.SearchSpace(lora_ranks=(2,), gift_ranks=(3,))
    model = nn.Sequential(nn.Linear(IN, IN), nn.Tanh(), nn.Linear(IN, IN), nn.Linear(IN, 2)).double()
    glora.inject(model, space, targets=["0", "2"])
    layers = list(glora.glora_layers(model).values())
    assert layers[0].gift is layers[1].gift  # type sharing: names "0" and "2" both wildcard to "*"
    assert len(list(model.get_submodule(GIFT_ATTR).generators)) == 1
    # a step on a loss of the first member alone moves the second member's output: one generator, trained by both
    glora.set_subnet(model, glora.make_subnet(model, A="gift_3"))
    x = torch.randn(5, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        second = model[2](x)
    generator = list(model.get_submodule(GIFT_ATTR).parameters())
    opt = torch.optim.SGD(generator, lr=0.1)
    model[0](x).pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator)
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model[2](x), second)


def test_unset_layer_raises_a_clear_error():
    layer = make_layer(glora.SearchSpace())
    with pytest.raises(RuntimeError, match="no subnet set"):
        layer(torch.randn(1, IN, dtype=torch.float64))


def test_none_allocates_nothing():
    space = glora.SearchSpace(lora_ranks=(4,), choices={"A": ["scalar", "none"], "C": ["none"], "D": ["none"]})
    layer = make_layer(space)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight", "bias", "Ad", "Bd", "Bu", "E"}
    assert layer.Ad.shape == (OUT, 1)
