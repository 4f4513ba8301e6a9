"""aiortc publishers/players driven through WcsClient the way the official Web SDK does it.

SDK behaviour reproduced (spec §3-§5):
* RTCPeerConnection with no ICE servers and bundlePolicy max-compat;
* the offer is sent right away WITHOUT candidates (no trickle ICE in either direction);
* the server's `setRemoteSDP` (data = [mediaSessionId, sdp, true]) is applied as the answer;
* stop() sends unPublishStream / stopStream and closes the PeerConnection without waiting.

Loopback-only rule: no test traffic may leave 127.0.0.0/8.  Every PeerConnection created here
goes through `create_peer_connection()`, which installs the aioice patch (`use_loopback_only`)
and refuses server answers whose candidates are not loopback addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy

from .media import (
    COUNTER_MODULO,
    PatternVideoTrack,
    ToneAudioTrack,
    analyze_frame,
    audio_rms,
    audio_samples,
)
from .wcs_client import (
    DEFAULT_TIMEOUT,
    Message,
    WcsClient,
    message_payload,
    message_session_id,
    message_status,
)

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"FAILED", "STOPPED", "UNPUBLISHED"})
# pseudo statuses: delivered through the status handler but don't change stream.status()
PSEUDO_STATUSES = frozenset({"RESIZE", "SNAPSHOT_COMPLETE", "NOT_ENOUGH_BANDWIDTH", "STREAM_EVENT"})
STATUS_MESSAGES = frozenset({"notifyStreamStatusEvent", "notifyVideoFormat", "fail"})

# --------------------------------------------------------------------------------------------
# Loopback-only ICE

_LOOPBACK = ["127.0.0.1"]
_original_get_host_addresses = aioice.ice.get_host_addresses


def _loopback_host_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return list(_LOOPBACK)


def loopback_only_active() -> bool:
    return aioice.ice.get_host_addresses is _loopback_host_addresses


def install_loopback_only() -> None:
    """Make aioice gather host candidates on 127.0.0.1 only (process-wide, idempotent)."""
    aioice.ice.get_host_addresses = _loopback_host_addresses


@contextlib.contextmanager
def use_loopback_only() -> Iterator[None]:
    """Context manager form; restores the original gatherer on exit if it installed the patch.
    As an autouse fixture:  ``with use_loopback_only(): yield``."""
    was_active = loopback_only_active()
    install_loopback_only()
    try:
        yield
    finally:
        if not was_active:
            aioice.ice.get_host_addresses = _original_get_host_addresses


class LoopbackViolation(AssertionError):
    pass


_CANDIDATE_RE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ", re.IGNORECASE)


def sdp_candidate_addresses(sdp: str) -> list[str]:
    """Connection addresses of all a=candidate lines."""
    out = []
    for line in sdp.splitlines():
        m = _CANDIDATE_RE.match(line.strip())
        if m:
            out.append(m.group(1))
    return out


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # hostname / mDNS name
        return False


def assert_loopback_sdp(sdp: str) -> None:
    """Raise LoopbackViolation if any candidate (or c= line other than 0.0.0.0) is not loopback."""
    bad = [a for a in sdp_candidate_addresses(sdp) if not is_loopback(a)]
    for line in sdp.splitlines():
        if line.startswith("c=IN IP"):
            addr = line.split()[-1]
            if addr not in ("0.0.0.0", "::") and not is_loopback(addr):
                bad.append(addr)
    if bad:
        raise LoopbackViolation(f"non-loopback addresses in SDP: {sorted(set(bad))}")


def strip_candidates(sdp: str, reset_connection: bool = False) -> str:
    """Remove every a=candidate and a=end-of-candidates line (what a browser's offer looks like
    when sent before gathering).  With reset_connection, also rewrite c= to 0.0.0.0 and m-line
    ports to 9, like a pre-gathering Chrome offer.  Keeps CRLF line endings."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate") or line.startswith("a=end-of-candidates"):
            continue
        if reset_connection:
            if line.startswith("c=IN IP4 "):
                line = "c=IN IP4 0.0.0.0"
            elif line.startswith("c=IN IP6 "):
                line = "c=IN IP6 ::"
            elif line.startswith("m="):
                parts = line.split(" ")
                if len(parts) > 1:
                    parts[1] = "9"
                line = " ".join(parts)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


