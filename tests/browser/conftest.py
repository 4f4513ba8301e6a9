"""Browser tests: print the measured figures (time to first frame, publisher bitrate) at the end of the run."""

from __future__ import annotations

import pytest

FIGURES_KEY = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES_KEY] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES_KEY, [])
    if lines:
        terminalreporter.section("webcall browser figures")
        for line in lines:
            terminalreporter.write_line(line)
