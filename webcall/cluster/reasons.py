"""Why the cluster refused a request, in no protocol's terms (wcs/status.py says it in the SDK's words)."""

from __future__ import annotations

import enum


class Refusal(enum.StrEnum):
    NAME_IN_USE = "name-in-use"  # another node publishes this name
    DIRECTORY_UNAVAILABLE = "directory-unavailable"  # Redis does not answer: no new claim or pull
    ORIGIN_UNREACHABLE = "origin-unreachable"  # the publishing node did not answer the pull request


class ClusterRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal
