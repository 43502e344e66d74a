"""Shared test settings (property tests explore new examples locally but replay a fixed set on CI) and the
session-wide pipeline fixtures: one finished run per modality (images, text classification, causal LM)."""

from __future__ import annotations

import os
import signal
import types

import pytest
from hypothesis import settings

# Locally every run draws fresh examples (that is how they find bugs); on CI a fixed derandomized set runs, so a
# submission cannot fail on an example no one has seen (HYPOTHESIS_PROFILE=ci replays that set locally).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


def pytest_configure(config):
    """Under pytest-xdist (the README's ``-n auto``) each worker, and every process it starts, computes with one
    thread: a worker per core, each with torch's default pool of a thread per core, oversubscribes the cores
    (spinning pools made a training step 10x slower). Results do not depend on it: the tests compare runs made
    under the same setting."""
    # A suite started in the background of a non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, as
    # POSIX has it, and so would every process it starts: the Ctrl-C tests need Python's own handler, here and in the
    # children (a handled signal is reset to its default across exec).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["MKL_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """One reduced run of the three commands on the embedded default (3 epochs, a small search, the export),
    shared by every module that needs finished results: outputs, resume, error cases. Tests must not change it
    (write into ``tmp_path``); the error cases check that they did not."""
    from helpers import SMALL_SEARCH, commands

    from glora.app.cli import run

    main = commands()
    root = tmp_path_factory.mktemp("pipeline")
    sup, sub = root / "supernet", root / "search"
    assert run(main["train"], ["--epochs", "3", "--out", str(sup)]) == 0
    assert run(main["search"], ["--supernet", str(sup / "last.pt"), "--out", str(sub), *SMALL_SEARCH]) == 0
    argv = ["--supernet", str(sup / "last.pt"), "--subnet", str(sub / "subnet.yaml"), "--out", str(root / "export")]
    assert run(main["export"], argv) == 0
    return root


@pytest.fixture(scope="session")
def folder_pipeline(tmp_path_factory):
    """A random-init backbone on an ImageFolder tree through train, search and export (the --no-pretrained path)."""
    from helpers import TINY_SEARCH, commands, folder_train_args, image_folder

    from glora.app.cli import run

    main = commands()
    root = tmp_path_factory.mktemp("rand")
    data = image_folder(root / "imgs")
    assert run(main["train"], folder_train_args(data, root / "supernet", "--epochs", "2")) == 0
    sup = root / "supernet" / "last.pt"
    assert run(main["search"], ["--supernet", str(sup), "--out", str(root / "search"), "--no-progress",
                                *TINY_SEARCH]) == 0  # fmt: skip
    sub = root / "search" / "subnet.yaml"
    assert run(main["export"], ["--supernet", str(sup), "--subnet", str(sub), "--out", str(root / "export")]) == 0
    return root


# One shared run per modality beside the image one: tests that need finished text results read these (and write
# into their own tmp_path); each is built the first time a test asks for it.
@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny BERT classifier (two token types) and its tokenizer: a save_pretrained folder."""
    pytest.importorskip("transformers")
    from helpers import make_bert

    return make_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny Llama and its tokenizer (with a chat template): a save_pretrained folder."""
    pytest.importorskip("transformers")
    from helpers import make_llama

    return make_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.fixture(scope="session")
def text_pipeline(tmp_path_factory, tiny_bert):
    """Sentence-pair classification on the tiny BERT (the label says which sentence holds a word) through train,
    search and export: ``root`` with supernet/, search/, export/, and ``rows`` (train / val / test)."""
    pytest.importorskip("datasets")
    from helpers import run_pipeline, text_train_args, which_sentence_rows, write_csv

    root = tmp_path_factory.mktemp("text-pipeline")
    rows = {s: which_sentence_rows(n, i) for i, (s, n) in enumerate([("train", 32), ("val", 16), ("test", 16)])}
    files = {s: write_csv(root / f"{s}.csv", r) for s, r in rows.items()}
    run_pipeline(root, text_train_args(tiny_bert, files, root / "supernet", "--text-column", "s1", "s2"))
    return types.SimpleNamespace(root=root, rows=rows, files=files, model=tiny_bert)


@pytest.fixture(scope="session")
def lm_pipeline(tmp_path_factory, tiny_llama):
    """Alpaca rows on the tiny Llama through train, search and export (``root``, ``files``)."""
    pytest.importorskip("datasets")
    from helpers import alpaca_files, run_pipeline, text_train_args

    root = tmp_path_factory.mktemp("lm-pipeline")
    files = alpaca_files(root)
    run_pipeline(root, text_train_args(tiny_llama, files, root / "supernet", dataset="instructions",
                                       max_seq_length=96))  # fmt: skip
    return types.SimpleNamespace(root=root, files=files, model=tiny_llama)
