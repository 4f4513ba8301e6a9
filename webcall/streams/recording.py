"""Stream recording (spec §14): which file, which container, and the life of one recording.

A `Recording` belongs to a `Publication`. It starts when the publisher asked for `record: true` (at
PUBLISHING) or when REST `/stream/startRecording` asks, and stops at REST `/stream/stopRecording` or when
the publication ends. The media work (depacketizing, muxing, writing) is `media.recorder.Recorder`, in a
worker thread; this module only names files and keeps the registry (`Hub.recordings()`).

File names come from a template (WCS `stream_record_policy_template`, default
`stream-{mediaSessionId}-{login}`), are sanitized (no path separators, no leading dot, only
`[A-Za-z0-9._-]`, at most 255 characters with the extension), and are never reused: an existing file gets
`-1`, `-2`, ... appended. A template using {duration}, {endTime} or {endTimeMillis} is rendered twice: at
the start with those as "live" (the file's name while it is written), then at the stop, when the file is
renamed to the final name. That final name is what the publisher's last status carries as `recordName`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..logs import q
from ..media.recorder import Recorder, RecorderOptions
from ..media.router import Router

log = logging.getLogger("webcall.streams")

DEFAULT_TEMPLATE = "stream-{mediaSessionId}-{login}"
MAX_NAME = 255
END_PLACEHOLDERS = ("duration", "endTime", "endTimeMillis")
PLACEHOLDERS = ("streamName", "duration", "startTime", "endTime", "startTimeMillis", "endTimeMillis",
                "sessionId", "mediaSessionId", "login", "audioCodec", "videoCodec")
CONTAINERS = {"VP8": ("webm", "mkv"), "H264": ("mp4", "mkv")}
EXTENSIONS = ("webm", "mp4", "mkv")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RecordingError(Exception):
    """A recording could not start; the message says why (REST answers 500 with it)."""


@dataclass
class RecordSettings:
    directory: str = "records"
    template: str = DEFAULT_TEMPLATE
    formats: str = "vp8-webm,h264-mp4"  # WCS record_formats: the container for each video codec
    mp4_audio: str = "opus"  # opus (copied) | aac (transcoded, as WCS does)
    fragment: float = 1.0  # seconds per MP4 fragment / Matroska cluster: the most a crash can lose

    def container(self, video_codec: str | None) -> str:
        """The container for a stream with this video codec (audio-only streams: WebM with Opus)."""
        if video_codec is None:
            return "webm"
        codec = video_codec.upper()
        allowed = CONTAINERS.get(codec, ("mkv",))
        for item in self.formats.split(","):
            name, _, container = item.strip().lower().partition("-")
            if name.upper() == codec and container in allowed:
                return container
        return allowed[0]


def sanitize(name: str, limit: int = MAX_NAME) -> str:
    """A safe file name (no directories, no hidden files, ASCII word characters, dots and dashes)."""
    name = _UNSAFE.sub("_", name).strip("._-")
    name = name[:limit].rstrip("._-") if len(name) > limit else name
    return name or "stream"


def render(template: str, values: dict[str, str]) -> str:
    """Replace the known {placeholders}; unknown ones stay (and are sanitized away like any brace)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def record_file_name(template: str, values: dict[str, str], extension: str, suffix: str = "") -> str:
    """Rendered, sanitized, `suffix` and `.extension` added, MAX_NAME characters at most."""
    tail = f"{suffix}.{extension}"
    return sanitize(render(template, values), MAX_NAME - len(tail)) + tail


def is_record_file_name(name: str) -> bool:
    """True for names this server could have produced (the only ones /client/records serves)."""
    base, dot, ext = name.rpartition(".")
    return bool(dot) and ext in EXTENSIONS and len(name) <= MAX_NAME and sanitize(base) == base


