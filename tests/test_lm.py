"""Causal language models through the commands: a tiny Llama written by save_pretrained, a word-level tokenizer
built with ``tokenizers``, Alpaca and chat rows read by ``datasets``; train, search and export as for images, the
export reloaded by plain transformers with the same logits, the loss on response tokens only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY_SEARCH,
    alpaca_files,
    alpaca_rows,
    chat_rows,
    cli,
    commands,
    commonsense_rows,
    make_llama,
    same_training,
    text_train_args,
    write_jsonl,
)

import glora
from glora.app import load_supernet
from glora.app.data import DataSpec
from glora.app.data.sources.instructions import ALPACA_PROMPT_NO_INPUT
from glora.app.tasks import IGNORE_INDEX

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def llama(tiny_llama) -> Path:
    return tiny_llama


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory) -> dict[str, Path]:
    return alpaca_files(tmp_path_factory.mktemp("alpaca"))


def _train_args(llama: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return text_train_args(llama, files, out, *extra, dataset="instructions", max_seq_length=96)


def test_alpaca_rows_are_scored_on_the_response_only(llama, alpaca):
    spec = DataSpec(dataset="instructions", train_file=str(alpaca["train"]), tokenizer=str(llama), max_seq_length=96)
    assert spec.task_kind() == "causal-lm" and spec.num_classes() is None
    split = spec.load("train")
    tok = transformers.AutoTokenizer.from_pretrained(llama)
    row = alpaca_rows(32, 0)[0]
    assert set(split.fields) == {"input_ids", "attention_mask"}
    ids, mask = split.fields["input_ids"][0], split.fields["attention_mask"][0]
    n = int(mask.sum())
    assert split.labels.shape == (32, 96) and split.lengths[0] == n
    assert (split.targets["choice_group"] == -1).all() and (split.targets["choice_correct"] == 1).all()
    labels = split.labels[0]
    scored = tok.convert_ids_to_tokens(labels[labels != IGNORE_INDEX].tolist())
    assert scored == [*tok.tokenize(row["output"]), "</s>"]  # the response and eos, nothing of the prompt
    assert (labels[n:] == IGNORE_INDEX).all() and (ids[n:] == tok.pad_token_id).all()
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=row["instruction"])  # row 0 has an empty input
    assert tok.decode(ids[: n - len(scored)]) == tok.decode(tok(prompt)["input_ids"])
    packed = DataSpec(**{**spec.to_dict(), "packing": True, "max_seq_length": 40}).load("train")
    assert packed.fields["attention_mask"].all() and packed.labels.shape == (len(packed), 40)  # full rows, no padding
    total = int(split.fields["attention_mask"].sum())
    assert len(packed) == total // 40


def test_prompt_and_response_are_tokenized_whole_as_generation_sees_them():
    """A SentencePiece-style tokenizer (Llama's: a word after a space is '▁word', at a text's start too) gives the
    response's first word another token when tokenized alone than after the prompt's newline: the sequence is the
    whole text's tokens, split where the prompt's own end (Alpaca, LLM-Adapters, lm-eval)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from glora.app.data.sources.instructions import _encode

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "▁Say", "▁it:", "\n", "red", "▁red", "▁."])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Metaspace(prepend_scheme="first")]
    )
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>")
    assert tok.tokenize("red .") == ["▁red", "▁."]  # alone: the first word as if after a space
    ((ids, labels),) = _encode(tok, ["Say it:\n"], ["red ."], chat=False)
    assert tok.convert_ids_to_tokens(ids) == ["▁Say", "▁it:", "\n", "red", "▁.", "</s>"]  # as in the whole text
    assert labels == [IGNORE_INDEX] * 3 + ids[3:]


