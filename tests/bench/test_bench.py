"""`webcall bench` at a tiny scale: the figures it reports must agree with each other.

One run (module-scoped, ~20 s): a server subprocess, 1 publisher, 3 players, a 3-second window. Nothing
here is timed against a threshold; it checks that every figure is there, measured, and consistent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from webcall.bench.cli import parse_steps
from webcall.bench.player import build_play_offer, parse_answer
from webcall.protocol.sdp import negotiate_play

PLAYERS = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "webcall", "bench", "--players", str(PLAYERS), "--window", "3", "--settle", "0.5",
         "--clip-seconds", "2", "--ceiling-packets", "400", "--max-latency-ms", "1000", "--probe-joins", "2", "--quiet", "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text()), out, proc


def test_result_has_every_field(bench) -> None:
    result, _, proc = bench
    for key in ("version", "machine", "config", "ceiling", "server", "publishers", "steps", "knee", "clip"):
        assert key in result, key
    (step,) = result["steps"]
    for key in ("players", "connected", "failed", "server_cpu", "delivery", "ttff_ms", "latency_ms", "memory",
                "loadgen", "machine", "integrity", "ok", "reasons", "warnings", "per_player"):
        assert key in step, key
    assert step["players"] == step["connected"] == PLAYERS and step["failed"] == 0, step["failures"]
    assert "players" in proc.stdout and "µs/pkt" in proc.stdout  # the table
    assert result["server"]["started_by_bench"] and result["server"]["exit_code"] == 0


def test_delivery_adds_up(bench) -> None:
    result, _, _ = bench
    (step,) = result["steps"]
    d = step["delivery"]
    sent = step["publisher_packets"]
    assert sent > 0
    # Each player should get what the publisher sent in the window; together: sent × players − lost.
    assert d["packets_expected"] == sent * PLAYERS
    assert d["packets_received"] + d["packets_lost"] >= d["packets_expected"]
    assert abs(d["packets_received"] - (sent * PLAYERS - d["packets_lost"])) <= 0.02 * sent * PLAYERS
    assert d["loss_pct"] < 5  # loopback
    for player in step["per_player"]:
        assert player["expected_packets"] == sent
        assert 0.95 * sent <= player["packets"] <= 1.05 * sent, player
        assert player["bytes"] > player["packets"] * 12
    # ~600 kbps of video + Opus, per player, measured from the bytes received
    assert 300 < d["kbps_per_player"] < 1500, d


def test_cpu_figures_are_plausible(bench) -> None:
    result, _, _ = bench
    (step,) = result["steps"]
    cpu = step["server_cpu"]
    assert cpu is not None, "no server CPU figures"
    assert 0 < cpu["seconds"] <= 2 * step["window_s"]
    assert 0 < cpu["fraction"] <= 2
    assert 0 < cpu["us_per_packet"] < 20_000
    assert cpu["players_per_core"] == pytest.approx(PLAYERS / cpu["fraction"], rel=0.01)
    assert cpu["ms_per_s_per_player"] == pytest.approx(1000 * cpu["fraction"] / PLAYERS, rel=0.01)
    ceiling = result["ceiling"]
    assert 0 < ceiling["us_per_output_packet"] < 1000 and ceiling["us_per_forwarded_packet"] > 0
    assert cpu["ratio_to_ceiling"] == pytest.approx(cpu["us_per_packet"] / cpu["ceiling_us_per_packet"], rel=0.02)
    assert 0 < step["loadgen"]["cpu_fraction"] <= 2
    assert step["memory"]["server_rss_mb"] > 10


def test_first_frame_and_latency_measured_for_every_player(bench) -> None:
    result, _, _ = bench
    (step,) = result["steps"]
    assert step["ttff_ms"]["measured"] == PLAYERS and step["ttff_ms"]["missing"] == 0
    for player in step["per_player"]:
        assert player["ttff_ms"] is not None and 0 < player["ttff_ms"] < 15_000, player
        assert player["latency_p50_ms"] is not None and player["latency_p50_ms"] > 0, player
        assert player["srtp_profile"]
    assert step["ttff_ms"]["p50"] <= step["ttff_ms"]["p95"]
    lone = step["ttff_ms"]["lone"]  # players that joined one at a time after the window, then left
    assert lone["measured"] == 2 and lone["missing"] == 0 and 0 < lone["p50"] <= lone["p95"] < 15_000, lone
    phases = lone["phases"]
    assert set(phases) == {"answer", "ice", "dtls", "keyframe"} and all(p50 is not None for p50, _ in phases.values())
    lat = step["latency_ms"]
    assert lat["samples"] > 10 * PLAYERS
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def test_integrity_samples_decrypt_to_the_publishers_payload(bench) -> None:
    result, _, _ = bench
    (step,) = result["steps"]
    integrity = step["integrity"]
    assert integrity["sampled"] > 0 and integrity["bad"] == 0
    assert integrity["first_keyframes_intact"] == PLAYERS
    assert integrity["offsets_learned"] == PLAYERS


def test_plot_is_a_png(bench) -> None:
    result, out, _ = bench
    png = Path(result["plot"])
    assert png == out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_steps() -> None:
    assert parse_steps("10,25,50") == [10, 25, 50]
    assert parse_steps("10:50:+20") == [10, 30, 50]
    assert parse_steps("10:100:x2") == [10, 20, 40, 80, 100]


def test_player_offer_is_accepted_by_the_server_negotiation() -> None:
    from webcall.protocol.sdp import Codec

    offer = build_play_offer("abcd", "p" * 24, "AA:" * 31 + "AA", 1)
    sources = {"audio": Codec("opus", 111, 48000, 2, "minptime=10;useinbandfec=1", ("nack",)),
               "video": Codec("H264", 100, 90000, None, "packetization-mode=1;profile-level-id=42e01f",
                              ("nack", "nack pli"), 101)}
    neg = negotiate_play(offer, sources)
    assert {t.kind: t.codec.name for t in neg.tracks} == {"audio": "opus", "video": "H264"}
    assert neg.track("video").codec.payload_type == 127  # the 42e01f one
    assert neg.ice_ufrag == "abcd"


def test_parse_answer() -> None:
    sdp = "\r\n".join([
        "v=0", "a=ice-lite", "a=group:BUNDLE 0 1",
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111", "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        "a=ice-ufrag:u", "a=ice-pwd:pw", "a=fingerprint:sha-256 ab:cd", "a=mid:0", "a=rtpmap:111 opus/48000/2",
        "a=ssrc:1111 cname:x",
        "m=video 5000 UDP/TLS/RTP/SAVPF 96 97", "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        "a=mid:1", "a=rtpmap:96 VP8/90000", "a=ssrc-group:FID 2222 3333", "a=ssrc:2222 cname:x",
    ]) + "\r\n"
    answer = parse_answer(sdp)
    assert answer.candidates == [("127.0.0.1", 5000)]
    assert (answer.ice_ufrag, answer.ice_pwd, answer.fingerprint) == ("u", "pw", ("sha-256", "AB:CD"))
    assert answer.tracks["audio"].ssrc == 1111 and answer.tracks["video"].ssrc == 2222
    assert answer.tracks["video"].codec == "VP8"


def test_pacer_spreads_a_burst_at_its_rate() -> None:
    import asyncio
    import time

    from webcall.bench.publisher import Pacer

    async def burst() -> float:
        pacer = Pacer(800_000)  # 100 kB/s: 1000-byte packets every 10 ms
        start = time.monotonic()
        for _ in range(11):
            await pacer.wait(1000)
        assert pacer.delayed >= 9
        return time.monotonic() - start

    assert asyncio.run(burst()) >= 0.095  # 10 intervals; a burst would take ~0
