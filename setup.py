"""Build hook: the ``-c`` presets live once, in ``configs/`` at the repository's top level; a built wheel carries a
copy of them as package data (``glora/app/presets/``), so presets work after a plain ``pip install``.
Metadata and dependencies are in setup.cfg."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPresets(build_py):
    """``build_py`` plus the presets, copied from ``configs/`` into the built package (an editable install reads
    ``configs/`` in place instead)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = Path(__file__).resolve().parent / "configs"
        target = Path(self.build_lib) / "glora" / "app" / "presets"
        for path in source.rglob("*.yaml"):
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildPyWithPresets})
