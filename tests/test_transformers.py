"""Hugging Face transformers models in the core: tiny random-init Llama, BERT and GPT-2 built from configs (offline).

Targets as PEFT users write them, the output layer (``lm_head``) never adapted, classification heads trained in
full, GPT-2's ``Conv1D`` adapted as the linear map it is, and folding exact in float64 for random subnets and every
choice kind, GIFT included: the folded model is the plain architecture again.
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path

import pytest
import torch

import glora

transformers = pytest.importorskip("transformers")

SPACE = glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,))


def _llama(kind: str = "causal-lm"):
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    cls = transformers.LlamaForCausalLM if kind == "causal-lm" else transformers.LlamaForSequenceClassification
    return cls(cfg)


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg)


def _gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg)


MODELS = {"llama-causal": _llama, "llama-classifier": lambda: _llama("classifier"), "bert": _bert, "gpt2": _gpt2}


def _build(name: str, targets=None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(supernet, an untouched copy of the base model), both float64 in eval mode, supports random."""
    torch.manual_seed(0)
    base = MODELS[name]().double().eval()
    model = MODELS[name]().double().eval()
    model.load_state_dict(base.state_dict())
    glora.inject(model, SPACE, targets)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return model, base


def _ids() -> torch.Tensor:
    return torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(2))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_is_exact_for_random_subnets_and_gives_the_plain_architecture(name):
    model, base = _build(name)
    ids = _ids()
    subnets = [glora.sample_subnet(model, random.Random(seed)) for seed in range(3)]
    subnets.append(glora.make_subnet(model, A="gift_2", B="lora_4", C="lora_2", D="vector", E="scalar"))
    for subnet in subnets:
        glora.set_subnet(model, subnet)
        plain = glora.fold(model, subnet)
        assert not glora.glora_layers(plain)
        assert {type(m).__name__ for m in plain.modules()} <= {type(m).__name__ for m in base.modules()}
        a, b = _logits(model, ids), _logits(plain, ids)
        assert (a - b).abs().max() <= 1e-9 * a.abs().max()


def test_llama_output_layer_is_never_adapted_and_stays_frozen():
    model, _ = _build("llama-causal")
    layers = glora.glora_layers(model)
    assert "lm_head" not in layers and not model.lm_head.weight.requires_grad
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"}  # fmt: skip
    assert glora.head_names(model) == []
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".A" in n or ".B" in n or ".C" in n or n.endswith((".D", ".E")) or "gift" in n
                             for n in trainable)  # fmt: skip
    with pytest.warns(UserWarning, match="'lm_head': it is the model's output layer, kept frozen"):
        glora.inject(_llama(), SPACE, ["q_proj", "lm_head"])


@pytest.mark.parametrize("name, head", [("llama-classifier", "score"), ("bert", "classifier")])
def test_classification_heads_train_in_full_and_are_not_adapted(name, head):
    model, _ = _build(name)
    assert glora.head_names(model) == [head]
    assert all(p.requires_grad for p in model.get_submodule(head).parameters())
    assert not any(n == head or n.startswith(head + ".") for n in glora.glora_layers(model))


@pytest.mark.parametrize(
    "targets, expected",
    [
        (["q_proj", "v_proj"], {"q_proj", "v_proj"}),  # PEFT's spelling of the GIFT paper's Query/Value setup
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        (r".*\.layers\.1\.self_attn\.(q|v)_proj", {"q_proj", "v_proj"}),
    ],
)
def test_targets_as_peft_users_write_them(targets, expected):
    model = glora.inject(_llama(), SPACE, targets)
    assert {n.rsplit(".", 1)[-1] for n in glora.glora_layers(model)} == expected
    stored = glora.AdapterConfig(SPACE, targets).to_dict()["targets"]  # what a checkpoint records
    assert stored == (None if targets == "all-linear" else targets)