_FINGERPRINT_LINE = re.compile(r"^a=fingerprint:(\S+) (\S+)$")


def rewrite_fingerprints(replace: Callable[[str, str], list[str]]) -> Callable[[str], str]:
    """An offer transform: each a=fingerprint line becomes the lines `replace(algorithm, value)` returns."""

    def transform(sdp: str) -> str:
        out = []
        for line in sdp.splitlines():
            m = _FINGERPRINT_LINE.match(line)
            out += replace(m.group(1), m.group(2)) if m else [line]
        assert out != sdp.splitlines(), "the offer had no fingerprint to rewrite"
        return "\r\n".join(out) + "\r\n"

    return transform


def create_peer_connection(
    bundle_policy: RTCBundlePolicy = RTCBundlePolicy.MAX_COMPAT,
) -> RTCPeerConnection:
    """RTCPeerConnection like the SDK's: iceServers [] (aiortc would otherwise default to Google
    STUN), bundlePolicy max-compat; the loopback-only patch is installed first."""
    install_loopback_only()
    return RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=bundle_policy))


def codec_preferences(kind: str, codec: str) -> list[Any]:
    """Capabilities restricted to one codec name (e.g. "VP8", "H264", "opus"), plus RTX."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in caps if c.mimeType.lower() == f"{kind}/{codec.lower()}"]
    if not wanted:
        names = sorted({c.mimeType for c in caps})
        raise ValueError(f"{kind} codec {codec!r} not supported by aiortc (have {names})")
    rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    return wanted + rtx


# --------------------------------------------------------------------------------------------
# Streams


class StreamFailed(Exception):
    """The server ended the stream (FAILED/STOPPED/UNPUBLISHED) when something else was awaited."""

    def __init__(self, msg: Message, expected: str | None = None) -> None:
        payload = message_payload(msg)
        self.message = msg
        self.status = message_status(msg)
        self.info = payload.get("info") if isinstance(payload, dict) else None
        self.expected = expected
        super().__init__(f"stream {self.status} (info={self.info!r}), expected {expected}: {msg}")


class _Stream:
    """What Publisher and Player share: signalling state and PeerConnection lifecycle."""

    published: bool = False

    def __init__(self, client: WcsClient, name: str, pc: RTCPeerConnection, media_session_id: str) -> None:
        self.client = client
        self.name = name
        self.pc = pc
        self.media_session_id = media_session_id
        self.request: dict[str, Any] = {}  # publishStream/playStream payload as sent
        self.offer_sdp: str | None = None  # SDP as sent (no candidates)
        self.answer_sdp: str | None = None
        self.sent_at: float | None = None  # time.monotonic() when the request was sent
        self.answer_at: float | None = None  # time.monotonic() when setRemoteSDP was applied
        self.connection_states: list[str] = []
        # Applied to the offer before it is sent (tests that lie in their SDP); the pc keeps the real one.
        self.offer_transform: Callable[[str], str] | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            self.connection_states.append(pc.connectionState)
            if pc.connectionState == "connected":
                self._connected.set()

    # -- status bookkeeping (non-consuming views over client.messages)

    def _is_status_msg(self, msg: Message) -> bool:
        if msg.get("message") not in STATUS_MESSAGES or message_session_id(msg) != self.media_session_id:
            return False
        if msg.get("message") == "fail":
            payload = message_payload(msg)
            return isinstance(payload, dict) and payload.get("apiMethod") == "StreamStatusEvent"
        return True

    def status_messages(self) -> list[Message]:
        """All status messages the server sent for this stream, in order."""
        return [m for m in self.client.messages if self._is_status_msg(m)]

    @property
    def statuses(self) -> list[str | None]:
        return [message_status(m) for m in self.status_messages()]

    @property
    def status(self) -> str:
        """Latest real status from the server (like SDK stream.status()), "PENDING" before any."""
        for msg in reversed(self.status_messages()):
            st = message_status(msg)
            if st and st not in PSEUDO_STATUSES:
                return st
        return "PENDING" if self.sent_at is not None else "NEW"

    @property
    def info(self) -> str | None:
        for msg in reversed(self.status_messages()):
            payload = message_payload(msg)
            if isinstance(payload, dict) and payload.get("info") is not None:
                return payload["info"]
        return None

    async def wait_status(self, status: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """Wait for a status message with `status` for this stream (consumed, see
        WcsClient.wait_for).  Raises StreamFailed at once if a different terminal status arrives."""
        others = TERMINAL_STATUSES - {status}
        msg = await self.client.wait_for(
            lambda m: self._is_status_msg(m) and message_status(m) in others | {status},
            timeout=timeout,
        )
        if message_status(msg) != status:
            raise StreamFailed(msg, expected=status)
        return msg

    async def wait_connected(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait for the PeerConnection to reach "connected" (ICE + DTLS done)."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{type(self).__name__} {self.name}: not connected after {timeout}s "
                f"(states {self.connection_states})"
            ) from None

    # -- signalling helpers

    async def _exchange(self, request_name: str, timeout: float, raise_on_failure: bool) -> bool:
        """Send the request with a candidate-free offer, wait for setRemoteSDP (or a terminal
        status) and apply the answer.  Returns False if the server failed the stream."""
        offer = await self.pc.createOffer()  # pre-gathering: port 9, c=0.0.0.0, no candidates
        self.offer_sdp = strip_candidates(offer.sdp)
        if self.offer_transform is not None:
            self.offer_sdp = self.offer_transform(self.offer_sdp)
        self.request["sdp"] = self.offer_sdp
        self.sent_at = time.monotonic()
        await self.client.send(request_name, self.request)
        await self.pc.setLocalDescription(offer)  # gathers loopback candidates (never sent)

        msg = await self.client.wait_for(
            lambda m: (m.get("message") == "setRemoteSDP" and message_session_id(m) == self.media_session_id)
            or (self._is_status_msg(m) and message_status(m) in TERMINAL_STATUSES),
            timeout=timeout,
        )
        if msg.get("message") != "setRemoteSDP":
            await self.close()
            if raise_on_failure:
                raise StreamFailed(msg, expected="setRemoteSDP")
            return False
        sdp = msg["data"][1]
        assert_loopback_sdp(sdp)
        self.answer_sdp = sdp
        # the SDK applies it as an answer when in have-local-offer, otherwise as an offer
        kind = "answer" if self.pc.signalingState == "have-local-offer" else "offer"
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        self.answer_at = time.monotonic()
        return True

    async def _send_stop(self, message_name: str, has_video: bool, has_audio: bool) -> bool:
        # The SDK sends nothing for a stream that is NEW or already final.
        status = self.status
        if status == "NEW" or status in TERMINAL_STATUSES or self.client.closed:
            return False
        await self.client.send(
            message_name,
            {
                "mediaSessionId": self.media_session_id,
                "name": self.name,
                "published": self.published,
                "hasVideo": has_video,
                "hasAudio": has_audio,
                "status": status,
                "record": False,
            },
        )
        return True

    # -- teardown

    async def close(self) -> None:
        """Close the PeerConnection and stop background tasks; sends nothing.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.pc.close()
        for task in self._tasks:
            if not task.done():
                try:  # tracks end on pc.close(), so the consumers finish by themselves
                    await asyncio.wait_for(asyncio.shield(task), 2.0)
                except Exception:  # TimeoutError included
                    task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stop_local_tracks()

    def _stop_local_tracks(self) -> None:
        pass

    async def __aenter__(self) -> _Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Publisher(_Stream):
    published = True

    def __init__(
        self,
        client: WcsClient,
        name: str,
        pc: RTCPeerConnection,
        media_session_id: str,
        video_track: PatternVideoTrack | MediaStreamTrack | None,
        audio_track: ToneAudioTrack | MediaStreamTrack | None,
    ) -> None:
        super().__init__(client, name, pc, media_session_id)
        self.video_track = video_track
        self.audio_track = audio_track
        self.has_video = video_track is not None
        self.has_audio = audio_track is not None

    async def stop(self) -> None:
        """Like SDK stream.stop(): send unPublishStream (unless NEW/final) and close the pc."""
        await self._send_stop("unPublishStream", self.has_video, self.has_audio)
        await self.close()

    def _stop_local_tracks(self) -> None:
        for track in (self.video_track, self.audio_track):
            if track is not None:
                track.stop()

    @property
    def negotiated_video_codec(self) -> str | None:
        """Codec name of the first rtpmap in the answer's video section (None if no answer/video)."""
        return _answer_codec(self.answer_sdp, "video")

    @property
    def negotiated_audio_codec(self) -> str | None:
        return _answer_codec(self.answer_sdp, "audio")


