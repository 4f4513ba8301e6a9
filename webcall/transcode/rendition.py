"""A rendition: a publication's video in the other WebRTC codec, read by WebRTC players like the publication.

A player whose offer has H264 only for a VP8 stream (or VP8 only for an H264 stream) cannot take the publisher's
packets. Instead of FAILED "No common codecs", it reads a rendition: a `Feed` (pipeline.py, output `rtp-H264` /
`rtp-VP8`) decodes the publication's video in its thread, encodes it in the other codec and packetizes it; the
packets go, on the event loop, into a `Producer` of our own (ring, keyframes, NACK answers) whose `TrackRouter`
serves the players exactly as a publisher's does (compiled fan-out core included). The audio is the publication's
own track, shared, not copied. A player's keyframe request makes the encoder produce one at once.

The same serves size profiles: a player whose playStream asks for a smaller `width`/`height` (and `bitrate`)
than the publication reads a rendition in the publisher's own codec at that size, one per (stream, profile).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..media.producer import Producer
from ..media.router import Router, TrackRouter
from ..protocol.sdp import Codec, Track
from .pipeline import Chunk, Feed

RENDITION_PAYLOAD_TYPE = 96
_FB = ("nack", "nack pli", "ccm fir")
RENDITION_CODECS: dict[str, Codec] = {
    "H264": Codec("H264", RENDITION_PAYLOAD_TYPE, 90000, None,
                  "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", _FB),
    "VP8": Codec("VP8", RENDITION_PAYLOAD_TYPE, 90000, None, "", _FB),
}


class Rendition:
    def __init__(self, source: Router, codec: str, on_failed: Callable[[str], None], label: str = "",
                 core: Any = None, batch: Any = None, fanout_cost: Any = None,
                 profile: tuple[int, int, int] | None = None) -> None:
        original = source.tracks["video"]
        track = Track(mid="rendition", kind="video", codec=RENDITION_CODECS[codec], extensions={})
        self.producer = Producer(track, send_nack=lambda producer, seqs: None,
                                 send_keyframe_request=lambda producer: self.feed.request_keyframe(),
                                 on_keyframe=lambda producer, width, height: None)
        self.video = TrackRouter(self.producer, core=core, batch=batch, fanout_cost=fanout_cost)
        tracks = {"video": self.video}
        if "audio" in source.tracks:
            tracks["audio"] = source.tracks["audio"]  # shared with the publication: never closed here
        self.router = Router(tracks)
        self.codec = codec
        self.feed = Feed({"video": original}, f"rtp-{codec}", asyncio.get_running_loop(), self._packets, on_failed,
                         label)
        self.feed.payload_type = RENDITION_PAYLOAD_TYPE
        self.feed.profile = profile  # a smaller size (and bitrate) a player asked for, or None
        self.transcoding_video = True
        self.closed = False

    def start(self) -> None:
        self.feed.start()

    def _packets(self, chunks: list[Chunk]) -> None:
        if self.closed:
            return
        now = time.monotonic()
        receive = self.producer.receive
        for _, packet in chunks:
            receive(packet, now)

    def stats(self) -> dict[str, Any]:
        return self.feed.stats()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.close()
            self.video.close()


def start_local_rendition(port: Any) -> Callable[..., Rendition]:
    """The rendition verb of a single-process server: in a thread of this process, served by its port's core."""

    def start(source: Router, codec: str, on_failed: Callable[[str], None], label: str,
              profile: tuple[int, int, int] | None = None) -> Rendition:
        rendition = Rendition(source, codec, on_failed, label, core=getattr(port, "core", None),
                              batch=getattr(port, "batch", None), fanout_cost=getattr(port, "fanout_cost", None),
                              profile=profile)
        rendition.start()
        return rendition

    return start
