"""One MSE player's timeline: start at once, then catch up to the live edge (sans-I/O, per player).

The SDK's MediaSource player (media-source-media-provider.js) appends nothing before its own queue spans more than
2 s of audio and of video (`doAppending`, `buffered() > 2`), then plays from the start of that queue at normal
speed: whatever the server sends, a new MSE player starts at least 2 s behind the live edge and stays there. The SDK
only seeks when playback has stalled with more than 3 s buffered (to 1 s before the end), which a live stream
never does. A player that starts with the past sent at once (an older GOP, streams/feeds.py, or a new feed's
backfill, transcode/pipeline.py) starts further behind.

So this player's timestamps are pulled in: one audio frame in `DROP_EVERY` is left out and everything after it
moves earlier by that frame's duration (video-only: each frame's interval is shortened by the same share), and the
SDK plays `DROP_EVERY / (DROP_EVERY - 1)` times faster than real time, for as long as what it has been sent runs
more than `KEEP_MS` ahead of where it plays. Where it plays is known from what it was sent and when: it started when
the records sent spanned `SDK_START_MS` on every track, from the first one, and has played at normal speed since.
That estimate is checked on every record, so however the start came (in one burst, a backfill sent over a while as
it was transcoded, or at the live pace), the player ends `KEEP_MS` behind what it has been sent; a player that ran
out of media (the feed fell behind) waited where its media ended, so the estimate moves there, and what it lost
waiting is made up too. The shared feed is untouched: only this player's copies of the records get new timestamps
(a 9-byte header each).
"""

from __future__ import annotations


from .flv import AUDIO, VIDEO, is_media, record, records


SDK_START_MS = 2000  # the SDK plays once its queue spans more than this on every track
START_SPAN_MS = 2300  # nothing is left out of the records before this span (the SDK has surely started)
KEEP_MS = 300  # what the player keeps buffered once caught up: it plays that far behind what it has been sent
DROP_EVERY = 4  # while catching up, one audio frame in this many is left out (1.33x speed)


class CatchUp:
    def __init__(self) -> None:
        self.tracks: set[int] = set()  # those with a sequence header: the SDK waits for each of them
        self.first: dict[int, int] = {}  # per track: the first media record's timestamp
        self.last: dict[int, int] = {}  # per track: the latest one's, as the feed stamped it
        self.started_at: float | None = None  # `now` when the records sent first spanned SDK_START_MS everywhere
        self.shift = 0.0  # ms taken off every timestamp from now on
        self.count = 0  # audio frames since the start
        self.dropped = 0

    def ahead_ms(self, now: float) -> float | None:
        """How far what this player has been sent runs ahead of where it plays (None: it has not started)."""
        if self.started_at is None:
            return None
        played = (now - self.started_at) * 1000
        return min(self.last.values()) - self.shift - min(self.first.values()) - played

    def rewrite(self, chunks: list[bytes], now: float) -> list[bytes]:
        """This player's copies of `chunks` (each one or more records): timestamps shifted, some audio left out.
        `now` (seconds, any monotonic clock): when they are sent."""
        out: list[bytes] = []
        for chunk in chunks:
            parts = [record(tag, ts - round(self.shift), payload) for tag, ts, payload in records(chunk)
                     if self._keep(tag, ts, payload, now)]
            if parts:
                out.append(b"".join(parts))
        return out

    def _keep(self, tag: int, ts: int, payload: bytes, now: float) -> bool:
        if tag not in (AUDIO, VIDEO):
            return True
        if not is_media(tag, payload):  # headers (avcC, AudioSpecificConfig) are passed on as they are
            self.tracks.add(tag)
            return True
        first = self.first.setdefault(tag, ts)
        ahead = self.ahead_ms(now)  # (with what it had before this record)
        if ahead is not None and ahead < 0:  # it has played all it had, and waited there: it plays on from there
            self.started_at -= ahead / 1000
        previous, self.last[tag] = self.last.get(tag), ts
        if self.started_at is None:
            if self.tracks <= self.first.keys() and all(self.last[t] - self.first[t] > SDK_START_MS
                                                        for t in self.first):
                self.started_at = now
            return True
        if previous is None or ts - first < START_SPAN_MS:
            return True
        ahead = self.ahead_ms(now)
        catching_up = ahead is not None and ahead > KEEP_MS
        if tag == AUDIO:
            self.count += 1
            if catching_up and self.count % DROP_EVERY == 0:
                self.shift += min(ts - previous, 64)  # this frame's place is taken by the next (a gap: no leap)
                self.dropped += 1
                return False
        elif catching_up and AUDIO not in self.tracks:
            self.shift += (ts - previous) / DROP_EVERY
        return True
