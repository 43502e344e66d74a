"""Text classification through the commands: a tiny BERT written by save_pretrained, a tokenizer built with the
``tokenizers`` library, CSV/JSONL files read by ``datasets``; train and search run as for images, bad text inputs
get one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import (
    FILLER,
    PRESETS,
    TINY_SEARCH,
    WORDS,
    cli,
    same_training,
    sentiment_files,
    sentiment_rows,
    text_train_args,
    write_csv,
    write_jsonl,
)

import glora
from glora.app import load_supernet

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

pytestmark = pytest.mark.slow  # trains and searches


@pytest.fixture(scope="module")
def bert(tiny_bert) -> Path:
    return tiny_bert


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    return sentiment_files(tmp_path_factory.mktemp("texts"))


def _train_args(bert: Path, texts: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return text_train_args(bert, texts, out, *extra)


def test_text_classification_trains_searches_and_exports(text_pipeline, tmp_path, capsys):
    """The shared text run (sentence pairs on the tiny BERT): checkpoint, search and a plain transformers export."""
    root, bert = text_pipeline.root, text_pipeline.model
    ckpt = torch.load(root / "supernet" / "last.pt", weights_only=True)
    assert ckpt["data"]["dataset"] == "text" and ckpt["data"]["tokenizer"] == str(bert)
    assert ckpt["input"] == {"modality": "text", "max_seq_length": 16}
    assert ckpt["backbone"]["task_type"] == "text-classification" and ckpt["class_names"] == ["first", "second"]
    assert len(ckpt["log"]) == 3 and all(0 <= r["val_acc"] <= 1 for r in ckpt["log"])
    assert (root / "search" / "subnet.yaml").is_file()
    record = json.loads((root / "search" / "pareto.json").read_text())
    assert record["front"] and all(0 <= p["val_acc"] <= 1 for p in record["front"])
    (tmp_path / "imgs").mkdir()
    search = ["--supernet", str(root / "supernet" / "last.pt"), "--out", str(tmp_path / "s2"), *TINY_SEARCH]
    code, err = cli("search", [*search, "--eval-set", f"A={tmp_path / 'imgs'}"], capsys)
    assert code == 2 and "--eval-set takes image folders or lists; this supernet takes text" in err, err
    code, err = cli("search", [*search, "--data-root", str(tmp_path / "elsewhere")], capsys)
    assert code == 2 and "--data-root: dataset text reads no data root" in err, err
    # The export is a plain transformers folder: model, tokenizer and class names, loaded without this toolkit.
    out = root / "export"
    plain, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert plain.config.id2label == {0: "first", 1: "second"} and (out / "glora_export.json").is_file()
    stats = json.loads((out / "glora_export.json").read_text())
    assert stats["params"] == stats["base_params"] and stats["max_rel_diff"] < 1e-5 and stats["verify_examples"] == 16


@pytest.mark.parametrize("progress", ["--no-progress", "--progress"])
def test_the_export_shows_transformers_bars_only_as_progress_says(text_pipeline, tmp_path, capsys, progress):
    """transformers' own bars ("Loading weights", "Writing model shards") follow the command's --progress."""
    root = text_pipeline.root
    argv = ["--supernet", root / "supernet/last.pt", "--subnet", root / "search/subnet.yaml", "--out", tmp_path / "e",
            "--latency-rounds", "0", progress]  # fmt: skip
    code, err = cli("export", argv, capsys)
    assert code == 0, err
    assert ("Loading weights" in err) == (progress == "--progress"), err


def test_a_fixed_adapter_learns_the_texts_and_the_search_reports_test_accuracy(bert, texts, tmp_path, capsys):
    """LoRA r=8 as a one-subnet space: the sentiment words give the label away, so validation accuracy rises well
    above chance; the search evaluates that subnet on val and test (the JSONL file)."""
    lora = ["--choices", "A=none", "B=lora_8", "C=none", "D=none", "E=none", "--epochs", "12"]
    code, err = cli("train", [*_train_args(bert, texts, tmp_path / "sup"), *lora], capsys)
    assert code == 0, err
    assert "LOAD REPORT" not in err and "MISSING" not in err and "Loading weights" not in err, err  # expected: quiet
    log = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)["log"]
    assert log[-1]["val_acc"] >= 0.75, log
    code, err = cli("search", ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    state = json.loads((tmp_path / "s" / "search_state.json").read_text())
    assert state["log"], state.keys()


def _bad(texts: dict[str, Path], tmp: Path, what: str) -> list[str]:
    rows = sentiment_rows(8, 3)
    if what == "unknown-label":
        rows[2]["label"] = "meh"
        return ["--validation-file", str(write_csv(tmp / "v.csv", rows))]
    if what == "empty-text":
        rows[4]["text"] = "  "
        return ["--validation-file", str(write_csv(tmp / "v.csv", rows))]
    if what == "missing-column":
        return ["--label-column", "sentiment"]
    if what == "real-labels-as-classes":
        return ["--problem-type", "classification", "--train-file", str(write_csv(tmp / "t.csv", [{"text": r["text"],
                "label": 0.5 + i} for i, r in enumerate(rows)]))]  # fmt: skip
    if what == "names-as-regression":
        return ["--problem-type", "regression"]
    if what == "metric":
        return ["--metric", "pearson"]
    if what == "bad-format":
        (tmp / "v.xml").write_text("<rows/>")
        return ["--validation-file", str(tmp / "v.xml")]
    if what == "no-validation-file":
        return ["--validation-file", str(tmp / "missing.csv")]
    if what == "no-test-file":  # noticed before training, not as "test metrics not reported" after the search
        return ["--test-file", str(tmp / "missing.csv")]
    if what == "broken-test-file":
        return ["--test-file", str(write_csv(tmp / "t.csv", [{"text": "fine", "label": "meh"}]))]
    if what == "longer-than-positions":  # the tiny BERT has 64 learned positions
        return ["--max-seq-length", "100"]
    if what == "blank-label":  # pandas reads a blank cell of a number column as NaN
        (tmp / "t.csv").write_text("text,label\nthis was great,1\nawful plot,\nbad acting,0\n")
        return ["--train-file", str(tmp / "t.csv")]
    if what == "null-label":
        rows[3]["label"] = None
        return ["--validation-file", str(write_jsonl(tmp / "v.jsonl", rows))]
    if what == "one-class":
        return ["--train-file", str(write_csv(tmp / "t.csv", [{**r, "label": "pos"} for r in rows]))]
    if what == "mixed-labels":
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", [{**r, "label": i if i % 2 else "pos"}
                                                                  for i, r in enumerate(rows)]))]  # fmt: skip
    if what == "list-labels":
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", [{**r, "label": [0, 1]} for r in rows]))]
    if what == "number-as-text":
        rows[1]["text"] = 42
        return ["--validation-file", str(write_jsonl(tmp / "v.jsonl", rows))]
    if what == "nan-regression":
        (tmp / "t.csv").write_text("text,label\nthis was great,0.5\nawful plot,\nbad acting,1.5\n")
        return ["--train-file", str(tmp / "t.csv"), "--problem-type", "regression"]
    if what == "csv-extra-field":
        (tmp / "v.csv").write_text("text,label\nthis was great,pos\nawful, boring plot,neg\n")
        return ["--validation-file", str(tmp / "v.csv")]
    if what == "utf16":
        (tmp / "v.csv").write_bytes("text,label\nthis was great,pos\n".encode("utf-16"))
        return ["--validation-file", str(tmp / "v.csv")]
    if what == "broken-jsonl":
        (tmp / "v.jsonl").write_text('{"text": "great", "label": "pos"}\n{"text": "bad", "label": \n')
        return ["--validation-file", str(tmp / "v.jsonl")]
    if what == "out-in-model-folder":  # texts["model"]: the model folder (the tokenizer's too)
        return ["--out", str(texts["model"] / "run")]
    if what == "out-over-data-file":
        return ["--out", str(texts["train"].parent)]  # the folder holding the data files
    if what == "out-in-tokenizer-folder":
        return ["--tokenizer", str(texts["model"]), "--out", str(texts["model"] / "t")]
    raise ValueError(what)


@pytest.mark.parametrize(
    "what, message",
    [
        ("out-in-model-folder", "overlaps --model"),
        ("out-over-data-file", "overlaps --train-file"),
        ("out-in-tokenizer-folder", "overlaps --"),
        ("unknown-label", "label 'meh' is not in the train file's labels (neg, pos)"),
        ("empty-text", "row 5 has an empty 'text' text"),
        ("missing-column", "no label column 'sentiment'; columns: text, label"),
        ("bad-format", "unknown format; give one of .csv, .tsv, .json, .jsonl, .parquet"),
        ("real-labels-as-classes", "label 0.5 in column 'label' is not a class (whole numbers or names)"),
        ("names-as-regression", "in column 'label' is not a finite number (a regression needs numbers)"),
        ("blank-label", "row 2 has no label in column 'label' (None)"),
        ("null-label", "row 4 has no label in column 'label' (None)"),
        ("one-class", "column 'label' holds one class ('pos'); a classification needs at least two"),
        ("mixed-labels", "column 'label' mixes numbers and names (row 2: 1, row 1: 'pos')"),
        ("list-labels", "row 1: label [0, 1] in column 'label' is a list; a label is one class or one number"),
        ("number-as-text", "row 2: 'text' holds 42 (a int), not a text"),
        ("nan-regression", "row 2 has no label in column 'label' (None)"),
        ("csv-extra-field", "as csv: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3"),
        ("utf16", "(the file is not UTF-8: save it as UTF-8)"),
        ("broken-jsonl", "as jsonl: "),
        ("metric", "metric 'pearson' does not apply to classification with 2 classes; use one of accuracy, matthews"),
        ("no-validation-file", "does not exist"),
        ("no-test-file", "missing.csv' does not exist"),
        ("broken-test-file", "label 'meh' is not in the train file's labels"),
        (
            "longer-than-positions",
            "--max-seq-length 100 is longer than BertForSequenceClassification takes (64 positions); give at most 64",
        ),
    ],
)
def test_bad_text_inputs_are_one_line(bert, texts, tmp_path, capsys, what, message):
    bad = _bad({**texts, "model": bert}, tmp_path, what)
    code, err = cli("train", [*_train_args(bert, texts, tmp_path / "o"), *bad], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and not (tmp_path / "o" / "last.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vit_tiny_patch16_224"], "--dataset text needs a transformers --model"),
        (["--dataset", "digits"], "is a transformers model; it trains on --dataset text"),
        (["--task-type", "causal-lm"], "--task-type causal-lm does not fit --dataset text"),
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
    split = spec.load("train")
    ids, mask = split.fields["input_ids"][0], split.fields["attention_mask"][0]
    tok = transformers.AutoTokenizer.from_pretrained(bert)
    assert tok.convert_ids_to_tokens(ids[: int(mask.sum())].tolist()) == ["[CLS]", "good", "movie", "[SEP]", "great",
                                                                          "[SEP]"]  # fmt: skip
    assert split.labels.tolist() == [1, 0, 1] and split.class_names is None


def test_a_class_label_column_names_the_classes(bert, tmp_path):
    """A datasets ClassLabel column (GLUE saved with save_to_disk): integer labels, named by the feature in index
    order (the export's id2label); a CSV validation file may name them; GLUE's hidden test labels (-1) are refused."""
    import datasets

    from glora.app.data import DataSpec

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])})  # fmt: skip
    train = datasets.Dataset.from_dict({"sentence": ["good movie", "bad plot", "nice acting"], "label": [1, 0, 1]},
                                       features=features)  # fmt: skip
    train.save_to_disk(str(tmp_path / "train"))
    write_csv(tmp_path / "val.csv", [{"sentence": "bad acting", "label": "unacceptable"}])
    datasets.Dataset.from_dict({"sentence": ["great"], "label": [-1]}, features=features).save_to_disk(
        str(tmp_path / "test")
    )
    spec = DataSpec(
        dataset="text", train_file=str(tmp_path / "train"), validation_file=str(tmp_path / "val.csv"),
        test_file=str(tmp_path / "test"), text_column=("sentence",), tokenizer=str(bert), max_seq_length=8,
    )  # fmt: skip
    assert spec.num_classes() == 2
    split = spec.load("train")
    assert split.labels.tolist() == [1, 0, 1] and split.class_names == ("unacceptable", "acceptable")
    assert spec.load("val").labels.tolist() == [0]
    with pytest.raises(ValueError, match=r"label -1 is not one of the train file's classes 0\.\.1 .*hidden test"):
        spec.load("test")


def test_gradient_checkpointing_of_a_transformers_backbone_gives_the_same_training(bert, texts, tmp_path, capsys):
    assert cli("train", _train_args(bert, texts, tmp_path / "plain"), capsys)[0] == 0
    code, err = cli("train", _train_args(bert, texts, tmp_path / "ckpt", "--gradient-checkpointing"), capsys)
    assert code == 0, err
    same_training(tmp_path / "ckpt" / "last.pt", tmp_path / "plain" / "last.pt")


def _scores(n: int, seed: int) -> list[dict]:
    """Sentence pairs with a 0-5 similarity: the more sentiment words the two share, the higher."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = [rng.choice(WORDS["pos"] + WORDS["neg"]) for _ in range(3)]
        shared = rng.randint(0, 3)
        b = a[:shared] + [rng.choice(FILLER) for _ in range(3 - shared)]
        rows.append({"s1": " ".join(a), "s2": " ".join(b), "score": round(shared * 5 / 3 + rng.random() * 0.2, 2)})
    return rows


def test_a_regression_task_trains_searches_and_exports(bert, tmp_path, capsys):
    """STS-B's form: sentence pairs with real-valued scores are a regression (one output, mean squared error),
    ranked by Pearson correlation, reported with Spearman and MSE; the export says problem_type regression."""
    files = {s: write_csv(tmp_path / f"{s}.csv", _scores(n, i)) for i, (s, n) in enumerate([("train", 48), ("val", 16),
                                                                                        ("test", 16)])}  # fmt: skip
    args = _train_args(bert, files, tmp_path / "sup", "--text-column", "s1", "s2", "--label-column", "score")
    code, err = cli("train", [*args, "--sched", "linear", "--epochs", "4"], capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)
    assert ckpt["task"] == {"kind": "regression", "metric": None, "num_classes": 1} and ckpt["class_names"] is None
    assert {"val_pearson", "val_spearman", "val_mse"} <= set(ckpt["log"][-1])
    assert ckpt["log"][-1]["lr"] == 1e-6  # the linear schedule ends at --min-lr
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    code, err = cli("search", [*search, "--param-limit", "none", "--no-progress", "--metric", "spearman"], capsys)
    assert code == 0, err
    final = [json.loads(line) for line in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()][-1]
    assert final["metric"] == "spearman" and final["val_spearman"] == final["val_metrics"]["spearman"]
    assert set(final["test_metrics"]) == {"pearson", "spearman", "mse", "loss"}
    out = tmp_path / "e"
    args = ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out", out]
    code, err = cli("export", [*args, "--latency-rounds", "0"], capsys)
    assert code == 0, err
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert plain.config.num_labels == 1 and plain.config.problem_type == "regression"


def test_the_selection_metric_is_logged_and_ranks_the_search(bert, texts, tmp_path, capsys):
    code, err = cli("train", _train_args(bert, texts, tmp_path / "sup", "--metric", "matthews"), capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)
    assert ckpt["task"]["metric"] == "matthews" and {"val_acc", "val_matthews", "val_f1"} <= set(ckpt["log"][-1])
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    code, err = cli("search", [*search, "--param-limit", "none", "--no-progress"], capsys)
    assert code == 0, err
    state = json.loads((tmp_path / "s" / "search_state.json").read_text())
    final = [json.loads(line) for line in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()][-1]
    assert final["metric"] == "matthews"
    assert final["val_matthews"] == pytest.approx(max(score for _, score in state["cache"]), abs=1e-6)
    assert set(final["val_metrics"]) == {"accuracy", "matthews", "f1", "loss"}
    pareto = json.loads((tmp_path / "s" / "pareto.json").read_text())
    assert pareto["metric"] == "matthews" and all("val_matthews" in p for p in pareto["front"])


# The GIFT paper's Table 9 (Appendix A.3): (lr, weight decay, epochs) per task for RoBERTa-base and -large.
GIFT_TABLE_9 = {
    "base": {"sst2": (5e-4, 0, 60), "mrpc": (1e-3, 0, 30), "cola": (5e-4, 1e-4, 80), "qnli": (5e-4, 1e-2, 25),
             "rte": (7.5e-4, 1e-3, 160), "stsb": (5e-4, 1e-3, 80)},
    "large": {"sst2": (1e-3, 1e-2, 10), "mrpc": (5e-4, 1e-4, 40), "cola": (7.5e-4, 1e-2, 40), "qnli": (2.5e-4, 0, 20),
              "rte": (5e-4, 1e-2, 40), "stsb": (7.5e-4, 0, 20)},
}  # fmt: skip
GLUE_METRICS = {"cola": "matthews", "stsb": "pearson", "sst2": "accuracy", "mrpc": "accuracy", "qqp": "accuracy",
                "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy"}  # fmt: skip


@pytest.mark.parametrize("task", sorted(GLUE_METRICS))
def test_glue_presets_follow_the_gift_papers_table_9(task):
    from glora.app.commands.train import build_parser
    from glora.app.options import parse_args

    base = parse_args(build_parser(), ["-c", f"glue/{task}"])
    assert base.model == "FacebookAI/roberta-base" and base.dataset == "text" and base.metric == GLUE_METRICS[task]
    assert base.targets == ["query", "value"] and base.sched == "linear" and base.batch_size == 64
    assert base.max_seq_length == 512 and base.warmup_epochs == pytest.approx(0.06 * base.epochs)
    assert (base.problem_type == "regression") == (task == "stsb") and len(base.text_column) in (1, 2)
    if task not in GIFT_TABLE_9["base"]:  # MNLI and QQP: not in the paper; the preset says what it chose
        assert "the seeds give no values" in (PRESETS / "glue" / f"{task}.yaml").read_text()
        return
    assert (base.lr, base.weight_decay, base.epochs) == GIFT_TABLE_9["base"][task]
    large = parse_args(build_parser(), ["-c", f"glue/{task}", "-c", f"glue/large/{task}"])
    assert large.model == "FacebookAI/roberta-large" and large.batch_size == 128 and large.max_seq_length == 128
    assert (large.lr, large.weight_decay, large.epochs) == GIFT_TABLE_9["large"][task]
    assert large.warmup_epochs == pytest.approx(0.06 * large.epochs)


def test_a_glue_preset_trains_with_its_columns_and_metric(bert, tmp_path, capsys):
    """configs/glue/stsb.yaml with the tiny BERT and files in GLUE's columns: a regression ranked by Pearson."""
    rows = [{"sentence1": r["s1"], "sentence2": r["s2"], "label": r["score"]} for r in _scores(24, 0)]
    train, val = write_csv(tmp_path / "train.csv", rows[:16]), write_csv(tmp_path / "val.csv", rows[16:])
    args = ["-c", "glue/stsb", "--model", str(bert), "--train-file", str(train), "--validation-file", str(val),
            "--max-seq-length", "16", "--epochs", "1", "--batch-size", "8", "--no-progress", "--out",
            str(tmp_path / "sup")]  # fmt: skip
    code, err = cli("train", args, capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)
    assert ckpt["task"]["kind"] == "regression" and "val_pearson" in ckpt["log"][0]
    assert tuple(ckpt["data"]["text_column"]) == ("sentence1", "sentence2")


def test_segment_ids_reach_the_model_and_the_export_scores_what_the_search_reported(text_pipeline):
    """A BERT (two token types) on sentence pairs: training, search and export see the tokenizer's token_type_ids,
    so the export, loaded by plain transformers and fed the tokenizer's whole output, scores on the validation rows
    exactly what the search reported for them, with the supernet's logits."""
    from glora.app.data import DataSpec, make_loader

    root, rows = text_pipeline.root, text_pipeline.rows
    assert transformers.AutoConfig.from_pretrained(text_pipeline.model).type_vocab_size == 2
    ckpt = torch.load(root / "supernet" / "last.pt", weights_only=True)
    val = DataSpec.from_checkpoint(ckpt["data"]).load("val")
    assert set(val.fields) == {"input_ids", "token_type_ids", "attention_mask"}
    assert (val.fields["token_type_ids"] == 1).any()  # the second sentence's tokens
    final = [json.loads(line) for line in (root / "search" / "search_log.jsonl").read_text().splitlines()][-1]
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(root / "export").eval()
    tok = transformers.AutoTokenizer.from_pretrained(root / "export")
    enc = tok([r["s1"] for r in rows["val"]], [r["s2"] for r in rows["val"]], padding=True, return_tensors="pt")
    assert "token_type_ids" in enc
    with torch.no_grad():
        theirs = plain(**enc).logits
    labels = torch.tensor([plain.config.label2id[r["label"]] for r in rows["val"]])
    assert (theirs.argmax(-1) == labels).double().mean().item() == pytest.approx(final["val_metrics"]["accuracy"])
    supernet = load_supernet(root / "supernet" / "last.pt").eval()
    glora.set_subnet(supernet, glora.load_subnet(root / "search" / "subnet.yaml"))
    (batch,) = make_loader(val, len(val), shuffle=False)[0]  # the rows as training and the search batch them
    assert torch.equal(batch.inputs["token_type_ids"], enc["token_type_ids"])
    with torch.no_grad():
        ours = supernet(**batch.inputs)
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(supernet(**enc), ours, rtol=1e-5, atol=1e-5)  # called as a transformers model
        zeroed = {**enc, "token_type_ids": torch.zeros_like(enc["token_type_ids"])}
        assert not torch.allclose(plain(**zeroed).logits, theirs, atol=1e-4)  # the segments change the outputs


def test_a_run_given_relative_paths_searches_and_exports_from_another_folder(bert, tmp_path, monkeypatch, capsys):
    """Relative --model, data files and --out are stored absolute, so search and export work from any folder (and
    the checkpoint says where everything is)."""
    import os

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True)
    files = sentiment_files(work / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    relative = {k: Path(os.path.relpath(v, work)) for k, v in files.items()}
    model = Path(os.path.relpath(bert, work))
    code, err = cli("train", [*_train_args(model, relative, Path("runs/sup")), "--epochs", "1"], capsys)
    assert code == 0, err
    ckpt = torch.load(work / "runs" / "sup" / "last.pt", weights_only=True)
    for key in ("train_file", "validation_file", "test_file", "tokenizer"):
        assert Path(ckpt["data"][key]).is_absolute(), (key, ckpt["data"][key])
    assert Path(ckpt["backbone"]["model"]).is_absolute()
    monkeypatch.chdir(elsewhere)
    sup = work / "runs" / "sup" / "last.pt"
    code, err = cli("search", ["--supernet", str(sup), "--out", "s", "--param-limit", "none", *TINY_SEARCH,
                               "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    final = json.loads((elsewhere / "s" / "search_log.jsonl").read_text().splitlines()[-1])
    assert final["test_acc"] is not None  # the test file found from here
    code, err = cli("export", ["--supernet", str(sup), "--subnet", "s/subnet.yaml", "--out", "e"], capsys)
    assert code == 0, err
    assert (elsewhere / "e" / "model.safetensors").is_file()
    monkeypatch.chdir(tmp_path)  # the search and export folders name their supernet absolute: readable from here
    for folder in ("s", "e"):
        code, err = cli("report", [str(elsewhere / folder), "--out", f"r-{folder}"], capsys)
        assert code == 0, err
        assert "1 runs read, 1 with a finished search" in (tmp_path / f"r-{folder}" / "report.md").read_text()


_BERT_SIZES = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 48}
_FAMILIES = {  # encoder families whose layers, inputs or weight sharing differ from BERT's
    # q_lin / v_lin, no segment ids
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48}),
    # one layer shared across depth
    "albert": ("AlbertConfig", {**_BERT_SIZES, "embedding_size": 16, "num_hidden_layers": 2}),
    "deberta-v2": ("DebertaV2Config", {**_BERT_SIZES, "num_hidden_layers": 2}),  # query_proj, relative attention
}


