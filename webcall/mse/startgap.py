"""One MSE player's start: no hole in its video right after the first frame (sans-I/O, per player).

The SDK's MediaSource player starts at time 0 and only recovers from a stall once playback has moved: it seeks
ahead when `video.currentTime > 0` and more than 3 s are buffered (media-source-media-provider.js). A publisher
whose encoder sends its first keyframe and then nothing for a while — Chrome's H264 at start-up, 458 ms seen in the
browser tests — gives the player a video buffer of [0, 0] and then [0.458, …]: the element waits at 0 for good.

So what a player is sent is held from its start until its second video frame arrives (one frame interval; the SDK
buffers 2 s before it plays anyway). If that frame is no more than MAX_START_GAP_MS after the first, everything
goes on unchanged. If it is later, the first frame and its avcC are re-stamped to FIRST_FRAME_MS before it, and the
audio older than that is left out: both tracks then start together, with no hole. A player that gets no second
video frame within HOLD_LIMIT_MS of audio gets what was held, unchanged. Later holes are the SDK's to seek over (it
does once playing).
"""

from __future__ import annotations

from .flv import AUDIO, VIDEO, is_media, record, records

MAX_START_GAP_MS = 200  # the most the second video frame may come after the first without a re-stamp
FIRST_FRAME_MS = 33  # how long a re-stamped first frame lasts before the second
HOLD_LIMIT_MS = 3000  # audio held this long without a second video frame: everything goes on as it was


class StartGuard:
    """The start of one MSE player's records: held until its second video frame, then settled (module docstring)."""

    def __init__(self) -> None:
        self.done = False  # the start is settled: records pass as they are
        self.restamped_ms = 0  # how far the first frame was moved (0: not moved)
        self._held: list[tuple[int, int, bool, bytes]] = []  # (tag, timestamp, media, payload)
        self._first_video: int | None = None  # the first video frame's place in _held
        self._first_audio: int | None = None  # the first held audio frame's timestamp

    def rewrite(self, chunks: list[bytes]) -> list[bytes]:
        """What to send now of these chunks (and of those held before)."""
        if self.done:
            return chunks
        out: list[bytes] = []
        for chunk in chunks:
            if self.done:
                out.append(chunk)
                continue
            for tag, ts, payload in records(chunk):
                if self.done:
                    out.append(record(tag, ts, payload))
                else:
                    self._take(tag, ts, is_media(tag, payload), payload, out)
        return out

    def _take(self, tag: int, ts: int, media: bool, payload: bytes, out: list[bytes]) -> None:
        held = self._held
        first = self._first_video
        if tag == VIDEO and media and first is not None:
            gap = ts - held[first][1]
            self._release(out, ts - FIRST_FRAME_MS if gap > MAX_START_GAP_MS else None)
            out.append(record(tag, ts, payload))
            return
        if tag == VIDEO and media:
            self._first_video = len(held)
        held.append((tag, ts, media, payload))
        if tag == AUDIO and media:
            if self._first_audio is None:
                self._first_audio = ts
            elif ts - self._first_audio > HOLD_LIMIT_MS:
                self._release(out, None)

    def _release(self, out: list[bytes], start: int | None) -> None:
        """Send what is held; with `start`, the first frame (and the video headers before it) re-stamped to it and
        older audio left out."""
        first = self._first_video
        if start is not None and first is not None:
            self.restamped_ms = start - self._held[first][1]
        for index, (tag, ts, media, payload) in enumerate(self._held):
            if start is not None and ts < start:
                if tag == AUDIO and media:
                    continue  # older than the video's new start: it would open a hole of its own
                if tag == VIDEO and (not media or index == first):
                    ts = start
            out.append(record(tag, ts, payload))
        self._held = []
        self._first_video = None
        self.done = True
