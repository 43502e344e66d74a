"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)  # the example writes subnet.yaml
    namespace: dict = {"__name__": "__readme__"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "subnet.yaml").exists()


def test_every_config_the_readme_names_is_a_shipped_preset(tmp_path, monkeypatch):
    """``-c configs/...`` in the README's commands and its preset list resolve after a plain install, from a folder
    that is not the checkout (there a file of that name would win)."""
    from glora.app.options import PRESETS, resolve_config

    monkeypatch.chdir(tmp_path)
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"(configs/[\w./-]+\.yaml)", text))
    assert len(named) > 10
    for name in sorted(named):
        if "<" in name or "*" in name:
            continue
        assert resolve_config(name).is_relative_to(PRESETS), name