def test_gpt2_conv1d_layers_are_adapted_and_fold_back_to_conv1d():
    model, _ = _build("gpt2")
    layers = glora.glora_layers(model)
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"c_attn", "c_proj", "c_fc"}
    qkv = layers["transformer.h.0.attn.c_attn"]
    assert (qkv.in_features, qkv.out_features) == (32, 96) and qkv.transposed
    glora.set_subnet(model, glora.make_subnet(model, B="lora_4", E="vector"))
    plain = glora.fold(model, glora.make_subnet(model, B="lora_4", E="vector"))
    conv = plain.get_submodule("transformer.h.0.attn.c_attn")
    assert type(conv).__name__ == "Conv1D" and conv.weight.shape == (32, 96)
    fresh = _gpt2().double()
    fresh.load_state_dict(plain.state_dict())  # the plain architecture, key for key and shape for shape
    ids = _ids()
    assert torch.equal(_logits(fresh.eval(), ids), _logits(plain, ids))
    # The size check counts what inject allocates, Conv1D layers included.
    assert glora.supernet_size(_gpt2(), SPACE) == sum(p.numel() for p in _build("gpt2")[0].parameters()
                                                      if p.requires_grad)  # fmt: skip


def test_an_untouched_subnet_is_the_pretrained_model():
    """Down factors, D and E start at zero: right after inject every subnet computes the base model."""
    torch.manual_seed(0)
    base = _llama().double().eval()
    model = _llama().double().eval()
    model.load_state_dict(base.state_dict())
    glora.inject(model, SPACE)
    glora.set_subnet(model, glora.sample_subnet(model, random.Random(0)))
    ids = _ids()
    torch.testing.assert_close(_logits(model, ids), _logits(base, ids), rtol=0, atol=1e-12)


def test_a_bias_free_llama_narrowed_to_no_c_and_e_folds_to_the_plain_architecture():
    """Llama's projections have no bias; without C and E no subnet creates one, so the folded model loads into a
    fresh LlamaForCausalLM key for key (the README's rule until the search handles bias-free layers)."""
    space = glora.SearchSpace(lora_ranks=(4, 2), choices={"C": ["none"], "E": ["none"]})
    torch.manual_seed(0)
    model = glora.inject(_llama().double().eval(), space)
    for seed in range(3):
        subnet = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnet)
        plain = glora.fold(model, subnet)
        fresh = _llama().double().eval()
        fresh.load_state_dict(plain.state_dict(), strict=True)  # raises on a missing or unexpected key
        ids = _ids()
        torch.testing.assert_close(_logits(fresh, ids), _logits(model, ids), rtol=1e-9, atol=1e-12)


def test_bias_free_exclude_narrows_only_the_layers_without_a_bias():
    """``bias_free="exclude"``: Llama's bias-free projections offer none for C, D and E (so no subnet adds a key),
    BERT's biased layers keep every choice; sampling, the search's genome and the size check all follow."""
    from search.genome import Genome

    space = glora.SearchSpace(lora_ranks=(4, 2), bias_free="exclude")
    assert glora.SearchSpace.from_dict(space.to_dict()) == space != glora.SearchSpace(lora_ranks=(4, 2))
    model = glora.inject(_llama(), space)
    assert all(m.space.choice_names(s) == ("none",) for m in glora.glora_layers(model).values() for s in "CDE")
    assert glora.supernet_size(_llama(), space) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    genome = Genome(model)
    assert {genome.options[i] for i, (_, s) in enumerate(genome.genes) if s in "CDE"} == {("none",)}
    for seed in range(3):
        subnet = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnet)
        _llama().load_state_dict(glora.fold(model, subnet).state_dict(), strict=True)
    bert = glora.inject(_bert(), space)
    assert all(m.space == space for m in glora.glora_layers(bert).values())  # every BERT linear has a bias
    with pytest.raises(ValueError, match="bias_free='exclude' gives layers without a bias only 'none'"):
        glora.SearchSpace(bias_free="exclude", choices={"E": ["vector"]})
    with pytest.raises(ValueError, match="bias_free must be one of allow, exclude; got 'drop'"):
        glora.SearchSpace(bias_free="drop")


def _qwen2():
    """Qwen2: q/k/v projections with a bias, o_proj and the MLP without one (both kinds in one block)."""
    cfg = transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
    )  # fmt: skip
    return transformers.Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("path", ["manual", "static", "autograd"])
def test_bias_free_exclude_on_a_model_with_both_kinds_of_layers(path):
    """Layers with and without a bias in one model offer spaces of different sizes (their choice codes differ in
    length): every execution path trains on sampled subnets, and each fold is exact and loads key for key."""
    space = glora.SearchSpace(lora_ranks=(4, 2), bias_free="exclude")
    torch.manual_seed(0)
    base = _qwen2().double()
    model = glora.inject(copy.deepcopy(base), space)
    layers = glora.glora_layers(model)
    assert {m.bias is None for m in layers.values()} == {True, False}
    assert len({m.code.numel() for m in layers.values()}) == 2
    glora.set_execution(model, path=path)
    ids = _ids()
    for seed in range(4):
        subnet = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnet)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        model.eval()
        fresh = _qwen2().double().eval()
        fresh.load_state_dict(glora.fold(model, subnet).state_dict(), strict=True)
        torch.testing.assert_close(_logits(fresh, ids), _logits(model, ids), rtol=1e-9, atol=1e-12)
        model.zero_grad()


def _small(cls_name: str, **extra):
    cfg = getattr(transformers, cls_name)(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, **extra,
    )  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(cfg)


@pytest.mark.parametrize(
    "make, targets, decided",
    [
        (lambda: _small("LlamaConfig"), None, "allow"),  # attention_bias + mlp_bias hold every new bias
        (lambda: _small("MistralConfig"), None, "exclude"),  # no bias flags at all
        (lambda: _small("Qwen3Config", head_dim=8), ["q_proj", "v_proj"], "allow"),  # attention_bias holds them
        (lambda: _small("Qwen3Config", head_dim=8), None, "exclude"),  # ... but not the MLP's
        (lambda: _small("OlmoConfig"), ["q_proj", "v_proj"], "allow"),  # OLMo: attention_bias
        (lambda: _small("Ernie4_5Config"), ["q_proj", "v_proj"], "allow"),  # Ernie 4.5: use_bias
        (lambda: _small("StableLmConfig"), ["q_proj", "v_proj"], "allow"),  # StableLM: use_qkv_bias
        (_bert, None, "allow"),  # every adapted layer has a bias: nothing to decide
        (lambda: __import__("timm").create_model("vit_tiny_patch16_224", qkv_bias=False, depth=1), None, "exclude"),
    ],
)
def test_bias_free_auto_decides_per_model(make, targets, decided, caplog):
    """--bias-free auto (the default): allow where the export can declare every new bias with the config's flags,
    exclude where the plain architecture could not load such a subnet (Mistral, Qwen3's MLP, a timm model)."""
    from glora.app.backbone import resolve_bias_free

    model = make()
    adapter = glora.AdapterConfig(glora.SearchSpace(lora_ranks=(4,)), targets)
    with caplog.at_level("INFO", logger="glora.app.backbone"):
        resolved = resolve_bias_free(model, adapter, "auto")
    assert resolved.space.bias_free == decided and resolved.targets == adapter.targets
    assert ("--bias-free auto: " + decided in caplog.text) == (make is not _bert)  # said where there was a choice
    glora.inject(model, resolved)
    if decided == "allow":  # then every subnet folds into something the architecture (with its flags) loads
        assert all(m.space == resolved.space for m in glora.glora_layers(model).values())


def _qv_bias_subnet(model) -> glora.Subnet:
    """GLoRA on q and v with E = vector (a new bias where the architecture has none), random supports, set."""
    glora.inject(model, glora.SearchSpace(lora_ranks=(4,)), ["q_proj", "v_proj"])
    subnet = glora.make_subnet(model, A="none", B="none", C="none", D="none", E="vector")
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, 0, 0.1)
    glora.set_subnet(model, subnet)
    return subnet


def _new_keys(model, folded) -> list[str]:
    """The state-dict keys the fold added to the plain architecture (its new biases)."""
    from glora.app.hf_backbone import CausalLM

    return sorted(set(folded.state_dict()) - set(CausalLM(type(model.model)(model.model.config)).state_dict()))


@pytest.mark.parametrize(
    "config, flag",
    [("OlmoConfig", "attention_bias"), ("Ernie4_5Config", "use_bias"), ("StableLmConfig", "use_qkv_bias")],
)
def test_each_familys_own_bias_flag_is_declared(config, flag):
    """A subnet giving q and v a bias folds into a config with the family's own flag on: the plain architecture
    loads exactly those keys and computes the same function."""
    from glora.app.hf_backbone import CausalLM, declare_biases

    torch.manual_seed(0)
    model = CausalLM(_small(config))
    subnet = _qv_bias_subnet(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids)
    folded = glora.fold(model, subnet)
    extra = _new_keys(model, folded)
    assert declare_biases(folded, extra) == [flag] and getattr(folded.model.config, flag)
    plain = type(model.model)(folded.model.config)
    assert set(plain.state_dict()) == set(folded.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(folded(input_ids=ids), expected, rtol=1e-5, atol=1e-5)


def test_bias_free_allow_warns_where_the_export_would_refuse(caplog):
    from glora.app.backbone import resolve_bias_free

    adapter = glora.AdapterConfig(glora.SearchSpace(lora_ranks=(4,)))
    with caplog.at_level("INFO", logger="glora.app.backbone"):
        assert resolve_bias_free(_small("MistralConfig"), adapter, "allow") is adapter
        assert resolve_bias_free(_small("LlamaConfig"), adapter, "allow") is adapter
    assert caplog.text.count("cannot be exported") == 1 and "MistralForCausalLM cannot hold a bias" in caplog.text
    caplog.clear()
    ssf = glora.AdapterConfig(glora.SearchSpace(lora_ranks=(), choices={"A": ["vector"], "D": ["vector"],
                                                                       "E": ["vector"]}))  # fmt: skip
    with caplog.at_level("INFO", logger="glora.app.backbone"):  # a fixed method that names E: kept, and said
        assert resolve_bias_free(_small("MistralConfig"), ssf, "auto").space.bias_free == "allow"
    assert "leave none out for D, E" in caplog.text and "cannot be exported" in caplog.text
    with pytest.raises(ValueError, match="--bias-free must be one of auto, allow, exclude; got 'maybe'"):
        resolve_bias_free(_small("LlamaConfig"), adapter, "maybe")


def _falcon():
    cfg = transformers.FalconConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0
    )  # fmt: skip
    return transformers.FalconForCausalLM(cfg)


def test_falcon_linears_are_adapted_and_outputs_edited_in_place_get_a_copy():
    """Falcon's FalconLinear computes x @ W.T + b in its own order (adapted as the linear it is), and its decoder
    adds the attention output into the MLP's in place. find_in_place_edits marks that layer; then the manual path,
    which keeps its output for a vector A's gradient, trains with the gradients of the autograd path."""
    from glora.inject import find_in_place_edits

    torch.manual_seed(0)
    base = _falcon().double()
    space = glora.SearchSpace(lora_ranks=(4,))
    models = {path: glora.inject(copy.deepcopy(base), space) for path in ("manual", "autograd")}
    names = set(glora.glora_layers(models["manual"]))
    assert {n.rsplit(".", 1)[1] for n in names} == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    ids = _ids()
    subnet = glora.make_subnet(models["manual"], A="vector", B="lora_4", C="none", D="vector", E="vector")
    grads = {}
    for path, model in models.items():
        glora.set_execution(model, path=path)
        glora.set_subnet(model, subnet)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
        edited = find_in_place_edits(model, lambda m=model: m(input_ids=ids))
        assert edited == [f"transformer.h.{i}.mlp.dense_4h_to_h" for i in range(2)] and model.training
        model(input_ids=ids, labels=ids).loss.backward()
        grads[path] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["manual"].keys() == grads["autograd"].keys() and grads["manual"]
    for n, g in grads["manual"].items():
        torch.testing.assert_close(g, grads["autograd"][n], rtol=1e-9, atol=1e-11, msg=n)
    plain = glora.fold(models["manual"], subnet).eval()
    assert type(plain.transformer.h[0].mlp.dense_4h_to_h).__name__ == "FalconLinear"
    torch.testing.assert_close(_logits(plain, ids), _logits(models["manual"].eval(), ids), rtol=1e-9, atol=1e-11)


def _task_model(cls_name: str, **kw):
    cfg = getattr(transformers, cls_name)(vocab_size=64, num_labels=2, pad_token_id=0, **kw)
    return transformers.AutoModelForSequenceClassification.from_config(cfg)


