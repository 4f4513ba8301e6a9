"""End to end: an aiortc publisher and three aiortc players through a real webcall server on 127.0.0.1.

Real ICE, DTLS, SRTP and codecs; the players decode frames and check what they show.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support import peers
from tests.support.media import dominant_frequency

PLAYERS = 3


@pytest.fixture
async def server(server_shapes):
    """Every test here runs against one process and against two media workers (conftest.SHAPES)."""
    return server_shapes


async def wait_sent(track, frames: int, timeout: float = 10.0) -> None:
    """Until the publisher's track has produced `frames` frames (not a fixed sleep: a slow encoder is slower)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while track.frames_sent < frames:
        assert asyncio.get_running_loop().time() < deadline, track.frames_sent
        await asyncio.sleep(0.02)


def assert_frames_good(player: peers.Player, min_frames: int) -> None:
    frames = player.frames
    assert len(frames) >= min_frames
    counters = player.counters
    assert len(counters) >= 0.95 * len(frames), "frame counters unreadable"
    assert all(b > a for a, b in zip(counters, counters[1:])), "counter must strictly increase"
    assert player.intact_ratio() >= 0.95, "moving square missing"
    assert not any(f.is_black for f in frames), "black frames"


def assert_audio_tone(player: peers.Player) -> None:
    rms = np.array(player.audio_rms_values[-50:])
    assert rms.mean() > 0.01, f"audio is silent: {rms.mean()}"
    assert abs(dominant_frequency(player.recent_audio()) - 440) < 20


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_publish_to_three_players(server, codec: str) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "live", video_codec=codec)
    await publisher.wait_status("PUBLISHING", timeout=10)
    assert publisher.negotiated_video_codec == codec
    status = publisher.status_messages()[-1]["data"][0]
    assert status["videoCodec"] == codec and status["audioCodec"] == "opus"

    clients = [await server.client() for _ in range(PLAYERS)]
    players = [await peers.play(c, "live") for c in clients]
    for player in players:
        await player.wait_status("PLAYING", timeout=10)
    await asyncio.gather(*(p.wait_decoded_frames(90, timeout=20) for p in players))
    await asyncio.gather(*(p.wait_audio_frames(100, timeout=10) for p in players))

    for player, client in zip(players, clients):
        assert_frames_good(player, 90)
        assert_audio_tone(player)
        # (the player joined a running stream: its first frame within a second's worth of the publisher's frames)
        assert player.frames_published_before_first_frame(publisher.video_track) <= 30, player.time_to_first_frame
        # The message sequence of §4.2, routed by this player's mediaSessionId.
        names = [m["message"] for m in client.messages if m["message"] not in ("ping", "getUserData", "getVersion")]
        assert names[:4] == ["notifyAudioCodec", "setRemoteSDP", "notifyStreamStatusEvent", "notifyVideoFormat"]
        fmt = next(m for m in client.messages if m["message"] == "notifyVideoFormat")["data"][0]
        assert (fmt["streamerVideoWidth"], fmt["streamerVideoHeight"]) == (640, 480)
        assert fmt["mediaSessionId"] == player.media_session_id and fmt["status"] == "RESIZE"
        sdp = next(m for m in client.messages if m["message"] == "setRemoteSDP")["data"]
        assert sdp[0] == player.media_session_id and sdp[2] is True
        assert "a=sendonly" in sdp[1] and "a=ssrc:" in sdp[1] and "a=candidate:" in sdp[1]

    # Each player has its own SSRCs (read from the answers), and the server counts a player per player.
    answer_ssrcs = [
        frozenset(line.split()[0] for line in next(m for m in c.messages if m["message"] == "setRemoteSDP")
                  ["data"][1].split("a=ssrc:")[1:])
        for c in clients
    ]
    assert len(set(answer_ssrcs)) == PLAYERS and all(not (a & b) for a, b in zip(answer_ssrcs, answer_ssrcs[1:]))
    assert len(server.hub.registry.find("live").players) == PLAYERS

    # stopStream → STOPPED "Stopped by user" for that player only.
    await players[0].stop()
    msg = await players[0].wait_status("STOPPED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by user"
    since = len(players[1].frames)
    await players[1].wait_decoded_frames(15, since=since, timeout=5)

    # unPublishStream → UNPUBLISHED to the publisher, STOPPED "Stopped by publisher stop" to the others.
    await publisher.stop()
    msg = await publisher.wait_status("UNPUBLISHED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by publisher stop"
    for player in players[1:]:
        msg = await player.wait_status("STOPPED", timeout=5)
        assert msg["data"][0]["info"] == "Stopped by publisher stop"

    for player in players:
        await player.close()
    for client in [pub_client, *clients]:
        await client.close()
    await server.wait_empty()


async def test_player_gets_first_frame_fast_from_keyframe_cache(server) -> None:
    """A late joiner decodes its first frame quickly: the current GOP is replayed, a PLI is sent."""
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "cached")
    await publisher.wait_status("PUBLISHING", timeout=10)
    await wait_sent(publisher.video_track, 30)  # the GOP's keyframe is a second old
    ttffs, waits = [], []
    for _ in range(3):
        client = await server.client()
        player = await peers.play(client, "cached")
        await player.wait_decoded_frames(5, timeout=10)
        ttffs.append(player.time_to_first_frame)
        waits.append(player.frames_published_before_first_frame(publisher.video_track))
        await player.stop()
        await client.close()
    # Within half a second's worth of the publisher's own frames (its real rate on this machine, whatever it is).
    assert max(waits) <= 15, (waits, ttffs)
    await publisher.stop()
    await pub_client.close()
    await server.wait_empty()


async def test_publisher_socket_close_stops_players(server) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "dropme")
    await publisher.wait_status("PUBLISHING", timeout=10)
    client = await server.client()
    player = await peers.play(client, "dropme")
    await player.wait_frames(5, timeout=10)

    await pub_client.close()  # no unPublishStream: the socket just goes away
    msg = await player.wait_status("STOPPED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by session disconnect"
    await publisher.close()
    await player.close()
    await client.close()
    await server.wait_empty()


async def test_offer_without_candidates_connects_and_answer_is_ice_lite(server) -> None:
    client = await server.client()
    publisher = await peers.publish(client, "nocand")
    assert "a=candidate" not in publisher.offer_sdp and "end-of-candidates" not in publisher.offer_sdp
    answer = publisher.answer_sdp
    assert "a=ice-lite" in answer and "a=end-of-candidates" in answer and "a=setup:passive" in answer
    assert "a=group:BUNDLE" in answer and "a=rtcp-mux" in answer and "a=recvonly" in answer
    assert "transport-cc" not in answer
    await publisher.wait_status("PUBLISHING", timeout=10)
    await publisher.stop()
    await client.close()
    await server.wait_empty()


async def test_audio_only_player(server) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "ao")
    await publisher.wait_status("PUBLISHING", timeout=10)
    client = await server.client()
    player = await peers.play(client, "ao", video=False)
    await player.wait_status("PLAYING", timeout=10)
    await player.wait_audio_frames(50, timeout=10)
    assert_audio_tone(player)
    assert player.frames == []
    assert "m=video" not in player.answer_sdp or "m=video 0" in player.answer_sdp
    await player.stop()
    await publisher.stop()
    await client.close()
    await pub_client.close()
    await server.wait_empty()
