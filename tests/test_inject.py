"""Injection: target selection, heads, freezing, layers whose weight the parent reads itself."""

from __future__ import annotations

import random
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from helpers import VIT, ToyMLP, perturb, randomize_supports, rel_err
from torch import nn

import glora
from glora.gift import GiftBank
from glora.inject import GIFT_ATTR


def _vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **VIT).double().eval()


def test_default_targets_are_every_linear_but_the_head():
    model = glora.inject(_vit(), glora.SearchSpace())
    names = list(glora.glora_layers(model))
    assert names == [f"blocks.{i}.{k}" for i in range(2) for k in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert isinstance(model.head, nn.Linear) and model.head.weight.requires_grad


def test_regex_targets_must_match_the_whole_name():
    model = glora.inject(_vit(), glora.SearchSpace(), targets=r"blocks\.\d+\.attn\.qkv")
    assert list(glora.glora_layers(model)) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with pytest.raises(ValueError, match="matched no adaptable"):
        glora.inject(_vit(), glora.SearchSpace(), targets=r"attn\.qkv")  # partial match is not enough


def test_suffix_targets():
    model = glora.inject(_vit(), glora.SearchSpace(), targets=["qkv", "mlp.fc2"])
    assert list(glora.glora_layers(model)) == [
        "blocks.0.attn.qkv",
        "blocks.0.mlp.fc2",
        "blocks.1.attn.qkv",
        "blocks.1.mlp.fc2",
    ]


def test_targeting_the_head_warns_and_skips_it():
    with pytest.warns(UserWarning, match="classifier head"):
        model = glora.inject(_vit(), glora.SearchSpace(), targets=["head", "fc1"])
    assert list(glora.glora_layers(model)) == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]


@pytest.mark.parametrize(
    "targets, match",
    [
        ("(", "does not compile"),
        (["nothing"], "matched no adaptable"),
        (42, "targets must be"),
        ([""], "targets must be"),
    ],
)
def test_bad_targets(targets, match):
    with pytest.raises(ValueError, match=match):
        glora.inject(_vit(), glora.SearchSpace(), targets=targets)


def test_inject_twice_and_bad_space():
    model = glora.inject(_vit(), glora.SearchSpace())
    with pytest.raises(ValueError, match="inject once"):
        glora.inject(model, glora.SearchSpace())
    with pytest.raises(TypeError, match="SearchSpace"):
        glora.inject(_vit(), {"lora_ranks": (8,)})


@pytest.mark.parametrize("targets", [None, ["qkv", "fc1"], r"blocks\.1\..*"], ids=["default", "suffixes", "regex"])
def test_adapter_config_round_trips_and_injects_like_its_parts(targets):
    space = glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,), choices={"C": ["none"]})
    config = glora.AdapterConfig(space, targets, heads=["head"])
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # plain data, as stored in a checkpoint
    assert glora.AdapterConfig.from_dict(data) == config
    a = glora.inject(_vit(), config)
    b = glora.inject(_vit(), space, targets, heads=["head"])
    assert list(glora.glora_layers(a)) == list(glora.glora_layers(b))
    trainable = lambda m: [n for n, p in m.named_parameters() if p.requires_grad]  # noqa: E731
    assert trainable(a) == trainable(b) and glora.get_space(a) == space


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: glora.AdapterConfig({"lora_ranks": [8]}), TypeError, "space must be a glora.SearchSpace"),
        (lambda: glora.AdapterConfig(targets=7), ValueError, "targets must be"),
        (lambda: glora.AdapterConfig(targets="("), ValueError, "does not compile"),
        (lambda: glora.AdapterConfig(heads=[3]), ValueError, "heads must be"),
        (lambda: glora.AdapterConfig.from_dict({"space": {}, "target": None}), ValueError, "unknown adapter-config"),
        (lambda: glora.AdapterConfig.from_dict([1]), ValueError, "must be a mapping"),
        (lambda: glora.inject(_vit(), glora.AdapterConfig(), ["qkv"]), TypeError, "inside the AdapterConfig"),
    ],
)
def test_bad_adapter_configs(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_explicit_heads_for_a_plain_module():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2)), heads=["2"])
    assert list(glora.glora_layers(model)) == ["0"]
    assert model[2].weight.requires_grad
    with pytest.raises(ValueError, match="no module named"):
        glora.inject(nn.Sequential(nn.Linear(4, 3)), glora.SearchSpace(), heads=["head"])


