"""Hostile and broken input, while a real stream is live.

Every test runs one aiortc publisher and one aiortc player of LIVE on its own server.  Each hostile
action gets its own client (WebSocket or UDP socket).  After each one, the player must still decode new
frames with increasing counters, and the hostile client must get a useful error, or be cut off.
Nothing else may be affected.  At the end everything is closed, the server must be empty and
no "webcall" logger may have logged an ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioice import stun

from tests.support import hostile, peers
from tests.support.wcs_client import WcsClient, message_payload

LIVE = "live"
CONNECT_TIMEOUT = 2.0  # make_server(connect_timeout=...) for every test here: the ICE/DTLS cases wait for it
FRAMES = 8  # new intact frames the live player must decode after each hostile action


# --------------------------------------------------------------------------------------------
# The live stream


class Live:
    """The server, the live publisher/player and every hostile thing a test created."""

    def __init__(self, server, caplog: pytest.LogCaptureFixture) -> None:
        self.server = server
        self.caplog = caplog
        self.pub_client: WcsClient | None = None
        self.play_client: WcsClient | None = None
        self.publisher: peers.Publisher | None = None
        self.player: peers.Player | None = None
        self.publication = None
        self.clients: list[WcsClient] = []
        self.pcs: list[Any] = []
        self.probes: list[hostile.UdpProbe] = []
        self.finished = False

    async def start(self) -> None:
        self.pub_client = await self.server.client()
        self.publisher = await peers.publish(self.pub_client, LIVE)
        await self.publisher.wait_status("PUBLISHING", timeout=10)
        self.publication = self.server.hub.registry.find(LIVE)
        self.play_client = await self.server.client()
        self.player = await peers.play(self.play_client, LIVE)
        await self.player.wait_status("PLAYING", timeout=10)
        await self.player.wait_decoded_frames(FRAMES, timeout=10)

    # -- hostile resources, all closed at the end

    async def client(self, connect: bool = True) -> WcsClient:
        client = await (self.server.client() if connect else WcsClient.open(self.server.url))
        self.clients.append(client)
        return client

    async def offer(self, role: str, **kwargs: Any) -> str:
        pc, sdp = await hostile.raw_offer(role, **kwargs)
        self.pcs.append(pc)
        return sdp

    async def probe(self) -> hostile.UdpProbe:
        probe = await hostile.UdpProbe.open()
        self.probes.append(probe)
        return probe

    @property
    def media_addr(self) -> tuple[str, int]:
        return self.server.port.sock.getsockname()[:2]

    # -- checks

    async def assert_flowing(self, what: str = "") -> None:
        """The live player decodes FRAMES new intact frames whose counters keep increasing."""
        player = self.player
        since = len(player.frames)
        before = [f.counter for f in player.frames if f.counter is not None]
        try:
            await player.wait_decoded_frames(FRAMES, since=since, timeout=5)
        except TimeoutError as exc:
            raise AssertionError(f"live stream stalled after {what}: {exc}") from None
        new = [f.counter for f in player.frames[since:] if f.counter is not None]
        assert new, f"no readable counters after {what}"
        assert all(b > a for a, b in zip(new, new[1:])), f"counters not increasing after {what}: {new}"
        if before:
            assert new[0] > before[-1], f"counter went back after {what}: {before[-1]} -> {new[0]}"
        assert self.server.hub.registry.find(LIVE) is self.publication, f"live publication replaced after {what}"
        assert self.publisher.status == "PUBLISHING" and self.player.status == "PLAYING", (
            f"live stream status changed after {what}: {self.publisher.statuses} / {self.player.statuses}")

    def server_errors(self) -> list[logging.LogRecord]:
        records = self.caplog.get_records("setup") + self.caplog.get_records("call")
        return [r for r in records if r.name.startswith("webcall") and r.levelno >= logging.ERROR]

    def assert_no_server_errors(self) -> None:
        errors = self.server_errors()
        assert not errors, "server logged errors:\n" + "\n".join(
            f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in errors)
        assert self.server.port.errors == 0, f"media port contained {self.server.port.errors} exceptions"

    # -- teardown

    async def _close_hostile(self) -> None:
        for probe in self.probes:
            probe.close()
        for pc in self.pcs:
            await pc.close()
        for client in self.clients:
            await client.close()
        self.probes, self.pcs, self.clients = [], [], []

    async def finish(self) -> None:
        """Final checks: the stream is still live, a clean stop works, nothing is left, no errors."""
        self.finished = True
        await self.assert_flowing("all hostile actions")
        await self._close_hostile()
        await self.assert_flowing("closing the hostile clients")
        await self.player.stop()
        msg = await self.player.wait_status("STOPPED", timeout=5)
        assert msg["data"][0]["info"] == "Stopped by user"
        await self.publisher.stop()
        msg = await self.publisher.wait_status("UNPUBLISHED", timeout=5)
        assert msg["data"][0]["info"] == "Stopped by publisher stop"
        await self.pub_client.close()
        await self.play_client.close()
        await self.server.wait_empty()
        self.assert_no_server_errors()

    async def cleanup(self) -> None:
        """Best effort, after a failed test (no assertions)."""
        await self._close_hostile()
        for stream in (self.player, self.publisher):
            if stream is not None:
                await stream.close()
        for client in (self.pub_client, self.play_client):
            if client is not None:
                await client.close()


@pytest.fixture
async def live(make_server, caplog) -> AsyncIterator[Live]:
    caplog.set_level(logging.INFO, logger="webcall")
    server = await make_server(connect_timeout=CONNECT_TIMEOUT)
    live = Live(server, caplog)
    try:
        await live.start()
        yield live
    finally:
        if not live.finished:
            await live.cleanup()


# --------------------------------------------------------------------------------------------
# Signalling helpers


def _is_failure(msg: dict[str, Any], media_session_id: str | None) -> bool:
    """A `fail`, or a FAILED notifyStreamStatusEvent (for `media_session_id` when given)."""
    if msg.get("message") not in ("fail", "notifyStreamStatusEvent"):
        return False
    payload = message_payload(msg)
    if not isinstance(payload, dict) or payload.get("status") != "FAILED":
        return False
    if media_session_id is not None:
        return payload.get("mediaSessionId", payload.get("id")) == media_session_id
    return True


async def expect_failure(client: WcsClient, media_session_id: str | None = None,
                         timeout: float = 5.0) -> dict[str, Any]:
    """Wait for a failure; returns its data[0], plus "_message" = the message name."""
    msg = await client.wait_for(lambda m: _is_failure(m, media_session_id), timeout=timeout)
    payload = dict(message_payload(msg))
    payload["_message"] = msg["message"]
    info = payload.get("info")
    assert isinstance(info, str) and info.strip(), f"failure without a useful info: {msg}"
    return payload


async def assert_still_answered(client: WcsClient) -> None:
    """The socket is open and the session still works: a valid availableStream gets its answer."""
    assert not client.closed, "socket was closed"
    request_id = str(uuid.uuid1())
    await client.send("availableStream", {"mediaSessionId": request_id, "name": LIVE})
    msg = await client.wait_for("availableStream", mediaSessionId=request_id, timeout=5)
    assert msg["data"][0]["status"] == "true", msg


def ws_frames_failed(client: WcsClient) -> list[dict[str, Any]]:
    return [m for m in client.messages if _is_failure(m, None)]


# --------------------------------------------------------------------------------------------
# Signalling: broken envelopes


ENVELOPE_CASES: list[tuple[str, str | bytes, str]] = [
    # (case, frame, a piece of the expected info)
    ("malformed JSON", '{"message": "availableStream", "data": [', "not valid JSON"),
    ("NaN is not JSON", '{"message":"availableStream","data":[{"mediaSessionId":NaN,"name":"live"}]}',
     "not valid JSON"),
    ("nested 50000 deep", "[" * 50000 + "]" * 50000, "not valid JSON"),
    ("a JSON array", '[{"message":"availableStream","data":[{"mediaSessionId":"x","name":"live"}]}]',
     "JSON object"),
    ("a JSON string", '"availableStream"', "JSON object"),
    ("message is a number", '{"message": 5, "data": [{}]}', "'message'"),
    ("message is missing", '{"data": [{"name": "live"}]}', "'message'"),
    ("unknown message name", '{"message":"explodeServer","data":[{}]}', "Unknown message: explodeServer"),
    ("missing data", '{"message":"availableStream"}', "'data'"),
    ("data is an object", '{"message":"publishStream","data":{"name":"x","mediaSessionId":"y"}}', "'data'"),
    ("data is empty", '{"message":"playStream","data":[]}', "'data'"),
    ("data[0] not an object", '{"message":"availableStream","data":["live"]}', "data[0]"),
    ("data[0] null in publishStream", '{"message":"publishStream","data":[null]}', "data[0]"),
    ("binary frame, not UTF-8", b"\xff\xfe\x00\x81garbage", "UTF-8"),
]


async def test_broken_envelopes_get_fail_and_socket_stays_open(live: Live) -> None:
    for case, frame, expected in ENVELOPE_CASES:
        client = await live.client()
        if isinstance(frame, bytes):
            await client.send_bytes(frame)
        else:
            await client.send_raw(frame)
        failure = await expect_failure(client)
        assert failure["_message"] == "fail", (case, failure)
        assert expected in failure["info"], (case, failure)
        await assert_still_answered(client)
        await live.assert_flowing(case)

    # The same as a socket's first message, which the server first reads for a media socket's (spec §11): the
    # same answer, and the session goes on (a JSON nested too deep once escaped that reading: a 500, no answer).
    for case, frame, expected in ENVELOPE_CASES:
        client = await live.client(connect=False)
        if isinstance(frame, bytes):
            await client.send_bytes(frame)
        else:
            await client.send_raw(frame)
        failure = await expect_failure(client)
        assert failure["_message"] == "fail" and expected in failure["info"], ("first message: " + case, failure)
        await client.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"]})
        await client.wait_for("getUserData", timeout=5)
        await assert_still_answered(client)

    # Before `connection`, stream requests are refused ("Session not ready"), and the socket stays usable.
    client = await live.client(connect=False)
    msid = str(uuid.uuid1())
    await client.send("publishStream", hostile.stream_request("publish", "early", await live.offer("publish"),
                                                               media_session_id=msid))
    failure = await expect_failure(client, msid)
    assert failure["info"] == "Session not ready", failure
    assert "early" not in live.server.hub.registry.names()
    await client.send("connection", {"appKey": "defaultApp", "mediaProviders": ["WebRTC"]})
    await client.wait_for("getUserData", timeout=5)
    await assert_still_answered(client)
    await live.finish()


# --------------------------------------------------------------------------------------------
# Signalling: publishStream / playStream with bad fields


async def test_stream_requests_with_bad_fields(live: Live) -> None:
    sdp = await live.offer("publish")  # a real offer: only the bad field may be the reason to refuse
    play_sdp = await live.offer("play")
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        # (case, role, field overrides, a piece of the expected info)
        ("missing name", "publish", {"name": None}, "'name'"),
        ("name is a number", "publish", {"name": 5}, "'name'"),
        ("name is empty", "publish", {"name": ""}, "'name'"),
        ("name with control characters", "publish", {"name": "a\nb\x00"}, "'name'"),
        ("name of 10000 characters", "publish", {"name": "n" * 10000}, "'name'"),
        ("hasAudio is a string", "publish", {"name": "bad-types", "hasAudio": "yes"}, "'hasAudio'"),
        ("hasVideo is a number", "publish", {"name": "bad-types", "hasVideo": 1}, "'hasVideo'"),
        ("record is a string", "publish", {"name": "bad-types", "record": "no"}, "'record'"),
        ("sdp is a number", "publish", {"name": "bad-types", "sdp": 5}, "'sdp'"),
        ("sdp is missing", "publish", {"name": "bad-types", "sdp": None}, "'sdp'"),
        ("mediaProvider is a list", "publish", {"name": "bad-types", "mediaProvider": ["WebRTC"]},
         "'mediaProvider'"),
        ("play: name is a number", "play", {"name": 5}, "'name'"),
        ("play: hasVideo is a string", "play", {"name": LIVE, "hasVideo": "true"}, "'hasVideo'"),
    ]
    for case, role, fields, expected in cases:
        client = await live.client()
        msid = str(uuid.uuid1())
        request = hostile.stream_request(role, "unused", sdp if role == "publish" else play_sdp, msid)
        request.update(fields)
        if request["name"] is None:
            del request["name"]
        await client.send(f"{role}Stream", request)
        failure = await expect_failure(client, msid)
        assert failure["_message"] == "notifyStreamStatusEvent", (case, failure)
        assert failure["published"] is (role == "publish"), (case, failure)
        assert expected in failure["info"], (case, failure)
        assert not client.find("setRemoteSDP"), case
        assert set(live.server.hub.registry.names()) == {LIVE}, case
        await assert_still_answered(client)
        await live.assert_flowing(case)

    # No usable mediaSessionId: nothing to route a status to, so `fail` (or FAILED), "MediaSessionId is null".
    for case, msid in (("mediaSessionId null", None), ("mediaSessionId empty", ""), ("mediaSessionId missing", ...)):
        client = await live.client()
        request = hostile.stream_request("publish", "no-msid", sdp)
        if msid is ...:
            del request["mediaSessionId"]
        else:
            request["mediaSessionId"] = msid
        await client.send("publishStream", request)
        failure = await expect_failure(client)
        assert failure["info"] == "MediaSessionId is null", (case, failure)
        assert "no-msid" not in live.server.hub.registry.names()
        await assert_still_answered(client)
        await live.assert_flowing(case)

    client = await live.client()
    await client.send("publishStream", hostile.stream_request("publish", "typed-msid", sdp, media_session_id=42))
    failure = await expect_failure(client)
    assert "mediaSessionId" in failure["info"], failure
    await assert_still_answered(client)
    await live.finish()


# --------------------------------------------------------------------------------------------
# Signalling: message size


async def test_oversized_message_closes_only_that_socket(live: Live) -> None:
    limit = live.server.server.config.max_message_size
    assert limit == 256 * 1024
    observer = await live.client()

    # Just under the limit is accepted (an ignored pushLogs), and the session goes on.
    client = await live.client()
    await client.send("pushLogs", {"logs": "x" * (limit - 1024)})
    await assert_still_answered(client)
    assert not ws_frames_failed(client)

    hostile_client = await live.client()
    sessions_before = len(live.server.hub.sessions)
    await hostile_client.send("pushLogs", {"logs": "y" * (limit + 44 * 1024)})  # ~300 KiB
    code = await hostile_client.wait_closed(timeout=5)
    assert code == 1009, f"expected close 1009 (message too big), got {code}"  # RFC 6455 §7.4.1
    deadline = time.monotonic() + 3
    while len(live.server.hub.sessions) != sessions_before - 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(live.server.hub.sessions) == sessions_before - 1, "oversized session not dropped"

    await assert_still_answered(client)
    await assert_still_answered(observer)
    await live.assert_flowing("an oversized message")
    await live.finish()


async def test_a_bug_in_one_sessions_handler_ends_that_session_alone_and_is_logged(live: Live) -> None:
    """A handler that raises (a bug of ours, planted here on one session) must not escape to aiohttp, whose log
    would hide it from every test's error check: the session ends, the traceback is in webcall's log."""
    observer = await live.client()
    before = set(live.server.hub.sessions)
    client = await live.client()
    (victim,) = set(live.server.hub.sessions) - before

    def planted(message: Any) -> None:
        raise RuntimeError("planted bug")

    victim._on_AvailableStream = planted
    await client.send("availableStream", {"mediaSessionId": str(uuid.uuid1()), "name": LIVE})
    await client.wait_closed(timeout=5)
    assert victim.closed and victim not in live.server.hub.sessions
    logged = [r for r in live.server_errors() if r.name == "webcall.server" and "session failed" in r.getMessage()]
    assert len(logged) == 1 and "planted bug" in (logged[0].exc_text or ""), live.server_errors()
    live.caplog.clear()  # the one error this test made on purpose
    await assert_still_answered(observer)
    await live.assert_flowing("a session whose handler raised")
    await live.finish()


async def test_a_bug_in_an_http_handler_is_logged_by_webcall(live: Live) -> None:
    """The same for the HTTP side (WHIP, WHEP, /streams, records): the request gets 500, the traceback is in
    webcall's log, the live stream goes on."""
    hub = live.server.hub

    def planted() -> list:
        raise RuntimeError("planted bug")

    hub.streams = planted  # what /streams lists from
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{live.server.server.http_port}/streams") as response:
                assert response.status == 500
    finally:
        del hub.streams
    logged = [r for r in live.server_errors() if r.name == "webcall.server" and "request failed" in r.getMessage()]
    assert len(logged) == 1 and "planted bug" in (logged[0].exc_text or ""), live.server_errors()
    live.caplog.clear()  # the one error this test made on purpose
    await live.assert_flowing("an HTTP handler that raised")
    await live.finish()


