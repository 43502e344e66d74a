"""Everything the tests share: a flat list of (model, space) cases, model and layer builders, comparison helpers,
and runners for the commands. Test files import from here only, never from each other.

Models are tiny random-init versions of real timm families, so every test runs in float64 on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

import glora
from glora.gift import GiftBank, GiftGenerator
from glora.space import Kind, LayerChoice

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "configs"  # the -c presets (a built wheel ships a copy as package data)

# Small searches for pipeline tests: (population, parents, mutations, crossovers, generations).
SMALL_SEARCH = ["--population", "8", "--parents", "3", "--mutations", "3", "--crossovers", "3", "--generations", "3"]
TINY_SEARCH = ["--population", "6", "--parents", "2", "--mutations", "2", "--crossovers", "2", "--generations", "2"]
# --model-kwargs of a one-block ViT on 16x16 images (vit_tiny_patch16_224 shrunk): the commands' smallest timm model.
TINY_VIT = "{img_size: 16, patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}"


def tiny_vit_kwargs(**overrides) -> dict:
    """:data:`TINY_VIT` as ``timm.create_model`` keywords."""
    return dict(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2) | overrides


# The fixed-method presets (configs/methods) as the one choice every adapted layer takes.
METHOD_CHOICES = {
    "lora": {"A": "none", "B": "lora_8", "C": "none", "D": "none", "E": "none"},
    "ssf": {"A": "vector", "B": "none", "C": "none", "D": "vector", "E": "vector"},
    "gift": {"A": "gift_16", "B": "none", "C": "none", "D": "none", "E": "none"},
    "peft-glora": {"A": "lora_8", "B": "lora_8", "C": "lora_8", "D": "scalar", "E": "scalar"},
}


def independent_count(model, choice: dict[str, str]) -> int:
    """The paper's count written out per kind (DESIGN.md), for a subnet using ``choice`` on every layer."""
    total, gift_widths = 0, {}
    for name, layer in glora.glora_layers(model).items():
        n_in, n_out = layer.in_features, layer.out_features
        for s, c in choice.items():
            if c.startswith("lora_"):
                r = int(c[5:])
                total += r * (n_in + 1) if s == "C" else r * (n_out + n_in)
            elif c == "vector":
                total += n_in if s == "C" else n_out
            elif c == "scalar":
                total += 1
            elif c.startswith("gift_"):
                gift_widths[name.split(".")[-2:].__str__() + str(n_in)] = (n_in, int(c[5:]))
    return total + sum(2 * r * n_in for n_in, r in gift_widths.values())


class ToyMLP(nn.Module):
    """Two hidden linears (one without bias) and a head; acts on (batch, tokens, features)."""

    def __init__(self, d_in: int = 12, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(self.act(self.fc1(x))))


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kw)


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def tiny_vit(num_classes: int = 3, **overrides) -> nn.Module:
    """A 16x16-input ViT with one or two small blocks: enough structure for search and encoding tests."""
    kw = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2) | overrides
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **kw)


@dataclass
class Case:
    id: str
    make: Callable[[], nn.Module]
    space: glora.SearchSpace
    input_shape: tuple[int, ...]
    n_layers: int  # adapted layers expected by default targeting
    heads: tuple[str, ...] = ("head",)
    kwargs: dict = field(default_factory=dict)

    def input(self, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*self.input_shape, generator=g, dtype=torch.float64)


CASES: list[Case] = [
    Case("toy-mlp", ToyMLP, glora.SearchSpace(lora_ranks=(4, 2)), (3, 5, 12), 2),
    Case("vit", _timm("vit_tiny_patch16_224", **VIT), glora.SearchSpace(lora_ranks=(8, 4)), (2, 3, 32, 32), 8),
    Case(
        "vit-gift-type",
        _timm("vit_tiny_patch16_224", **VIT),
        glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(4, 2)),
        (2, 3, 32, 32),
        8,
    ),
    Case(
        "deit-distilled-gift-layer",
        _timm("deit_tiny_distilled_patch16_224", **VIT),
        glora.SearchSpace(lora_ranks=(2,), gift_ranks=(2,), gift_sharing="layer"),
        (2, 3, 32, 32),
        8,
        heads=("head", "head_dist"),
    ),
    Case(
        "swin-gift-width",
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            patch_size=2,
            window_size=4,
            embed_dim=8,
            depths=(1, 1),
            num_heads=(1, 2),
        ),
        glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,), gift_sharing="width"),
        (2, 3, 32, 32),
        9,
        heads=("head.fc",),
    ),
    Case(
        "mixer",
        lambda: MlpMixer(num_classes=5, img_size=32, patch_size=8, embed_dim=16, num_blocks=2),
        glora.SearchSpace(lora_ranks=(2,)),
        (2, 3, 32, 32),
        8,
    ),
    Case(
        "convnext-linear-mlp",
        _timm("convnext_atto", dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), conv_mlp=False),
        glora.SearchSpace(lora_ranks=(8, 4)),
        (2, 3, 32, 32),
        8,
        heads=("head.fc",),
    ),
    Case(  # BEiT reads qkv.weight directly (bias-free qkv with its own q/v biases)
        "beit-direct-qkv",
        _timm("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2),
        glora.SearchSpace(lora_ranks=(4, 2), gift_ranks=(2,)),
        (2, 3, 32, 32),
        8,
    ),
    Case(  # EVA-02: rotary embeddings, SwiGLU MLP, qkv read directly as well
        "eva02-direct-qkv",
        _timm("eva02_tiny_patch14_224", img_size=28, patch_size=7, embed_dim=16, depth=2, num_heads=2),
        glora.SearchSpace(lora_ranks=(2,), choices={"D": ["vector", "none"]}),
        (2, 3, 28, 28),
        -1,
    ),
]

CASE_IDS = [c.id for c in CASES]


def perturb(model: nn.Module, seed: int, scale: float = 0.05) -> None:
    """Stand in for pretrained weights: timm zero-inits biases, which would hide D's effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def randomize_supports(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Give every support tensor and GIFT generator non-zero values (they start at zero by design)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = [p for layer in glora.glora_layers(model).values() for p in layer.support_params()]
        params += [p for m in model.modules() if isinstance(m, GiftBank) for p in m.parameters()]
        for p in params:
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def build(case: Case, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(base model, injected supernet) in float64, sharing the same perturbed backbone weights."""
    torch.manual_seed(seed)
    base = case.make().double().eval()
    perturb(base, seed)
    supernet = case.make().double().eval()
    supernet.load_state_dict(base.state_dict())
    glora.inject(supernet, case.space, **case.kwargs)
    return base, supernet


def trained_adapter(make, space: glora.SearchSpace, seed: int = 1, **inject) -> torch.nn.Module:
    """An injected model whose supports and head are not at their initial values (as after training)."""
    model = glora.inject(make(), space, **inject)
    randomize_supports(model, seed)  # supports and GIFT generators
    supports = {id(p) for layer in glora.glora_layers(model).values() for p in layer.support_params()}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in supports and "gift" not in name:  # the head
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def extreme_subnets(model: nn.Module) -> dict[str, glora.Subnet]:
    """Every support at its first (largest) choice, at its last (none), and, if offered, all-gift A."""
    space = glora.get_space(model)
    first = {s: space.choice_names(s)[0] for s in glora.SUPPORTS}
    last = {s: space.choice_names(s)[-1] for s in glora.SUPPORTS}
    out = {"largest": glora.make_subnet(model, **first), "none": glora.make_subnet(model, **last)}
    if space.offers("A", Kind.GIFT):
        out["gift"] = glora.make_subnet(model, **(first | {"A": f"gift_{space.max_rank('A', Kind.GIFT)}"}))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------- one layer
LAYER_OUT, LAYER_IN = 7, 5


def make_layer(
    space: glora.SearchSpace,
    bias: bool = True,
    seed: int = 0,
    out_features: int = LAYER_OUT,
    in_features: int = LAYER_IN,
    support_dtype: torch.dtype = torch.float64,
) -> glora.GLoRALinear:
    """A float64 GLoRA layer (with its own GIFT generator when the space offers one), every support non-zero;
    ``support_dtype`` other than float64 makes a mixed-precision layer (supports in it, the weight in float64)."""
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out_features, bias=bias).double()
    gift = None
    if space.offers("A", Kind.GIFT):
        gift = GiftGenerator(in_features, space.max_rank("A", Kind.GIFT), dtype=support_dtype)
    layer = glora.GLoRALinear(base, space, gift=gift, name="layer", dtype=support_dtype)
    with torch.no_grad():
        for p in [*layer.support_params(), *(gift.parameters() if gift else [])]:
            p.normal_(0, 0.3)
    return layer


def all_choices(space: glora.SearchSpace):
    """Every layer choice of ``space``, as {support: name}."""
    for combo in itertools.product(*(space.choice_names(s) for s in glora.SUPPORTS)):
        yield dict(zip(glora.SUPPORTS, combo))


def layer_grads(layer: glora.GLoRALinear, x: torch.Tensor, g: torch.Tensor, path: str):
    """(output, gradients of x and of every support tensor) on one execution path (manual, static, autograd)."""
    layer.execution = dataclasses.replace(layer.execution, path=path)
    params = [x, *layer.support_params()]
    y = layer(x)
    grads = torch.autograd.grad(y, params, g, allow_unused=True)
    return y.detach(), grads


def pairwise_choices(space: glora.SearchSpace) -> list[dict[str, str]]:
    """Layer choices of ``space`` in which every pair of supports takes every pair of its choices at least once (a
    greedy covering array: about 30 choices where the whole product has hundreds). Interactions between two
    supports are what a wrong formula breaks; the whole product runs with the slow tests."""
    every = list(all_choices(space))

    def pairs(entry: dict[str, str]) -> set[tuple]:
        items = list(entry.items())
        return {(a, b) for i, a in enumerate(items) for b in items[i + 1 :]}

    covers = [(e, pairs(e)) for e in every]
    uncovered = set().union(*(c for _, c in covers))
    picked = []
    while uncovered:
        best, covered = max(covers, key=lambda ec: len(ec[1] & uncovered))  # the first of the best: deterministic
        picked.append(best)
        uncovered -= covered
    return picked


def check_every_choice(
    layer: glora.GLoRALinear, x: torch.Tensor, g: torch.Tensor, choices: list[dict[str, str]] | None = None
) -> None:
    """Manual and static == autograd, outputs and every gradient, for every choice of the layer's space (float64),
    or for ``choices`` alone."""
    names = [n for n, _ in layer.named_parameters() if n not in ("weight", "bias")]
    for entry in all_choices(layer.space) if choices is None else choices:
        combo = tuple(entry.values())
        layer.set_choice(LayerChoice(*map(glora.Choice.parse, combo)))
        y_ref, g_ref = layer_grads(layer, x, g, "autograd")
        for path in ("manual", "static"):
            y, grads = layer_grads(layer, x, g, path)
            torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12, msg=f"{path} {combo}")
            for name, a, b in zip(["x", *names], grads, g_ref):
                if b is None or not b.any():  # unused: autograd gives None (or zeros through a slice)
                    assert a is None or not a.any(), (path, combo, name)
                else:
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{path} {combo} {name}")


def in_process(main: Callable, *argv: str) -> None:
    """A command's run in the test's own process (a second interpreter would only add its start-up); ``--debug``
    so a failure shows its traceback."""
    assert main([*map(str, argv), "--debug"]) == 0


# ---------------------------------------------------------------------- the commands in other processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python(*args: str, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script of the checkout, ``-m`` module, ...), output captured."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def torchrun(*args: str, nproc: int = 2, timeout: float = 900) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=N ARGS`` on a free port."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    return python(*launcher, *args, timeout=timeout)


# ---------------------------------------------------------------------- the commands, in this process and others
def commands() -> dict[str, Callable]:
    """Each command's ``main`` by name (``reparam`` = ``export``), imported on first use."""
    from glora.app.commands.export import main as export_main
    from glora.app.commands.report import main as report_main
    from glora.app.commands.search import main as search_main
    from glora.app.commands.train import main as train_main

    return {"train": train_main, "search": search_main, "export": export_main, "reparam": export_main,
            "report": report_main}  # fmt: skip