def test_no_head_found_means_every_linear_is_adapted():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    glora.inject(model, glora.SearchSpace(lora_ranks=(3, 2)))
    assert list(glora.glora_layers(model)) == ["0", "2"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(("weight", "bias")))


class DirectReader(nn.Module):
    """Reads ``self.proj.weight`` itself, so wrapping ``proj`` would silently do nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._mix(self.fc(x)))

    def _mix(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(h), self.proj.weight * 0.5, self.proj.bias)


def test_layer_whose_weight_is_read_directly_is_excluded_with_a_warning():
    model = DirectReader().double()
    with pytest.warns(UserWarning, match=r"'proj'.*reads its weight directly"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2)))
    assert list(glora.glora_layers(model)) == ["fc"]
    randomize_supports(model, seed=0)
    x = torch.randn(3, 6, dtype=torch.float64)
    for i in range(5):
        subnet = glora.sample_subnet(model, random.Random(i))
        glora.set_subnet(model, subnet)
        assert rel_err(glora.fold(model, subnet)(x), model(x)) < 1e-12


def test_multihead_attention_out_proj_is_excluded():
    class WithMHA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.fc(self.attn(x, x, x, need_weights=False)[0]))

    model = WithMHA().double().eval()
    with pytest.warns(UserWarning, match="attn.out_proj"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2)))
    assert list(glora.glora_layers(model)) == ["fc"]


def test_beit_style_direct_qkv_is_adapted_exactly():
    """BEiT reads qkv.weight itself; injection switches it to call the layer, and the adaptation is real."""

    def make() -> nn.Module:
        kw = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
        return timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=5, **kw).double().eval()

    base = make()
    perturb(base, 0)
    model = make()
    model.load_state_dict(base.state_dict())
    glora.inject(model, glora.SearchSpace(lora_ranks=(4,)), targets=["qkv"])
    assert model.blocks[0].attn.qkv_bias_separate is True
    randomize_supports(model, 1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    subnet = glora.make_subnet(model, A="lora_4", B="lora_4", C="vector", E="vector")
    glora.set_subnet(model, subnet)
    y = model(x)
    assert rel_err(y, base(x)) > 1e-3  # the adaptation changes the output: the wrapper is not bypassed
    assert rel_err(glora.fold(model, subnet)(x), y) < 1e-9


def test_shared_module_is_excluded_with_a_warning():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="several names"):
        glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2)), heads=["4"])
    assert list(glora.glora_layers(model)) == ["3"]


def test_wrapped_model_keeps_layer_names():
    """DDP or a container adds a prefix; subnets keep using the names from injection time."""
    model = glora.inject(ToyMLP().double(), glora.SearchSpace(lora_ranks=(2,)))
    subnet = glora.sample_subnet(model, random.Random(0))
    wrapper = nn.Sequential(model)
    assert list(glora.glora_layers(wrapper)) == ["fc1", "fc2"]
    glora.set_subnet(wrapper, subnet)
    x = torch.randn(2, 12, dtype=torch.float64)
    torch.testing.assert_close(glora.fold(wrapper, subnet)(x), wrapper(x))


def test_no_warning_for_plain_vit():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        glora.inject(_vit(), glora.SearchSpace(gift_ranks=(2,)))


def test_gift_groups_by_sharing_mode():
    expected = {"type": 4, "width": 2, "layer": 8}  # qkv/proj/fc1/fc2 patterns; in=32 or 128; one per layer
    for mode, n in expected.items():
        model = glora.inject(_vit(), glora.SearchSpace(gift_ranks=(2,), gift_sharing=mode))
        bank = model.get_submodule(GIFT_ATTR)
        assert len(bank.groups) == n, (mode, bank.groups)
    model = glora.inject(_vit(), glora.SearchSpace(gift_ranks=(2,)))
    assert GiftBank in {type(m) for m in model.modules()}
    assert "blocks.*.attn.qkv[in=32]" in model.get_submodule(GIFT_ATTR).groups
