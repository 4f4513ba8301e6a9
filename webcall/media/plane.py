"""The media plane as front ends see it: make publisher and player endpoints on this process's port.

One object per media port (one per worker process, once there are workers): it knows the port, the DTLS
identity and the media settings, so a front end asks for "a publisher for this offer" or "a player of this
router" and gets back an endpoint plus what its answer must announce (`local_endpoint`).
"""

from __future__ import annotations

from ..protocol.sdp import LocalEndpoint, Negotiation
from .dtls import DtlsIdentity
from .endpoints import EndpointEvents, MediaSettings, PlayerEndpoint, PublisherEndpoint, PublisherEvents
from .port import MediaPort
from .router import Router
from .transport import WebRtcTransport


class MediaPlane:
    def __init__(self, port: MediaPort, identity: DtlsIdentity, settings: MediaSettings,
                 candidates: tuple[tuple[str, int], ...],
                 tcp_candidates: tuple[tuple[str, int], ...] = ()) -> None:
        self.port = port
        self.identity = identity
        self.settings = settings
        self.candidates = candidates  # announced (ip, port) of this plane's UDP port
        self.tcp_candidates = tcp_candidates  # ... and of its ICE-TCP port (media/tcp.py), if it has one

    def publisher(self, neg: Negotiation, events: PublisherEvents, label: str,
                  ice: tuple[str, str] | None = None) -> PublisherEndpoint:
        return PublisherEndpoint(self.port, self.identity, neg, self.settings, events, label=label, ice=ice)

    def player(self, neg: Negotiation, source: Router, events: EndpointEvents, label: str,
               ice: tuple[str, str] | None = None,
               ssrcs: dict[str, tuple[int, int | None]] | None = None) -> PlayerEndpoint:
        return PlayerEndpoint(self.port, self.identity, neg, self.settings, source, events, label=label, ice=ice,
                              ssrcs=ssrcs)

    def take_in(self) -> None:
        """Bring the publishers' counters, rings and readers up to date with their ingest threads (ingest.py)."""
        self.port.take_in()

    def local_endpoint(self, transport: WebRtcTransport, tcp_only: bool = False) -> LocalEndpoint:
        """What an SDP answer announces for this transport: ICE credentials, fingerprint, candidates (only the
        TCP ones when the client asked for TCP — the SDK's `transport: "TCP"` — and there is a TCP port)."""
        udp = () if tcp_only and self.tcp_candidates else self.candidates
        return LocalEndpoint(transport.local_ufrag, transport.local_pwd, self.identity.fingerprint, udp,
                             self.tcp_candidates)