def cli(command: str, argv: list, capsys, stdout: bool = False) -> tuple[int, str]:
    """Run a command as its console script would (one error line, exit code); (code, stderr), or with ``stdout``
    (code, stderr + stdout)."""
    from glora.app.cli import run

    try:
        code = run(commands()[command], [str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.err + out.out if stdout else out.err


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its hash: equal snapshots = nothing written, moved or removed."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def image_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 8) -> Path:
    """A tiny ImageFolder tree of 12x12 PNGs, distinct per class and image."""
    from PIL import Image

    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (i * 25, 80 * k, 40)).save(root / c / f"{i}.png")
    return root


def solid_image(path: Path, color: tuple[int, int, int], size: int = 12) -> None:
    """One PNG of a single color (its folders made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def folder_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``glora-train`` of a random-init tiny ViT (:data:`TINY_VIT`) on an ImageFolder tree."""
    return [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--dataset", "folder",
        "--data-root", str(data), "--out", str(out), "--no-progress", "--batch-size", "8", *extra,
    ]  # fmt: skip


def fewshot_tree(root: Path, task: str = "toy_birds", classes: int = 3, shots=(1, 2), seeds=(0, 1)) -> Path:
    """The reference's layout: images/ and annotations/ (train_meta.list.num_shot_N.seed_S, val / test_meta.list)."""
    base = root / task
    rows = []
    for c in range(classes):
        for i in range(6):
            rel = f"class_{c}/img_{i}.png"
            solid_image(base / "images" / rel, (40 * c + 20, 30 * i, 200 - 50 * c), size=20)
            rows.append((rel, c))
    ann = base / "annotations"
    ann.mkdir(parents=True)
    for shot in shots:
        for seed in seeds:
            picked = [r for c in range(classes) for r in [x for x in rows if x[1] == c][seed : seed + shot]]
            (ann / f"train_meta.list.num_shot_{shot}.seed_{seed}").write_text("".join(f"{p} {c}\n" for p, c in picked))
    (ann / "val_meta.list").write_text("".join(f"{p} {c}\n" for p, c in rows if p.endswith(("_4.png", "_5.png"))))
    (ann / "test_meta.list").write_text("".join(f"{p} {c}\n" for p, c in rows if p.endswith("_3.png")))
    return root


def start(args: list[str], log: Path, **kw) -> subprocess.Popen:
    """A script of the repository in its own process, stdout and stderr into ``log``."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, **kw)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``text`` appears in ``log``; fails if the process ends first or the time runs out."""
    deadline = time.time() + timeout
    while text not in log.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {text!r}: {log.read_text()[-2000:]}")
        assert time.time() < deadline, f"timed out waiting for {text!r}"
        time.sleep(0.02)


def same_training(a: Path, b: Path) -> None:
    """Two supernet checkpoints hold the same tensors, bit for bit, and the same log (timings aside)."""
    from glora.app.checkpoint import read_checkpoint

    ca, cb = read_checkpoint(a), read_checkpoint(b)
    differ = [k for k in cb["trainable"] if not torch.equal(ca["trainable"][k], cb["trainable"][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    strip = lambda log: [{k: v for k, v in r.items() if k != "seconds"} for r in log]  # noqa: E731
    assert strip(ca["log"]) == strip(cb["log"])


def search_state(path: Path) -> dict:
    """A search state without what may differ between equal runs (timings, the output folder)."""
    state = json.loads(path.read_text())
    for r in state["log"]:
        r.pop("seconds")
    state["config"].pop("out")
    return state


# ---------------------------------------------------------------------- language models: tiny models and their data
WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
FILLER = ["the", "movie", "was", "really", "plot", "and", "acting"]
COLORS = ["red", "blue", "green", "black"]
THINGS = ["car", "ball", "cup"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def make_bert(folder: Path) -> Path:
    """A tiny random-init BERT classifier (two token types) and its word-level tokenizer, which gives segment ids as
    BERT's does, in one save_pretrained folder."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(special + sorted({*FILLER, *WORDS["pos"], *WORDS["neg"]}))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(  # BERT's inputs: segment ids for sentence pairs
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )  # fmt: skip
    fast.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Short reviews whose sentiment words give the label (pos / neg) away."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [rng.choice(WORDS[label])] * 2
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def which_sentence_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs whose label says which sentence holds 'good': only the segment ids (BERT's token_type_ids)
    tell the two sentences' tokens apart beyond their positions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = ([rng.choice(FILLER) for _ in range(rng.randint(2, 4))] for _ in range(2))
        holder = a if i % 2 else b
        holder.insert(rng.randint(0, len(holder)), "good")
        rows.append({"s1": " ".join(a), "s2": " ".join(b), "label": "first" if i % 2 else "second"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_files(root: Path) -> dict[str, Path]:
    """train.csv, val.csv and test.jsonl (another format for the test split) of :func:`sentiment_rows`."""
    return {
        "train": write_csv(root / "train.csv", sentiment_rows(48, 0)),
        "val": write_csv(root / "val.csv", sentiment_rows(16, 1)),
        "test": write_jsonl(root / "test.jsonl", sentiment_rows(16, 2)),
    }


def alpaca_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        color = rng.choice(COLORS)
        rows.append(
            {
                "instruction": f"What color is the {rng.choice(THINGS)} ?",
                "input": f"It is {color} ." if i % 3 else "",  # some rows without an input
                "output": f"The answer is {color} .",
            }
        )
    return rows


def chat_rows(n: int, seed: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": r["instruction"] + " " + r["input"]},
                      {"role": "assistant", "content": r["output"]}]}
        for r in alpaca_rows(n, seed)
    ]  # fmt: skip


def commonsense_rows(n: int, seed: int) -> list[dict]:
    """Commonsense170k's form (LLM-Adapters): the options in the instruction, the answer named in the output."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colors = rng.sample(COLORS, 3)
        k = rng.randrange(3)
        listed = " ".join(f"option{i + 1} {c}" for i, c in enumerate(colors))
        rows.append(
            {
                "instruction": f"What color is the {rng.choice(THINGS)} ? It is {colors[k]} . {listed} "
                "Answer format: option1/option2/option3",
                "input": "",
                "output": f"the correct answer is option{k + 1}",
                "answer": f"option{k + 1}",
            }
        )
    return rows


def alpaca_files(root: Path) -> dict[str, Path]:
    return {s: write_jsonl(root / f"{s}.jsonl", alpaca_rows(n, i))
            for i, (s, n) in enumerate([("train", 32), ("val", 8), ("test", 8)])}  # fmt: skip


def make_llama(folder: Path, config_class: str = "LlamaConfig") -> Path:
    """A tiny random-init Llama (or another Llama-shaped family: ``MistralConfig``) and its word-level tokenizer
    (with a chat template) in one save_pretrained folder."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from glora.app.data.sources.instructions import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT

    pre = pre_tokenizers.Whitespace()
    texts = [ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, "user assistant : It is What color the ? The answer .", *COLORS,
             *THINGS, "Answer format: option1/option2/option3 the correct answer is"]  # fmt: skip
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = getattr(transformers, config_class)(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def text_train_args(
    model: Path, files: dict[str, Path], out: Path, *extra: str, dataset: str = "text", max_seq_length: int = 16
) -> list[str]:
    """``glora-train`` on a tiny transformers model and its train / val / test files: 3 short epochs."""
    return [
        "--model", str(model), "--dataset", dataset, "--train-file", str(files["train"]),
        "--validation-file", str(files["val"]), "--test-file", str(files["test"]), "--max-seq-length",
        str(max_seq_length), "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--warmup-epochs", "0",
        "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def run_pipeline(root: Path, train_args: list[str]) -> Path:
    """train -> search (a tiny one) -> export into ``root`` (supernet/, search/, export/), in this process."""
    from glora.app.cli import run

    main = commands()
    sup, sub = root / "supernet", root / "search"
    assert run(main["train"], [*train_args, "--out", str(sup)]) == 0
    assert run(main["search"], ["--supernet", str(sup / "last.pt"), "--out", str(sub), "--param-limit", "none",
                                "--no-progress", *TINY_SEARCH]) == 0  # fmt: skip
    argv = ["--supernet", str(sup / "last.pt"), "--subnet", str(sub / "subnet.yaml"), "--out", str(root / "export")]
    assert run(main["export"], [*argv, "--latency-rounds", "0"]) == 0
    return root
