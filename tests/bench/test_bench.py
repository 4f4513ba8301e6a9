"""`webcall bench` at a tiny scale: the figures it reports must agree with independent counts.

One run (module-scoped, ~20 s): a server subprocess started here, 1 publisher, 3 players, a 3-second window.
Nothing here is timed against a threshold; the bench's counts are checked against the server's own
(/metrics, /proc), and its verdict rules against crafted inputs in tests/unit/test_bench_verdicts.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from webcall_bench.cli import parse_steps
from webcall_bench.player import build_play_offer, parse_answer
from webcall_bench.runner import ServerProcess
from webcall.protocol.sdp import negotiate_play
from webcall.server.config import parse_args

PLAYERS = 3
ROOT = Path(__file__).resolve().parents[2]


def _metrics(rest_url: str) -> dict[str, float]:
    """The server's Prometheus counters, summed over their labels."""
    with urllib.request.urlopen(rest_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{", 1)[0]] = out.get(name.split("{", 1)[0], 0.0) + float(value)
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, Path, subprocess.CompletedProcess, dict]:
    """The bench against a server this test started, so the server's own counters (/metrics) and CPU time
    (/proc) can be read before and after: figures to check the bench's against, not the bench's own."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", "0", "--media-host", "127.0.0.1",
         "--media-port", "0", "--media-tcp-port", "0", "--public-ip", "127.0.0.1", "--rest-port", "0", "--tls-port", "-1",
         "--log-level", "warning", "--workers", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = server.stdout.readline()
        match = re.search(r"http://localhost:(\d+)/.*REST (http://127\.0\.0\.1:\d+)/", line)
        assert match, line
        url, rest = f"ws://127.0.0.1:{match.group(1)}/", match.group(2)
        before, cpu_before = _metrics(rest), _cpu_seconds(server.pid)
        proc = subprocess.run(
            [sys.executable, "-m", "webcall", "bench", "--url", url, "--server-pid", str(server.pid), "--rest-url", rest,
             "--players", str(PLAYERS), "--window", "3", "--settle", "0.5", "--clip-seconds", "2",
             "--ceiling-packets", "400", "--compiled-packets", "60", "--max-latency-ms", "1000", "--probe-joins", "2", "--quiet",
             "-o", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
        # The players and publishers are gone: wait until the server says so, then read its counters.
        deadline = time.monotonic() + 10
        while (after := _metrics(rest))["webcall_players"] or after["webcall_streams"]:
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
        server_side = {"before": before, "after": after, "cpu_seconds": _cpu_seconds(server.pid) - cpu_before}
    finally:
        server.terminate()
        code = server.wait(15)
    server_side["exit_code"] = code
    return json.loads(out.read_text()), out, proc, server_side


def _delta(server_side: dict, name: str) -> float:
    return server_side["after"].get(name, 0.0) - server_side["before"].get(name, 0.0)


def test_result_has_every_field(bench) -> None:
    result, _, proc, server_side = bench
    for key in ("version", "machine", "config", "ceiling", "server", "publishers", "steps", "knee", "clip", "totals"):
        assert key in result, key
    (step,) = result["steps"]
    for key in ("players", "connected", "failed", "server_cpu", "delivery", "ttff_ms", "latency_ms", "memory",
                "loadgen", "machine", "integrity", "ok", "reasons", "warnings", "per_player"):
        assert key in step, key
    assert step["players"] == step["connected"] == PLAYERS and step["failed"] == 0, step["failures"]
    assert step["ok"] and step["reasons"] == [], step["reasons"]
    assert "players" in proc.stdout and "µs/pkt" in proc.stdout  # the table
    assert not result["server"]["started_by_bench"] and server_side["exit_code"] == 0


def test_delivery_agrees_with_the_servers_counters(bench) -> None:
    """What the bench's players counted (media packets of their SSRCs, each once) against what the server
    says it forwarded (/metrics, retransmissions not included): on loopback they agree, except for what was
    in flight when the players closed their sockets. More received than sent = counting something twice."""
    result, _, _, server_side = bench
    totals = result["totals"]
    forwarded = _delta(server_side, "webcall_rtp_packets_sent_total")
    received = totals["player_media_packets"]
    assert forwarded > 0
    assert received <= forwarded, (received, forwarded)
    assert received >= 0.97 * forwarded, (received, forwarded)
    # ...and what the publisher sent against what the server received from it (retransmissions included there)
    got = _delta(server_side, "webcall_rtp_packets_received_total")
    retransmitted = _delta(server_side, "webcall_rtp_packets_recovered_total")
    sent = totals["publisher_media_packets"]
    assert got - retransmitted <= sent, (got, retransmitted, sent)
    assert got >= 0.97 * sent, (got, sent)


def test_window_delivery_per_player(bench) -> None:
    result, _, _, _ = bench
    (step,) = result["steps"]
    d = step["delivery"]
    sent = step["publisher_packets"]  # counted by the publisher's send log, not by the players
    # (a healthy 640x480 600 kbps VP8 + Opus publisher: ~50 audio + ≥ 60 video packets a second)
    assert sent >= 100 * step["window_s"] * 0.9, sent
    assert d["loss_pct"] < 5  # loopback
    for player in step["per_player"]:
        assert 0.95 * sent <= player["packets"] <= 1.0 * sent + 2, player  # never more than was sent
        assert player["bytes"] > player["packets"] * 12
        assert player["duplicates"] == 0 and player["offsets_learned"], player
    # ~600 kbps of video + Opus, per player, measured from the bytes received
    assert 300 < d["kbps_per_player"] < 1500, d


def test_cpu_figures_are_plausible(bench) -> None:
    result, _, proc, server_side = bench
    (step,) = result["steps"]
    cpu = step["server_cpu"]
    assert cpu is not None, "no server CPU figures"
    # The window's CPU is part of what the server used over the whole run (read by this test from /proc).
    assert 0 < cpu["seconds"] <= server_side["cpu_seconds"] + 0.05, (cpu, server_side["cpu_seconds"])
    assert 0 < cpu["fraction"] <= 2
    assert 0 < cpu["us_per_packet"] < 20_000
    ceiling = result["ceiling"]
    assert 0 < ceiling["us_per_output_packet"] < 1000 and ceiling["us_per_forwarded_packet"] > 0
    # user + kernel = the whole, per forwarded packet; and the whole per publisher packet
    assert cpu["us_user_per_packet"] + cpu["us_sys_per_packet"] == pytest.approx(cpu["us_per_packet"], abs=0.02)
    assert cpu["us_per_publisher_packet"] == pytest.approx(
        1e6 * cpu["seconds"] / step["publisher_packets"], rel=0.01)
    # the compiled ceiling, measured at this step's fan-out before and after the step, and the ratio to it
    compiled = result["compiled_ceiling"]
    assert set(compiled["fanouts"]) == {str(PLAYERS)} and len(compiled["runs"]) == 2
    assert cpu["compiled_us_per_packet"] == compiled["fanouts"][str(PLAYERS)]["us_per_forwarded_packet"] > 0
    # (the ratios are rounded to two decimals: 0.005 off at most)
    assert cpu["ratio_to_compiled"] == pytest.approx(cpu["us_per_packet"] / cpu["compiled_us_per_packet"], abs=0.005)
    assert "x C" in proc.stdout and "compiled ceiling" in proc.stdout
    # The server's own fan-out calls (its sampled fan-outs' CPU, from /metrics): part of what it spends per
    # forwarded packet, set against the same compiled loop.
    fanout = cpu["fanout_cpu_us_per_packet"]
    assert fanout is not None and 0 < fanout < 3 * cpu["us_per_packet"], cpu
    assert cpu["fanout_ratio_to_compiled"] == pytest.approx(fanout / cpu["compiled_us_per_packet"], abs=0.005)
    assert "x C fan" in proc.stdout and "its fan-out calls x" in proc.stdout + proc.stderr
    # and against the same loop waiting in recv for each packet (its wake-ups counted)
    woken = cpu["compiled_woken_us_per_packet"]
    assert woken > 0 and cpu["ratio_to_compiled_woken"] == pytest.approx(cpu["us_per_packet"] / woken, abs=0.005)
    assert "x C woken" in proc.stdout
    assert 0 < step["loadgen"]["cpu_fraction"] <= 2
    assert step["memory"]["server_rss_mb"] > 10
    # The same CPU by thread (each thread's own exact counter): the event loop and the publisher's ingest
    # thread both worked; together with what no live thread holds ("rest") they are the whole.
    threads = cpu["threads"]
    assert threads["event loop"]["ms_per_s"] > 0 and threads["ingest threads"]["ms_per_s"] > 0, threads
    assert sum(t["ms_per_s"] for t in threads.values()) == pytest.approx(
        1000 * cpu["seconds"] / step["window_s"], rel=0.02, abs=0.1)
    assert "ingest threads" in proc.stdout + proc.stderr  # the step line


def test_first_frame_and_latency_measured_for_every_player(bench) -> None:
    result, _, _, _ = bench
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
    result, _, _, _ = bench
    (step,) = result["steps"]
    integrity = step["integrity"]
    assert integrity["sampled"] >= PLAYERS and integrity["bad"] == 0 and integrity["unmatched"] == 0
    assert integrity["first_keyframes_intact"] == PLAYERS
    assert integrity["offsets_learned"] == PLAYERS and integrity["players_without_offsets"] == []


def test_plot_is_a_png(bench) -> None:
    result, out, _, _ = bench
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

    from webcall_bench.publisher import Pacer

    async def burst() -> float:
        pacer = Pacer(800_000)  # 100 kB/s: 1000-byte packets every 10 ms
        start = time.monotonic()
        for _ in range(11):
            await pacer.wait(1000)
        assert pacer.delayed >= 9
        return time.monotonic() - start

    assert asyncio.run(burst()) >= 0.095  # 10 intervals; a burst would take ~0


def test_the_bench_server_has_no_player_limit_per_stream(tmp_path) -> None:
    """A ramp past 1000 players found the default guardrail, not the knee: the bench's server lifts it, and a
    --server-arg still wins (the server's own parser reads the arguments as the bench passes them)."""
    argv = ServerProcess([], tmp_path / "server.log").args[3:]  # after `python -m webcall`
    assert parse_args(argv, environ={}).max_players_per_stream == 0
    argv = ServerProcess(["--max-players-per-stream", "5"], tmp_path / "server.log").args[3:]
    assert parse_args(argv, environ={}).max_players_per_stream == 5
