"""One MSE player's timeline: start at once, then catch up to the live edge (sans-I/O, per player).

The SDK's MediaSource player (media-source-media-provider.js) appends nothing before its own queue spans more than
2 s of audio and of video (`doAppending`, `buffered() > 2`), then plays from the start of that queue at normal
speed: whatever the server sends, a new MSE player starts about 2 s behind the live edge and stays there. The SDK
only seeks when playback has stalled with more than 3 s buffered (to 1 s before the end), which a live stream
never does. So after the SDK has started (its queue spanned `START_SPAN_MS` of our timestamps), this player's
timestamps are pulled in: one audio frame in `DROP_EVERY` is left out and everything after it moves earlier by
that frame's duration (video-only: each frame's interval is shortened by the same share), so the SDK plays
`DROP_EVERY / (DROP_EVERY - 1)` times faster than real time until `CATCH_UP_MS` is made up, then at normal speed
about `KEEP_MS` behind. A player that starts with the past sent at once (an older GOP, streams/feeds.py, or a
new feed's backfill, transcode/pipeline.py: the SDK then starts at once) has more to make up: how far the media
sent in its first `SETTLE_MS` runs ahead of the time since its first record (the burst's span, and for a backfill
also the time the feed took to transcode it, during which live media piled up), less `KEEP_MS`. The shared feed
is untouched: only this player's copies of the records get new timestamps (a 9-byte header each).
"""

from __future__ import annotations

import struct

from .flv import AUDIO, VIDEO

_HEAD = struct.Struct("!BiI")

START_SPAN_MS = 2300  # our timestamps a player's queue spans before we start pulling in (the SDK waits for 2 s)
KEEP_MS = 600  # what the player keeps buffered once caught up: it ends that far behind what it has been sent
CATCH_UP_MS = START_SPAN_MS - KEEP_MS  # how far to pull in, when the player started from a GOP under 2.3 s
DROP_EVERY = 4  # while catching up, one audio frame in this many is left out (1.33x speed)
SETTLE_MS = 1500  # the first records' lead over the clock is measured for this long (a burst and what follows it)


class CatchUp:
    def __init__(self) -> None:
        self.first_ts: int | None = None  # the first media record this player got
        self.shift = 0.0  # ms taken off every timestamp from now on
        self.last_audio: int | None = None
        self.last_video: int | None = None
        self.audio_seen = False
        self.count = 0
        self.dropped = 0
        self.target = float(CATCH_UP_MS)
        self.first_at: float | None = None  # `now` (seconds) when the first media record was sent
        self.first_sent = 0  # its timestamp

    @property
    def done(self) -> bool:
        return self.shift >= self.target

    def rewrite(self, chunks: list[bytes], now: float) -> list[bytes]:
        """This player's copies of `chunks` (each one or more records): timestamps shifted, some audio left out.
        `now` (seconds, any monotonic clock): when they are sent."""
        if self.done:
            return [self._shifted(c) for c in chunks] if self.shift else chunks
        self._lead(chunks, now)
        out: list[bytes] = []
        for chunk in chunks:
            pos, parts = 0, []
            while pos + _HEAD.size <= len(chunk):
                tag, ts, size = _HEAD.unpack_from(chunk, pos)
                end = pos + _HEAD.size + size
                keep = self._keep(tag, ts, chunk[pos + _HEAD.size:pos + _HEAD.size + 2])
                if keep:
                    parts.append(_HEAD.pack(tag, ts - round(self.shift), size) + chunk[pos + _HEAD.size:end])
                pos = end
            if parts:
                out.append(b"".join(parts))
        return out

    def _lead(self, chunks: list[bytes], now: float) -> None:
        """While the start settles: media sent beyond the time since the first record is what the player, which
        starts from that first record, is behind by (less what it keeps): a join's burst counts its whole span."""
        times = _media_times(chunks)
        if not times:
            return
        if self.first_at is None:
            self.first_at, self.first_sent = now, min(times)
        elapsed_ms = (now - self.first_at) * 1000
        if elapsed_ms <= SETTLE_MS:
            self.target = max(self.target, max(times) - self.first_sent - elapsed_ms - KEEP_MS)

    def _keep(self, tag: int, ts: int, kind: bytes) -> bool:
        # `kind`: the payload's first two bytes; headers (avcC, AudioSpecificConfig) are passed on as they are
        media = (tag == AUDIO and kind[:1] == b"\x01") or (tag == VIDEO and kind[1:2] == b"\x01")
        if not media:
            return True
        if self.first_ts is None:
            self.first_ts = ts
        started = ts - self.first_ts >= START_SPAN_MS
        if tag == AUDIO:
            self.audio_seen = True
            previous, self.last_audio = self.last_audio, ts
            if started and previous is not None and not self.done:
                self.count += 1
                if self.count % DROP_EVERY == 0:
                    self.shift += min(ts - previous, 64)  # this frame's place is taken by the next (a gap: no leap)
                    self.dropped += 1
                    return False
            return True
        previous, self.last_video = self.last_video, ts
        if started and not self.audio_seen and previous is not None and not self.done:
            self.shift += (ts - previous) / DROP_EVERY
        return True

    def _shifted(self, chunk: bytes) -> bytes:
        pos, parts, shift = 0, [], round(self.shift)
        while pos + _HEAD.size <= len(chunk):
            tag, ts, size = _HEAD.unpack_from(chunk, pos)
            end = pos + _HEAD.size + size
            parts.append(_HEAD.pack(tag, ts - shift, size) + chunk[pos + _HEAD.size:end])
            pos = end
        return b"".join(parts)


def _media_times(chunks: list[bytes]) -> list[int]:
    """The timestamps of the media records (not the headers) in `chunks`."""
    times = []
    for chunk in chunks:
        pos = 0
        while pos + _HEAD.size <= len(chunk):
            tag, ts, size = _HEAD.unpack_from(chunk, pos)
            body = chunk[pos + _HEAD.size:pos + _HEAD.size + 2]
            if (tag == AUDIO and body[:1] == b"\x01") or (tag == VIDEO and body[1:2] == b"\x01"):
                times.append(ts)
            pos += _HEAD.size + size
    return times