def test_chat_rows_use_the_tokenizer_template_and_score_the_last_assistant_turn(llama, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", chat_rows(4, 0))
    spec = DataSpec(dataset="instructions", train_file=str(path), tokenizer=str(llama), max_seq_length=64)
    split = spec.load("train")
    tok = transformers.AutoTokenizer.from_pretrained(llama)
    labels = split.labels[0]
    scored = tok.convert_ids_to_tokens(labels[labels != IGNORE_INDEX].tolist())
    assert scored == [*tok.tokenize(chat_rows(4, 0)[0]["messages"][1]["content"]), "</s>"]


def test_multiple_choice_rows_become_one_sequence_per_option(llama, tmp_path):
    """Validation rows with options (Commonsense170k's answer format, or explicit options + answer index) are
    scored option by option; the training split trains on the answer only."""
    path = write_jsonl(tmp_path / "cs.jsonl", commonsense_rows(4, 0))
    spec = DataSpec(
        dataset="instructions", train_file=str(path), validation_file=str(path), tokenizer=str(llama), max_seq_length=96
    )
    train, val = spec.load("train"), spec.load("val")
    assert len(train) == 4 and (train.targets["choice_group"] == -1).all()
    assert len(val) == 12 and val.targets["choice_group"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    answers = [int(r["answer"][-1]) - 1 for r in commonsense_rows(4, 0)]
    correct = val.targets["choice_correct"]
    assert correct.view(4, 3).argmax(1).tolist() == answers and correct.sum() == 4
    tok = transformers.AutoTokenizer.from_pretrained(llama)
    second = val.labels[1]
    assert tok.convert_ids_to_tokens(second[second != IGNORE_INDEX].tolist())[-2:] == ["option2", "</s>"]
    explicit = [{"instruction": "What color is the cup ?", "options": ["It is red .", "It is blue ."], "answer": 1}]
    spec = DataSpec(dataset="instructions", train_file=str(write_jsonl(tmp_path / "x.jsonl", explicit)),
                    validation_file=str(tmp_path / "x.jsonl"), tokenizer=str(llama), max_seq_length=64)  # fmt: skip
    train, val = spec.load("train"), spec.load("val")
    labels = train.labels[0]
    assert tok.convert_ids_to_tokens(labels[labels != IGNORE_INDEX].tolist()) == ["It", "is", "blue", ".", "</s>"]
    assert val.targets["choice_group"].tolist() == [0, 0] and val.targets["choice_correct"].tolist() == [0, 1]


@pytest.mark.slow
def test_multiple_choice_accuracy_ranks_the_search(llama, tmp_path, capsys):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", commonsense_rows(24, 0))}
    files["val"] = files["test"] = write_jsonl(tmp_path / "val.jsonl", commonsense_rows(6, 1))
    args = _train_args(llama, files, tmp_path / "sup", "--metric", "mc_accuracy", "--bias-free", "exclude")
    code, err = cli("train", args, capsys)
    assert code == 0, err
    log = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)["log"]
    assert all(0 <= r["val_mc_accuracy"] <= 1 and r["val_mc_accuracy"] * 6 == round(r["val_mc_accuracy"] * 6)
               for r in log)  # fmt: skip
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    code, err = cli("search", [*search, "--param-limit", "none", "--no-progress"], capsys)
    assert code == 0, err
    final = [json.loads(line) for line in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()][-1]
    assert final["metric"] == "mc_accuracy" and final["val_mc_accuracy"] == final["test_mc_accuracy"]
    cache = json.loads((tmp_path / "s" / "search_state.json").read_text())["cache"]
    assert final["val_mc_accuracy"] == pytest.approx(max(score for _, score in cache), abs=1e-6)


@pytest.mark.slow
def test_a_causal_lm_trains_searches_and_exports_a_plain_transformers_model(lm_pipeline, tmp_path, capsys):
    """The shared causal-LM run; then bias-free Llama projections under --bias-free allow: a subnet that gives them a
    bias is exported with the config's attention_bias / mlp_bias on, and reloads in plain transformers with the very
    same logits."""
    root = lm_pipeline.root
    ckpt = torch.load(root / "supernet" / "last.pt", weights_only=True)
    assert ckpt["task"] == {"kind": "causal-lm", "metric": None, "num_classes": None}
    assert ckpt["backbone"]["task_type"] == "causal-lm" and ckpt["backbone"]["num_classes"] is None
    assert {"val_loss", "val_perplexity", "val_token_accuracy"} <= set(ckpt["log"][-1])
    model = load_supernet(ckpt)
    assert glora.glora_layers(model) and not any("lm_head" in n for n in glora.glora_layers(model))
    final = [json.loads(line) for line in (root / "search" / "search_log.jsonl").read_text().splitlines()][-1]
    assert final["metric"] == "loss" and final["val_loss"] == final["val_metrics"]["loss"] > 0
    assert set(final["test_metrics"]) == {"loss", "perplexity", "token_accuracy"}
    best = min(json.loads((root / "search" / "search_state.json").read_text())["cache"], key=lambda c: -c[1])
    assert -best[1] == pytest.approx(final["val_loss"], abs=1e-6)  # the pick has the lowest validation loss
    assert transformers.AutoModelForCausalLM.from_pretrained(root / "export") is not None
    # A subnet that gives bias-free layers a bias, in both families (attention and MLP).
    subnet = {
        name: {"A": "lora_8", "B": "none", "C": "vector", "D": "none", "E": "scalar" if "mlp" in name else "none"}
        for name in glora.glora_layers(model)
    }
    glora.save_subnet(subnet, tmp_path / "bias.yaml")
    out = tmp_path / "e"
    args = ["--supernet", root / "supernet" / "last.pt", "--subnet", tmp_path / "bias.yaml", "--out", out]
    code, err = cli("export", [*args, "--latency-rounds", "0"], capsys)
    assert code == 0, err
    plain, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert plain.config.attention_bias and plain.config.mlp_bias
    stats = json.loads((out / "glora_export.json").read_text())
    assert stats["declared_bias_flags"] == ["attention_bias", "mlp_bias"]
    # Exactly the biases the flags declare are added: q, k, v, o and gate, up, down of each of the 2 layers.
    assert stats["params"] - stats["base_params"] == 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok(["What color is the cup ?", "It is red ."], padding=True, return_tensors="pt")
    supernet = load_supernet(root / "supernet" / "last.pt").eval()
    glora.set_subnet(supernet, subnet)
    with torch.no_grad():
        ours = supernet(**enc)
        theirs = plain.eval()(**enc).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_bias_free_exclude_exports_the_architecture_unchanged(family, llama, alpaca, tmp_path, capsys):
    """--bias-free exclude on Llama, and Mistral under the default (auto: its config has no bias flags, so C, D and
    E stay none on its bias-free projections): whatever the search picks exports with no added parameter."""
    if family == "llama":
        code, err = cli("train", _train_args(llama, alpaca, tmp_path / "sup", "--bias-free", "exclude"), capsys)
    else:
        mistral = make_llama(tmp_path / "tiny-mistral", "MistralConfig")
        code, err = cli("train", _train_args(mistral, alpaca, tmp_path / "sup"), capsys)
        assert "--bias-free auto: exclude for 14 bias-free layer(s): MistralForCausalLM cannot hold" in err
    assert code == 0, err
    space = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)["adapter"]["space"]
    assert space["bias_free"] == "exclude"  # decided once, stored: search and export read the same space
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    assert cli("search", [*search, "--param-limit", "none", "--no-progress"], capsys)[0] == 0
    out = tmp_path / "e"
    args = ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out", out]
    assert cli("export", [*args, "--latency-rounds", "0"], capsys)[0] == 0
    stats = json.loads((out / "glora_export.json").read_text())
    assert stats["params"] == stats["base_params"] and stats["declared_bias_flags"] == []
    config = json.loads((out / "config.json").read_text())
    assert config.get("attention_bias", False) is False and config.get("mlp_bias", False) is False


