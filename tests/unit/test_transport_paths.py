"""Which path a connected transport sends on when the client nominates another (media/transport.py): from TCP to
UDP it moves (a browser may finish ICE and DTLS on the TCP pair that answered first, then nominate UDP), from UDP to
TCP it does not (its players may be targets of the compiled core); consent counts only checks on the path we send
on. A real WebRtcTransport on a stand-in port that records what it is told."""

from __future__ import annotations

import pytest

from webcall.media.dtls import DtlsIdentity
from webcall.media.failures import Failure
from webcall.media.tcp import TcpLink
from webcall.media.transport import TransportState, WebRtcTransport

CONSENT = 30.0
UDP = ("127.0.0.1", 50000)


class Port:
    def __init__(self) -> None:
        self.bound: list[object] = []
        self.sock = None

    def register(self, transport: WebRtcTransport) -> None:
        pass

    def unregister(self, transport: WebRtcTransport) -> None:
        pass

    def bind_address(self, transport: WebRtcTransport, addr: object) -> None:
        self.bound.append(addr)


class Listener:
    def __init__(self) -> None:
        self.failed: list[Failure] = []

    def on_transport_failed(self, reason: Failure) -> None:
        self.failed.append(reason)

    def on_tick(self, now: float) -> None:
        pass


@pytest.fixture(scope="module")
def identity() -> DtlsIdentity:
    return DtlsIdentity()


def connected_on(first: object, identity: DtlsIdentity) -> tuple[WebRtcTransport, Listener]:
    listener = Listener()
    transport = WebRtcTransport(Port(), identity, remote_ufrag="abcd", remote_fingerprints=[], listener=listener,
                                connect_timeout=10.0, consent_timeout=CONSENT, now=0.0)
    transport.on_binding_request(first, False, 1.0)
    assert transport.addr is first
    transport.state = TransportState.CONNECTED  # (DTLS done on that path)
    return transport, listener


def test_connected_on_tcp_moves_to_the_nominated_udp_path_and_keeps_consent_there(identity) -> None:
    link = TcpLink(sink=None)
    transport, listener = connected_on(link, identity)
    transport.on_binding_request(UDP, True, 2.0)
    assert transport.addr == UDP and transport.link is None and transport.sockaddr is not None
    for now in range(10, 100, 10):  # the client's consent checks go to the pair it selected
        transport.on_binding_request(UDP, False, float(now))
        transport.tick(float(now))
    assert transport.state == TransportState.CONNECTED and not listener.failed


def test_connected_on_udp_stays_there_and_checks_on_tcp_do_not_keep_it(identity) -> None:
    transport, listener = connected_on(UDP, identity)
    sockaddr = transport.sockaddr
    link = TcpLink(sink=None)
    transport.on_binding_request(link, True, 2.0)
    assert transport.addr == UDP and transport.link is None and transport.sockaddr is sockaddr
    for now in range(10, 50, 10):
        transport.on_binding_request(link, False, float(now))
        transport.tick(float(now))
    assert listener.failed == [Failure.CONSENT_EXPIRED]