HEAD_CASES = {
    "roberta": (lambda: _task_model("RobertaConfig", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=48, max_position_embeddings=40), ["classifier"]),
    "distilbert": (lambda: _task_model("DistilBertConfig", dim=32, n_layers=1, n_heads=4, hidden_dim=48),
                   ["pre_classifier", "classifier"]),
    "deberta-v2": (lambda: _task_model("DebertaV2Config", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=48), ["pooler", "classifier"]),
    "bart": (lambda: _task_model("BartConfig", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=48,
                                 decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4,
                                 eos_token_id=2), ["classification_head"]),
    "llama": (lambda: _llama("classifier"), ["score"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HEAD_CASES))
def test_every_module_beside_the_base_model_is_the_head(name):
    """The head of a sequence-classification model is what its task class adds beside ``base_model_prefix``: new
    in every base checkpoint, so it trains in full and is never adapted (DistilBERT's pre_classifier, DeBERTa's
    pooler, BART's classification_head included), and the export keeps its label count (BART's config class
    defaults to 3 labels, so 2 must be written out)."""
    from glora.app.hf_backbone import SequenceClassifier, export_transformers_folder, reload_transformers_folder

    make, heads = HEAD_CASES[name]
    torch.manual_seed(0)
    model = SequenceClassifier(make())
    assert model.pretrained_cfg["classifier"] == [f"model.{h}" for h in heads]
    glora.inject(model, glora.SearchSpace(lora_ranks=(2,)))
    assert glora.head_names(model) == [f"model.{h}" for h in heads]
    for h in heads:
        assert all(p.requires_grad for p in model.get_submodule(f"model.{h}").parameters())
    assert not any(n.startswith(tuple(f"model.{h}." for h in heads)) for n in glora.glora_layers(model))
    if name == "bart":
        subnet = glora.sample_subnet(model, random.Random(0))
        glora.set_subnet(model, subnet)
        plain = glora.fold(model, subnet).eval()
        with tempfile.TemporaryDirectory() as tmp:
            export_transformers_folder(plain, Path(tmp), None)
            again = reload_transformers_folder(Path(tmp), plain).eval()
        batch = {"input_ids": torch.tensor([[5, 6, 7, 2], [5, 9, 2, 0]]),
                 "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(again(**batch), plain(**batch), rtol=0, atol=0)


_H = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
ARCHITECTURES = {
    "mistral": ("MistralConfig", {**_H, "intermediate_size": 48, "num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", {**_H, "intermediate_size": 48, "num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", {**_H, "intermediate_size": 48, "num_key_value_heads": 2, "head_dim": 8}),
    "gemma": ("GemmaConfig", {**_H, "intermediate_size": 48, "num_key_value_heads": 2, "head_dim": 8}),
    "phi3": ("Phi3Config", {**_H, "intermediate_size": 48, "num_key_value_heads": 2}),
    "gpt_neox": ("GPTNeoXConfig", {**_H, "intermediate_size": 48}),
    "opt": ("OPTConfig", {**_H, "ffn_dim": 48, "word_embed_proj_dim": 32}),
    "falcon": ("FalconConfig", _H),
    "gptj": ("GPTJConfig", {"n_embd": 32, "n_layer": 1, "n_head": 4, "rotary_dim": 4}),
    "bloom": ("BloomConfig", {"hidden_size": 32, "n_layer": 1, "n_head": 4}),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_causal_lm_families_train_fold_exactly_and_load_as_their_plain_class(arch):
    """Beyond Llama/GPT-2: each family under --bias-free auto trains a step on the manual path (outputs edited in
    place found first), and every sampled subnet folds exactly in float64 into a model its plain class loads key
    for key (the config's bias flags turned on where the subnet gave bias-free layers a bias)."""
    from glora.app.backbone import resolve_bias_free
    from glora.app.hf_backbone import declare_biases
    from glora.inject import find_in_place_edits

    name, kw = ARCHITECTURES[arch]
    cfg = getattr(transformers, name)(vocab_size=64, pad_token_id=0, **kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).double()
    adapter = resolve_bias_free(model, glora.AdapterConfig(glora.SearchSpace(lora_ranks=(4, 2))), "auto")
    glora.inject(model, adapter)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype) / 8)
    ids = _ids()
    for seed in range(3):
        subnet = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnet)
        model.train()
        find_in_place_edits(model, lambda: model(input_ids=ids))
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad()
        model.eval()
        plain = glora.fold(model, subnet)
        fresh_cfg = copy.deepcopy(model.config)
        extra = sorted(set(plain.state_dict()) - set(transformers.AutoModelForCausalLM.from_config(cfg).state_dict()))
        for flag in declare_biases(plain, extra) if extra else []:
            setattr(fresh_cfg, flag, True)
        fresh = transformers.AutoModelForCausalLM.from_config(fresh_cfg).double().eval()
        fresh.load_state_dict(plain.state_dict(), strict=True)
        torch.testing.assert_close(_logits(fresh, ids), _logits(model, ids), rtol=1e-9, atol=1e-11)


def test_bloom_layers_read_directly_only_under_tensor_parallel_emulation():
    """Bloom slices its dense weights itself only with pretraining_tp > 1 and slow_but_exact: otherwise those layers
    are called as modules and adapted; with the emulation on they would be bypassed, so they are skipped."""
    kw = {"vocab_size": 64, "hidden_size": 32, "n_layer": 1, "n_head": 4}
    called = glora.target_names(transformers.BloomForCausalLM(transformers.BloomConfig(**kw)), SPACE)
    assert "transformer.h.0.mlp.dense_4h_to_h" in called and "transformer.h.0.self_attention.dense" in called
    emulated = transformers.BloomForCausalLM(transformers.BloomConfig(**kw, pretraining_tp=2, slow_but_exact=True))
    with pytest.warns(UserWarning) as caught:
        glora.inject(emulated, SPACE)
    said = " ".join(str(w.message) for w in caught)
    assert "(BloomMLP) reads its weight directly" in said and "(BloomAttention) reads its weight directly" in said
    assert not {"transformer.h.0.mlp.dense_4h_to_h", "transformer.h.0.self_attention.dense"} & set(
        glora.glora_layers(emulated)
    )


ENCODERS = {
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 1, "n_heads": 4, "hidden_dim": 48}),
    "deberta-v2": ("DebertaV2Config", {**_H, "intermediate_size": 48}),
    "electra": ("ElectraConfig", {**_H, "intermediate_size": 48, "embedding_size": 16}),
    "albert": ("AlbertConfig", {**_H, "intermediate_size": 48, "embedding_size": 16}),
    "mpnet": ("MPNetConfig", {**_H, "intermediate_size": 48}),
    "modernbert": ("ModernBertConfig", {**_H, "intermediate_size": 48}),
}


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_encoder_classifiers_fold_exactly_and_load_as_their_plain_class(arch):
    """Encoder families as sequence classifiers: head(s) trained in full, a step on the manual path, and every
    sampled subnet folds exactly in float64 into a model its plain class loads key for key."""
    from glora.app.backbone import resolve_bias_free
    from glora.app.hf_backbone import SequenceClassifier, declare_biases

    name, kw = ENCODERS[arch]
    cfg = getattr(transformers, name)(vocab_size=64, pad_token_id=0, num_labels=3, **kw)
    torch.manual_seed(0)
    model = SequenceClassifier(transformers.AutoModelForSequenceClassification.from_config(cfg).double())
    adapter = resolve_bias_free(model, glora.AdapterConfig(glora.SearchSpace(lora_ranks=(4, 2))), "auto")
    glora.inject(model, adapter)
    batch = {"input_ids": torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(2)),
             "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2])}  # fmt: skip
    for seed in range(3):
        subnet = glora.sample_subnet(model, random.Random(seed))
        glora.set_subnet(model, subnet)
        model.train()
        torch.nn.functional.cross_entropy(model(**batch), torch.tensor([0, 2])).backward()
        model.zero_grad()
        model.eval()
        plain = glora.fold(model, subnet)
        extra = sorted(set(plain.state_dict()) - set(SequenceClassifier(
            transformers.AutoModelForSequenceClassification.from_config(cfg)).state_dict()))  # fmt: skip
        fresh_cfg = copy.deepcopy(model.model.config)
        for flag in declare_biases(plain, extra) if extra else []:
            setattr(fresh_cfg, flag, True)
        fresh = SequenceClassifier(transformers.AutoModelForSequenceClassification.from_config(fresh_cfg)).double()
        fresh.load_state_dict(plain.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(**batch), model(**batch), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    "config, limit, hard",
    [
        (lambda: transformers.BertConfig(**_H, intermediate_size=48), 512, True),
        (lambda: transformers.RobertaConfig(**_H, intermediate_size=48, max_position_embeddings=514, pad_token_id=1),
         512, True),  # positions start after the padding index
        (lambda: transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4), 1024, True),
        (lambda: transformers.OPTConfig(**_H, ffn_dim=48, word_embed_proj_dim=32), 2048, True),  # offset 2
        (lambda: transformers.LlamaConfig(**_H, intermediate_size=48), 2048, False),  # rotary: a trained context
        (lambda: transformers.BloomConfig(hidden_size=32, n_layer=1, n_head=4), None, False),  # ALiBi: no limit
    ],
)  # fmt: skip
def test_position_limits_are_read_from_the_model(config, limit, hard, caplog):
    from glora.app.backbone import check_sequence_length
    from glora.app.hf_backbone import position_limit

    model = transformers.AutoModel.from_config(config())
    assert position_limit(model) == (limit, hard)
    if limit is None:
        return
    check_sequence_length(model, limit)  # up to the limit: nothing to say
    if hard:
        with pytest.raises(ValueError, match=f"longer than .* takes \\({limit} positions\\); give at most {limit}"):
            check_sequence_length(model, limit + 1)
    else:
        with caplog.at_level("WARNING", logger="glora.app.backbone"):
            check_sequence_length(model, limit + 1)
        assert f"beyond LlamaModel's trained context ({limit} positions)" in caplog.text