@pytest.mark.slow
def test_a_causal_lm_run_resumes_exactly_and_learns(llama, alpaca, tmp_path, capsys):
    """One fixed LoRA subnet: the response loss falls; stopped after two epochs and resumed, the same run."""
    lora = ["--choices", "A=none", "B=lora_8", "C=none", "D=none", "E=none", "--epochs", "4", "--lr", "0.02"]
    full = _train_args(llama, alpaca, tmp_path / "full", *lora)
    assert cli("train", full, capsys)[0] == 0
    log = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["log"]
    assert log[-1]["val_loss"] < log[0]["val_loss"], log
    cut = _train_args(llama, alpaca, tmp_path / "cut", *lora, "--stop-after", "2")  # the resume runs 2 more
    assert cli("train", cut, capsys)[0] == 0
    assert cli("train", ["--resume", "--out", str(tmp_path / "cut")], capsys)[0] == 0
    same_training(tmp_path / "cut" / "last.pt", tmp_path / "full" / "last.pt")


def _bad_rows(tmp: Path, what: str, llama: Path) -> list[str]:
    if what == "columns":
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", [{"question": "a", "answer": "b"}]))]
    if what == "last-turn":
        rows = [{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "bye"}]}]
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", rows))]
    if what == "empty-output":
        rows = alpaca_rows(4, 0)
        rows[2]["output"] = " "
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", rows))]
    if what == "too-short":
        return ["--max-seq-length", "8"]
    if what == "task-type":
        return ["--task-type", "text-classification"]
    if what == "metric":
        return ["--metric", "accuracy"]
    if what == "no-options":
        return ["--metric", "mc_accuracy"]
    if what == "bad-answer":
        rows = [{"instruction": "Which ?", "options": ["It is red .", "It is blue ."], "answer": 2}]
        return ["--validation-file", str(write_jsonl(tmp / "v.jsonl", rows))]
    if what == "empty-assistant":
        rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}]
        return ["--train-file", str(write_jsonl(tmp / "t.jsonl", rows))]
    if what == "no-tokenizer-files":  # the weights and config alone: transformers would build a near-empty one
        bare = tmp / "bare"
        bare.mkdir()
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            if (llama / name).is_file():
                shutil.copy(llama / name, bare / name)
        return ["--model", str(bare)]
    if what == "tokenizer-too-large":
        tok = transformers.AutoTokenizer.from_pretrained(llama)
        tok.add_tokens([f"extra{i}" for i in range(400)])
        tok.save_pretrained(tmp / "tok")
        return ["--tokenizer", str(tmp / "tok")]
    raise ValueError(what)