# --------------------------------------------------------------------------------------------
# Signalling: SDP


def _drop_lines(sdp: str, prefix: str) -> str:
    return "".join(line + "\r\n" for line in sdp.splitlines() if not line.startswith(prefix))


async def test_bad_sdp_fails_and_leaves_the_name_free(live: Live) -> None:
    good_video = await live.offer("publish", audio=False, video=True, video_codec="VP8")
    vp9_only = good_video.replace("VP8/90000", "VP9/90000")
    assert "VP8" not in vp9_only and "VP9/90000" in vp9_only
    cases = [
        ("not an SDP", "hello world", "Bad SDP"),
        ("v=0 and junk", "v=0\r\nhello", "Bad SDP"),
        ("m-lines but no ice-ufrag", _drop_lines(await live.offer("publish"), "a=ice-ufrag"), "Bad SDP"),
        ("m-lines but no fingerprint", _drop_lines(await live.offer("publish"), "a=fingerprint"), "Bad SDP"),
        ("truncated offer", (await live.offer("publish"))[:200], "Bad SDP"),
        ("m-line with a junk port", (await live.offer("publish")).replace("m=audio 9", "m=audio x", 1), "Bad SDP"),
        ("video with only VP9", vp9_only, "No common codecs"),
    ]
    # The same name every time: had a failed attempt kept it, the next would get "already in use".
    for case, sdp, expected in cases:
        client = await live.client()
        msid = str(uuid.uuid1())
        await client.send("publishStream", hostile.stream_request("publish", "badsdp", sdp, msid))
        failure = await expect_failure(client, msid)
        assert failure["_message"] == "notifyStreamStatusEvent", (case, failure)
        if expected == "No common codecs":
            assert failure["info"] == expected, (case, failure)
        else:
            assert failure["info"].startswith(expected), (case, failure)
        assert not client.find("setRemoteSDP"), case
        assert "badsdp" not in live.server.hub.registry.names(), case
        await assert_still_answered(client)
        await live.assert_flowing(case)
    assert len(live.server.port.transports) == 2  # only the live publisher's and player's

    # A player whose offer cannot carry the live stream: "No common codecs", the live stream untouched.
    client = await live.client()
    msid = str(uuid.uuid1())
    play_vp9 = (await live.offer("play", audio=False, video_codec="VP8")).replace("VP8/90000", "VP9/90000")
    await client.send("playStream", hostile.stream_request("play", LIVE, play_vp9, msid))
    failure = await expect_failure(client, msid)
    assert failure["info"] == "No common codecs", failure
    assert len(live.publication.players) == 1

    # And the name really is free: a real publisher gets it.
    client = await live.client()
    publisher = await peers.publish(client, "badsdp")
    live.pcs.append(publisher.pc)
    await publisher.wait_status("PUBLISHING", timeout=10)
    await publisher.stop()
    await publisher.wait_status("UNPUBLISHED", timeout=5)
    await live.finish()


# --------------------------------------------------------------------------------------------
# Signalling: names and ids that do not exist or are taken


async def test_duplicate_name_unknown_stream_and_foreign_ids(live: Live) -> None:
    # Publishing the live name from another session: refused, the original publication stays.
    client = await live.client()
    dup = await peers.publish(client, LIVE, raise_on_failure=False)
    assert dup.status == "FAILED" and dup.info == "Stream name is already in use", dup.statuses
    assert not client.find("setRemoteSDP")
    await assert_still_answered(client)
    await live.assert_flowing("a duplicate publish")

    # Twice the same mediaSessionId in one session: the second is refused, the first is not disturbed.
    msid = str(uuid.uuid1())
    sdp = await live.offer("publish")
    await client.send("publishStream", hostile.stream_request("publish", "twice", sdp, msid))
    await client.wait_for("setRemoteSDP", mediaSessionId=msid, timeout=5)
    await client.send("publishStream", hostile.stream_request("publish", "twice-2", sdp, msid))
    failure = await expect_failure(client, msid)
    assert failure["info"] == "MediaSessionId is already in use", failure
    assert "twice-2" not in live.server.hub.registry.names() and "twice" in live.server.hub.registry.names()

    # Playing a name nobody publishes.
    client = await live.client()
    player = await peers.play(client, "no-such-stream", raise_on_failure=False)
    assert player.status == "FAILED" and player.info == "Stream not found", player.statuses
    await assert_still_answered(client)

    # Stopping ids this session does not own: unknown ids, and the live streams' ids from another session.
    for case, message, msid in [
        ("unPublishStream unknown id", "unPublishStream", str(uuid.uuid1())),
        ("stopStream unknown id", "stopStream", str(uuid.uuid1())),
        ("unPublishStream of the live publisher", "unPublishStream", live.publisher.media_session_id),
        ("stopStream of the live player", "stopStream", live.player.media_session_id),
        ("stopStream of the live publisher", "stopStream", live.publisher.media_session_id),
        ("sendStreamEvent for the live publisher", "sendStreamEvent", live.publisher.media_session_id),
    ]:
        await client.send(message, {"mediaSessionId": msid, "name": LIVE, "published": True, "type": "data",
                                    "payload": {"hijack": True}, "status": "PUBLISHING"})
        failure = await expect_failure(client, msid)
        assert failure["_message"] == "fail" and failure["info"] == "Stream not found", (case, failure)
        await assert_still_answered(client)
        await live.assert_flowing(case)
    assert not live.play_client.find("notifyStreamEvent"), "a foreign session's event reached the live player"
    await live.finish()


# --------------------------------------------------------------------------------------------
# Media: clients that never connect


async def test_client_that_never_does_ice_fails_by_ice_timeout(live: Live) -> None:
    async def never_ice(role: str, name: str) -> tuple[float, dict[str, Any]]:
        client = await live.client()
        msid = str(uuid.uuid1())
        sdp = await live.offer(role)
        started = time.monotonic()
        await client.send(f"{role}Stream", hostile.stream_request(role, name, sdp, msid))
        await client.wait_for("setRemoteSDP", mediaSessionId=msid, timeout=5)  # never applied
        failure = await expect_failure(client, msid, timeout=CONNECT_TIMEOUT + 1.0)
        elapsed = time.monotonic() - started
        assert failure["_message"] == "notifyStreamStatusEvent" and failure["name"] == name, failure
        await assert_still_answered(client)
        return elapsed, failure

    (pub_t, pub_fail), (play_t, play_fail) = await asyncio.gather(
        never_ice("publish", "silent-publisher"), never_ice("play", LIVE))
    for elapsed, failure in ((pub_t, pub_fail), (play_t, play_fail)):
        assert failure["info"] == "Failed by ICE timeout", failure
        assert CONNECT_TIMEOUT - 0.3 <= elapsed <= CONNECT_TIMEOUT + 1.0, elapsed
    assert pub_fail["published"] is True and play_fail["published"] is False
    assert set(live.server.hub.registry.names()) == {LIVE}
    assert len(live.publication.players) == 1
    assert len(live.server.port.transports) == 2 and len(live.server.port.by_ufrag) == 2
    await live.assert_flowing("ICE timeouts")
    await live.finish()


