"""What to do when a test's dependency (a browser, the compiled fan-out core) is missing: FAIL, loudly.

A skipped test looks green in a summary line, so a machine without Chromium or without `make core` would pass
`make test` having tested neither. Skipping needs an explicit opt-out: WEBCALL_ALLOW_SKIP=1.
"""

from __future__ import annotations

import os

import pytest

ALLOW_SKIP = "WEBCALL_ALLOW_SKIP"


def skips_allowed() -> bool:
    return os.environ.get(ALLOW_SKIP, "") == "1"


def missing_dependency(message: str, module_level: bool = False) -> None:
    """Fail (or, with WEBCALL_ALLOW_SKIP=1, skip) because `message` says what is missing."""
    if skips_allowed():
        pytest.skip(message, allow_module_level=module_level)
    pytest.fail(f"{message} — install it (make test does), or set {ALLOW_SKIP}=1 to skip these tests",
                pytrace=False)