@pytest.mark.parametrize(
    "what, message",
    [
        ("columns", "instruction data needs the columns instruction + output (+ input, options, answer), or messages"),
        ("last-turn", "row 1: the last turn is 'user'; it must be the assistant's response"),
        ("empty-output", "row 3 has an empty 'output'"),
        ("too-short", "no row keeps a response token within --max-seq-length 8"),
        ("task-type", "--task-type text-classification does not fit --dataset instructions"),
        ("metric", "metric 'accuracy' does not apply to causal-lm; use one of loss, perplexity, token_accuracy"),
        ("no-options", "metric mc_accuracy needs multiple-choice rows (options and an answer) in the split"),
        ("bad-answer", "row 1: 'answer' 2 is neither one of the options nor an index 0..1"),
        ("empty-assistant", "row 1: the assistant's last turn is empty; it is the response the model learns"),
        ("no-tokenizer-files", "holds no tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt, ...)"),
        ("tokenizer-too-large", "it is not this model's tokenizer (--tokenizer)"),
    ],
)
def test_bad_instruction_inputs_are_one_line(llama, alpaca, tmp_path, capsys, what, message):
    bad = _bad_rows(tmp_path, what, llama)
    code, err = cli("train", [*_train_args(llama, alpaca, tmp_path / "o"), *bad], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and not (tmp_path / "o" / "last.pt").exists()


def test_gradient_checkpointing_of_a_causal_lm_gives_the_same_training(llama, alpaca, tmp_path, capsys, monkeypatch):
    """Recomputing the decoder's blocks in the backward pass changes nothing: the same losses and tensors, bit for
    bit, as the run that keeps its activations; and the blocks were recomputed (their MLPs run more often)."""
    from transformers.models.llama import modeling_llama

    calls = {"n": 0}
    real = modeling_llama.LlamaMLP.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    short = ["--epochs", "2"]
    assert cli("train", _train_args(llama, alpaca, tmp_path / "plain", *short), capsys)[0] == 0
    plain, calls["n"] = calls["n"], 0
    code, err = cli("train", _train_args(llama, alpaca, tmp_path / "ckpt", *short, "--gradient-checkpointing"), capsys)
    assert code == 0, err
    assert calls["n"] > plain  # the training steps' blocks ran again in the backward pass
    same_training(tmp_path / "ckpt" / "last.pt", tmp_path / "plain" / "last.pt")


def test_an_encoder_is_refused_as_a_causal_lm(tiny_bert, alpaca, tmp_path, capsys):
    """BERT given instruction data would see the tokens it predicts (bidirectional attention): refused before
    training, by what the model does (a later token must not change an earlier position's logits)."""
    code, err = cli("train", _train_args(tiny_bert, alpaca, tmp_path / "o"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "is not a causal (decoder) model: its positions see later tokens" in lines[-1], err
    assert not (tmp_path / "o" / "last.pt").exists()


def test_the_export_tokenizer_pads_as_training_did(tmp_path):
    """A tokenizer without a pad token (GPT-2's) is exported with eos as its pad token, as training padded, so a
    batched pipeline works on the export."""
    from glora.app.hf_backbone import export_transformers_folder

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    tok = transformers.AutoTokenizer.from_pretrained(make_llama(tmp_path / "llama"))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token is None
    export_transformers_folder(model, tmp_path / "out", str(tmp_path / "nopad"))
    saved = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert saved.pad_token == saved.eos_token is not None
    assert saved(["a", "a b c"], padding=True, return_tensors="pt")["input_ids"].shape[0] == 2


@pytest.mark.slow
def test_a_commonsense_preset_trains_a_bf16_supernet_on_q_and_v(llama, tmp_path, capsys):
    """configs/commonsense/llama-7b.yaml with the tiny Llama in place of LLaMA-7B: bf16 frozen weights, gradient
    checkpointing, Query and Value layers only, multiple-choice accuracy on the validation rows."""
    from glora.app.commands.train import build_parser
    from glora.app.options import parse_args

    preset = parse_args(build_parser(), ["-c", "commonsense/llama-7b"])
    assert (preset.lr, preset.weight_decay, preset.epochs, preset.batch_size) == (2.5e-4, 0.0, 6, 32)
    assert preset.sched == "linear" and preset.warmup_epochs == pytest.approx(0.1 * 6) and preset.max_seq_length == 512
    train = write_jsonl(tmp_path / "train.jsonl", commonsense_rows(16, 0))
    val = write_jsonl(tmp_path / "val.jsonl", commonsense_rows(4, 1))
    args = ["-c", "commonsense/llama-7b", "--model", str(llama), "--train-file", str(train), "--validation-file",
            str(val), "--max-seq-length", "96", "--epochs", "1", "--batch-size", "8", "--no-progress", "--out",
            str(tmp_path / "sup")]  # fmt: skip
    code, err = cli("train", args, capsys)
    assert code == 0, err
    ckpt = torch.load(tmp_path / "sup" / "last.pt", weights_only=True)
    assert ckpt["backbone"]["dtype"] == "bf16" and "val_mc_accuracy" in ckpt["log"][0]
    model = load_supernet(ckpt)
    assert {n.rsplit(".", 1)[-1] for n in glora.glora_layers(model)} == {"q_proj", "v_proj"}
    assert {p.dtype for n, p in model.named_parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}  # --support-dtype
    search = ["--supernet", str(tmp_path / "sup" / "last.pt"), "--out", str(tmp_path / "s"), *TINY_SEARCH]
    assert cli("search", [*search, "--param-limit", "none", "--no-progress"], capsys)[0] == 0
    out = tmp_path / "e"
    args = ["--supernet", tmp_path / "sup" / "last.pt", "--subnet", tmp_path / "s" / "subnet.yaml", "--out", out]
    code, err = cli("export", [*args, "--latency-rounds", "0"], capsys)
    assert code == 0, err  # the bf16 export reloads in plain transformers with the very same logits
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.dtype == torch.bfloat16
    ids = torch.randint(3, plain.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), glora.folded(model.eval(), glora.load_subnet(tmp_path / "s" / "subnet.yaml")):
        ours = model(input_ids=ids)
    with torch.no_grad():
        theirs = plain(input_ids=ids).logits
    assert ours.dtype == theirs.dtype == torch.bfloat16 and torch.equal(ours, theirs)


@pytest.mark.slow
def test_torchrun_trains_a_causal_lm_as_one_process_does(llama, tmp_path):
    """Two gloo processes: each rank takes its share of every batch (the per-sequence loss weighted by the global
    batch) and of the validation rows (multiple-choice groups whole again after the gather)."""
    from helpers import in_process, torchrun

    from glora.app.checkpoint import read_checkpoint
    from glora.app.commands.train import main as train_main

    train = write_jsonl(tmp_path / "train.jsonl", commonsense_rows(16, 0))
    val = write_jsonl(tmp_path / "val.jsonl", commonsense_rows(5, 1))
    common = ["--model", str(llama), "--dataset", "instructions", "--train-file", str(train), "--validation-file",
              str(val), "--max-seq-length", "96", "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
              "--warmup-epochs", "0", "--no-progress", "--device", "cpu", "--bias-free", "exclude"]  # fmt: skip
    two = torchrun("train_supernet.py", *common, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    in_process(train_main, *common, "--out", str(tmp_path / "one"))
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    for ra, rb in zip(a["log"], b["log"], strict=True):
        assert ra["lr"] == rb["lr"] and ra["val_mc_accuracy"] == rb["val_mc_accuracy"]
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_the_recommended_protocol_takes_a_causal_lm_through_search_retraining_and_export(llama, alpaca, tmp_path):
    """``-c protocols/recommended`` (sandwich in the budget, C without lora; ``--no-distill``, which a causal LM needs
    and the preset says) on bias-free layers: the pick keeps the budget and C's lora choices out, retrains as a fixed
    adapter and exports. Without ``--no-distill`` the run stops with one line saying so."""
    import yaml

    from glora.app.cli import run

    main = commands()
    sup, found, again = tmp_path / "supernet", tmp_path / "search", tmp_path / "retrain"
    limit = "0.001"  # 1,000 params: a small part of the space's largest subnet
    train = _train_args(llama, alpaca, sup, "-c", "protocols/recommended", "--param-limit", limit, "--epochs", "1")
    assert run(main["train"], train) == 2  # distillation is for classification and regression
    assert run(main["train"], [*train, "--no-distill"]) == 0
    config = yaml.safe_load((sup / "config.yaml").read_text())
    assert (config["sampling"], config["distill"], config["param-limit"]) == ("sandwich", False, float(limit))
    search = ["--supernet", str(sup / "last.pt"), "--out", str(found), "--param-limit", limit, "--no-progress"]
    assert run(main["search"], [*search, *TINY_SEARCH]) == 0
    final = json.loads((found / "search_log.jsonl").read_text().splitlines()[-1])
    assert 0 < final["params"] <= 1000
    picked = yaml.safe_load((found / "subnet.yaml").read_text())
    assert picked and not any(str(choice["C"]).startswith("lora") for choice in picked.values())
    retrain = ["--init-from", str(sup / "last.pt"), "--subnet", str(found / "subnet.yaml"), "--epochs", "1",
               "--warmup-epochs", "0", "--no-progress", "--out", str(again)]  # fmt: skip
    assert run(main["train"], retrain) == 0
    kept = yaml.safe_load((again / "config.yaml").read_text())  # the supernet's sampling is not the pick's
    assert (kept["sampling"], kept["distill"], kept["param-limit"], kept["choices"]) == (
        "uniform", False, None, config["choices"]
    )  # fmt: skip
    export = ["--supernet", str(again / "last.pt"), "--out", str(tmp_path / "export"), "--latency-rounds", "0"]
    assert run(main["export"], export) == 0


def test_a_preset_that_distils_names_the_way_out_for_a_causal_lm_before_loading(llama, alpaca, tmp_path, capsys,
                                                                               monkeypatch):  # fmt: skip
    import glora.app.commands.train as train_command

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(train_command, "build_backbone", never)
    code, err = cli("train", [*_train_args(llama, alpaca, tmp_path / "o"), "-c", "protocols/recommended"], capsys)
    assert code == 2 and "--distill (set by -c protocols/recommended)" in err and "add --no-distill" in err, err
    assert not (tmp_path / "o").exists()
