"""Text classification through the commands: a tiny BERT written by save_pretrained, a tokenizer built with the
``tokenizers`` library, CSV/JSONL files read by ``datasets``; train and search run as for images, bad text inputs
get one line."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from helpers import TINY_SEARCH, cli, same_training

import glora
from glora.app import load_supernet

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

pytestmark = pytest.mark.slow  # trains and searches

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
FILLER = ["the", "movie", "was", "really", "plot", "and", "acting"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


def make_bert(folder: Path) -> Path:
    """A tiny random-init BERT classifier and its word-level tokenizer in one save_pretrained folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(special + sorted({*FILLER, *WORDS["pos"], *WORDS["neg"]}))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))] + [rng.choice(WORDS[label])] * 2
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    return make_texts(tmp_path_factory.mktemp("texts"))


def make_texts(root: Path) -> dict[str, Path]:
    """train.csv, val.csv and test.jsonl of short reviews whose sentiment words give the label away."""
    files = {"train": _csv(root / "train.csv", _rows(48, 0)), "val": _csv(root / "val.csv", _rows(16, 1))}
    files["test"] = root / "test.jsonl"  # another format for the test split
    files["test"].write_text("".join(json.dumps(r) + "\n" for r in _rows(16, 2)), encoding="utf-8")
    return files