async def test_client_that_does_ice_but_never_dtls_fails_by_dtls_error(live: Live) -> None:
    async def ice_only(role: str, name: str) -> tuple[float, dict[str, Any]]:
        client = await live.client()
        probe = await live.probe()
        msid = str(uuid.uuid1())
        sdp = await live.offer(role)
        started = time.monotonic()
        await client.send(f"{role}Stream", hostile.stream_request(role, name, sdp, msid))
        answer = (await client.wait_for("setRemoteSDP", mediaSessionId=msid, timeout=5))["data"][1]
        server_ufrag, server_pwd = hostile.sdp_attr(answer, "ice-ufrag"), hostile.sdp_attr(answer, "ice-pwd")
        client_ufrag = hostile.sdp_attr(sdp, "ice-ufrag")
        target = hostile.sdp_candidate(answer)
        assert target == live.media_addr

        # A correct connectivity check (RFC 8445 §7.2.2): USERNAME server:client, signed with the server's pwd.
        request = hostile.binding_request(f"{server_ufrag}:{client_ufrag}", server_pwd.encode())
        response = await probe.transact(request, target)
        assert response.message_class == stun.Class.RESPONSE, response
        assert response.attributes["XOR-MAPPED-ADDRESS"] == probe.address
        assert response.check_message_integrity(server_pwd.encode())
        assert live.server.port.by_addr.get(probe.address) is not None
        # ...and then silence: no DTLS ClientHello ever.
        failure = await expect_failure(client, msid, timeout=CONNECT_TIMEOUT + 1.0)
        elapsed = time.monotonic() - started
        assert failure["_message"] == "notifyStreamStatusEvent" and failure["name"] == name, failure
        assert probe.address not in live.server.port.by_addr
        await assert_still_answered(client)
        return elapsed, failure

    results = await asyncio.gather(ice_only("publish", "mute-publisher"), ice_only("play", LIVE))
    for elapsed, failure in results:
        assert failure["info"] == "Failed by DTLS error", failure
        assert CONNECT_TIMEOUT - 0.3 <= elapsed <= CONNECT_TIMEOUT + 1.0, elapsed
    assert set(live.server.hub.registry.names()) == {LIVE}
    assert len(live.publication.players) == 1
    assert len(live.server.port.transports) == 2 and len(live.server.port.by_addr) == 2
    await live.assert_flowing("DTLS timeouts")
    await live.finish()


