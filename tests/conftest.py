"""Shared test settings (property tests explore new examples locally but replay a fixed set on CI) and the one
session-wide pipeline fixture."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Locally every run draws fresh examples (that is how they find bugs); on CI a fixed derandomized set runs, so a
# submission cannot fail on an example no one has seen (HYPOTHESIS_PROFILE=ci replays that set locally).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


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
