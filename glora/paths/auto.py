"""``auto``: the manual path eagerly (a compiled model runs the static path whatever the setting)."""

from __future__ import annotations

from . import register_path
from .manual import ManualPath

__all__ = ["AutoPath"]


@register_path
class AutoPath(ManualPath):
    name = "auto"
    sharded_stand_in = "static"  # sharded, auto means the path torch.compile traces