# --------------------------------------------------------------------------------------------
# Media: garbage on the UDP port


async def test_udp_garbage_is_dropped_silently(live: Live) -> None:
    port = live.server.port
    probe = await live.probe()
    datagrams = hostile.garbage_datagrams()

    # Well-formed checks that must not be answered: unknown username, wrong password, wrong client
    # ufrag, no integrity at all.  The username of the live player's transport is real.
    server_ufrag = hostile.sdp_attr(live.player.answer_sdp, "ice-ufrag")
    server_pwd = hostile.sdp_attr(live.player.answer_sdp, "ice-pwd")
    client_ufrag = hostile.sdp_attr(live.player.offer_sdp, "ice-ufrag")
    checks = [
        ("unknown username", hostile.binding_request("nosuchufrag:abcd", b"x" * 24)),
        ("username without colon", hostile.binding_request(server_ufrag, server_pwd.encode())),
        ("live username, wrong MESSAGE-INTEGRITY",
         hostile.binding_request(f"{server_ufrag}:{client_ufrag}", b"wrong-password-000000000")),
        ("live username, wrong client ufrag",
         hostile.binding_request(f"{server_ufrag}:evil", server_pwd.encode())),
        ("live username, no MESSAGE-INTEGRITY", hostile.binding_request(f"{server_ufrag}:{client_ufrag}", None)),
        ("no USERNAME", hostile.binding_request(None, server_pwd.encode())),
    ]
    datagrams += [(case, bytes(message)) for case, message in checks]

    # One datagram at a time, each awaited until the port has counted it (dropped, or an exception it
    # contained): the server runs in this event loop, so this attributes every count to its datagram.
    dropped_before, errors_before = port.dropped, port.errors
    raised: list[str] = []
    uncounted: list[str] = []
    for case, data in datagrams:
        dropped, errors = port.dropped, port.errors
        probe.send(data, live.media_addr)
        deadline = time.monotonic() + 0.2
        while port.dropped == dropped and port.errors == errors and time.monotonic() < deadline:
            await asyncio.sleep(0)
        if port.errors != errors:
            raised.append(f"{case} ({data[:24].hex()})")
        elif port.dropped == dropped:
            uncounted.append(case)
    await asyncio.sleep(0.3)  # any (wrong) STUN response would be here by now

    problems = []
    if raised:
        problems.append(f"{len(raised)} datagrams raised inside the media port instead of being dropped: {raised}")
    if uncounted:
        problems.append(f"{len(uncounted)} datagrams not counted in port.dropped: {uncounted}")
    if probe.received:
        problems.append(f"the server answered garbage: {probe.received[:3]}")
    if errors := live.server_errors():
        problems.append(f"{len(errors)} ERROR records from webcall loggers, first: {errors[0].getMessage()}")
    assert not problems, "\n".join(problems)
    assert port.dropped - dropped_before == len(datagrams) and port.errors == errors_before
    assert probe.address not in port.by_addr
    assert len(port.transports) == 2
    live.assert_no_server_errors()
    await live.assert_flowing("UDP garbage")
    await live.finish()


