"""DTLS: the client's certificate must match the fingerprint its offer announced (RFC 5763 §5, RFC 8122).

Real aiortc clients whose offer, as sent, lies about their certificate: the handshake itself succeeds (aiortc
presents its real certificate), the server must then refuse the connection with the spec's status
"Failed by DTLS fingerprint error" — well before --connect-timeout, so it is the check and not a timeout.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiortc import RTCCertificate
from aiortc.rtcdtlstransport import certificate_digest
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support import peers
from tests.support.peers import rewrite_fingerprints
from tests.support.wcs_client import WcsClient

CONNECT_TIMEOUT = 8.0
FINGERPRINT_ERROR = "Failed by DTLS fingerprint error"


def digest(certificate: RTCCertificate, algorithm: str) -> str:
    """The RFC 8122 fingerprint of a certificate (hex pairs, upper case), with any hashlib algorithm."""
    der = certificate._cert.public_bytes(Encoding.DER)
    value = hashlib.new(algorithm.replace("-", ""), der).hexdigest().upper()
    return ":".join(value[i:i + 2] for i in range(0, len(value), 2))


def other_certificate_fingerprints() -> dict[str, str]:
    other = RTCCertificate.generateCertificate()
    return {alg: digest(other, alg) for alg in ("sha-256", "sha-384", "sha-512")}


async def start_stream(server, role: str, transform: Callable[[str], str], client: WcsClient):
    """Publish "fp" (role publish), or play the live "fp-live" (role play), with a rewritten offer."""
    started = time.monotonic()
    if role == "publish":
        stream = await peers.publish(client, "fp", offer_transform=transform, width=320, height=240)
    else:
        stream = await peers.play(client, "fp-live", offer_transform=transform)
    return stream, started


@pytest.fixture
async def live(make_server, caplog):
    """A server with one healthy publisher ("fp-live") for the players to target."""
    caplog.set_level(logging.INFO, logger="webcall")
    server = await make_server(connect_timeout=CONNECT_TIMEOUT)
    client = await server.client()
    publisher = await peers.publish(client, "fp-live", width=320, height=240)
    await publisher.wait_status("PUBLISHING", timeout=10)
    yield server
    await publisher.close()
    await client.close()


async def rest_streams(server, name: str) -> list[dict]:
    """The streams of that name the REST API knows (publisher and players)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(server.rest_url + "/rest-api/stream/find", json={"name": name}) as r:
            return await r.json() if r.status == 200 else []


def _dtls_failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dtls failed")]


@pytest.mark.parametrize("role", ["publish", "play"])
@pytest.mark.parametrize("case", ["all replaced", "sha-256 replaced, others right"])
async def test_certificate_not_matching_the_offer_fails_by_fingerprint_error(live, caplog, role, case) -> None:
    other = other_certificate_fingerprints()
    if case == "all replaced":
        transform = rewrite_fingerprints(lambda alg, value: [f"a=fingerprint:{alg} {other[alg]}"])
    else:  # one wrong fingerprint among right ones must not pass because the others match
        transform = rewrite_fingerprints(
            lambda alg, value: [f"a=fingerprint:{alg} {other[alg] if alg == 'sha-256' else value}"])
    client = await live.client()
    try:
        stream, started = await start_stream(live, role, transform, client)
        try:
            msg = await stream.wait_status("FAILED", timeout=CONNECT_TIMEOUT + 2)
            elapsed = time.monotonic() - started
            assert msg["data"][0]["info"] == FINGERPRINT_ERROR, msg
            # ICE + DTLS on loopback take well under a second: a failure at the connect timeout is not this check
            assert elapsed < CONNECT_TIMEOUT / 2, elapsed
            assert "PUBLISHING" not in stream.statuses and "PLAYING" not in stream.statuses, stream.statuses
            assert any("reason=fingerprint mismatch" in m for m in _dtls_failures(caplog)), _dtls_failures(caplog)
            name = "fp-live" if role == "play" else "fp"
            assert [s["mediaType"] for s in await rest_streams(live, name)] == (["publish"] if role == "play" else [])
        finally:
            await stream.close()
    finally:
        await client.close()


@pytest.mark.parametrize("algorithm", ["sha-1", "md5"])
async def test_only_an_unsupported_fingerprint_algorithm_is_refused(live, monkeypatch, algorithm) -> None:
    """sha-1 (the client's real digest!) and md5 are not accepted (RFC 8827 §6.5: WebRTC requires sha-256): the
    offer is refused at once with the reason, before any answer (not after ICE and DTLS with a generic status)."""
    digests: dict[str, str] = {}
    create = peers.create_peer_connection

    def create_and_note_certificate(*args, **kwargs):
        pc = create(*args, **kwargs)
        cert = pc._RTCPeerConnection__certificates[0]
        assert digest(cert, "sha-256") == certificate_digest(cert._cert, "sha-256")  # the helper is right
        digests["sha-1"] = digest(cert, "sha-1")
        digests["md5"] = "AB:" * 15 + "AB"
        return pc

    monkeypatch.setattr(peers, "create_peer_connection", create_and_note_certificate)
    transform = rewrite_fingerprints(
        lambda alg, value: [f"a=fingerprint:{algorithm} {digests[algorithm]}"] if alg == "sha-256" else [])
    client = await live.client()
    try:
        stream = await peers.publish(client, "fp", offer_transform=transform, raise_on_failure=False)
        assert f"a=fingerprint:{algorithm} " in stream.offer_sdp and "sha-256" not in stream.offer_sdp
        assert stream.status == "FAILED", stream.statuses
        assert stream.info == "Bad SDP: no usable DTLS fingerprint (sha-256, sha-384 or sha-512)", stream.info
        assert not client.find("setRemoteSDP")
        assert await rest_streams(live, "fp") == []
    finally:
        await client.close()


async def test_missing_fingerprint_is_refused_before_any_answer(live) -> None:
    client = await live.client()
    try:
        stream = await peers.publish(client, "fp", offer_transform=rewrite_fingerprints(lambda alg, value: []),
                                     raise_on_failure=False)
        assert stream.status == "FAILED", stream.statuses
        assert stream.info == "Bad SDP: missing DTLS fingerprint", stream.info
        assert not client.find("setRemoteSDP")
        assert await rest_streams(live, "fp") == []
    finally:
        await client.close()


async def test_a_matching_subset_of_fingerprints_connects(live) -> None:
    """The control for the cases above: the offer rewritten, but truthfully (sha-256 only), connects."""
    client = await live.client()
    try:
        stream = await peers.publish(
            client, "fp", width=320, height=240,
            offer_transform=rewrite_fingerprints(
                lambda alg, value: [f"a=fingerprint:{alg} {value}"] if alg == "sha-256" else []))
        assert "a=fingerprint:sha-256 " in stream.offer_sdp and "sha-384" not in stream.offer_sdp
        await stream.wait_status("PUBLISHING", timeout=CONNECT_TIMEOUT)
        await stream.stop()
    finally:
        await client.close()