class VideoSample(NamedTuple):
    """One decoded frame as seen by a Player."""

    t: float  # time.monotonic() at arrival (after decoding)
    counter: int | None  # frame counter read from the picture (None = unreadable)
    pattern_present: bool
    is_black: bool


class Player(_Stream):
    published = False

    def __init__(
        self, client: WcsClient, name: str, pc: RTCPeerConnection, media_session_id: str,
        has_video: bool, has_audio: bool, audio_window: int = 100,
    ) -> None:
        super().__init__(client, name, pc, media_session_id)
        self.has_video, self.has_audio = has_video, has_audio
        self.frames: list[VideoSample] = []
        self.frame_sizes: list[tuple[int, int]] = []  # (width, height) per entry of frames
        self.audio_rms_values: list[float] = []
        self.audio_times: list[float] = []
        self.first_frame_time: float | None = None
        self.first_audio_time: float | None = None
        self.last_video_frame: av.VideoFrame | None = None
        self.tracks: list[MediaStreamTrack] = []
        self._audio_recent: deque[np.ndarray] = deque(maxlen=audio_window)  # mono float chunks
        self._progress = asyncio.Condition()

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self.tracks.append(track)
            consumer = self._consume_video if track.kind == "video" else self._consume_audio
            self._tasks.append(asyncio.create_task(consumer(track), name=f"player-{track.kind}"))

    @property
    def play_sent_at(self) -> float | None:
        """time.monotonic() when playStream was sent."""
        return self.sent_at

    @property
    def time_to_first_frame(self) -> float | None:
        if self.first_frame_time is None or self.sent_at is None:
            return None
        return self.first_frame_time - self.sent_at

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = time.monotonic()
            assert isinstance(frame, av.VideoFrame)
            a = analyze_frame(frame)
            if self.first_frame_time is None:
                self.first_frame_time = now
            self.frames.append(VideoSample(now, a.counter, a.pattern_present, a.is_black))
            self.frame_sizes.append((a.width, a.height))
            self.last_video_frame = frame
            await self._notify()

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = time.monotonic()
            assert isinstance(frame, av.AudioFrame)
            if self.first_audio_time is None:
                self.first_audio_time = now
            self.audio_rms_values.append(audio_rms(frame))
            self.audio_times.append(now)
            self._audio_recent.append(audio_samples(frame))
            await self._notify()

    async def _wait_progress(self, ready: Any, timeout: float, what: str) -> None:
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(ready), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"player {self.name}: {what} not reached after {timeout}s "
                    f"(video frames {len(self.frames)}, audio frames {len(self.audio_rms_values)}, "
                    f"pc {self.connection_states}, statuses {self.statuses})"
                ) from None

    async def wait_frames(self, n: int, timeout: float = DEFAULT_TIMEOUT, since: int = 0) -> list[VideoSample]:
        """Wait until at least n video frames arrived after index `since`; returns them."""
        await self._wait_progress(lambda: len(self.frames) - since >= n, timeout, f"{n} video frames")
        return self.frames[since:]

    async def wait_decoded_frames(self, n: int, timeout: float = DEFAULT_TIMEOUT, since: int = 0) -> list[VideoSample]:
        """Wait until n frames (after `since`) had a readable counter and the square in place."""
        def ready() -> bool:
            return sum(1 for f in self.frames[since:] if f.pattern_present) >= n

        await self._wait_progress(ready, timeout, f"{n} intact video frames")
        return self.frames[since:]

    async def wait_audio_frames(self, n: int, timeout: float = DEFAULT_TIMEOUT, since: int = 0) -> list[float]:
        await self._wait_progress(lambda: len(self.audio_rms_values) - since >= n, timeout, f"{n} audio frames")
        return self.audio_rms_values[since:]

    def recent_audio(self) -> np.ndarray:
        """The last `audio_window` received audio frames as one mono float array (for
        media.dominant_frequency)."""
        return np.concatenate(list(self._audio_recent)) if self._audio_recent else np.zeros(0)

    @property
    def counters(self) -> list[int]:
        return [f.counter for f in self.frames if f.counter is not None]

    def intact_ratio(self, since: int = 0) -> float:
        frames = self.frames[since:]
        return sum(f.pattern_present for f in frames) / len(frames) if frames else 0.0

    def counter_stats(self, since: int = 0) -> dict[str, int]:
        """Summary of frames[since:]: how many arrived / were readable / intact / black, how
        often the counter did not advance (frozen or stale picture: a decoder concealing a lost
        frame shows an OLD counter, correctly read) and the largest forward jump."""
        frames = self.frames[since:]
        counters = [f.counter for f in frames if f.counter is not None]
        steps = [(b - a) % COUNTER_MODULO for a, b in zip(counters, counters[1:], strict=False)]
        return {
            "frames": len(frames),
            "readable": len(counters),
            "intact": sum(f.pattern_present for f in frames),
            "black": sum(f.is_black for f in frames),
            "not_advancing": sum(1 for s in steps if s == 0 or s > COUNTER_MODULO // 2),
            "max_jump": max((s for s in steps if s <= COUNTER_MODULO // 2), default=0),
        }

    def frames_published_before_first_frame(self, track: PatternVideoTrack) -> int | None:
        """How many frames the publisher's track produced between playStream and this player's first decoded
        frame: time to first frame in the publisher's own frames, which a slow machine slows down alike."""
        if self.first_frame_time is None or self.sent_at is None:
            return None
        return sum(1 for t in track.sent_at.values() if self.sent_at <= t <= self.first_frame_time)

    def latencies(self, sent_at: dict[int, float], since: int = 0) -> list[float]:
        """Capture-to-display delays, using a publisher's PatternVideoTrack.sent_at."""
        out = []
        for f in self.frames[since:]:
            if f.counter is not None and f.counter % COUNTER_MODULO in sent_at:
                out.append(f.t - sent_at[f.counter % COUNTER_MODULO])
        return out

    async def stop(self) -> None:
        """Like SDK stream.stop(): send stopStream (unless NEW/final) and close the pc."""
        await self._send_stop("stopStream", True, True)
        await self.close()


def _answer_codec(sdp: str | None, kind: str) -> str | None:
    if not sdp:
        return None
    in_section = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_section = line.startswith(f"m={kind} ") and line.split(" ")[1] != "0"
        elif in_section and line.startswith("a=rtpmap:"):
            return line.split(" ", 1)[1].split("/")[0]
    return None


def _apply_fields(payload: dict[str, Any], extra_fields: dict[str, Any] | None, omit_fields: Iterable[str]) -> None:
    if extra_fields:
        payload.update(extra_fields)
    for key in omit_fields:
        payload.pop(key, None)


async def publish(
    client: WcsClient,
    name: str,
    *,
    video_codec: str | None = "VP8",
    audio: bool = True,
    video: bool = True,
    extra_fields: dict[str, Any] | None = None,
    omit_fields: Iterable[str] = (),
    media_session_id: str | None = None,
    video_track: MediaStreamTrack | None = None,
    audio_track: MediaStreamTrack | None = None,
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    busy: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    raise_on_failure: bool = True,
    offer_transform: Callable[[str], str] | None = None,
) -> Publisher:
    """Publish `name` like SDK stream.publish(): sendonly audio (tone) then video (pattern)
    transceivers, publishStream with the SDK field set, then apply the setRemoteSDP answer.

    video_codec restricts the offered video codecs ("VP8", "H264"; None = aiortc's full list).
    extra_fields are merged into the publishStream payload last; omit_fields are removed;
    offer_transform(sdp) rewrites the offer as sent (the pc itself keeps its real offer).
    If the server answers FAILED instead of setRemoteSDP: raises StreamFailed, or with
    raise_on_failure=False returns the (closed) Publisher whose .status is "FAILED"."""
    if video and video_track is None:
        video_track = PatternVideoTrack(width, height, fps, busy=busy)
    if audio and audio_track is None:
        audio_track = ToneAudioTrack()
    pc = create_peer_connection()
    pub = Publisher(
        client, name, pc, media_session_id or str(uuid.uuid1()),
        video_track if video else None, audio_track if audio else None,
    )
    try:
        # getUserMedia streams list audio first, so the SDK's offer has m=audio then m=video
        if audio_track is not None and audio:
            pc.addTransceiver(audio_track, direction="sendonly")
        if video_track is not None and video:
            vt: RTCRtpTransceiver = pc.addTransceiver(video_track, direction="sendonly")
            if video_codec:
                vt.setCodecPreferences(codec_preferences("video", video_codec))
        constraints: dict[str, Any] = {
            "audio": audio,
            "video": {"width": width, "height": height} if video else False,
        }
        pub.request = {
            "mediaSessionId": pub.media_session_id,
            "name": name,
            "published": True,
            "hasVideo": video,
            "hasAudio": audio,
            "status": "PENDING",
            "record": False,
            "mediaProvider": "WebRTC",
            "sdp": "",
            "custom": {},
            "bitrate": 0,
            "minBitrate": 0,
            "maxBitrate": 0,
            "constraints": constraints,
            "cvoExtension": False,
            "localMediaInfo": _local_media_info(audio_track if audio else None, video_track if video else None),
        }
        _apply_fields(pub.request, extra_fields, omit_fields)
        pub.offer_transform = offer_transform
        await pub._exchange("publishStream", timeout, raise_on_failure)
    except BaseException:
        await pub.close()
        raise
    return pub


async def play(
    client: WcsClient,
    name: str,
    *,
    audio: bool = True,
    video: bool = True,
    video_codec: str | None = None,
    extra_fields: dict[str, Any] | None = None,
    omit_fields: Iterable[str] = (),
    media_session_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    raise_on_failure: bool = True,
    offer_transform: Callable[[str], str] | None = None,
) -> Player:
    """Play `name` like SDK stream.play(): recvonly audio then video, playStream (§4.1), apply
    the answer.  Received frames are decoded and analysed in background tasks (see Player).
    video_codec restricts what the player accepts (e.g. "VP8" for a Firefox-like player).
    Failure handling as in publish()."""
    pc = create_peer_connection()
    player = Player(client, name, pc, media_session_id or str(uuid.uuid1()), video, audio)
    try:
        if audio:
            pc.addTransceiver("audio", direction="recvonly")
        if video:
            vt = pc.addTransceiver("video", direction="recvonly")
            if video_codec:
                vt.setCodecPreferences(codec_preferences("video", video_codec))
        player.request = {
            "mediaSessionId": player.media_session_id,
            "name": name,
            "published": False,
            "hasVideo": True,  # hard-coded true in the SDK
            "hasAudio": True,
            "status": "PENDING",
            "record": False,
            "width": 0,
            "height": 0,
            "mediaProvider": "WebRTC",
            "sdp": "",
            "custom": {},
            "bitrate": 0,
            "minBitrate": 0,
            "maxBitrate": 0,
            "quality": 0,
            "constraints": {"audio": audio, "video": video},
            "transport": None,
            "cvoExtension": None,
        }
        _apply_fields(player.request, extra_fields, omit_fields)
        player.offer_transform = offer_transform
        await player._exchange("playStream", timeout, raise_on_failure)
    except BaseException:
        await player.close()
        raise
    return player


def _local_media_info(audio: MediaStreamTrack | None, video: MediaStreamTrack | None) -> dict[str, Any]:
    devices: dict[str, list[dict[str, str]]] = {"video": [], "audio": []}
    tracks: dict[str, list[dict[str, str]]] = {"video": [], "audio": []}
    for kind, track in (("video", video), ("audio", audio)):
        if track is not None:
            dev = f"aiortc-{kind}"
            devices[kind].append({"id": dev, "label": f"aiortc synthetic {kind}", "type": kind})
            tracks[kind].append({"trackId": track.id, "device": dev})
    return {"devices": devices, "tracks": tracks}
