"""Synthetic media for end-to-end tests, and analysis of what comes back.

Video: every frame carries its own frame counter, drawn as big black/white blocks that survive
VP8/H264 at a few hundred kbps, plus a bright square whose x position is a function of that
counter.  The receiver can therefore tell which frame it got and whether the picture is intact,
without any side channel.

Layout (all positions are fractions of the frame size, so the reader copes with scaled video;
the numbers are pixels at 640x480):

    y=32..64   row 1: [WHITE][BLACK] b15 b14 ... b0      (b = counter bit, white = 1)
    y=64..96   row 2: [WHITE][BLACK] ~b15 ~b14 ... ~b0   (complement, used as a checksum)
    x starts at 32, each block is 32 px wide (ends at 608).
    square: 64x64 at y=256, x = 32 + (4 * counter) mod 512
    optional "busy" band y=352..464: per-frame luma noise, so the encoder needs real bitrate
    (several RTP packets per frame) instead of a few hundred bytes.

Audio: a continuous 440 Hz sine, 48 kHz, 20 ms frames.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import math
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_SAMPLE_RATE = 48_000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES_PER_FRAME = int(AUDIO_SAMPLE_RATE * AUDIO_PTIME)  # 960

COUNTER_BITS = 16
COUNTER_MODULO = 1 << COUNTER_BITS

# Colours (RGB).  Background luma ~103, square luma ~225, blocks 16/235 after BT.601 conversion.
BACKGROUND_RGB = (70, 110, 150)
SQUARE_RGB = (250, 240, 80)
WHITE_RGB = (255, 255, 255)
BLACK_RGB = (0, 0, 0)

# Reference geometry at 640x480; everything is scaled by (width/640, height/480).
_REF_W, _REF_H = 640.0, 480.0
# Multiples of 32 so that blocks stay on the 16x16 macroblock grid at 640x480 and 320x240
# (blocks straddling macroblocks were occasionally left half-updated by VP8 at 320x240).
_MARGIN_X, _MARGIN_Y = 32.0, 32.0
_BLOCK_W, _BLOCK_H = 32.0, 32.0
_MARKER_BLOCKS = 2  # WHITE, BLACK
_SQUARE = 64.0
_SQUARE_Y = 256.0
_SQUARE_STEP = 4.0  # px per frame
_SQUARE_TRAVEL = _REF_W - 2 * _MARGIN_X - _SQUARE  # 512
_BUSY_Y0, _BUSY_Y1 = 352.0, 464.0


@dataclass(frozen=True)
class _Layout:
    """Pixel geometry of the pattern for one frame size (floats; round when drawing)."""

    sx: float
    sy: float

    def block_rect(self, row: int, index: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of block `index` (0,1 = marker, 2.. = bits) in `row` (0 or 1)."""
        x0 = (_MARGIN_X + index * _BLOCK_W) * self.sx
        y0 = (_MARGIN_Y + row * _BLOCK_H) * self.sy
        return x0, y0, x0 + _BLOCK_W * self.sx, y0 + _BLOCK_H * self.sy

    def square_rect(self, counter: int) -> tuple[float, float, float, float]:
        x_ref = _MARGIN_X + (_SQUARE_STEP * counter) % _SQUARE_TRAVEL
        x0, y0 = x_ref * self.sx, _SQUARE_Y * self.sy
        return x0, y0, x0 + _SQUARE * self.sx, y0 + _SQUARE * self.sy


def _layout(width: int, height: int) -> _Layout:
    return _Layout(width / _REF_W, height / _REF_H)