def _family_folder(family: str, bert: Path, tmp_path: Path) -> tuple[Path, object]:
    """A random-init classifier of ``family`` with BERT's tokenizer, in one save_pretrained folder."""
    import shutil

    name, kw = _FAMILIES[family]
    model = tmp_path / family
    shutil.copytree(bert, model)
    for f in ("config.json", "model.safetensors"):
        (model / f).unlink()
    config = getattr(transformers, name)(vocab_size=len(transformers.AutoTokenizer.from_pretrained(bert)),
                                         max_position_embeddings=64, num_labels=2, **kw)  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(model)
    return model, config


def _plain_inputs(model, texts: list[str], tokenizer) -> dict:
    """The tokenizer's fields a plain transformers model takes (DistilBERT takes no token_type_ids)."""
    import inspect

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in enc.items() if k in accepted}


@pytest.mark.parametrize("family", list(_FAMILIES))
def test_other_encoder_families_are_adapted_and_export_as_the_commands_do(family, bert, tmp_path):
    """Another encoder family (other layer names, no segment ids, a layer shared across depth, relative attention)
    through the commands' own pieces, without a whole pipeline: the backbone as glora-train builds it, a sampled
    subnet over non-zero supports, the export as glora-export writes it; plain transformers loads it and computes the
    supernet's logits."""
    import random

    from helpers import randomize_supports, sentiment_rows

    from glora.app.backbone import BackboneSpec, build_backbone
    from glora.app.hf_backbone import export_transformers_folder

    model_dir, config = _family_folder(family, bert, tmp_path)
    supernet = build_backbone(BackboneSpec(str(model_dir), num_classes=2, task_type="text-classification")).eval()
    glora.inject(supernet, glora.SearchSpace(lora_ranks=(4, 2)))
    randomize_supports(supernet, seed=1)
    subnet = glora.sample_subnet(supernet, random.Random(2))
    glora.set_subnet(supernet, subnet)
    export_transformers_folder(glora.fold(supernet, subnet), tmp_path / "export", str(model_dir), ["neg", "pos"])
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    assert plain.config.model_type == config.model_type and plain.config.id2label == {0: "neg", 1: "pos"}
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    inputs = _plain_inputs(plain, [r["text"] for r in sentiment_rows(8, 1)], tok)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, supernet(**inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_encoder_with_relative_attention_trains_searches_and_exports(bert, tmp_path):
    """One other family end to end (DeBERTa-v2: query_proj, relative attention, no pooler of BERT's): it trains, is
    searched and exports, and plain transformers scores the export as the search reported."""
    from helpers import run_pipeline, sentiment_files, sentiment_rows, text_train_args

    model, config = _family_folder("deberta-v2", bert, tmp_path)
    files = sentiment_files(tmp_path)
    root = run_pipeline(tmp_path / "run", text_train_args(model, files, tmp_path / "unused"))
    final = [json.loads(line) for line in (root / "search" / "search_log.jsonl").read_text().splitlines()][-1]
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(root / "export").eval()
    assert plain.config.model_type == config.model_type
    tok = transformers.AutoTokenizer.from_pretrained(root / "export")
    rows = sentiment_rows(16, 1)  # the validation rows sentiment_files wrote
    inputs = _plain_inputs(plain, [r["text"] for r in rows], tok)
    with torch.no_grad():
        logits = plain(**inputs).logits
    labels = torch.tensor([plain.config.label2id[r["label"]] for r in rows])
    assert (logits.argmax(-1) == labels).double().mean().item() == pytest.approx(final["val_metrics"]["accuracy"])
    supernet = load_supernet(root / "supernet" / "last.pt").eval()
    glora.set_subnet(supernet, glora.load_subnet(root / "search" / "subnet.yaml"))
    untrained = transformers.AutoModelForSequenceClassification.from_pretrained(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, supernet(**inputs), rtol=1e-5, atol=1e-5)  # the pick, folded exactly
        assert not torch.allclose(untrained(**inputs).logits, logits, atol=1e-3)  # and it was trained


def test_the_adapter_only_export_loads_onto_the_plain_transformers_base(text_pipeline, tmp_path, capsys):
    """glora-export --adapter-only: a small folder that glora.load_adapter puts onto the plain base
    (AutoModelForSequenceClassification.from_pretrained with the labels the folder records), which then computes
    what the folded export computes."""
    root = text_pipeline.root
    argv = ["--supernet", root / "supernet/last.pt", "--subnet", root / "search/subnet.yaml", "--out", tmp_path / "a",
            "--adapter-only", "--no-progress"]  # fmt: skip
    code, out = cli("export", argv, capsys, stdout=True)
    assert code == 0, out
    assert "computes the supernet's outputs exactly" in out and "the folded export would take" in out
    record = json.loads((tmp_path / "a" / "glora_adapter.json").read_text())
    head = record["extra"]["transformers"]
    assert head["num_labels"] == 2 and head["id2label"] == {"0": "first", "1": "second"}
    stats = json.loads((tmp_path / "a" / "glora_export.json").read_text())
    assert stats["adapter_only"] and stats["adapter_bytes"] < stats["folded_bytes"]
    base = transformers.AutoModelForSequenceClassification.from_pretrained(head["model"], num_labels=2).eval()
    subnet = glora.load_adapter(base, tmp_path / "a")
    picked = glora.load_subnet(root / "search/subnet.yaml")  # named as the commands' wrapper names its layers
    assert subnet == {name.removeprefix("model."): choices for name, choices in picked.items()}  # the base's names
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(root / "export").eval()
    tok = transformers.AutoTokenizer.from_pretrained(root / "export")
    rows = text_pipeline.rows["val"]
    enc = tok([r["s1"] for r in rows], [r["s2"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(base(**enc).logits, plain(**enc).logits, rtol=1e-5, atol=1e-5)
        folded = glora.fold(base, subnet)
        torch.testing.assert_close(folded(**enc).logits, plain(**enc).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_peft_glora_preset_exports_a_folder_peft_loads(bert, texts, tmp_path, capsys):
    """-c methods/peft-glora (PEFT's GLoRA defaults, one subnet) through train and search, then glora-export
    --adapter-only --format peft: PeftModel.from_pretrained on the plain base computes the supernet's logits."""
    peft = pytest.importorskip("peft")
    from helpers import text_train_args

    sup = tmp_path / "sup"
    train = text_train_args(bert, texts, sup, "-c", "methods/peft-glora")
    train[train.index("--epochs") + 1] = "1"
    code, err = cli("train", train, capsys)
    assert code == 0, err
    code, err = cli("search", ["--supernet", sup / "last.pt", "--out", tmp_path / "s", "--no-progress"], capsys)
    assert code == 0, err
    argv = ["--supernet", sup / "last.pt", "--subnet", tmp_path / "s/subnet.yaml", "--out", tmp_path / "p",
            "--adapter-only", "--format", "peft", "--no-progress"]  # fmt: skip
    code, out = cli("export", argv, capsys, stdout=True)
    assert code == 0, out
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["peft_type"] == "GLORA"
    base = transformers.AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2)
    plain = peft.PeftModel.from_pretrained(base, tmp_path / "p").eval()
    supernet = load_supernet(sup / "last.pt").eval()
    glora.set_subnet(supernet, glora.load_subnet(tmp_path / "s/subnet.yaml"))
    tok = transformers.AutoTokenizer.from_pretrained(bert)
    enc = tok(["the movie was good good", "bad bad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**enc).logits, supernet(**enc), rtol=1e-5, atol=1e-5)