# ---------------------------------------------------------------------- transformers backbones for the commands
@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny Llama written by save_pretrained (what a user downloads or trains), read back offline."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    torch.manual_seed(0)
    _llama().save_pretrained(folder)
    return folder


def test_a_save_pretrained_folder_is_a_transformers_backbone(llama_folder):
    from glora.app.backbone import BackboneSpec, build_backbone
    from glora.app.embedded import BACKBONE_DIR
    from glora.app.hf_backbone import is_transformers_model

    assert is_transformers_model(str(llama_folder)) and is_transformers_model("meta-llama/Llama-2-7b-hf")
    for timm_name in ("vit_base_patch16_224", "hf-hub:timm/vit_tiny", f"local-dir:{BACKBONE_DIR}", str(BACKBONE_DIR)):
        assert not is_transformers_model(timm_name), timm_name
    lm = build_backbone(BackboneSpec(model=str(llama_folder), num_classes=None))  # causal-lm, from the config
    ref = transformers.LlamaForCausalLM.from_pretrained(llama_folder)
    ids = _ids()
    assert type(lm.model).__name__ == "LlamaForCausalLM" and torch.equal(_logits(lm.model, ids), _logits(ref, ids))
    with torch.no_grad():  # the commands' form: the tokenizer's fields in by name, logits out
        torch.testing.assert_close(lm(input_ids=ids, attention_mask=torch.ones_like(ids)), _logits(ref, ids))
    adapted = glora.glora_layers(glora.inject(copy.deepcopy(lm), glora.AdapterConfig()))
    assert adapted and not any("lm_head" in name for name in adapted)  # the wrapper keeps lm_head out of all-linear
    spec = BackboneSpec(model=str(llama_folder), num_classes=3, task_type="text-classification", init_seed=4)
    a, b = build_backbone(spec), build_backbone(spec)  # the commands' form: named token fields in
    assert type(a.model).__name__ == "LlamaForSequenceClassification" and a.model.config.num_labels == 3
    assert torch.equal(a.model.score.weight, b.model.score.weight)  # seeded: search and export rebuild it
    assert torch.equal(a.model.model.layers[0].self_attn.q_proj.weight, ref.model.layers[0].self_attn.q_proj.weight)
    assert glora.head_names(a) == ["model.score"]
    ids, mask = _ids(), torch.ones(2, 7, dtype=torch.long)
    ids[0, 6:], mask[0, 6:], ids[1, 5:], mask[1, 5:] = 0, 0, 0, 0  # right-padded rows
    with torch.no_grad():
        direct = a.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(a.eval()(input_ids=ids, attention_mask=mask), direct)
        # a field the model's forward does not take (Llama has no segments) is left out, not an error
        torch.testing.assert_close(a(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)), direct)
    half = build_backbone(BackboneSpec(model=str(llama_folder), num_classes=None, dtype="bf16"))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    random_init = BackboneSpec(model=str(llama_folder), num_classes=None, pretrained=False, init_seed=1)
    x, y = build_backbone(random_init), build_backbone(random_init)
    x, y = x.model, y.model
    assert torch.equal(x.lm_head.weight, y.lm_head.weight) and not torch.equal(x.lm_head.weight, ref.lm_head.weight)


