"""What every benchmark shares, performance or study: the machine it ran on and the one ``--json`` layout (what ran,
where, when, with which options, and its results)."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import timm
import torch

__all__ = ["add_json_arg", "write_json", "machine"]


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here (shared JSON layout)")


def _module(benchmark: str) -> str:
    """The module a benchmark runs as (``benchmarks.perf.train_step``): ``python -m``'s own name for it."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name.endswith(benchmark) else f"benchmarks.{benchmark}"


def write_json(path: str | Path | None, benchmark: str, args: argparse.Namespace, results: Any) -> None:
    """One layout for every benchmark: what ran, where, when, with which options, and its results."""
    if not path:
        return
    record = {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": shlex.join([Path(sys.executable).name, "-m", _module(benchmark), *sys.argv[1:]]),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1, default=str) + "\n")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} ({torch.get_num_threads()} threads){gpu}; torch {torch.__version__}, timm {timm.__version__}"
