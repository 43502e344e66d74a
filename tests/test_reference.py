"""Importing a supernet saved by the paper's reference code.

``RefLinear`` re-creates that code's layer from its documented layout (an ``nn.Linear`` subclass holding
``Ad, Au, Bd, Bu, Cd, Cu, D, E`` at one rank, choices named ``LoRA_<r>``/``vector``/``constant``/``none``),
written here from the formula, so a checkpoint of it is what users of that code have on disk.
"""

from __future__ import annotations

import random

import pytest
import timm
import torch
from helpers import VIT, rel_err
from torch import nn

import glora
from glora.reference import reference_choice_name

RANK = 8


class RefLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, rank: int = RANK) -> None:
        super().__init__(in_features, out_features, bias)
        self.Ad = nn.Parameter(torch.zeros(out_features, rank))
        self.Au = nn.Parameter(torch.zeros(rank, in_features))
        self.Bd = nn.Parameter(torch.zeros(out_features, rank))
        self.Bu = nn.Parameter(torch.zeros(rank, in_features))
        self.Cd = nn.Parameter(torch.zeros(in_features, rank))
        self.Cu = nn.Parameter(torch.zeros(rank, 1))
        self.D = nn.Parameter(torch.zeros(out_features))
        self.E = nn.Parameter(torch.zeros(out_features))
        self.config: dict[str, str] | None = None

    @staticmethod
    def _pick(name: str, down: torch.Tensor, up: torch.Tensor | None = None):
        if name.startswith("LoRA_"):
            r = int(name[5:])
            return down[:, :r] @ up[:r, :]
        if name == "vector":
            return down[:, :1] if up is not None else down
        if name == "constant":
            return down[0, 0] if up is not None else down[0]
        return torch.zeros((), dtype=down.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        A, B = self._pick(c["A"], self.Ad, self.Au), self._pick(c["B"], self.Bd, self.Bu)
        C = self._pick(c["C"], self.Cd, self.Cu)
        D, E = self._pick(c["D"], self.D), self._pick(c["E"], self.E)
        weight = self.weight + self.weight * A + B
        bias = self.bias + self.bias * D + E
        prompt = (self.weight @ C).reshape(-1) if C.dim() else torch.zeros_like(self.bias)
        return nn.functional.linear(x, weight, bias + prompt)


def _reference_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **VIT)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name != "head":
            parent, _, child = name.rpartition(".")
            ref = RefLinear(module.in_features, module.out_features)
            ref.load_state_dict(module.state_dict(), strict=False)
            setattr(model.get_submodule(parent), child, ref)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # "trained" supports, backbone and head
    return model.double().eval()


def _ref_configs(n: int, rng: random.Random) -> list[dict[str, str]]:
    ab = [f"LoRA_{RANK}", f"LoRA_{RANK // 2}", "vector", "constant", "none"]
    return [
        {
            "A": rng.choice(ab),
            "B": rng.choice(ab),
            "C": rng.choice([f"LoRA_{RANK}", "vector", "none"]),
            "D": rng.choice(["vector", "constant", "none"]),
            "E": rng.choice(["vector", "constant", "none"]),
        }
        for _ in range(n)
    ]


def _ours(space=None) -> nn.Module:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **VIT).double().eval()
    return glora.inject(model, space or glora.SearchSpace(lora_ranks=(RANK, RANK // 2)))


def test_reference_checkpoint_gives_identical_outputs(tmp_path):
    ref = _reference_model()
    path = tmp_path / "ref.pth"
    torch.save({"model": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    ours = _ours()
    glora.load_reference_state_dict(ours, torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    refs = [m for m in ref.modules() if isinstance(m, RefLinear)]
    for seed in range(6):
        configs = _ref_configs(len(refs), random.Random(seed))
        for m, c in zip(refs, configs):
            m.config = c
        subnet = glora.convert_reference_subnet(ours, configs)
        glora.set_subnet(ours, subnet)
        expected = ref(x)
        assert rel_err(ours(x), expected) < 1e-12
        assert rel_err(glora.fold(ours, subnet)(x), expected) < 1e-9


def test_reference_names_translate():
    assert reference_choice_name("LoRA_8") == "lora_8"
    assert reference_choice_name("constant") == "scalar"
    assert reference_choice_name("vector") == "vector"
    ours = _ours()
    by_name = {
        n: {"A": "LoRA_4", "B": "constant", "C": "none", "D": "none", "E": "vector"} for n in glora.glora_layers(ours)
    }
    subnet = glora.convert_reference_subnet(ours, by_name)
    assert set(subnet["blocks.0.attn.qkv"].values()) == {"lora_4", "scalar", "none", "vector"}
    with pytest.raises(ValueError, match="lists 3 layers, this model has 8"):
        glora.convert_reference_subnet(ours, [by_name["blocks.0.attn.qkv"]] * 3)


def test_rank_mismatch_says_how_to_fix():
    ref = _reference_model()
    with pytest.raises(ValueError, match=r"Ad' has shape \(96, 8\), this model expects \(96, 4\).*largest lora rank"):
        glora.load_reference_state_dict(_ours(glora.SearchSpace(lora_ranks=(4, 2))), ref.state_dict())


def test_incomplete_or_foreign_checkpoints_are_refused_before_loading():
    ref_sd = _reference_model().state_dict()
    ours = _ours()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    missing = {k: v for k, v in ref_sd.items() if not k.endswith("blocks.1.mlp.fc2.Cu")}
    with pytest.raises(ValueError, match=r"lacks 'blocks.1.mlp.fc2.Cu'"):
        glora.load_reference_state_dict(ours, missing)
    foreign = dict(ref_sd) | {"blocks.2.attn.qkv.Ad": torch.zeros(96, 8)}
    with pytest.raises(ValueError, match=r"holds 'blocks.2.attn.qkv.Ad'.*does not have"):
        glora.load_reference_state_dict(ours, foreign)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **VIT).state_dict()
    with pytest.raises(ValueError, match="is this a GLoRA supernet checkpoint"):
        glora.load_reference_state_dict(ours, plain)
    with pytest.raises(ValueError, match="not a named tensor"):
        glora.load_reference_state_dict(ours, {"blocks.0.attn.qkv.Ad": [1, 2]})
    after = ours.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_checkpoint_of_only_supports_and_head_loads_onto_the_same_backbone(caplog):
    """What the reference actually saves: A-E and the head; the backbone comes from the same pretrained weights."""
    ref = _reference_model()
    sd = ref.state_dict()
    supports_and_head = {
        k: v
        for k, v in sd.items()
        if k.rsplit(".", 1)[-1] in ("Ad", "Au", "Bd", "Bu", "Cd", "Cu", "D", "E") or k.startswith("head.")
    }
    backbone = {k: v for k, v in sd.items() if k not in supports_and_head}
    ours = _ours()
    ours.load_state_dict(backbone, strict=False)  # "pretrained=True" on the same weights
    glora.load_reference_state_dict(ours, supports_and_head)
    refs = [m for m in ref.modules() if isinstance(m, RefLinear)]
    configs = _ref_configs(len(refs), random.Random(3))
    for m, c in zip(refs, configs):
        m.config = c
    glora.set_subnet(ours, glora.convert_reference_subnet(ours, configs))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert rel_err(ours(x), ref(x)) < 1e-12
    no_head = {k: v for k, v in supports_and_head.items() if not k.startswith("head.")}
    with caplog.at_level("WARNING", logger="glora.reference"):
        glora.load_reference_state_dict(_ours(), no_head)
    assert "no weights for the head (head)" in caplog.text
