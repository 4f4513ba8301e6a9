"""Reading back a recorded file with PyAV: what it holds, decoded and checked frame by frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np

from .media import COUNTER_MODULO, analyze_frame, audio_samples, dominant_frequency


@dataclass
class RecordedFile:
    path: str
    format: str
    duration: float | None  # the container's own duration (None when it has none, e.g. never finalized)
    video_codec: str | None = None
    audio_codec: str | None = None
    video_start: float | None = None  # first decoded frame's time, seconds
    audio_start: float | None = None
    video_end: float = 0.0  # last video frame's time
    audio_end: float = 0.0  # end of the last audio frame
    counters: list[int | None] = field(default_factory=list)  # per decoded video frame
    intact: list[bool] = field(default_factory=list)
    audio_rms: float = 0.0
    audio_frequency: float = 0.0
    audio_seconds: float = 0.0
    size: tuple[int, int] = (0, 0)

    @property
    def video_frames(self) -> int:
        return len(self.counters)

    @property
    def media_duration(self) -> float:
        """From the first to the last decoded sample, over both tracks."""
        starts = [t for t in (self.video_start, self.audio_start) if t is not None]
        return max(self.video_end, self.audio_end) - min(starts) if starts else 0.0

    @property
    def av_offset(self) -> float:
        """audio start - video start, seconds."""
        assert self.video_start is not None and self.audio_start is not None
        return self.audio_start - self.video_start

    def counters_in_order(self) -> bool:
        readable = [c for c in self.counters if c is not None]
        steps = [(b - a) % COUNTER_MODULO for a, b in zip(readable, readable[1:])]
        return all(0 < s < COUNTER_MODULO // 2 for s in steps)


def read_recording(path: str, analyze_every: int = 1) -> RecordedFile:
    """Decode every frame of `path` (the counter pattern is read on every `analyze_every`-th video frame)."""
    with av.open(path) as container:
        out = RecordedFile(path, container.format.name,
                           container.duration / 1_000_000 if container.duration else None)
        streams = []
        video = next((s for s in container.streams if s.type == "video"), None)
        audio = next((s for s in container.streams if s.type == "audio"), None)
        if video is not None:
            out.video_codec = video.codec_context.name
            streams.append(video)
        if audio is not None:
            out.audio_codec = audio.codec_context.name
            streams.append(audio)
        chunks: list[np.ndarray] = []
        samples = 0
        n = 0
        for frame in container.decode(*streams):
            t = float(frame.time) if frame.time is not None else None
            if isinstance(frame, av.VideoFrame):
                if t is not None:
                    if out.video_start is None:
                        out.video_start = t
                    out.video_end = max(out.video_end, t)
                out.size = (frame.width, frame.height)
                if n % analyze_every == 0:
                    a = analyze_frame(frame)
                    out.counters.append(a.counter)
                    out.intact.append(a.pattern_present)
                n += 1
            else:
                if t is not None:
                    if out.audio_start is None:
                        out.audio_start = t
                    out.audio_end = max(out.audio_end, t + frame.samples / frame.sample_rate)
                samples += frame.samples
                chunks.append(audio_samples(frame))
        if chunks:
            pcm = np.concatenate(chunks)
            out.audio_rms = float(np.sqrt(np.mean(pcm * pcm)))
            out.audio_frequency = dominant_frequency(pcm[-48000:]) if pcm.size >= 4800 else 0.0
            out.audio_seconds = samples / 48000
    return out
