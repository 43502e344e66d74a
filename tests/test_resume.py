"""Resume and signals in one place: a stopped, interrupted or killed run continues to the very tensors (and log) an
uninterrupted run ends with; a search resumes to the same state; signals are handled the way users expect."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
from helpers import SMALL_SEARCH, TINY_SEARCH, TINY_VIT, cli, image_folder, same_training, search_state, start, wait_for

from glora.app import read_checkpoint
from glora.app.cli import run
from glora.app.commands.search import main as search_main
from glora.app.commands.train import main as train_main
from glora.app.outputs import lock_path

pytestmark = pytest.mark.slow  # trains and searches, in this process and in others

# The embedded default with drop-path on (its random draws must be restored too), 5 epochs.
DROP = ["--drop-path", "0.1", "--epochs", "5", "--no-progress"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("ref") / "supernet"
    assert run(train_main, [*DROP, "--out", str(out)]) == 0
    return out / "last.pt"


# ---------------------------------------------------------------------- training
def test_stop_after_then_resume_equals_an_uninterrupted_run(tmp_path, pipeline):
    assert run(train_main, ["--epochs", "3", "--out", str(tmp_path / "a"), "--stop-after", "2"]) == 0
    assert read_checkpoint(tmp_path / "a" / "last.pt")["epoch"] == 2
    assert run(train_main, ["--resume", "--out", str(tmp_path / "a")]) == 0
    same_training(tmp_path / "a" / "last.pt", pipeline / "supernet" / "last.pt")


@pytest.mark.parametrize(
    "sig, seed",
    [(signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGKILL, 1), (signal.SIGKILL, 2)],
    ids=["ctrl-c", "term", "kill", "kill-later"],
)
def test_interrupted_training_resumes_exactly(tmp_path, reference_run, sig, seed):
    """Stopped at a random step after the first save: Ctrl-C / SIGTERM save at the next step boundary (exit 130),
    SIGKILL leaves the last whole checkpoint; either way ``--resume`` ends equal to the uninterrupted run."""
    out, log = tmp_path / "supernet", tmp_path / "log.txt"
    proc = start(["train_supernet.py", *DROP, "--out", str(out)], log)
    wait_for(log, "epoch 1/5", proc)  # logged after the epoch's checkpoint is written
    time.sleep(random.Random(seed * 10 + int(sig)).uniform(0.0, 0.8))
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, log.read_text()[-2000:]
        assert "saved; continue with --resume" in log.read_text()
    assert read_checkpoint(out / "last.pt")["epoch"] >= 1  # the file is whole whatever the moment of the kill
    assert run(train_main, ["--resume", "--out", str(out)]) == 0
    same_training(out / "last.pt", reference_run)
    assert not list(out.glob(".*.tmp"))


def test_resume_is_exact_reading_files_with_workers_and_drop_path(tmp_path):
    """Uncached images through a DataLoader with workers: its seed must not come from the global RNG."""
    data = image_folder(tmp_path / "imgs", per_class=12)
    argv = [
        "--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--dataset", "folder",
        "--data-root", str(data), "--no-progress", "--epochs", "3", "--drop-path", "0.2", "--no-cache-images",
        "--workers", "1", "--batch-size", "4",
    ]  # fmt: skip
    assert run(train_main, [*argv, "--out", str(tmp_path / "full")]) == 0
    log = tmp_path / "log.txt"
    proc = start(["train_supernet.py", *argv, "--out", str(tmp_path / "cut")], log)
    wait_for(log, "epoch 1/3", proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()
    assert read_checkpoint(tmp_path / "cut/last.pt")["batch"] > 0  # stopped mid-epoch
    assert run(train_main, ["--resume", "--out", str(tmp_path / "cut")]) == 0
    same_training(tmp_path / "cut/last.pt", tmp_path / "full/last.pt")


def test_resume_refuses_changed_options(tmp_path, capsys):
    assert run(train_main, ["--epochs", "3", "--out", str(tmp_path / "a"), "--stop-after", "1"]) == 0
    code, err = cli("train", ["--resume", "--out", str(tmp_path / "a"), "--lr", "0.1"], capsys)
    assert code == 2 and "cannot change --lr when resuming" in err


def test_the_command_pressed_again_with_resume_continues_it(tmp_path, monkeypatch, tiny_bert):
    """Up-arrow, add --resume: the very command that started a run continues it, relative paths (to files, folders,
    a -c file naming more of them) and all, for training, the search and a retraining of the pick; --stop-after
    counts epochs in this run, and a resume without it runs to the end."""
    import shutil

    from helpers import TINY_SEARCH, sentiment_files

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert, "bert")
    Path("data").mkdir()
    sentiment_files(Path("data"))
    Path("cfg.yaml").write_text("test-file: data/test.jsonl\nvalidation-file: data/val.csv\n")
    train = ["--model", "bert", "--dataset", "text", "--train-file", "data/train.csv", "-c", "cfg.yaml",
             "--tokenizer", "bert", "--max-seq-length", "16", "--epochs", "3", "--batch-size", "8", "--no-progress",
             "--out", "r/supernet"]  # fmt: skip
    assert run(train_main, [*train, "--stop-after", "1"]) == 0
    assert run(train_main, [*train, "--stop-after", "1", "--resume"]) == 0
    assert read_checkpoint("r/supernet/last.pt")["epoch"] == 2  # one more epoch in this run
    assert run(train_main, [*train, "--resume"]) == 0  # --stop-after not given: to the end
    assert read_checkpoint("r/supernet/last.pt")["epoch"] == 3
    search = ["--supernet", "r/supernet/last.pt", "--out", "r/search", "--param-limit", "none", "--no-progress",
              *TINY_SEARCH[:-1]]  # fmt: skip
    assert run(search_main, [*search, "1"]) == 0
    assert run(search_main, [*search, "2", "--resume"]) == 0
    assert json.loads(Path("r/search/search_state.json").read_text())["generation"] == 2
    retrain = ["--init-from", "r/supernet/last.pt", "--subnet", "r/search/subnet.yaml", "--epochs", "2",
               "--no-progress", "--out", "r/retrain"]  # fmt: skip
    assert run(train_main, [*retrain, "--stop-after", "1"]) == 0
    assert run(train_main, [*retrain, "--resume"]) == 0
    assert read_checkpoint("r/retrain/last.pt")["epoch"] == 2


def test_a_resumed_run_still_refuses_another_file(tmp_path, monkeypatch, capsys):
    """Paths are compared as the files they name: another file under the same relative name is a change."""
    monkeypatch.chdir(tmp_path)
    data = image_folder(tmp_path / "imgs", per_class=4)
    argv = ["--model", "vit_tiny_patch16_224", "--no-pretrained", "--model-kwargs", TINY_VIT, "--dataset", "folder",
            "--data-root", "imgs", "--epochs", "2", "--stop-after", "1", "--no-progress", "--out", "sup"]  # fmt: skip
    assert run(train_main, argv) == 0
    assert run(train_main, [*argv, "--resume", "--data-root", str(data)]) == 0  # the same folder, written absolute
    image_folder(tmp_path / "other", per_class=4)
    code, err = cli("train", [*argv[:-2], "--data-root", "other", "--out", "sup", "--resume", "--epochs", "3"], capsys)
    assert code == 2 and "cannot change --data-root when resuming" in err


def test_a_stop_request_ends_a_sandwich_step_between_its_subnets(tmp_path, monkeypatch, reference_sandwich):
    """SIGTERM while a sandwich step trains its subnets: the step stops before its next subnet, nothing of it is
    applied (the checkpoint holds the steps before it), and the resumed run ends bit for bit where an uninterrupted
    one does."""
    import os

    import glora.app.trainer as trainer_module

    calls = {"n": 0}
    real = trainer_module.set_subnet

    def set_subnet(model, subnet):
        calls["n"] += 1
        if calls["n"] == 10:  # the second subnet of the third step (four subnets a step)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(model, subnet)

    monkeypatch.setattr(trainer_module, "set_subnet", set_subnet)
    out = tmp_path / "cut"
    assert run(train_main, [*SANDWICH, "--out", str(out)]) == 130
    ckpt = read_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 2, 2)
    monkeypatch.setattr(trainer_module, "set_subnet", real)
    assert run(train_main, ["--resume", "--out", str(out)]) == 0
    same_training(out / "last.pt", reference_sandwich)


SANDWICH = ["--sampling", "sandwich", "--sandwich-random", "2", "--epochs", "2", "--drop-path", "0.1", "--no-progress"]


@pytest.fixture(scope="module")
def reference_sandwich(tmp_path_factory):
    out = tmp_path_factory.mktemp("sandwich") / "supernet"
    assert run(train_main, [*SANDWICH, "--out", str(out)]) == 0
    return out / "last.pt"


def test_extending_the_epochs_on_resume_says_what_the_schedule_does(tmp_path, capsys):
    assert run(train_main, ["--epochs", "2", "--no-progress", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert run(train_main, ["--resume", "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "--epochs 2 -> 3: the learning-rate schedule is recomputed over 3 epochs" in err


# ---------------------------------------------------------------------- search
def test_search_is_reproducible_and_resumes_exactly(pipeline, tmp_path):
    supernet = pipeline / "supernet" / "last.pt"
    assert run(search_main, ["--supernet", str(supernet), "--out", str(tmp_path / "again"), *SMALL_SEARCH]) == 0
    full = search_state(pipeline / "search" / "search_state.json")
    assert search_state(tmp_path / "again" / "search_state.json") == full
    assert (tmp_path / "again" / "subnet.yaml").read_text() == (pipeline / "search" / "subnet.yaml").read_text()
    fewer = [*SMALL_SEARCH[:-1], "2"]  # the same search, stopped after 2 of its 3 generations
    assert run(search_main, ["--supernet", str(supernet), "--out", str(tmp_path / "r"), *fewer]) == 0
    assert run(search_main, ["--resume", "--out", str(tmp_path / "r"), "--generations", "3"]) == 0
    resumed = search_state(tmp_path / "r" / "search_state.json")
    for key in ("cache", "population", "rng", "log", "generation"):
        assert resumed[key] == full[key], key


def _six_generations(pipeline: Path) -> list[str]:
    return ["--supernet", str(pipeline / "supernet/last.pt"), *TINY_SEARCH[:-1], "6"]


@pytest.fixture(scope="module")
def search_reference(pipeline, tmp_path_factory) -> Path:
    """The uninterrupted six-generation search (in this process) every interrupted one must end equal to."""
    full = tmp_path_factory.mktemp("search") / "full"
    assert run(search_main, [*_six_generations(pipeline), "--out", str(full)]) == 0
    return full


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_search_resumes_exactly(pipeline, search_reference, tmp_path, sig, capsys):
    full = search_reference
    out, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = start(["search.py", *_six_generations(pipeline), "--out", str(out)], log)
    wait_for(log, "generation 3/6", proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), log.read_text()[-1000:]
    if sig == signal.SIGINT:  # what was kept and how to go on
        assert "holds the " in log.read_text() and "finished; continue with --resume" in log.read_text()
    done = json.loads((out / "search_state.json").read_text())["generation"]
    assert run(search_main, ["--resume", "--out", str(out)]) == 0
    shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("generation ")]
    assert shown[0].startswith(f"generation {done + 1}/6") and shown[-1].startswith("generation 6/6")
    a = json.loads((out / "search_state.json").read_text())
    b = json.loads((full / "search_state.json").read_text())
    for key in ("cache", "population", "rng", "generation"):
        assert a[key] == b[key], key
    assert (out / "subnet.yaml").read_text() == (full / "subnet.yaml").read_text()


# ---------------------------------------------------------------------- signals
def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("command", ["train", "search"])
def test_sigint_ignored_at_start_stays_ignored_and_sigterm_stops_cleanly(pipeline, tmp_path, command):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    if command == "train":
        args, marker = ["train_supernet.py", "--epochs", "200", "--out", str(out), "--no-progress"], "epoch 1/200"
    else:
        sup = str(pipeline / "supernet/last.pt")
        args = ["search.py", "--supernet", sup, "--out", str(out), *TINY_SEARCH[:-1], "5000", "--no-progress"]
        marker = "searching"
    proc = start(args, log, preexec_fn=_ignore_sigint)
    wait_for(log, marker, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "SIGINT was ignored at start, so it must stay ignored"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()[-2000:]
    assert not lock_path(out).exists()


def test_catch_signals_restores_the_handlers_and_a_second_signal_acts_at_once():
    """The one signal helper: handlers back after the block; with ``once`` the first signal restores them, so a
    second one reaches the previous handler (here: the default SIGINT handler, KeyboardInterrupt)."""
    import os

    from glora.app.cli import catch_signals

    seen: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with catch_signals(seen.append, once=True):
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is before  # restored by the first signal
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler
