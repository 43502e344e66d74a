"""Search spaces, subnet validation, sampling, parameter counts (also per layer type) and YAML round trips."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import timm
import yaml
from helpers import ToyMLP, tiny_vit_kwargs
from hypothesis import given, settings
from hypothesis import strategies as st

import glora


def _model(space=None):
    return glora.inject(ToyMLP().double(), space or glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(2,)))


# ---------------------------------------------------------------------- spaces
def test_space_sizes_match_the_paper():
    assert glora.SearchSpace(lora_ranks=(8,)).layer_size == 432  # 4·4·3·3·3 (Appendix D)
    assert glora.SearchSpace(lora_ranks=(8, 4)).layer_size == 900  # 5·5·4·3·3
    space = glora.SearchSpace(lora_ranks=(4, 8), gift_ranks=(2,))
    assert space.lora_ranks == (8, 4)
    assert space.choice_names("A") == ("lora_8", "lora_4", "gift_2", "vector", "scalar", "none")
    assert space.choice_names("B") == ("lora_8", "lora_4", "vector", "scalar", "none")
    assert space.choice_names("C") == ("lora_8", "lora_4", "vector", "none")
    assert space.choice_names("D") == space.choice_names("E") == ("vector", "scalar", "none")
    assert space == glora.SearchSpace(lora_ranks=(8, 4), gift_ranks=(2,))
    assert glora.SearchSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lora_ranks": (8, 0)}, "positive integers"),
        ({"lora_ranks": (8, 8)}, "repeated"),
        ({"lora_ranks": (4.0,)}, "positive integers"),
        ({"lora_ranks": 8}, "sequence of positive integers"),
        ({"gift_ranks": (-1,)}, "positive integers"),
        ({"gift_sharing": "global"}, "type, width, layer"),
        ({"choices": {"F": ["none"]}}, "unknown support 'F'"),
        ({"choices": {"D": ["lora_8"]}}, "allowed: vector, scalar, none"),
        ({"choices": {"A": ["lora_16"]}}, "allowed: lora_8, lora_4"),
        ({"choices": {"C": []}}, "non-empty"),
        ({"choices": {"C": "none"}}, "non-empty list"),
    ],
)
def test_invalid_spaces_say_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        glora.SearchSpace(**kwargs)


def test_choice_kinds_are_an_enum_of_plain_names():
    assert [k.value for k in glora.Kind] == ["lora", "gift", "vector", "scalar", "none"]
    assert glora.Kind.LORA == "lora" and f"{glora.Kind.GIFT}" == "gift" and str(glora.Kind.NONE) == "none"
    assert glora.Choice.parse("lora_8") == glora.Choice(glora.Kind.LORA, 8) == glora.Choice("lora", 8)
    assert glora.Choice.parse("vector").kind is glora.Kind.VECTOR and glora.Choice.parse("gift_2").kind.ranked
    assert hash(glora.Choice("lora", 8)) == hash(glora.Choice(glora.Kind.LORA, 8))
    assert yaml.safe_dump({"A": glora.Choice.parse("scalar").name}) == "A: scalar\n"


@pytest.mark.parametrize(
    "kind, rank, match",
    [("lora", 0, "positive integer rank"), ("vector", 2, "no rank"), ("gift", True, "positive"), ("diag", 0, "Kind")],
)
def test_choices_check_their_rank(kind, rank, match):
    with pytest.raises(ValueError, match=match):
        glora.Choice(kind, rank)


def test_space_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown search-space keys: ranks"):
        glora.SearchSpace.from_dict({"ranks": [8]})


# ---------------------------------------------------------------------- validation
def _valid(model):
    return glora.sample_subnet(model, random.Random(0))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s.update({"fc3": dict(s["fc1"])}), "layer 'fc3', which is not a GLoRA layer"),
        (lambda s: s.pop("fc2"), "missing layer 'fc2'"),
        (lambda s: s["fc1"].update(A="lora8"), r"layer 'fc1': unknown choice 'lora8' for support A; allowed: lora_8"),
        (lambda s: s["fc1"].update(B="lora_16"), r"layer 'fc1': .*rank 16, above the supernet's largest lora rank 8"),
        (lambda s: s["fc1"].update(A="gift_4"), r"layer 'fc1': .*rank 4, above the supernet's largest gift rank 2"),
        (
            lambda s: s["fc1"].update(C="scalar"),
            r"layer 'fc1': choice 'scalar' is not in this search space for support C",
        ),
        (
            lambda s: s["fc2"].update(D="lora_4"),
            r"layer 'fc2': choice 'lora_4' is not in this search space for support D",
        ),
        (lambda s: s["fc1"].update(B="lora_6"), r"'lora_6' is not in this search space"),
        (lambda s: s["fc1"].update(F="none"), r"layer 'fc1': unknown support 'F'"),
        (lambda s: s["fc1"].pop("E"), r"layer 'fc1': no choice for support 'E'"),
        (lambda s: s.update(fc1="lora_8"), r"layer 'fc1': expected a mapping"),
    ],
)
def test_bad_subnets_name_the_layer_and_choice(mutate, match):
    model = _model()
    subnet = _valid(model)
    mutate(subnet)
    for fn in (glora.set_subnet, glora.count_params, glora.fold):
        with pytest.raises(ValueError, match=match):
            fn(model, subnet)


def test_uninjected_model_is_rejected():
    with pytest.raises(ValueError, match="call glora.inject"):
        glora.sample_subnet(ToyMLP(), random.Random(0))
    with pytest.raises(ValueError, match="call glora.inject"):
        glora.set_subnet(ToyMLP(), {})


def test_make_subnet():
    model = _model()
    assert glora.make_subnet(model, B="lora_8") == {
        n: {"A": "none", "B": "lora_8", "C": "none", "D": "none", "E": "none"} for n in ("fc1", "fc2")
    }
    with pytest.raises(ValueError, match="unknown support 'Z'"):
        glora.make_subnet(model, Z="none")
    with pytest.raises(ValueError, match="rank 32"):
        glora.make_subnet(model, A="lora_32")


# ---------------------------------------------------------------------- sampling
def test_sampling_is_seeded_and_needs_an_explicit_rng():
    model = _model()
    assert glora.sample_subnet(model, random.Random(3)) == glora.sample_subnet(model, random.Random(3))
    assert any(
        glora.sample_subnet(model, random.Random(3)) != glora.sample_subnet(model, random.Random(s))
        for s in range(4, 8)
    )
    with pytest.raises(TypeError, match="random.Random"):
        glora.sample_subnet(model, 3)


def test_sampling_is_uniform_per_support():
    model = _model()
    rng = random.Random(0)
    counts = {s: Counter() for s in glora.SUPPORTS}
    n = 3000
    for _ in range(n):
        for choices in glora.sample_subnet(model, rng).values():
            for s, c in choices.items():
                counts[s][c] += 1
    space = glora.get_space(model)
    for s in glora.SUPPORTS:
        k = len(space.choice_names(s))
        assert set(counts[s]) == set(space.choice_names(s))
        expected = 2 * n / k  # two layers
        for c, seen in counts[s].items():
            assert abs(seen - expected) < 5 * (expected**0.5), (s, c, seen, expected)


# ---------------------------------------------------------------------- YAML
def test_yaml_round_trip_and_layout(tmp_path):
    model = _model()
    subnet = _valid(model)
    path = tmp_path / "sub" / "subnet.yaml"
    glora.save_subnet(subnet, path)
    assert glora.load_subnet(path) == subnet
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fc1: {A: ")
    assert not list(path.parent.glob(".*tmp"))  # the temp file is gone


@pytest.mark.parametrize(
    "text, match",
    [
        ("fc1: [a, b", "not valid YAML"),
        ("- a\n- b\n", "non-empty mapping"),
        ("", "non-empty mapping"),
        ("fc1: lora_8\n", "layer 'fc1' must map supports"),
        ("fc1: {A: 8}\n", "layer 'fc1' must map supports"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    ],
)
def test_malformed_subnet_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        glora.load_subnet(path)


def test_missing_subnet_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        glora.load_subnet(tmp_path / "nope.yaml")


_NAMES = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",)),
    min_size=1,
    max_size=30,
)
_CHOICE = st.sampled_from(
    ["lora_8", "lora_4", "gift_2", "vector", "scalar", "none", "true", "null", "1", "a: b", "- x"]
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_NAMES, st.fixed_dictionaries({s: _CHOICE for s in glora.SUPPORTS}), min_size=1, max_size=5))
def test_yaml_round_trip_property(tmp_path_factory, subnet):
    path = tmp_path_factory.mktemp("rt") / "s.yaml"
    glora.save_subnet(subnet, path)
    assert glora.load_subnet(path) == subnet
    assert yaml.safe_load(path.read_text()) == subnet


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_sampled_or_drawn_subnet_validates_and_round_trips(tmp_path_factory, data):
    model = _model()
    space = glora.get_space(model)
    subnet = {n: {s: data.draw(st.sampled_from(space.choice_names(s))) for s in glora.SUPPORTS} for n in ("fc1", "fc2")}
    parsed = glora.parse_subnet(model, subnet)
    assert {n: c.names() for n, c in parsed.items()} == subnet
    path = tmp_path_factory.mktemp("rt") / "s.yaml"
    glora.save_subnet(subnet, path)
    assert glora.parse_subnet(model, glora.load_subnet(path)) == parsed


# ---------------------------------------------------------------------- parameters per layer type


@pytest.mark.parametrize("sharing", ["type", "width", "layer"])
def test_params_by_type_sums_to_the_count_and_groups_numbered_layers(sharing):
    import random

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **tiny_vit_kwargs(depth=3))
    glora.inject(model, glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(3, 2), gift_sharing=sharing))
    for seed in range(5):
        subnet = glora.sample_subnet(model, random.Random(seed))
        by_type = glora.params_by_type(model, subnet)
        assert set(by_type) == {"blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"}
        assert sum(sum(row.values()) for row in by_type.values()) == glora.count_params(model, subnet)
    qkv_lora = {n: {"A": "none", "B": "lora_4" if "qkv" in n else "none", "C": "none", "D": "none", "E": "none"}
                for n in glora.glora_layers(model)}  # fmt: skip
    by_type = glora.params_by_type(model, qkv_lora)
    assert by_type["blocks.*.attn.qkv"]["B"] == 3 * 4 * (16 + 48) and by_type["blocks.*.mlp.fc1"]["B"] == 0
