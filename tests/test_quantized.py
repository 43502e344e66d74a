"""Quantized bases (QLoRA-style): GLoRA over bitsandbytes' 4-bit and 8-bit linear layers on the CPU.

A layer over a quantized weight computes exactly what the same layer over the dequantized weight computes (outputs
and every support's gradient, for every kind of choice, GIFT included), keeps no full-precision weight between
forward and backward, and folds into a plain model; the commands train, search and export from a 4-bit base and
the export predicts as the quantized supernet does."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from helpers import TINY_SEARCH, alpaca_files, cli, perturb, randomize_supports, text_train_args
from torch import nn

import glora
from glora.adapter import adapter_state_dict, load_adapter_state_dict
from glora.quantized import (
    dequantize_model,
    frozen_bytes,
    keep_trainable_layout,
    quantization_of,
    quantized_weight,
    weight_bytes,
)

bnb = pytest.importorskip("bitsandbytes")

SCHEMES = [("nf4", True), ("nf4", False), ("fp4", True), ("int8", False)]
SPACE = glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,))


def quantize_linear(lin: nn.Linear, scheme: str, double_quant: bool = True) -> nn.Module:
    """A bitsandbytes layer holding ``lin``'s weight quantized (on the CPU, as bitsandbytes 0.50 does it)."""
    weight = lin.weight.detach().clone()
    if scheme == "int8":
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None, has_fp16_weights=False)
        q.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        kind = {"quant_type": scheme, "compress_statistics": double_quant}
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, lin.bias is not None, torch.float32, **kind)
        q.weight = bnb.nn.Params4bit(weight, requires_grad=False, **kind)
    if lin.bias is not None:
        q.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
    return q.to("cpu")  # (quantizes)


class Net(nn.Module):
    """Two same-width layers (one GIFT group), a bias-free one, and a floating-point head."""

    def __init__(self, make=lambda lin: lin) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = make(nn.Linear(64, 64)), make(nn.Linear(64, 64))
        self.proj = make(nn.Linear(64, 32, bias=False))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))))


def twins(scheme: str, double_quant: bool = True):
    """The network over quantized weights, and the same network over their dequantized values (the oracle), both
    injected with the same supports."""
    dense = Net()
    perturb(dense, 1)
    quant = Net()
    quant.load_state_dict(dense.state_dict())
    for name in ("fc1", "fc2", "proj"):
        setattr(quant, name, quantize_linear(getattr(quant, name), scheme, double_quant))
        with torch.no_grad():
            getattr(dense, name).weight.copy_(quantized_weight(getattr(quant, name), torch.float32).dequantize())
    for m in (quant, dense):
        glora.inject(m, SPACE, targets=["fc1", "fc2", "proj"])
    randomize_supports(quant, 2)
    load_adapter_state_dict(dense, adapter_state_dict(quant))
    glora.set_execution(dense, path="autograd")
    return quant, dense


