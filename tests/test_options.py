"""Options (glora.app.options, glora.app.declared): each declared once, YAML configs and presets by name, stacking,
the help, options of another dataset or model kind refused."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from helpers import PRESETS, cli

from glora.app import data
from glora.app import options as cfg
from glora.app.commands.export import build_parser as export_parser
from glora.app.commands.search import build_parser as search_parser
from glora.app.commands.train import build_parser as train_parser


# ---------------------------------------------------------------------- configs
def test_default_config_files_equal_the_builtin_defaults():
    for parser, path in ((train_parser, "default"), (search_parser, "search/default")):
        plain = vars(cfg.parse_args(parser(), []))
        from_file = vars(cfg.parse_args(parser(), ["-c", path]))  # a preset by name
        from_file.pop("config"), plain.pop("config")
        assert from_file == plain, path


@pytest.mark.parametrize("path", sorted(p.relative_to(PRESETS).as_posix() for p in PRESETS.rglob("*.yaml")))
def test_every_shipped_config_parses(path):
    parser = search_parser() if path.startswith("search/") else train_parser()
    args = cfg.parse_args(parser, ["-c", str(PRESETS / path)])
    if path.startswith("vtab/"):
        task = Path(path).stem
        assert (args.dataset, args.task, args.epochs, args.batch_size) == ("vtab", task, 500, 64)
        assert args.lr == (1e-4 if task in data.VTAB_SMALL_LR_TASKS else 5e-4)
        assert args.model == "vit_base_patch16_224.orig_in21k"
        # The reference's recipe, value for value (DESIGN.md, paper Appendix A).
        assert (args.drop_path, args.warmup_epochs, args.warmup_lr, args.min_lr) == (0.1, 10, 1e-6, 1e-5)
        assert args.mean == [0.485, 0.456, 0.406] and args.std == [0.229, 0.224, 0.225]
        assert (args.train_split, args.val_split, args.test_split) == ("train800", "val200", "test")


def test_all_19_vtab_tasks_have_a_config():
    assert sorted(p.stem for p in (PRESETS / "vtab").glob("*.yaml")) == sorted(data.VTAB_TASKS)


def test_stacked_configs_and_command_line_override(tmp_path):
    args = cfg.parse_args(
        train_parser(),
        [
            "-c",
            str(PRESETS / "vtab/cifar.yaml"),
            "-c",
            str(PRESETS / "spaces/glora-4-2.yaml"),
            "--lr",
            "1e-3",
        ],
    )
    assert args.lora_ranks == [4, 2] and args.lr == 1e-3 and args.task == "cifar"


@pytest.mark.parametrize(
    "text, match",
    [
        ("epochs: 10\nbogus: 1\n", "unknown key 'bogus'"),
        ("epochs: ten\n", "epochs: expected a positive integer, got 'ten'"),
        ("epochs: 0\n", "epochs: expected a positive integer"),
        ("lr: -1\n", "lr: expected a positive number"),
        ("lora-ranks: [8, x]\n", "lora-ranks: expected a positive integer"),
        ("dataset: mnist\n", "dataset: 'mnist' is not allowed; choose from digits, vtab, fewshot, folder, text"),
        ("resume: 1\n", "resume: expected true or false"),
        ("epochs: [1, 2]\n", "epochs: expected a single value"),
        ("- a\n", "must be a mapping"),
        ("epochs: [\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError, match=match):
        cfg.parse_args(train_parser(), ["-c", str(path)])


def test_missing_config_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.parse_args(train_parser(), ["-c", str(tmp_path / "none.yaml")])


# ---------------------------------------------------------------------- presets by name (package data)
@pytest.mark.parametrize("name", ["vtab/cifar", "vtab/cifar.yaml", "configs/vtab/cifar.yaml"])
def test_a_preset_is_found_by_name_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the shipped copy is read
    by_name = cfg.parse_args(train_parser(), ["-c", name, "--data-root", "x"])
    by_file = cfg.parse_args(train_parser(), ["-c", str(PRESETS / "vtab/cifar.yaml"), "--data-root", "x"])
    assert {**vars(by_name), "config": None} == {**vars(by_file), "config": None}


def test_a_local_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vtab").mkdir()
    (tmp_path / "vtab" / "cifar.yaml").write_text("epochs: 3\n")
    assert cfg.parse_args(train_parser(), ["-c", "vtab/cifar.yaml"]).epochs == 3


def test_list_presets_names_every_shipped_file(capsys):
    with pytest.raises(SystemExit) as e:
        cfg.parse_args(search_parser(), ["--list-presets"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line and not line.startswith("use one")]
    assert listed == cfg.preset_names() and "vtab/cifar" in listed and "search/default" in listed
    assert "VTAB-1k cifar" in out  # each with its description line


@pytest.mark.parametrize("name", ["vtab/cifr", "../presets/vtab/cifar", "/nonexistent/x.yaml"])
def test_an_unknown_preset_is_one_clear_error(name):
    with pytest.raises(cfg.ConfigError, match="does not exist, nor is it a preset name"):
        cfg.parse_args(train_parser(), ["-c", name])


@pytest.mark.parametrize(
    "argv, targets, bias_free",
    [
        (["--targets", "q_proj,v_proj"], ("q_proj", "v_proj"), "allow"),
        (["--targets", "q_proj", "v_proj", "--bias-free", "exclude"], ("q_proj", "v_proj"), "exclude"),
        (["--targets", "all-linear"], None, "allow"),
        (["--targets-regex", r".*\.(q|v)_proj"], r".*\.(q|v)_proj", "allow"),
    ],
)
def test_targets_as_peft_users_write_them_and_the_bias_free_rule(argv, targets, bias_free):
    from glora.app.options.train import adapter_from_args

    adapter = adapter_from_args(cfg.parse_args(train_parser(), argv))
    assert adapter.targets == targets and adapter.space.bias_free == bias_free


@pytest.mark.parametrize("command", ["train", "search", "export", "report"])
def test_help_states_each_default_once_under_the_name_typed(command, monkeypatch):
    """``--help`` adds a default only where the help text does not already say it; ``usage:`` shows the console
    command's name when that is what was typed, the script's otherwise."""
    import importlib
    import re

    names = {"train": ("train_supernet.py", "glora-train"), "search": ("search.py", "glora-search"),
             "export": ("reparam.py", "glora-export"), "report": ("report.py", "glora-report")}  # fmt: skip
    script, console = names[command]
    build_parser = importlib.import_module(f"glora.app.commands.{command}").build_parser
    monkeypatch.setattr("sys.argv", [f"/usr/local/bin/{console}", "--help"])
    text = " ".join(build_parser().format_help().split())
    assert text.startswith(f"usage: {console} ")
    assert not re.search(r"\(default[^()]*\)\s*\(default", text), "an option states its default twice"
    monkeypatch.setattr("sys.argv", [script, "--help"])
    assert build_parser().format_help().startswith(f"usage: {script} ")


def test_an_empty_rank_list_is_a_note_not_silence(caplog):
    """``--lora-ranks`` with no values is allowed (GIFT-only spaces) but never silent."""

    from glora.app.commands.train import build_parser
    from glora.app.options import parse_args
    from glora.app.options.train import adapter_from_args

    with caplog.at_level(logging.INFO, logger="glora.app.options.train"):
        config = adapter_from_args(parse_args(build_parser(), ["--lora-ranks"]))
    assert config.space.lora_ranks == ()
    assert "--lora-ranks is empty, so no support offers a LoRA choice" in caplog.text


# ---------------------------------------------------------------------- options that belong to a dataset or a model
def _hf_folder(root: Path) -> Path:
    """A folder a transformers model is recognised by (config.json with a model_type); nothing is loaded."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "text", "--crop-pct", "0.9"],
         "--crop-pct: not an option of --dataset text (used by --dataset vtab, fewshot, folder)"),
        (["--dataset", "text", "--train-split", "train800"], "--train-split: not an option of --dataset text"),
        (["--dataset", "instructions", "--label-column", "y"],
         "--label-column: not an option of --dataset instructions (used by --dataset text)"),
        (["--dataset", "text", "--packing"], "--packing: not an option of --dataset text"),
        (["--dataset", "text", "--drop-path", "0.1"], "--drop-path: for timm models only"),
        (["--dataset", "text", "--model-kwargs", "{depth: 2}"], "--model-kwargs: for timm models only"),
        (["--dataset", "text", "--pretrained-file", "w.safetensors"], "--pretrained-file: for timm models only"),
        (["--dataset", "text", "--mean", "0.5"], "--mean: for image data only; --dataset text holds text"),
        (["--dataset", "text", "--augment"], "--augment: for image data only"),
        (["--dataset", "text", "--task-type", "causal-lm"], "--task-type causal-lm does not fit --dataset text"),
        (["--dataset", "text", "-c", "vtab/cifar"], "not an option of --dataset text"),
    ],
)  # fmt: skip
def test_an_option_of_another_dataset_or_model_kind_is_refused(argv, message, tmp_path, capsys):

    bert = _hf_folder(tmp_path / "bert")
    code, err = cli("train", ["--model", str(bert), "--train-file", "none.csv", *argv, "--out", str(tmp_path / "o")],
                    capsys)  # fmt: skip
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-seq-length", "64"], "--max-seq-length: not an option of --dataset digits (used by --dataset text"),
        (["--dataset", "vtab", "--data-root", "d", "--task", "dtd", "--tokenizer", "t"],
         "--tokenizer: not an option of --dataset vtab"),
        (["--dataset", "folder", "--data-root", "d", "--shot", "2"],
         "--shot: not an option of --dataset folder (used by --dataset fewshot)"),
        (["--dtype", "bf16"], "--dtype: for transformers models only; --model embedded:digits-vit is a timm model"),
        (["--dataset", "text", "--train-file", "t.csv"], "--dataset text needs a transformers --model"),
    ],
)  # fmt: skip
def test_image_runs_refuse_text_and_transformers_options(argv, message, tmp_path, capsys):

    code, err = cli("train", [*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_the_task_type_option_is_deprecated_but_read(tmp_path, caplog):
    from glora.app.options.train import check_applicable

    check_applicable(train_parser().parse(["--model", str(_hf_folder(tmp_path)), "--dataset", "instructions",
                                           "--task-type", "causal-lm"]))  # fmt: skip
    assert "--task-type is deprecated: --dataset instructions decides it (causal-lm)" in caplog.text


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
                   if not p.relative_to(PRESETS).as_posix().startswith("search/"))
)  # fmt: skip
def test_every_training_preset_sets_only_options_its_run_can_use(path):
    """A preset names its dataset and model (or uses the defaults; an overlay stacks on its base: glue/large/* on
    glue/*, protocols/* on a task preset); every option it sets must apply to them."""
    from glora.app.options.train import check_applicable

    base = (
        path.replace("/large/", "/") if "/large/" in path else "vtab/cifar" if path.startswith("protocols/") else None
    )
    argv = ["-c", base, "-c", path] if base else ["-c", path]
    check_applicable(train_parser().parse(argv))


