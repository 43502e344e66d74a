"""HF PEFT's GLoRA adapters (glora.peft_glora): read as a fixed subnet of this toolkit's space (outputs equal to
PEFT's model), folded, loaded into a larger supernet, and written back in PEFT's format when every layer takes the
same choices."""

from __future__ import annotations

import pytest
import torch
from helpers import trained_adapter

import glora

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

_LLAMA = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, attention_bias=True)  # fmt: skip
_BERT = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_labels=3)  # fmt: skip
IDS = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_LLAMA)).eval()


def _bert():
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT)).eval()


def _peft_adapter(make, folder, targets, ab, c, de, task_type=None):
    """A PEFT GLoRA model with non-zero adapters (init_weights=False; a trained head), saved; its logits."""
    torch.manual_seed(1)
    config = peft.GloraConfig(r=4, target_modules=targets, config_A_B=ab, config_C=c, config_D_E=de,
                              init_weights=False, task_type=task_type)  # fmt: skip
    model = peft.get_peft_model(make(), config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "glora_" not in name:  # modules_to_save: a head trained with the adapter
                p.add_(0.5)
        expected = model(input_ids=IDS).logits
    model.save_pretrained(folder)
    return expected


@pytest.mark.parametrize(
    "ab, c, de", [("lora", "vector", "constant"), ("vector", "lora", "vector"), ("constant", "none", "none")]
)
def test_a_peft_glora_adapter_loads_as_a_fixed_subnet(tmp_path, ab, c, de):
    """PEFT's configuration is one subnet of this toolkit's space; a fresh base that loads it computes what PEFT's
    model does (its formula, within float rounding), folds, and goes back to PEFT's format unchanged."""
    expected = _peft_adapter(_llama, tmp_path / "peft", ["q_proj", "v_proj", "o_proj"], ab, c, de)
    base = _llama()
    subnet = glora.load_adapter(base, tmp_path / "peft")
    kinds = {"lora": "lora_4", "vector": "vector", "constant": "scalar", "none": "none"}
    assert next(iter(subnet.values())) == {"A": kinds[ab], "B": kinds[ab], "C": kinds[c], "D": kinds[de],
                                           "E": kinds[de]}  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(glora.fold(base, subnet)(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    glora.save_adapter(base, tmp_path / "back", subnet, format="peft")
    again = peft.PeftModel.from_pretrained(_llama(), tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_peft_classifier_keeps_its_head_and_starts_a_larger_supernet(tmp_path):
    """modules_to_save (the classification head) load as the head; in a supernet of a larger space (a search's
    starting point) the adapter's tensors take the corner of each storage and its subnet is set."""
    expected = _peft_adapter(_bert, tmp_path / "peft", ["query", "value"], "lora", "lora", "vector", "SEQ_CLS")
    base = _bert()
    glora.load_adapter(base, tmp_path / "peft")
    assert glora.get_adapter_config(base).heads == ("classifier",)
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    larger = glora.inject(_bert(), glora.SearchSpace(lora_ranks=(8, 4)), ["query", "value"])
    subnet = glora.load_adapter(larger, tmp_path / "peft")
    assert all(choice["A"] == "lora_4" for choice in subnet.values())
    with torch.no_grad():
        torch.testing.assert_close(larger(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a PEFT BOFT adapter; only PEFT's GLoRA adapters"):
        (tmp_path / "boft").mkdir()
        (tmp_path / "boft" / "adapter_config.json").write_text('{"peft_type": "BOFT"}')
        glora.load_adapter(_bert(), tmp_path / "boft")


def test_writing_peft_format_needs_one_choice_for_every_layer(tmp_path):
    model = trained_adapter(_llama, glora.SearchSpace(lora_ranks=(4,)), targets=["q_proj", "v_proj"])
    uniform = glora.make_subnet(model, A="lora_4", B="lora_4", C="vector", D="scalar", E="scalar")
    glora.set_subnet(model, uniform)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    glora.save_adapter(model, tmp_path / "p", uniform, format="peft")
    loaded = peft.PeftModel.from_pretrained(_llama(), tmp_path / "p").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    mixed = dict(uniform)
    first, second = list(mixed)[:2]
    mixed[second] = dict(mixed[first], A="vector", B="vector")
    with pytest.raises(ValueError, match=f"layer {first!r} has A=lora_4, .* and layer {second!r} has A=vector"):
        glora.save_adapter(model, tmp_path / "q", mixed, format="peft")
    with pytest.raises(ValueError, match="gives A and B one parameterisation"):
        glora.save_adapter(model, tmp_path / "q", glora.make_subnet(model, A="lora_4", B="vector"), format="peft")