def _px(rect: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = rect
    return round(x0), round(y0), round(x1), round(y1)


def _inner(rect: tuple[float, float, float, float], keep: float = 0.5) -> tuple[int, int, int, int]:
    """The central `keep` fraction of a rectangle, in whole pixels (at least 1x1)."""
    x0, y0, x1, y1 = rect
    mx, my = (x1 - x0) * (1 - keep) / 2, (y1 - y0) * (1 - keep) / 2
    ix0, iy0 = int(round(x0 + mx)), int(round(y0 + my))
    ix1, iy1 = max(ix0 + 1, int(round(x1 - mx))), max(iy0 + 1, int(round(y1 - my)))
    return ix0, iy0, ix1, iy1


# --------------------------------------------------------------------------------------------
# Generation


def _rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited range, as swscale would convert it."""
    r, g, b = (c / 255.0 for c in rgb)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


_BACKGROUND_YUV, _SQUARE_YUV = _rgb_to_yuv(BACKGROUND_RGB), _rgb_to_yuv(SQUARE_RGB)
_WHITE_YUV, _BLACK_YUV = _rgb_to_yuv(WHITE_RGB), _rgb_to_yuv(BLACK_RGB)


def _planes(buf: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V views of a flat yuv420p buffer."""
    n, c = width * height, (width // 2) * (height // 2)
    return (
        buf[:n].reshape(height, width),
        buf[n : n + c].reshape(height // 2, width // 2),
        buf[n + c : n + 2 * c].reshape(height // 2, width // 2),
    )


def _fill(buf: np.ndarray, width: int, height: int, rect: tuple[int, int, int, int], yuv: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = rect
    y, u, v = _planes(buf, width, height)
    y[y0:y1, x0:x1] = yuv[0]
    u[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = yuv[1]
    v[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = yuv[2]


@functools.lru_cache(maxsize=8)
def _template(width: int, height: int) -> np.ndarray:
    """Background plus the start markers (never changes); copied for every frame."""
    buf = np.empty(width * height * 3 // 2, dtype=np.uint8)
    _fill(buf, width, height, (0, 0, width, height), _BACKGROUND_YUV)
    lay = _layout(width, height)
    for row in (0, 1):
        _fill(buf, width, height, _px(lay.block_rect(row, 0)), _WHITE_YUV)
        _fill(buf, width, height, _px(lay.block_rect(row, 1)), _BLACK_YUV)
    buf.flags.writeable = False
    return buf


def make_pattern_yuv(counter: int, width: int = 640, height: int = 480, busy: bool = False) -> np.ndarray:
    """The yuv420p image for frame number `counter`, as PyAV's (height*3/2, width) array.
    Drawn directly in YUV: ~10x cheaper than RGB + swscale, which matters at 30 fps."""
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (yuv420p)")
    lay = _layout(width, height)
    buf = _template(width, height).copy()
    if busy:  # deterministic noise band below the square, different every frame
        y0, y1 = round(_BUSY_Y0 * lay.sy) & ~1, round(_BUSY_Y1 * lay.sy) & ~1
        rng = np.random.default_rng(counter)
        cells = rng.integers(70, 170, size=((y1 - y0 + 3) // 4, (width + 3) // 4), dtype=np.uint8)
        # 4x4-pixel cells: costly enough for several RTP packets per frame, not pure noise
        yp = _planes(buf, width, height)[0]
        yp[y0:y1] = np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1)[: y1 - y0, :width]
    value = counter % COUNTER_MODULO
    for i in range(COUNTER_BITS):
        bit = (value >> (COUNTER_BITS - 1 - i)) & 1
        for row, on in ((0, bit), (1, 1 - bit)):  # row 2 holds the complement
            rect = _px(lay.block_rect(row, _MARKER_BLOCKS + i))
            _fill(buf, width, height, rect, _WHITE_YUV if on else _BLACK_YUV)
    _fill(buf, width, height, _px(lay.square_rect(counter)), _SQUARE_YUV)
    return buf.reshape(height * 3 // 2, width)


def make_pattern_frame(
    counter: int, width: int = 640, height: int = 480, fps: float = 30.0, busy: bool = False
) -> av.VideoFrame:
    """A yuv420p VideoFrame for `counter`, with pts on the 90 kHz clock (counter * 90000/fps)."""
    frame = av.VideoFrame.from_ndarray(make_pattern_yuv(counter, width, height, busy), format="yuv420p")
    frame.pts = int(counter * VIDEO_CLOCK_RATE / fps)
    frame.time_base = VIDEO_TIME_BASE
    return frame


class PatternVideoTrack(MediaStreamTrack):
    """Video track producing the counter/square pattern, paced in real time.

    `sent_at[counter % 65536]` holds the time.monotonic() at which each frame was handed to
    the encoder, so tests can compute end-to-end latency from a decoded counter.
    """

    kind = "video"

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        start_counter: int = 0,
        busy: bool = False,
    ) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("width and height must be even (yuv420p)")
        self.width, self.height, self.fps, self.busy = width, height, fps, busy
        self.counter = start_counter  # counter of the NEXT frame
        self.frames_sent = 0
        self.sent_at: dict[int, float] = {}
        self._start: float | None = None
        self._ts_step = VIDEO_CLOCK_RATE / fps

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        # Real-time pacing, same scheme as aiortc.VideoStreamTrack.next_timestamp().
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self.frames_sent / self.fps - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        counter = self.counter
        frame = make_pattern_frame(counter, self.width, self.height, self.fps, self.busy)
        frame.pts = int(self.frames_sent * self._ts_step)
        self.sent_at[counter % COUNTER_MODULO] = time.monotonic()
        self.counter += 1
        self.frames_sent += 1
        return frame


def make_tone_samples(
    start_sample: int,
    count: int,
    frequency: float = 440.0,
    amplitude: float = 0.3,
    sample_rate: int = AUDIO_SAMPLE_RATE,
) -> np.ndarray:
    """int16 sine samples [start_sample, start_sample+count) (phase-continuous across calls)."""
    n = np.arange(start_sample, start_sample + count, dtype=np.float64)
    wave = amplitude * np.sin(2 * math.pi * frequency * n / sample_rate)
    return np.round(wave * 32767).astype(np.int16)


class ToneAudioTrack(MediaStreamTrack):
    """48 kHz s16 sine in 20 ms frames, paced in real time.  Stereo by default: aiortc's Opus
    encoder resamples to stereo anyway, and FFmpeg's mono->stereo upmix costs 3 dB (a 0.3 sine
    would arrive with RMS 0.15 instead of 0.21).  amplitude=0 gives digital silence."""

    kind = "audio"

    def __init__(
        self,
        frequency: float = 440.0,
        amplitude: float = 0.3,
        sample_rate: int = AUDIO_SAMPLE_RATE,
        ptime: float = AUDIO_PTIME,
        layout: str = "stereo",
    ) -> None:
        super().__init__()
        if layout not in ("mono", "stereo"):
            raise ValueError("layout must be mono or stereo")
        self.frequency, self.amplitude = frequency, amplitude
        self.sample_rate, self.layout = sample_rate, layout
        self.samples_per_frame = int(sample_rate * ptime)
        self._timestamp = 0  # samples emitted so far
        self._start: float | None = None

    def make_frame(self) -> av.AudioFrame:
        """The next frame, without pacing."""
        samples = make_tone_samples(
            self._timestamp, self.samples_per_frame, self.frequency, self.amplitude, self.sample_rate
        )
        if self.layout == "stereo":  # packed s16: L R L R ...
            samples = np.repeat(samples, 2)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._timestamp += self.samples_per_frame
        return frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._timestamp / self.sample_rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        return self.make_frame()


# --------------------------------------------------------------------------------------------
# Analysis


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane as a (height, width) uint8 array (limited or full range, as decoded)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "nv12"):
        plane = frame.planes[0]
        buf = np.frombuffer(memoryview(plane), dtype=np.uint8)
        return buf.reshape(-1, plane.line_size)[: frame.height, : frame.width]
    return frame.to_ndarray(format="gray")


def _mean(y: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(y[y0:y1, x0:x1].mean())


def _read_counter_luma(y: np.ndarray) -> int | None:
    height, width = y.shape
    lay = _layout(width, height)
    values: list[list[int]] = []
    for row in (0, 1):
        white = _mean(y, _inner(lay.block_rect(row, 0)))
        black = _mean(y, _inner(lay.block_rect(row, 1)))
        if white - black < 60:  # no marker (black frame, other content, heavy corruption)
            return None
        threshold = (white + black) / 2
        margin = (white - black) / 6  # a block too close to the threshold is unreadable
        bits = []
        for i in range(COUNTER_BITS):
            m = _mean(y, _inner(lay.block_rect(row, _MARKER_BLOCKS + i)))
            if abs(m - threshold) < margin:
                return None
            bits.append(1 if m > threshold else 0)
        values.append(bits)
    if any(a == b for a, b in zip(values[0], values[1], strict=True)):  # row 2 must be the complement
        return None
    return int("".join(map(str, values[0])), 2)


def read_frame_counter(frame: av.VideoFrame) -> int | None:
    """The frame counter (0..65535) drawn by PatternVideoTrack, or None if not readable."""
    return _read_counter_luma(luma(frame))


def _pattern_present_luma(y: np.ndarray, counter: int | None, tolerance: float) -> bool:
    if counter is None:
        return False
    height, width = y.shape
    lay = _layout(width, height)
    sx0, sy0, sx1, sy1 = lay.square_rect(counter)
    # Column profile across the middle half of the square's rows.
    r0, r1 = int(round(sy0 + (sy1 - sy0) / 4)), int(round(sy1 - (sy1 - sy0) / 4))
    profile = y[r0:r1, :].mean(axis=0)
    background = float(np.median(profile))
    if background < 40:  # background must not be black
        return False
    peak = float(profile.max())
    if peak - background < 50:
        return False
    bright = np.flatnonzero(profile > (background + peak) / 2)
    size = sx1 - sx0
    found_w = bright[-1] - bright[0] + 1
    if not (0.7 * size <= found_w <= 1.3 * size) or len(bright) < 0.7 * size:
        return False
    found_cx = (bright[0] + bright[-1] + 1) / 2
    if abs(found_cx - (sx0 + sx1) / 2) > tolerance * width:
        return False
    # The square must also be bright vertically where expected.
    return _mean(y, _inner((sx0, sy0, sx1, sy1))) - background > 50


def pattern_present(frame: av.VideoFrame, tolerance: float = 0.02) -> bool:
    """True if the counter is readable and the square sits where that counter puts it
    (centre within `tolerance` * width) on a non-black background."""
    y = luma(frame)
    return _pattern_present_luma(y, _read_counter_luma(y), tolerance)


@dataclass(frozen=True)
class FrameAnalysis:
    counter: int | None
    pattern_present: bool
    is_black: bool
    mean_luma: float
    width: int
    height: int


def analyze_frame(frame: av.VideoFrame, tolerance: float = 0.02) -> FrameAnalysis:
    """All video checks at once (the Y plane is extracted only once)."""
    y = luma(frame)
    counter = _read_counter_luma(y)
    mean = float(y.mean())
    return FrameAnalysis(
        counter=counter,
        pattern_present=_pattern_present_luma(y, counter, tolerance),
        is_black=_is_black_luma(y),
        mean_luma=mean,
        width=frame.width,
        height=frame.height,
    )


def _is_black_luma(y: np.ndarray) -> bool:
    # limited-range black is Y=16; allow some encoder noise
    return float(y.mean()) < 32 and float(y.std()) < 12


def is_black(frame: av.VideoFrame) -> bool:
    """True for an (almost) uniformly black frame."""
    return _is_black_luma(luma(frame))


def audio_samples(frame: av.AudioFrame) -> np.ndarray:
    """Mono float64 samples in [-1, 1] (channels averaged), for any packed/planar format."""
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        data = arr.astype(np.float64)  # (channels, samples)
    else:
        data = arr.reshape(-1, channels).T.astype(np.float64)
    name = frame.format.name.rstrip("p")
    if name == "s16":
        data /= 32768.0
    elif name == "s32":
        data /= 2147483648.0
    elif name == "u8":
        data = (data - 128.0) / 128.0
    return data.mean(axis=0)


def audio_rms(frame: av.AudioFrame) -> float:
    """RMS of the frame in full-scale units (a 0.3-amplitude sine gives ~0.21)."""
    s = audio_samples(frame)
    return float(np.sqrt(np.mean(s * s))) if s.size else 0.0


def dominant_frequency(samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> float:
    """Frequency (Hz) of the strongest spectral peak, with parabolic interpolation."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size < 16:
        return 0.0
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:]) + 1)
    peak = float(k)
    if k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        peak += 0.5 * (a - c) / denom if denom != 0 else 0.0
    return float(peak * sample_rate / x.size)
