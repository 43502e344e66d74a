"""Adapter folders (glora.save_adapter / glora.load_adapter): a trained adapter saved apart from its base and loaded
onto a fresh copy of it gives the saved model's outputs bit for bit, on timm, transformers and plain modules; a base
whose layers differ is refused; several adapters share one base and switch without reloading it."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import timm
import torch
from helpers import ToyMLP, perturb, trained_adapter

import glora
from glora.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def _vit(width: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                              embed_dim=width, depth=2, num_heads=2)  # fmt: skip
    perturb(model, 0)
    return model.eval()


SPACE = glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(4,))
X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("with_subnet", [True, False], ids=["subnet", "supernet"])
def test_a_fresh_base_loads_the_adapter_and_computes_the_same(tmp_path, with_subnet):
    model = trained_adapter(_vit, SPACE)
    subnet = glora.sample_subnet(model, random.Random(3))
    glora.set_subnet(model, subnet)
    with torch.no_grad():
        expected = model(X)
    glora.save_adapter(model, tmp_path / "a", subnet if with_subnet else None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
    record = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert record["base"]["class"] == "VisionTransformer" and len(record["base"]["layers"]) == 8
    assert record["glora_version"] == glora.__version__ and record["adapter"]["heads"] == ["head"]
    base = _vit()
    got = glora.load_adapter(base, tmp_path / "a")
    assert got == (subnet if with_subnet else None)
    if not with_subnet:
        glora.set_subnet(base, subnet)
    with torch.no_grad():
        assert torch.equal(base(X), expected)  # bit for bit
        folded = glora.fold(base, subnet)(X)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)  # the folded export's outputs


def test_a_subnet_keeps_only_the_slices_it_reads(tmp_path):
    model = trained_adapter(_vit, SPACE)
    small = glora.make_subnet(model, A="lora_4", B="vector", C="none", D="scalar", E="none")
    glora.save_adapter(model, tmp_path / "small", small)
    glora.save_adapter(model, tmp_path / "whole")
    tensors = glora.read_adapter(tmp_path / "small")[1]
    q = "blocks.0.attn.qkv"
    assert tensors[f"{q}.Ad"].shape == (96, 4) and tensors[f"{q}.Au"].shape == (4, 32)
    assert tensors[f"{q}.Bd"].shape == (96, 1) and f"{q}.Bu" not in tensors and f"{q}.Cd" not in tensors
    assert tensors[f"{q}.D"].shape == (1,) and f"{q}.E" not in tensors
    assert not any("gift" in n for n in tensors)  # no layer uses a GIFT choice: no generator kept
    assert tensors["head.weight"].shape == (5, 32)  # the head trains: kept whole (PEFT's modules_to_save)
    small_size = (tmp_path / "small" / ADAPTER_WEIGHTS).stat().st_size
    assert small_size < (tmp_path / "whole" / ADAPTER_WEIGHTS).stat().st_size / 2


def test_transformers_and_plain_modules_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip

    def llama():
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config).eval()

    model = trained_adapter(llama, glora.SearchSpace(lora_ranks=(4,)), targets=["q_proj", "v_proj"])
    subnet = glora.sample_subnet(model, random.Random(2))
    glora.set_subnet(model, subnet)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    glora.save_adapter(model, tmp_path / "llama", subnet)
    base = llama()
    glora.load_adapter(base, tmp_path / "llama")
    assert set(glora.glora_layers(base)) == set(glora.glora_layers(model))  # q_proj and v_proj only
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids).logits, expected)

    def toy():
        torch.manual_seed(0)
        return ToyMLP().eval()

    mlp = trained_adapter(toy, glora.SearchSpace(lora_ranks=(2,)))
    glora.save_adapter(mlp, tmp_path / "mlp")
    fresh = toy()
    glora.load_adapter(fresh, tmp_path / "mlp")
    sub = glora.sample_subnet(mlp, random.Random(0))
    glora.set_subnet(mlp, sub)
    glora.set_subnet(fresh, sub)
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x), mlp(x))


def test_another_base_is_refused_and_other_weights_are_a_warning(tmp_path):
    model = trained_adapter(_vit, SPACE)
    glora.save_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match=r"layer 'blocks.0.attn.qkv' is \(in 48, out 144, bias True\) in this base, "
                                         r"\(in 32, out 96, bias True\) in the adapter"):  # fmt: skip
        glora.load_adapter(_vit(width=48), tmp_path / "a")
    shallow = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                                embed_dim=32, depth=1, num_heads=2)  # fmt: skip
    with pytest.raises(ValueError, match="this base has no layer 'blocks.1.attn.qkv'"):
        glora.load_adapter(shallow, tmp_path / "a")
    other = _vit()
    with torch.no_grad():
        other.blocks[0].mlp.fc1.weight.add_(1.0)
    with pytest.warns(UserWarning, match="was trained on other frozen weights"):
        glora.load_adapter(other, tmp_path / "a")
    with pytest.raises(ValueError, match="holds no glora_adapter.json"):
        glora.load_adapter(_vit(), tmp_path)


def test_two_adapters_share_one_base_and_switch(tmp_path):
    """Each adapter gives exactly its own outputs after a switch; folding works on the one in place; the base is
    never touched (its frozen tensors are the same objects throughout)."""
    outputs, subnets = {}, {}
    for name, seed in (("cats", 1), ("dogs", 2)):
        model = trained_adapter(_vit, SPACE, seed=seed)
        subnets[name] = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnets[name])
        with torch.no_grad():
            outputs[name] = model(X)
        glora.save_adapter(model, tmp_path / name, subnets[name])
    base = _vit()
    glora.load_adapter(base, tmp_path / "cats", name="cats")
    frozen = {n: p for n, p in base.named_parameters() if not p.requires_grad}
    glora.load_adapter(base, tmp_path / "dogs", name="dogs")
    assert glora.adapter_names(base) == ["cats", "dogs"]
    for name in ("cats", "dogs", "cats", "dogs"):
        assert glora.set_adapter(base, name) == subnets[name]
        with torch.no_grad():
            assert torch.equal(base(X), outputs[name]), name
            with glora.folded(base, subnets[name]):
                torch.testing.assert_close(base(X), outputs[name], rtol=1e-5, atol=1e-5)
    assert all(p is frozen[n] for n, p in base.named_parameters() if not p.requires_grad)
    with pytest.raises(KeyError, match="no adapter loaded as 'birds'; loaded: cats, dogs"):
        glora.set_adapter(base, "birds")
    with glora.folded(base, subnets["dogs"]), pytest.raises(RuntimeError, match="folded mode"):
        glora.set_adapter(base, "cats")


def test_an_injected_model_takes_an_adapter_of_its_configuration(tmp_path):
    model = trained_adapter(_vit, SPACE)
    glora.save_adapter(model, tmp_path / "a")
    injected = glora.inject(_vit(), SPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same frozen weights: no warning
        glora.load_adapter(injected, tmp_path / "a")
    narrower = glora.inject(_vit(), glora.SearchSpace(lora_ranks=(4,)))
    with pytest.raises(ValueError, match="its space .* is not this model's"):
        glora.load_adapter(narrower, tmp_path / "a")
