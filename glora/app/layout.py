"""Where each command writes: the files of a supernet, a search and an export folder, named once.

The commands write through these objects and ``glora-report`` reads through them, so a file name lives in one place.
A run folder holds the three side by side (``supernet/``, ``search/``, ``export/``), as the README's commands make
them; each may also be given on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

__all__ = ["SupernetFolder", "SearchFolder", "ExportFolder", "RunFolders", "run_folders"]


@dataclass(frozen=True)
class SupernetFolder:
    """``glora-train``'s output: the checkpoint, the per-epoch log and the resolved options."""

    root: Path
    CHECKPOINT: ClassVar[str] = "last.pt"
    LOG: ClassVar[str] = "log.jsonl"
    CONFIG: ClassVar[str] = "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.root / self.CHECKPOINT

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    def holds_run(self) -> bool:
        """Whether the folder holds a training run (its checkpoint or its log)."""
        return self.checkpoint.is_file() or self.log.is_file()

    def options(self) -> dict[str, Any]:
        """The run's resolved options, by their names as the code reads them (``lora_ranks``; the file says
        ``lora-ranks``); ``ValueError`` when the file is missing or unreadable."""
        return _read_options(self.config)


@dataclass(frozen=True)
class SearchFolder:
    """``glora-search``'s output: the pick, the log (one line per generation, then the final record), the Pareto
    front, the resumable state, the resolved options and the plots."""

    root: Path
    SUBNET: ClassVar[str] = "subnet.yaml"
    LOG: ClassVar[str] = "search_log.jsonl"
    PARETO: ClassVar[str] = "pareto.json"
    STATE: ClassVar[str] = "search_state.json"
    CONFIG: ClassVar[str] = "config.yaml"
    PLOTS: ClassVar[str] = "plots"

    @property
    def subnet(self) -> Path:
        return self.root / self.SUBNET

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def pareto(self) -> Path:
        return self.root / self.PARETO

    @property
    def state(self) -> Path:
        return self.root / self.STATE

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def plots(self) -> Path:
        return self.root / self.PLOTS

    def holds_run(self) -> bool:
        return self.log.is_file() or self.state.is_file()

    def options(self) -> dict[str, Any]:
        return _read_options(self.config)

    def read_state(self) -> dict[str, Any]:
        """The resumable state of an interrupted or finished search; an error that names the file otherwise."""
        if not self.state.is_file():
            raise FileNotFoundError(f"no search to resume: {str(self.state)!r} does not exist")
        state = _read_json(self.state, "search state")
        if "config" not in state:
            raise ValueError(f"{str(self.state)!r} is not a search state written by search.py")
        return state

    def final(self) -> dict[str, Any] | None:
        """The search's final record (the pick's metrics), or None while the search has not finished."""
        if not self.log.is_file():
            return None
        try:
            lines = self.log.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {str(self.log)!r}: {e}") from None
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(self.log)!r} is corrupt: {e}") from None
            return record if isinstance(record, dict) and record.get("final") else None
        return None


@dataclass(frozen=True)
class ExportFolder:
    """``glora-export``'s output: the model's own files (timm or transformers), the subnet it folds and the record of
    the checks it passed."""

    root: Path
    RECORD: ClassVar[str] = "glora_export.json"
    SUBNET: ClassVar[str] = "subnet.yaml"

    @property
    def record(self) -> Path:
        return self.root / self.RECORD

    @property
    def subnet(self) -> Path:
        return self.root / self.SUBNET

    def holds_run(self) -> bool:
        return self.record.is_file()

    def read_record(self) -> dict[str, Any]:
        """The export's record, or {} when there is none."""
        return _read_json(self.record, "export record") if self.record.is_file() else {}


@dataclass(frozen=True)
class RunFolders:
    """The folders of one run that exist (None where a stage has not been run or was not given)."""

    supernet: SupernetFolder | None
    search: SearchFolder | None
    export: ExportFolder | None


def run_folders(run: str | Path) -> RunFolders:
    """A run folder (``supernet/``, ``search/``, ``export/`` inside) or one of those folders itself, told apart by
    what it holds; ``ValueError`` when it is neither."""
    root = Path(run).expanduser()
    for kind in (SupernetFolder, SearchFolder, ExportFolder):
        folder = kind(root)
        if folder.holds_run():
            return RunFolders(
                folder if kind is SupernetFolder else None,
                folder if kind is SearchFolder else None,
                folder if kind is ExportFolder else None,
            )
    parts = [root / name if (root / name).is_dir() else None for name in ("supernet", "search", "export")]
    if not any(parts):
        raise ValueError(
            f"{str(root)!r} is not a run: expected supernet/, search/ or export/ inside it, or one of those folders"
        )
    return RunFolders(
        SupernetFolder(parts[0]) if parts[0] else None,
        SearchFolder(parts[1]) if parts[1] else None,
        ExportFolder(parts[2]) if parts[2] else None,
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` names the file (``what`` it is) and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {str(path)!r} is corrupt: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {str(path)!r} is not a JSON object")
    return data


def _read_options(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} is not a mapping of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