class Recorded(Protocol):
    """The publication a recording is of, as the front end that owns it describes it."""

    name: str
    media_session_id: str
    label: str
    audio_codec: str | None
    video_codec: str | None
    session_id: str  # the publisher's session, for {sessionId}
    login: str  # for {login}

    @property
    def closed(self) -> bool: ...

    @property
    def router(self) -> Router | Any | None:
        """A local Router, or a worker's publication (with a `recorder()` factory)."""
        ...

    def on_recording_failed(self, error: str) -> None: ...
    def on_recording_done(self, record_name: str | None, status: str) -> None: ...


def login_of(connection: dict | None) -> str:
    """{login}: the `login` the app put in the session's `custom` object (WCS convention), else sipLogin."""
    if not connection:
        return ""
    custom = connection.get("custom")
    login = custom.get("login") if isinstance(custom, dict) else None
    login = login or connection.get("login") or connection.get("sipLogin") or ""
    return login if isinstance(login, str) else str(login)


def _utc(seconds: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds))


class Recording:
    """One recording of one publication, from start to finalized file."""

    def __init__(self, publication: Recorded, settings: RecordSettings, template: str | None = None) -> None:
        self.publication = publication
        self.settings = settings
        self.template = template or settings.template
        self.media_session_id = publication.media_session_id
        self.stream_name = publication.name
        self.container = settings.container(publication.video_codec)
        self.started_at = time.time()
        self.stopped_at: float | None = None
        self.file_name = ""  # the file being written
        self.record_name: str | None = None  # the final name, once stopped
        self.recorder: Recorder | Any | None = None  # Recorder, or a worker's (workers/control.py)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- names ------------------------------------------------------------------------------------

    def _values(self, end: float | None) -> dict[str, str]:
        p = self.publication
        start = self.started_at
        values = {
            "streamName": p.name, "mediaSessionId": p.media_session_id,
            "sessionId": base64.urlsafe_b64encode(p.session_id.encode()).decode().rstrip("="),
            "login": p.login,
            "audioCodec": p.audio_codec or "", "videoCodec": p.video_codec or "",
            "startTime": _utc(start), "startTimeMillis": str(int(start * 1000)),
        }
        if end is None:
            values.update(duration="live", endTime="live", endTimeMillis="live")
        else:
            values.update(duration=str(int((end - start) * 1000)), endTime=_utc(end),
                          endTimeMillis=str(int(end * 1000)))
        return values

    def _reserve(self, values: dict[str, str]) -> str:
        """Create the file exclusively under the first free name (a few syscalls, once per recording)."""
        directory = self.settings.directory
        for n in range(1000):
            name = record_file_name(self.template, values, self.container, f"-{n}" if n else "")
            try:
                os.close(os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return name
            except FileExistsError:
                continue
        raise RecordingError("no free file name")

    @property
    def ends_late(self) -> bool:
        return any("{%s}" % p in self.template for p in END_PLACEHOLDERS)

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        p = self.publication
        router = p.router
        if router is None or not router.tracks:
            raise RecordingError("nothing to record")
        try:
            os.makedirs(self.settings.directory, exist_ok=True)
            self.file_name = self._reserve(self._values(None))
        except OSError as exc:
            raise RecordingError(f"cannot write to {self.settings.directory}: {exc.strerror or exc}") from exc
        s = self.settings
        options = RecorderOptions(container=self.container, audio=s.mp4_audio if self.container == "mp4" else "opus",
                                  fragment=s.fragment)
        path = os.path.join(s.directory, self.file_name)
        if isinstance(router, Router):
            routers = [router.tracks[kind] for kind in ("video", "audio") if kind in router.tracks]
            self.recorder = Recorder(path, routers, options, asyncio.get_running_loop(), on_done=self._on_done,
                                     label=p.label)
        else:  # a publication in a media worker (workers/control.py): its recorder runs there
            self.recorder = router.recorder(path, options, self._on_done, p.label)
        self.recorder.start()
        log.info("recording started %s file=%s container=%s", p.label, self.file_name, self.container)

    def stop(self) -> str | None:
        """Stop recording; returns the file's final name (it is finalized in the background)."""
        if self.stopped_at is not None or self.recorder is None:
            return self.record_name
        self.stopped_at = time.time()
        recorder = self.recorder
        if recorder.state == "failed":  # name the file only if it holds something (it plays up to the failure)
            path = os.path.join(self.settings.directory, self.file_name)
            self.record_name = self.file_name if os.path.isfile(path) and os.path.getsize(path) > 0 else None
            return self.record_name
        if not recorder.received_media:
            self.record_name = None  # no media ever came: the empty file is removed
            recorder.stop()
            return None
        final = self.file_name
        if self.ends_late:
            try:
                final = self._reserve(self._values(self.stopped_at))
            except (OSError, RecordingError) as exc:
                log.warning("recording keeps its name %s file=%s error=%s", self.publication.label, final, q(exc))
        self.record_name = final
        recorder.stop(os.path.join(self.settings.directory, final) if final != self.file_name else None)
        log.info("recording stopped %s file=%s", self.publication.label, final)
        return final

    def _on_done(self, recorder: Recorder) -> None:
        stats = recorder.stats()
        if recorder.state == "failed":
            log.warning("recording ended by error %s file=%s error=%s", self.publication.label, self.file_name,
                        q(recorder.error))
            self.publication.on_recording_failed(recorder.error or "recording failed")
        else:
            video, audio = stats["tracks"].get("video", {}), stats["tracks"].get("audio", {})
            log.info("recording finished %s file=%s videoFrames=%d audioFrames=%d framesDropped=%d packetsLost=%d "
                     "queueDropped=%d keyframeRequests=%d bytes=%d cpuSeconds=%.3f timeline=%s",
                     self.publication.label, self.record_name, stats["videoFrames"], stats["audioFrames"],
                     video.get("framesDropped", 0), video.get("packetsLost", 0) + audio.get("packetsLost", 0),
                     stats["queueDropped"], video.get("keyframeRequests", 0), stats["bytes"], stats["cpuSeconds"],
                     stats["timeline"])
        try:
            self.publication.on_recording_done(self.record_name, self.status)
        finally:
            if not self.done.done():
                self.done.set_result(None)

    # --- REST -------------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.recorder is None:
            return "PENDING"
        return {"recording": "RECORDING", "finalizing": "FINALIZING", "done": "DONE"}.get(
            self.recorder.state, "FAILED")

    def describe(self) -> dict:
        """The /recorder/find_all entry: WCS's {fileName, mediaSessionId}, plus what went on."""
        out = {"fileName": self.record_name or self.file_name, "mediaSessionId": self.media_session_id,
               "streamName": self.stream_name, "status": self.status}
        if self.recorder is not None and self.recorder.error:
            out["info"] = self.recorder.error
        return out


class Recordings:
    """The recordings being written or finalized, and failed ones of live streams (REST /recorder/find_all)."""

    def __init__(self) -> None:
        self._recordings: set[Recording] = set()

    def add(self, recording: Recording) -> None:
        self._recordings.add(recording)
        recording.done.add_done_callback(lambda _: self._prune())

    def _prune(self) -> None:
        # A failed recording stays listed (status FAILED, with the error) while its stream is live.
        self._recordings = {r for r in self._recordings
                            if not r.done.done() or (r.status == "FAILED" and not r.publication.closed)}

    def finishing(self, file_name: str) -> asyncio.Future[None] | None:
        """The completion of the stopped recording whose file is `file_name`, while it is being finalized."""
        for recording in self._recordings:
            if recording.stopped_at is not None and recording.record_name == file_name and not recording.done.done():
                return recording.done
        return None

    def list(self) -> list[Recording]:
        """Oldest first."""
        self._prune()
        return sorted(self._recordings, key=lambda r: r.started_at)

    async def finish(self, timeout: float = 10.0) -> None:
        """Stop every recording and wait until its file is finalized (server shutdown)."""
        for recording in list(self._recordings):
            recording.stop()
        pending = [r.done for r in self._recordings if not r.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
