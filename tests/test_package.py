"""The package's shape: the core never depends on the application, public modules declare their API, loading is
safe everywhere, and a regular (non-editable) install runs the default pipeline from any folder."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, TINY_SEARCH, python

import glora

CORE = sorted(p for p in (ROOT / "glora").glob("*.py"))
SEARCH = sorted((ROOT / "search").glob("*.py"))
APP = sorted((ROOT / "glora" / "app").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_neither_the_application_nor_the_search(path):
    bad = {n for n in _imports(path) if n.startswith(("glora.app", "search", "argparse", "tqdm", "matplotlib", "deap"))}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", SEARCH, ids=lambda p: p.name)
def test_the_search_uses_only_the_public_core(path):
    bad = {n for n in _imports(path) if n.startswith("glora.app") or n.startswith("glora._")}
    assert not bad, f"search/{path.name} imports {bad}"


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_core_loads_no_application_code():
    code = "import glora, sys; print(sorted(m for m in sys.modules if m.startswith(('glora.app', 'search'))))"
    done = python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow  # a fresh interpreter
def test_the_commands_parse_their_options_without_importing_timm_or_transformers():
    """--help and an option error answer in the time torch takes to import: timm (with torchvision, about as long
    again) and transformers are imported where a model or a transform is built."""
    code = (
        "import sys\n"
        "from glora.app.commands import data, export, report, search, train\n"
        "for m in (train, search, export, report, data): m.build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision', 'transformers', 'datasets'}))"
    )
    done = python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_public_api_is_the_core():
    for name in glora.__all__:
        obj = getattr(glora, name)
        module = getattr(obj, "__module__", "glora") or "glora"
        assert not module.startswith("glora.app"), name
    assert not hasattr(glora, "load_supernet") and not hasattr(glora, "BackboneSpec")


@pytest.mark.parametrize("path", [*CORE, *SEARCH, *APP], ids=lambda p: str(p.relative_to(ROOT)))
def test_public_modules_declare_all(path):
    if path.name.startswith("_") and path.name != "__init__.py":
        return
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    mod = importlib.import_module(module)
    if path.name == "__init__.py" and not any(isinstance(n, ast.ImportFrom) for n in ast.parse(path.read_text()).body):
        return  # a package without re-exports
    assert hasattr(mod, "__all__"), module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ names {name!r}, which does not exist"


def test_every_torch_load_is_weights_only():
    sources = [*CORE, *SEARCH, *APP, *ROOT.glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    for path in sources:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{lineno}"
            assert "yaml.load(" not in line and "pickle.load" not in line, f"{path}:{lineno}"


def test_the_scripts_are_thin_shims_of_the_console_commands():
    for script, module in [
        ("train_supernet.py", "glora.app.commands.train"),
        ("search.py", "glora.app.commands.search"),
        ("reparam.py", "glora.app.commands.export"),
        ("report.py", "glora.app.commands.report"),
    ]:
        tree = ast.parse((ROOT / script).read_text())
        assert {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} == {module}, script
        assert len((ROOT / script).read_text().splitlines()) < 15, script


@pytest.mark.slow
def test_a_regular_install_runs_the_default_pipeline_from_any_folder(tmp_path):
    """``pip install .`` (a wheel, not a link to the checkout) ships the embedded backbone and the three commands."""
    # Build from a clean copy: an in-tree build/ folder could carry stale modules into the wheel.
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs", "*.egg-info", "__pycache__", ".*cache")
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=ignore)
    wheels = tmp_path / "wheels"
    # Build with this environment's setuptools when it has one (no download); else pip fetches the build backend.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation]
    build = subprocess.run([*pip_wheel, "-w", str(wheels), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"glora/app/assets/digits-vit/config.json", "glora/app/assets/digits-vit/model.safetensors"} <= names
    configs = ROOT / "configs"
    presets = {f"glora/app/presets/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*.yaml")}
    assert presets and presets <= names  # every -c preset in configs/ ships, as package data
    for command in ("glora-train", "glora-search", "glora-export", "glora-report", "glora-data"):
        assert command in entry_points
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "elsewhere"  # no checkout here: the backbone must come from the installed package
    work.mkdir()
    env = os.environ | {"PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}

    def command(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(site / "bin" / name), *args], capture_output=True, text=True, cwd=work, env=env, timeout=600
        )

    where = subprocess.run(
        [sys.executable, "-c", "import glora; print(glora.__file__)"], capture_output=True, text=True, cwd=work, env=env
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    steps = [
        command("glora-train", "--epochs", "2", "--no-progress"),
        command("glora-search", *TINY_SEARCH, "--no-progress"),
        command("glora-export"),
    ]
    listed = command("glora-search", "--list-presets")  # the presets are found inside the installed package
    assert listed.returncode == 0 and "vtab/cifar" in listed.stdout and str(site) in listed.stdout, listed.stderr
    for done in steps:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (work / "runs/default/export/model.safetensors").is_file()
    assert "matches exactly" in steps[-1].stdout
