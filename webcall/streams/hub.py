"""The hub: the stream registry by name, the live sessions, and the media plane they share.

`Hub` is the one object the front end creates; sessions reach the registry and the media port through
it. The registry is the only place that knows who publishes what (MediaMTX's path manager is the model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..media.dtls import DtlsIdentity
from ..media.port import MediaPort
from ..protocol.sdp import LocalEndpoint

if TYPE_CHECKING:
    from .session import Session
    from .stream import Publication

log = logging.getLogger("webcall.streams")


@dataclass
class StreamSettings:
    """What the streams and media layers need from the configuration."""

    candidates: tuple[tuple[str, int], ...]  # announced (ip, port), filled in once the port is bound
    video_codecs: tuple[str, ...] = ("VP8", "H264")
    connect_timeout: float = 10.0  # ICE + DTLS, and first media after that
    consent_timeout: float = 30.0
    max_bitrate: int = 2_500_000
    ping_interval: float = 5.0
    ping_probes: int = 10
    max_protocol_errors: int = 20
    server_version: str = "webcall-0.1"


class Hub:
    def __init__(self, settings: StreamSettings, port: MediaPort, identity: DtlsIdentity) -> None:
        self.settings = settings
        self.port = port
        self.identity = identity
        self.publications: dict[str, Publication] = {}
        self.sessions: set[Session] = set()

    # --- registry ---------------------------------------------------------------------------------

    def claim(self, publication: Publication) -> bool:
        """Reserve a stream name for a publisher; False if someone already holds it."""
        if publication.name in self.publications:
            return False
        self.publications[publication.name] = publication
        return True

    def find(self, name: str) -> Publication | None:
        return self.publications.get(name)

    def release(self, publication: Publication) -> None:
        if self.publications.get(publication.name) is publication:
            del self.publications[publication.name]

    # --- answers ----------------------------------------------------------------------------------

    def local_endpoint(self, ufrag: str, pwd: str) -> LocalEndpoint:
        return LocalEndpoint(ufrag, pwd, self.identity.fingerprint, self.settings.candidates)