def test_transformers_backbone_errors_are_one_line(llama_folder, tmp_path):
    from glora.app.backbone import BackboneSpec, build_backbone

    bare = tmp_path / "bare"
    transformers.LlamaModel(_llama().config).save_pretrained(bare)  # architectures: LlamaModel, no task in it
    with pytest.raises(ValueError, match="cannot tell the task type .* give --task-type text-classification or"):
        build_backbone(BackboneSpec(model=str(bare), num_classes=None))
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, fp16; got 'int8'"):
        build_backbone(BackboneSpec(model=str(llama_folder), num_classes=None, dtype="int8"))
    with pytest.raises(ValueError, match="needs the number of classes"):
        build_backbone(BackboneSpec(model=str(llama_folder), num_classes=None, task_type="text-classification"))
    with pytest.raises(ValueError, match="task type must be one of text-classification, causal-lm; got 'ner'"):
        build_backbone(BackboneSpec(model=str(llama_folder), num_classes=None, task_type="ner"))


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradients(kind):
    """enable_checkpointing is really on (fewer tensors kept for backward) and changes no gradient of a support."""
    from helpers import tiny_vit

    from glora.app.backbone import enable_checkpointing
    from glora.app.hf_backbone import SequenceClassifier

    def build():
        torch.manual_seed(0)
        if kind == "timm":
            model, x = tiny_vit(), {"x": torch.randn(4, 3, 16, 16)}
        else:
            model = SequenceClassifier(_llama("classifier"))
            x = {"input_ids": _ids(), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
        glora.inject(model, SPACE)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.05)
        glora.set_subnet(model, glora.make_subnet(model, A="lora_4", B="lora_2", C="vector", D="vector", E="scalar"))
        return model.train(), x  # (transformers checkpoints only in training mode; no dropout in these configs)

    results = []
    for checkpointing in (False, True):
        model, x = build()
        if checkpointing:
            enable_checkpointing(model)
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t, lambda t: t):
            out = model(**x)
        out.float().square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((sum(saved), grads))
    (plain_saved, plain_grads), (ckpt_saved, ckpt_grads) = results
    assert ckpt_saved < plain_saved
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_fp32_supports_over_a_bf16_backbone_train_and_fold():
    """AdapterConfig(support_dtype="float32") on a bf16 Llama: the supports and the GIFT generator are fp32 (they
    and AdamW's state keep full precision), the layers run in bf16, and the fold is bf16 weights with the same
    function (to bf16 rounding) and no GLoRA module left."""
    torch.manual_seed(0)
    model = _llama().to(torch.bfloat16)
    space = glora.SearchSpace(lora_ranks=(4,), gift_ranks=(2,))
    config = glora.AdapterConfig(space, ("q_proj", "v_proj", "down_proj"), support_dtype="float32")
    assert glora.AdapterConfig.from_dict(config.to_dict()) == config
    glora.inject(model, config)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    subnet = glora.make_subnet(model, A="gift_2", B="lora_4", C="vector", D="none", E="scalar")
    glora.set_subnet(model, subnet)
    with torch.no_grad():
        for p in trained:
            p.normal_(0, 0.05)
    ids = _ids()
    out = model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trained)
    assert any(p.grad is not None for p in trained)
    folded = glora.fold(model, subnet)
    assert not glora.glora_layers(folded) and {p.dtype for p in folded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_logits(folded, ids), out.detach(), rtol=0.02, atol=0.02)
    with pytest.raises(ValueError, match="support_dtype must be one of float32, bfloat16, float16 or None"):
        glora.AdapterConfig(space, support_dtype="fp32")


def test_declared_bias_flags_or_a_clear_refusal():
    """A subnet that gives Llama's bias-free projections a bias folds into a model whose config turns on the fewest
    bias flags needed (zero biases elsewhere in that family, the same function); Mistral has no such flags, so the
    same subnet is refused in one line."""
    from glora.app.hf_backbone import CausalLM, declare_biases

    ids = _ids()
    for family in ("llama", "mistral"):
        torch.manual_seed(0)
        if family == "llama":
            model = CausalLM(_llama())
        else:
            cfg = transformers.MistralConfig(
                vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32,
            )  # fmt: skip
            model = CausalLM(transformers.MistralForCausalLM(cfg))
        subnet = _qv_bias_subnet(model)
        tokens = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            expected = model(**tokens)
        folded = glora.fold(model, subnet)
        extra = _new_keys(model, folded)
        assert extra and all(k.endswith(("q_proj.bias", "v_proj.bias")) for k in extra)
        if family == "mistral":
            with pytest.raises(ValueError, match="MistralForCausalLM has no place for it .it has no bias flags."):
                declare_biases(folded, extra)
            continue
        assert declare_biases(folded, extra) == ["attention_bias"]  # q and v only: the MLP flag stays off
        assert folded.model.config.attention_bias and not folded.model.config.mlp_bias
        assert set(transformers.LlamaForCausalLM(folded.model.config).state_dict()) == set(folded.model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(folded(**tokens), expected, rtol=1e-5, atol=1e-5)
