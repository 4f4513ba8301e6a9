"""The transcoder's video encoders spend the bit rate they are set, whatever frame rate the publisher sends.

Pictures reach them with millisecond timestamps at the publisher's own, variable, rate (Chromium 30 fps, Firefox
15–20, less under load). An encoder that counts frames instead of time gives each picture the wrong share: libx264
with `tune=zerolatency` takes its frame rate from the 1/1000 time base unless told to read the timestamps, and
produced ≈ 33 kbit/s where 0.9 Mbit/s was set: a blurred picture whose fine detail (the latency clock the browser
tests read) was refreshed only every few hundred ms. The pictures here are busy on purpose (noise blocks that move
every frame), so every encoder has more to say than its budget allows and the rate is its rate control's.
(WSPlayer's MPEG-1 encoder runs on a frame clock of its own, 25 a second, so it cannot make this mistake.)
"""

from __future__ import annotations

import numpy as np
import pytest
import av

from webcall.transcode.pipeline import _H264Encoder, _Vp8Encoder

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
@pytest.mark.parametrize("make", [_H264Encoder, _Vp8Encoder], ids=["h264", "vp8"])
def test_encoder_spends_its_bit_rate_at_any_frame_rate(make, fps: int) -> None:
    rate, target = bits_per_second(make(), fps)
    assert 0.6 * target < rate < 1.5 * target, f"{rate / 1000:.0f} kbit/s at {fps} fps, set {target / 1000:.0f}"
