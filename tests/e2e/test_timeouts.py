"""Configured limits, end to end: --connect-timeout for a publisher that never sends media, --snapshot-timeout
for a stream with no keyframe, and the rate messages that audio-only streams must not get."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiortc import MediaStreamTrack

from tests.support import peers


class SilentTrack(MediaStreamTrack):
    """A track that never yields a frame: the sender is there (SDP, SSRC) but no RTP ever leaves."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self):
        await asyncio.Event().wait()


async def wait_connected_at(stream: peers._Stream, timeout: float = 10.0) -> float:
    await stream.wait_connected(timeout)
    return time.monotonic()


async def test_publisher_without_media_fails_by_rtp_activity(make_server) -> None:
    timeout = 1.5
    server = await make_server(connect_timeout=timeout)
    client = await server.client()
    publisher = await peers.publish(client, "mute", video_track=SilentTrack("video"),
                                    audio_track=SilentTrack("audio"))
    try:
        connected_at = await wait_connected_at(publisher, timeout)  # ICE + DTLS are fine...
        msg = await publisher.wait_status("FAILED", timeout=timeout + 3)
        elapsed = time.monotonic() - connected_at
        assert msg["data"][0]["info"] == "Failed by RTP activity", msg
        # ...the first media never comes: FAILED --connect-timeout after the connection, not before, not much after
        assert timeout - 0.3 <= elapsed <= timeout + 1.0, elapsed
        assert "PUBLISHING" not in publisher.statuses, publisher.statuses
    finally:
        await publisher.close()
        await client.close()
    await server.wait_empty()


async def test_snapshot_waits_snapshot_timeout_for_a_keyframe(make_server) -> None:
    timeout = 1.2  # not the default (3 s): a server that ignored the option would answer after 3 s
    server = await make_server(snapshot_timeout=timeout)
    client = await server.client()
    # Video negotiated but never sent; audio flowing, so the stream is PUBLISHING.
    publisher = await peers.publish(client, "blind", video_track=SilentTrack("video"))
    try:
        await publisher.wait_status("PUBLISHING", timeout=10)
        asker = await server.client()
        msid = str(uuid.uuid1())
        started = time.monotonic()
        await asker.send("snapshot", {"name": "blind", "mediaSessionId": msid})
        msg = await asker.wait_for("notifyStreamEvent", mediaSessionId=msid, timeout=timeout + 5)
        elapsed = time.monotonic() - started
        assert msg["data"][0]["type"] == "snapshotFailed", msg
        assert msg["data"][0]["payload"] == {"info": "No keyframe yet"}, msg
        assert timeout - 0.1 <= elapsed <= timeout + 0.8, elapsed
        await asker.close()
    finally:
        await publisher.close()
        await client.close()


async def test_audio_only_streams_get_no_rate_messages(make_server) -> None:
    server = await make_server(rate_interval=0.25)
    clients = [await server.client() for _ in range(4)]
    voice = await peers.publish(clients[0], "voice", video=False)
    video = await peers.publish(clients[1], "video", width=320, height=240)
    streams: list[peers._Stream] = [voice, video]
    try:
        await voice.wait_status("PUBLISHING", timeout=10)
        await video.wait_status("PUBLISHING", timeout=10)
        listener = await peers.play(clients[2], "voice", video=False)
        streams.append(listener)
        await listener.wait_status("PLAYING", timeout=10)
        watcher = await peers.play(clients[3], "video")
        streams.append(watcher)
        await watcher.wait_status("PLAYING", timeout=10)
        await listener.wait_audio_frames(10, timeout=10)
        # The control: the video stream's publisher and player get their rates, several times over...
        for _ in range(4):
            await clients[1].wait_for("inboundVideoRate", mediaSessionId=video.media_session_id, timeout=5)
            await clients[3].wait_for("outboundVideoRate", mediaSessionId=watcher.media_session_id, timeout=5)
        # ...the audio-only stream's, none.
        for client in clients[0], clients[2]:
            assert not client.find("inboundVideoRate") and not client.find("outboundVideoRate"), client.messages
    finally:
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.close()
