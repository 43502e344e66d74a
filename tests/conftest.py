"""Shared test settings: property tests explore new examples locally but replay a fixed set on CI."""

from __future__ import annotations

import os

from hypothesis import settings

# Locally every run draws fresh examples (that is how they find bugs); on CI a fixed derandomized set runs, so a
# submission cannot fail on an example no one has seen (HYPOTHESIS_PROFILE=ci replays that set locally).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