@pytest.mark.parametrize(("scheme", "double_quant"), SCHEMES, ids=[f"{s}-dq{int(d)}" for s, d in SCHEMES])
def test_a_quantized_layer_computes_and_learns_what_its_dequantized_twin_does(scheme, double_quant):
    quant, dense = twins(scheme, double_quant)
    assert all(layer.quant is not None and layer.quant.scheme == scheme for layer in glora.glora_layers(quant).values())
    assert not quant.fc1.weight.is_floating_point()  # still quantized in memory
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    rng = random.Random(0)
    subnets = [glora.sample_subnet(quant, rng) for _ in range(6)]
    subnets += [glora.make_subnet(quant, A="gift_2", B="lora_4", C="lora_2", D="vector", E="scalar"),
                glora.make_subnet(quant, A="lora_4", B="vector", C="vector", D="scalar", E="vector")]  # fmt: skip
    for subnet in subnets:
        outs, grads = [], []
        for model in (quant, dense):
            model.zero_grad(set_to_none=True)
            glora.set_subnet(model, subnet)
            y = model(x)
            y.square().sum().backward()
            outs.append(y)
            grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
        for name, g in grads[1].items():  # the same supports get a gradient, the same one
            if g is None:
                assert grads[0][name] is None, name
            else:
                torch.testing.assert_close(grads[0][name], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_the_empty_choice_is_bitsandbytes_own_layer():
    """With every support at none the layer is its base: the dequantized weight is the one bitsandbytes multiplies
    by (an independent check of the dequantization)."""
    lin = nn.Linear(64, 32)
    perturb(lin, 4)
    q = quantize_linear(lin, "nf4")
    x = torch.randn(4, 64)
    with torch.no_grad():
        expected = q(x)
    model = nn.Sequential(q)
    glora.inject(model, glora.SearchSpace(lora_ranks=(4,)), targets=["0"])
    glora.set_subnet(model, glora.make_subnet(model, A="none", B="none", C="none", D="none", E="none"))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_no_full_precision_weight_is_kept_between_forward_and_backward():
    quant, _ = twins("nf4")
    glora.set_subnet(quant, glora.make_subnet(quant, A="lora_4", B="lora_4", C="vector", D="vector", E="vector"))
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = quant(torch.randn(2, 64)).sum()
    loss.backward()  # (what backward keeps for itself is freed as it goes)
    assert saved
    # (x and the supports are small: a 64 x 64 weight would show up as 4,096 elements)
    weight_sized = [s for s in saved if s.numel() >= 64 * 64]
    assert not weight_sized, weight_sized


def test_a_folded_quantized_model_is_plain_and_predicts_the_same():
    quant, _ = twins("nf4")
    subnet = glora.sample_subnet(quant, random.Random(7))
    glora.set_subnet(quant, subnet)
    x = torch.randn(6, 64)
    with torch.no_grad():
        expected = quant(x)
        folded = glora.fold(quant, subnet)
        got = folded(x)
    assert all(type(m) in (Net, nn.Linear) for m in folded.modules())
    assert all(p.is_floating_point() and p.dtype == torch.float32 for p in folded.parameters())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_layers_left_quantized_are_dequantized_by_the_fold():
    quant = Net(lambda lin: quantize_linear(lin, "fp4"))
    glora.inject(quant, SPACE, targets=["fc1"])
    subnet = glora.sample_subnet(quant, random.Random(1))
    with torch.no_grad():
        folded = glora.fold(quant, subnet)
    assert not any(quantized_weight(m) for m in folded.modules())
    assert quantization_of(quant) == {"scheme": "fp4", "double_quant": True, "dtype": "float32", "layers": 3}
    assert quantization_of(folded) is None


def test_a_quantized_model_evaluated_first_still_trains():
    """bitsandbytes repacks a 4-bit weight for its CPU kernel after an eval pass without autograd, and that kernel
    has no backward: gradients through such a layer would be silently zero. GLoRA turns the repacking off."""
    quant = Net(lambda lin: quantize_linear(lin, "nf4"))
    quant.eval()
    with torch.no_grad():
        quant(torch.randn(2, 64))  # (may repack fc2 and proj, depending on the CPU)
    glora.inject(quant, SPACE, targets=["fc1"])  # fc2 and proj stay bitsandbytes layers
    randomize_supports(quant, 0)
    glora.set_subnet(quant, glora.make_subnet(quant, A="lora_4", B="lora_4", C="none", D="none", E="none"))
    quant.train()
    quant(torch.randn(3, 64)).square().sum().backward()
    assert quant.fc1.Bd.grad is not None and quant.fc1.Bd.grad.abs().sum() > 0
    assert keep_trainable_layout(quant) == 2  # (idempotent: the two 4-bit layers left)


def test_frozen_weights_take_under_a_third_of_a_bf16_base(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    kwargs = {"dtype": torch.bfloat16, "device_map": "cpu"}
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs).requires_grad_(False)
    bnb_config = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    quant = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=bnb_config, **kwargs)
    glora.inject(quant, glora.SearchSpace(lora_ranks=(8,)), targets=["q_proj", "v_proj"])
    assert frozen_bytes(quant) <= 0.3 * weight_bytes(plain)
    assert glora.glora_layers(quant)["model.layers.0.self_attn.q_proj"].weight_dtype == torch.bfloat16