# --------------------------------------------------------------------------------------------
# Signalling: a flood


async def test_flood_of_malformed_frames_closes_only_the_abuser(live: Live) -> None:
    limit = live.server.hub.settings.max_protocol_errors
    observer = await live.client()
    abuser = await live.client()
    sessions_before = len(live.server.hub.sessions)
    frames: list[str | bytes] = ["not json", "[]", '{"message":"nope","data":[{}]}', b"\xff\xff",
                                 '{"message":"publishStream","data":[1]}']
    sent = 0
    started = time.monotonic()
    for i in range(2000):
        if abuser.closed:
            break
        frame = frames[i % len(frames)]
        try:
            if isinstance(frame, bytes):
                await abuser.send_bytes(frame)
            else:
                await abuser.send_raw(frame)
        except (ConnectionError, RuntimeError):
            break  # the server already closed the socket
        sent += 1
    await abuser.wait_closed(timeout=5)
    took = time.monotonic() - started
    failures = ws_frames_failed(abuser)
    assert len(failures) == limit, f"{len(failures)} fail messages for {sent} bad frames, expected {limit}"
    assert len(live.server.hub.sessions) == sessions_before - 1, "the abusive session is still registered"
    assert took < 5, took
    await assert_still_answered(observer)
    await live.assert_flowing("a flood of bad frames")
    await live.finish()


async def test_udp_garbage_from_a_connected_peer_address(live: Live) -> None:
    """The same junk, but from the live player's own socket (a buggy client, or a spoofed source): the
    server must drop what it cannot use, not end the player's connection."""
    port = live.server.port
    sock, server_addr = hostile.peer_socket(live.player.pc)
    assert server_addr == live.media_addr
    transport = port.by_addr[sock.getsockname()[:2]]
    errors_before = port.errors
    raised: list[str] = []
    for case, data in hostile.garbage_datagrams(seed=11):
        errors = port.errors
        sock.sendto(data, server_addr)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if port.errors != errors:
            raised.append(case)
        if transport.state == "closed":
            break
    assert transport.state != "closed", (
        f"the live player's transport was closed by junk (last datagram: {case!r}); "
        f"statuses {live.player.statuses}, exceptions raised by: {raised}")
    assert port.errors == errors_before, f"datagrams raised inside the media port: {raised}"
    live.assert_no_server_errors()
    await live.assert_flowing("UDP garbage from the player's address")
    await live.finish()
