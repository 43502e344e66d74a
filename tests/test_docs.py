"""The README and docs/ hold: their Python examples run as written, every link reaches a file (and a heading), every
preset they name ships with the package, and every command line they show uses options the command has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
IDS = [p.relative_to(ROOT).as_posix() for p in PAGES]


def _code(text: str) -> str:
    """The text of every code block: fenced, and indented by four spaces after a blank line."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    indented = re.findall(r"(?:^|\n\n)((?:    .*\n?)+)", outside)
    return "\n".join(fenced + [re.sub(r"^    ", "", block, flags=re.M) for block in indented])


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[`*]", "", heading.strip().lstrip("#").strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in p.read_text(encoding="utf-8")],
                         ids=lambda p: p.name)  # fmt: skip
def test_python_examples_run_as_written(page, tmp_path, monkeypatch):
    """Every ``python`` block of a page runs, in order, in one namespace (the README's trains a supernet in a loop
    of its own, searches with its own metric and saves an adapter; the API tour writes subnet.yaml)."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    written = {"README.md": "my-adapter", "python-api.md": "subnet.yaml"}.get(page.name)
    assert written is None or (tmp_path / written).exists()


def test_the_readme_has_a_python_example():
    assert "```python" in README.read_text(encoding="utf-8")


def test_the_readme_is_a_front_page():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 220


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_link_reaches_a_file_and_its_heading(page):
    text = page.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S))
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        file = (page.parent / target).resolve() if target else page
        assert file.exists(), f"{page.name}: {link} -> {file} does not exist"
        if anchor:
            headings = [_slug(h) for h in re.findall(r"^#+ .*$", file.read_text(encoding="utf-8"), flags=re.M)]
            assert anchor in headings, f"{page.name}: {link}: no heading #{anchor} in {file.name}"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_preset_named_is_shipped(page, tmp_path, monkeypatch):
    """``-c NAME`` and ``configs/...yaml`` resolve after a plain install, from a folder that is not the checkout
    (there a file of that name would win)."""
    from glora.app.options import PRESETS, resolve_config

    monkeypatch.chdir(tmp_path)
    text = page.read_text(encoding="utf-8")
    named = set(re.findall(r"(configs/[\w./-]+\.yaml)", text)) | set(re.findall(r"-c ([\w-]+/[\w./-]+)", text))
    for name in sorted(named):
        if "<" in name or "*" in name or "{" in name or name.endswith("/"):
            continue
        assert resolve_config(name).is_relative_to(PRESETS), f"{page.name}: {name}"


_COMMANDS = {
    "train_supernet.py": "train", "glora-train": "train", "search.py": "search", "glora-search": "search",
    "reparam.py": "export", "glora-export": "export", "report.py": "report", "glora-report": "report",
}  # fmt: skip


def _flags(command: str) -> set[str]:
    import importlib

    built = importlib.import_module(f"glora.app.commands.{command}").build_parser()
    flags = {"--config", "-c", "--list-presets", "--debug", "--help"}
    for option in built.options.values():
        flags.add(option.flag)
        if option.is_switch:
            flags.add("--no-" + option.flag[2:])
    return flags


def _command_lines(text: str) -> list[tuple[str, list[str]]]:
    """(command, its words) for every line of a code block that runs one of the toolkit's commands."""
    code = re.sub(r"\\\n\s*", " ", _code(text))
    found = []
    for line in code.splitlines():
        for part in re.split(r"&&|;|\|", line.split("#")[0]):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            at = next((i for i, w in enumerate(words) if Path(w).name in _COMMANDS), None)
            if at is not None:
                found.append((_COMMANDS[Path(words[at]).name], words[at + 1 :]))
    return found


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_command_shown_uses_options_the_command_has(page):
    lines = _command_lines(page.read_text(encoding="utf-8"))
    for command, words in lines:
        known = _flags(command)
        for word in words:
            if word.startswith("--"):
                flag = word.split("=")[0]
                assert flag in known, f"{page.name}: {command} has no option {flag} ({' '.join(words)})"


def test_the_command_checks_see_the_commands():
    assert len(_command_lines(README.read_text(encoding="utf-8"))) >= 8
    assert ("train", ["--model", "x", "--no-progress"]) in _command_lines("    glora-train --model x --no-progress\n")