def _train_args(bert: Path, texts: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(bert), "--dataset", "text", "--train-file", str(texts["train"]),
        "--validation-file", str(texts["val"]), "--test-file", str(texts["test"]), "--max-seq-length", "16",
        "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--warmup-epochs", "0", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_text_classification_trains_and_searches(bert, texts, tmp_path, capsys):
    code, err = cli("train", _train_args(bert, texts, tmp_path / "sup"), capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)
    assert ckpt["data"]["dataset"] == "text" and ckpt["data"]["tokenizer"] == str(bert)
    assert ckpt["backbone"]["task_type"] == "text-classification" and ckpt["class_names"] == ["neg", "pos"]
    assert len(ckpt["log"]) == 3 and all(0 <= r["val_acc"] <= 1 for r in ckpt["log"])
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    code, err = cli("search", [*search, "--param-limit", "none", "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "s" / "subnet.yaml").is_file()
    record = json.loads((tmp_path / "s" / "pareto.json").read_text())
    assert record  # candidates were evaluated on the validation texts
    sup, sub, out = tmp_path / "sup" / "last.pt", tmp_path / "s" / "subnet.yaml", tmp_path / "e"
    code, err = cli("export", ["--supernet", sup, "--subnet", sub, "--out", out, "--latency-rounds", "1"], capsys)
    assert code == 0, err
    # The export is a plain transformers folder: model, tokenizer and class names, loaded without this toolkit.
    plain, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    plain.eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert plain.config.id2label == {0: "neg", 1: "pos"} and (out / "glora_export.json").is_file()
    stats = json.loads((out / "glora_export.json").read_text())
    assert stats["params"] == stats["base_params"] and stats["max_rel_diff"] < 1e-5
    supernet = load_supernet(sup).eval()
    glora.set_subnet(supernet, glora.load_subnet(sub))
    enc = tok(["the movie was great great", "awful plot and bad acting"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = supernet(torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1))
        theirs = plain(**enc).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_a_fixed_adapter_learns_the_texts_and_the_search_reports_test_accuracy(bert, texts, tmp_path, capsys):
    """LoRA r=8 as a one-subnet space: the sentiment words give the label away, so validation accuracy rises well
    above chance; the search evaluates that subnet on val and test (the JSONL file)."""
    lora = ["--choices", "A=none", "B=lora_8", "C=none", "D=none", "E=none", "--epochs", "12"]
    code, err = cli("train", [*_train_args(bert, texts, tmp_path / "sup"), *lora], capsys)
    assert code == 0, err
    log = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)["log"]
    assert log[-1]["val_acc"] >= 0.75, log
    code, err = cli("search", ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    state = json.loads((tmp_path / "s" / "search_state.json").read_text())
    assert state["log"], state.keys()


def _bad(texts: dict[str, Path], tmp: Path, what: str) -> list[str]:
    rows = _rows(8, 3)
    if what == "unknown-label":
        rows[2]["label"] = "meh"
        return ["--validation-file", str(_csv(tmp / "v.csv", rows))]
    if what == "empty-text":
        rows[4]["text"] = "  "
        return ["--validation-file", str(_csv(tmp / "v.csv", rows))]
    if what == "missing-column":
        return ["--label-column", "sentiment"]
    if what == "regression":
        return ["--train-file", str(_csv(tmp / "t.csv", [{"text": r["text"], "label": 0.5 + i} for i, r in
                                                          enumerate(rows)]))]  # fmt: skip
    if what == "bad-format":
        (tmp / "v.xml").write_text("<rows/>")
        return ["--validation-file", str(tmp / "v.xml")]
    if what == "no-validation-file":
        return ["--validation-file", str(tmp / "missing.csv")]
    raise ValueError(what)


@pytest.mark.parametrize(
    "what, message",
    [
        ("unknown-label", "label 'meh' is not in the train file's labels (neg, pos)"),
        ("empty-text", "row 5 has an empty 'text' text"),
        ("missing-column", "no label column 'sentiment'; columns: text, label"),
        ("bad-format", "unknown format; give one of .csv, .tsv, .json, .jsonl, .parquet"),
        ("regression", "holds real numbers (a regression task such as STS-B)"),
        ("no-validation-file", "does not exist"),
    ],
)
def test_bad_text_inputs_are_one_line(bert, texts, tmp_path, capsys, what, message):
    code, err = cli("train", [*_train_args(bert, texts, tmp_path / "o"), *_bad(texts, tmp_path, what)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and not (tmp_path / "o" / "last.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vit_tiny_patch16_224"], "--dataset text needs a transformers --model"),
        (["--dataset", "digits"], "is a transformers model; it trains on --dataset text"),
        (["--task-type", "causal-lm"], "the commands train text classification so far"),
    ],
)
def test_models_and_data_must_match(bert, texts, tmp_path, capsys, argv, message):
    args = [*_train_args(bert, texts, tmp_path / "o"), *argv]
    code, err = cli("train", args, capsys)
    assert code == 2 and message in err, err


def test_a_text_run_resumes_exactly(bert, texts, tmp_path, capsys):
    full = _train_args(bert, texts, tmp_path / "full")
    assert cli("train", full, capsys)[0] == 0
    cut = _train_args(bert, texts, tmp_path / "cut", "--stop-after", "2")  # then one more epoch on resume
    assert cli("train", cut, capsys)[0] == 0
    assert cli("train", ["--resume", "--out", str(tmp_path / "cut")], capsys)[0] == 0
    same_training(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


@pytest.mark.parametrize("fmt", ["tsv", "parquet", "save_to_disk"])
def test_sentence_pairs_from_every_format(bert, tmp_path, fmt):
    """Two text columns are tokenized as a pair ([CLS] a [SEP] b [SEP]), from TSV, parquet or a save_to_disk folder,
    with integer labels used as classes."""
    import datasets

    from glora.app.data import DataSpec

    rows = {"s1": ["good movie", "bad plot", "nice acting"], "s2": ["great", "awful", "fine"], "y": [1, 0, 1]}
    table = datasets.Dataset.from_dict(rows)
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "tsv":
        table.to_csv(str(path), sep="\t", index=False)
    elif fmt == "parquet":
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    spec = DataSpec(
        dataset="text", train_file=str(path), text_column=("s1", "s2"), label_column="y", tokenizer=str(bert),
        max_seq_length=12,
    )  # fmt: skip
    assert spec.num_classes() == 2
    split = spec.load("train", (2, 12))
    ids, mask = split.images[0]
    tok = transformers.AutoTokenizer.from_pretrained(bert)
    assert tok.convert_ids_to_tokens(ids[: int(mask.sum())].tolist()) == ["[CLS]", "good", "movie", "[SEP]", "great",
                                                                          "[SEP]"]  # fmt: skip
    assert split.labels.tolist() == [1, 0, 1] and split.class_names is None


def test_gradient_checkpointing_of_a_transformers_backbone_gives_the_same_training(bert, texts, tmp_path, capsys):
    assert cli("train", _train_args(bert, texts, tmp_path / "plain"), capsys)[0] == 0
    code, err = cli("train", _train_args(bert, texts, tmp_path / "ckpt", "--gradient-checkpointing"), capsys)
    assert code == 0, err
    same_training(tmp_path / "ckpt" / "last.pt", tmp_path / "plain" / "last.pt")
