"""The transcoder's video encoders spend the bit rate they are set.

Pictures reach them with millisecond timestamps at the publisher's own, variable, rate (Chromium 30 fps, Firefox
15–20, less under load). libx264 with `tune=zerolatency` ignores timestamps and budgets per picture for a frame
rate; without one it took 1000 a second from the 1/1000 time base and produced ≈ 33 kbit/s where 0.9 Mbit/s was
set: a blurred picture whose fine detail (the latency clock the browser tests read) was refreshed only every few
hundred ms. It now budgets for ENCODER_FPS (30), so a slower publisher gets proportionally less (decided over
reading the timestamps, which holds each picture back by one: transcode/pipeline.py). libvpx reads the
timestamps. The pictures here are busy on purpose (noise blocks that move every frame), so every encoder has more
to say than its budget allows and the rate is its rate control's. (WSPlayer's MPEG-1 encoder runs on a frame
clock of its own, 25 a second.)
"""

from __future__ import annotations

import numpy as np
import pytest
import av

from webcall.transcode.pipeline import ENCODER_FPS, _H264Encoder, _Vp8Encoder

WIDTH, HEIGHT, SECONDS = 320, 240, 3


def busy_picture(rng: np.random.Generator, frame: int) -> av.VideoFrame:
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for i in range(8):  # scrolling bars
        x = (i * WIDTH // 8 + frame * 4) % WIDTH
        img[:, x:x + WIDTH // 8] = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
    for _ in range(30):  # blocks of noise, new every frame
        x, y = int(rng.integers(0, WIDTH - 16)), int(rng.integers(0, HEIGHT - 16))
        img[y:y + 16, x:x + 16] = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")


def bits_per_second(encoder, fps: int) -> tuple[float, int]:
    rng = np.random.default_rng(7)
    size = 0
    for frame in range(SECONDS * fps):
        for data, _ts, _key in encoder.encode(busy_picture(rng, frame), 10_000 + frame * 1000 // fps):
            size += len(data)
    return size * 8 / SECONDS, encoder.ctx.bit_rate


@pytest.mark.parametrize("fps", [30, 15])
def test_vp8_encoder_spends_its_bit_rate_at_any_frame_rate(fps: int) -> None:
    rate, target = bits_per_second(_Vp8Encoder(), fps)
    assert 0.6 * target < rate < 1.5 * target, f"{rate / 1000:.0f} kbit/s at {fps} fps, set {target / 1000:.0f}"


@pytest.mark.parametrize("fps", [30, 15])
def test_h264_encoder_spends_its_bit_rate_per_picture_at_30_fps(fps: int) -> None:
    rate, target = bits_per_second(_H264Encoder(), fps)
    expected = target * fps / ENCODER_FPS
    assert 0.6 * expected < rate < 1.5 * expected, f"{rate / 1000:.0f} kbit/s at {fps} fps, set {target / 1000:.0f}"