class QuantLinear(nn.Module):
    """Stands in for another library's quantized linear (GPTQ's packed int32 weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = 64, 64
        self.register_buffer("qweight", torch.zeros(8, 64, dtype=torch.int32))

    def forward(self, x):
        return x


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_an_unsupported_quantized_class_is_refused_by_name():
    model = Net()
    model.fc2 = QuantLinear()
    with pytest.raises(ValueError, match=r"'fc2'.*test_quantized\.QuantLinear is a quantized linear class.*Linear4bit"):
        glora.inject(model, SPACE, targets=["fc1", "fc2"])


def test_layers_skipped_for_their_class_are_named_when_nothing_is_left():
    model = Net()
    model.fc1 = ScaledLinear(64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"matched no adaptable.*skipped because of their class \(ScaledLinear x1"):
            glora.inject(model, SPACE, targets=["fc1"])


def test_a_quantized_head_is_refused_with_the_way_out():
    model = Net()
    model.head = quantize_linear(model.head, "nf4")
    with pytest.raises(ValueError, match=r"head 'head' is quantized.*llm_int8_skip_modules=\['head'\]"):
        glora.inject(model, SPACE, targets=["fc1"], heads=["head"])


def test_an_adapter_trained_over_a_quantized_base_says_so_over_a_plain_one(tmp_path):
    quant, _ = twins("nf4")
    subnet = glora.sample_subnet(quant, random.Random(2))
    glora.save_adapter(quant, tmp_path / "a", subnet)
    record = json.loads((tmp_path / "a" / "glora_adapter.json").read_text())
    assert record["base"]["quantization"]["scheme"] == "nf4"
    plain = Net()
    perturb(plain, 1)
    with pytest.warns(UserWarning, match="trained over a nf4-quantized base and this base is floating-point"):
        glora.load_adapter(plain, tmp_path / "a")


def test_dequantizing_a_transformers_model_forgets_its_quantization(tmp_path, tiny_llama):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_llama, quantization_config=transformers.BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
    )
    names = dequantize_model(model)
    assert len(names) == 14 and quantization_of(model) is None
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain folder


# ---------------------------------------------------------------------- the commands
def test_a_causal_lm_trains_searches_and_exports_from_a_4bit_base(tiny_llama, tmp_path, capsys):
    pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    files = alpaca_files(tmp_path)
    sup, srch = tmp_path / "sup", tmp_path / "search"
    args = text_train_args(tiny_llama, files, sup, "--quantize", "nf4", "--targets", "q_proj", "v_proj",
                           dataset="instructions", max_seq_length=96)  # fmt: skip
    code, err = cli("train", args, capsys)
    assert code == 0, err
    assert "base quantized by bitsandbytes: nf4 with double quantization, 14 linear layers" in err
    ckpt = torch.load(sup / "last.pt", weights_only=True)
    assert ckpt["backbone"]["quantize"] == "nf4" and ckpt["backbone"]["double_quant"] is True
    code, err = cli("search", ["--supernet", sup / "last.pt", "--out", srch, "--param-limit", "none", "--no-progress",
                               *TINY_SEARCH], capsys)  # fmt: skip
    assert code == 0, err
    sub = srch / "subnet.yaml"
    code, out = cli("export", ["--supernet", sup / "last.pt", "--subnet", sub, "--out", tmp_path / "exp",
                               "--latency-rounds", "0"], capsys, stdout=True)  # fmt: skip
    assert code == 0, out
    assert "folded into the dequantized weights vs the nf4 supernet" in out
    record = json.loads((tmp_path / "exp" / "glora_export.json").read_text())
    assert record["quantization"]["scheme"] == "nf4" and record["prediction_agreement"] >= 0.99
    assert record["agreement_over"].endswith("tokens")
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert "quantization_config" not in config
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    assert all(p.is_floating_point() for p in plain.parameters())
    # the pick retrained from the supernet over the same quantized base, then exported as trained
    retrain = text_train_args(tiny_llama, files, tmp_path / "retrain", "--quantize", "nf4", "--targets", "q_proj",
                              "v_proj", "--init-from", sup / "last.pt", "--subnet", sub, "--epochs", "1",
                              dataset="instructions", max_seq_length=96)  # fmt: skip
    code, err = cli("train", retrain, capsys)
    assert code == 0, err
    code, out = cli("export", ["--supernet", tmp_path / "retrain" / "last.pt", "--out", tmp_path / "exp2",
                               "--latency-rounds", "0"], capsys, stdout=True)  # fmt: skip
    assert code == 0 and "predictions agree on" in out, out
    # the adapter alone, over the same quantized base (a Llama's own layer names start with "model." too)
    code, out = cli("export", ["--supernet", sup / "last.pt", "--subnet", sub, "--out", tmp_path / "adapter",
                               "--adapter-only"], capsys, stdout=True)  # fmt: skip
    assert code == 0, out
    assert 'bnb_4bit_quant_type="nf4"' in out and "computes the supernet's outputs exactly" in out


def test_a_gpt2_over_a_4bit_base_exports_its_conv1d_layers_as_gpt2_holds_them(tmp_path, capsys):
    """bitsandbytes loads GPT-2's Conv1D layers (weights stored in x out) as linear ones; the export gives the
    architecture's layout back, so plain transformers loads it (the export's own reload check)."""
    pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    from helpers import make_llama

    folder = make_llama(tmp_path / "gpt2")  # (its tokenizer; the model replaced below)
    vocab = len(transformers.AutoTokenizer.from_pretrained(folder))
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (folder / name).unlink(missing_ok=True)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    files, sup = alpaca_files(tmp_path), tmp_path / "sup"
    args = text_train_args(folder, files, sup, "--quantize", "nf4", "--targets", "c_attn", "--epochs", "1",
                           dataset="instructions", max_seq_length=96)  # fmt: skip
    code, err = cli("train", args, capsys)
    assert code == 0, err
    code, err = cli("search", ["--supernet", sup / "last.pt", "--out", tmp_path / "search", "--param-limit", "none",
                               "--no-progress", *TINY_SEARCH], capsys)  # fmt: skip
    assert code == 0, err
    code, out = cli("export", ["--supernet", sup / "last.pt", "--subnet", tmp_path / "search" / "subnet.yaml",
                               "--out", tmp_path / "exp", "--latency-rounds", "0"], capsys, stdout=True)  # fmt: skip
    assert code == 0 and "plain transformers reload matches exactly" in out, out
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exp")
    assert type(plain.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


@pytest.mark.parametrize("scheme", ["nf4", "int8"])
def test_a_text_classifier_over_a_quantized_base_keeps_its_head_in_floating_point(tiny_bert, tmp_path, capsys, scheme):
    pytest.importorskip("datasets")
    from helpers import which_sentence_rows, write_csv

    files = {s: write_csv(tmp_path / f"{s}.csv", which_sentence_rows(n, i))
             for i, (s, n) in enumerate([("train", 16), ("val", 8), ("test", 8)])}  # fmt: skip
    sup = tmp_path / "sup"
    args = text_train_args(tiny_bert, files, sup, "--text-column", "s1", "s2", "--quantize", scheme, "--epochs", "1")
    code, err = cli("train", args, capsys)
    assert code == 0, err
    assert f"base quantized by bitsandbytes: {scheme}" in err
    code, err = cli("search", ["--supernet", sup / "last.pt", "--out", tmp_path / "search", "--param-limit", "none",
                               "--no-progress", *TINY_SEARCH], capsys)  # fmt: skip
    assert code == 0, err
    code, out = cli("export", ["--supernet", sup / "last.pt", "--subnet", tmp_path / "search" / "subnet.yaml",
                               "--out", tmp_path / "exp", "--latency-rounds", "0"], capsys, stdout=True)  # fmt: skip
    assert code == 0, out
    record = json.loads((tmp_path / "exp" / "glora_export.json").read_text())
    assert record["quantization"]["scheme"] == scheme and record["agreement_over"] == "8 rows"
    assert record["prediction_agreement"] >= 0.99


def test_a_run_over_a_4bit_base_resumes_exactly(tiny_llama, tmp_path, capsys):
    pytest.importorskip("datasets")
    from helpers import same_training

    files = alpaca_files(tmp_path)
    args = ["--quantize", "fp4", "--no-double-quant", "--epochs", "3"]
    assert cli("train", text_train_args(tiny_llama, files, tmp_path / "full", *args, dataset="instructions",
                                        max_seq_length=96), capsys)[0] == 0  # fmt: skip
    cut = text_train_args(tiny_llama, files, tmp_path / "cut", *args, "--stop-after", "1", dataset="instructions",
                          max_seq_length=96)  # fmt: skip
    assert cli("train", cut, capsys)[0] == 0
    code, err = cli("train", ["--resume", "--out", tmp_path / "cut", "--quantize", "nf4"], capsys)
    assert code == 2 and "--quantize" in err  # the base a run trains over is fixed
    assert cli("train", ["--resume", "--out", tmp_path / "cut"], capsys)[0] == 0
    same_training(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fsdp"], "--quantize nf4: a quantized base is not sharded here; leave out --fsdp"),
        (["--compile"], "--quantize nf4: a quantized base runs eagerly; leave out --compile"),
        (["--no-pretrained"], "--quantize nf4: quantizes pretrained weights as they load"),
    ],
)
def test_what_a_quantized_base_cannot_do_is_refused_in_one_line(tiny_llama, tmp_path, capsys, extra, message):
    files = alpaca_files(tmp_path)
    args = text_train_args(tiny_llama, files, tmp_path / "sup", "--quantize", "nf4", *extra, dataset="instructions")
    code, err = cli("train", args, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "sup").exists()


def test_without_bitsandbytes_the_extra_is_named(tiny_llama, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    args = text_train_args(tiny_llama, alpaca_files(tmp_path), tmp_path / "sup", "--quantize", "fp4",
                           dataset="instructions")  # fmt: skip
    code, err = cli("train", args, capsys)
    assert code == 2 and "needs bitsandbytes (the quantized extra), not installed: pip install" in err


def test_quantize_is_for_transformers_models(tmp_path, capsys):
    code, err = cli("train", ["--quantize", "nf4", "--out", tmp_path / "sup"], capsys)
    assert code == 2 and "--quantize: for transformers models only" in err