def test_help_groups_the_options_by_the_datasets_that_use_them():
    text = train_parser().format_help()
    assert "image files under a root folder (--dataset vtab, fewshot, folder):" in text
    assert "text files, read with the datasets library" in text and "(--dataset text, instructions):" in text
    assert "text classification or regression columns (--dataset text):" in text
    assert "timm models:" in text and "transformers models:" in text


# ---------------------------------------------------------------------- help


@pytest.mark.parametrize("parser", [train_parser, search_parser, export_parser], ids=["train", "search", "export"])
def test_every_option_has_help_and_shows_its_default(parser):
    command = parser()
    text = " ".join(command.format_help().split())
    for option in command.options.values():
        assert option.help, f"{option.flag} has no help"
        if option.help == argparse.SUPPRESS or option.kwargs.get("action") == "store_true":
            continue  # a hidden old name; a switch that is off unless given
        assert "default" in option.help_text(), f"{option.flag} shows no default"
        if isinstance(option.default, int) and not isinstance(option.default, bool):
            assert f"(default: {option.default})" in text, option.flag  # --epochs, --population, ...


# ---------------------------------------------------------------------- the warm-up, in epochs or as a share
def test_the_warmup_follows_the_runs_length_and_the_higher_layer_wins(tmp_path):
    """--warmup-ratio is a share of this run's epochs (transformers' warmup_ratio); --warmup-epochs and it say one
    thing two ways: the command line beats a -c file beats the --init-from run's options; one layer giving both is
    refused."""
    from glora.app.options import ConfigError
    from glora.app.options.train import resolve_warmup
    from glora.app.trainer import Recipe

    assert Recipe(epochs=10, warmup_ratio=0.25).warmup == 2.5 and Recipe(epochs=10, warmup_epochs=3).warmup == 3
    ratio = tmp_path / "ratio.yaml"
    ratio.write_text("warmup-ratio: 0.1\n")

    def resolved(argv, inherited=None):
        parsed = train_parser().parse(argv)
        parsed = parsed.layered_under(inherited) if inherited else parsed
        args = parsed.args
        resolve_warmup(parsed, args)
        return Recipe.from_options(args).warmup if args.epochs else None

    assert resolved(["-c", str(ratio), "--epochs", "30"]) == 3.0  # the preset's share of 30 epochs
    assert resolved(["-c", str(ratio), "--epochs", "30", "--warmup-epochs", "0"]) == 0  # the command line wins
    assert resolved(["--epochs", "8"], {"warmup_ratio": 0.25, "warmup_epochs": 2.0}) == 2.0  # inherited: its ratio
    assert resolved(["--epochs", "8", "--warmup-epochs", "0"], {"warmup_ratio": 0.25, "warmup_epochs": 2.0}) == 0
    with pytest.raises(ConfigError, match="--warmup-epochs and --warmup-ratio both given by the command line"):
        resolved(["--warmup-ratio", "0.1", "--warmup-epochs", "1"])
    # The recommended preset stacked after a task config (VTAB's 10 warm-up epochs): a quarter of the stage, so the
    # README's 3-epoch supernet stage warms up for 0.75 of an epoch, not two of its three.
    task, recommended = str(PRESETS / "vtab" / "cifar.yaml"), str(PRESETS / "protocols" / "recommended.yaml")
    assert resolved(["-c", task, "-c", recommended, "--epochs", "3"]) == 0.75
    assert resolved(["-c", task, "--epochs", "3"]) == 10  # (the task config alone keeps its epochs)
    both = tmp_path / "both.yaml"
    both.write_text("warmup-ratio: 0.1\nwarmup-epochs: 1\n")
    with pytest.raises(ConfigError, match="both given by one -c file"):
        resolved(["-c", str(both)])
