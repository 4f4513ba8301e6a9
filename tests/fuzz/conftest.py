"""Hypothesis profiles for the fuzz targets.

* ``ci`` (default, part of `make test`): 300 examples per target, derandomized (the same inputs every run),
  no example database, no deadline — a short, reproducible smoke run.
* ``fuzz`` (`make fuzz`, WEBCALL_FUZZ_PROFILE=fuzz): 100,000 examples per target, random seeds; the
  examples it finds are kept in .hypothesis/ so a failure replays first on the next run.

WEBCALL_FUZZ_EXAMPLES overrides the number of examples of either profile.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=300, derandomize=True, database=None, deadline=None,
                          suppress_health_check=_SUPPRESS, print_blob=True)
settings.register_profile("fuzz", max_examples=100_000, deadline=None, suppress_health_check=_SUPPRESS,
                          print_blob=True)

_profile = os.environ.get("WEBCALL_FUZZ_PROFILE", "ci")
if os.environ.get("WEBCALL_FUZZ_EXAMPLES"):
    settings.register_profile(_profile + "-n", settings.get_profile(_profile),
                              max_examples=int(os.environ["WEBCALL_FUZZ_EXAMPLES"]))
    _profile += "-n"
settings.load_profile(_profile)
