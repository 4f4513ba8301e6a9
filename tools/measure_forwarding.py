"""A simple measurement of the server's CPU per forwarded packet (the full benchmark is `webcall bench`).

Starts webcall as a subprocess on 127.0.0.1, publishes the synthetic test stream (640x480 VP8 + Opus) with
aiortc, attaches N aiortc players, and divides the server process's user+sys CPU time over a window by the
number of RTP packets it forwarded in that window (read from the players' receive counters).

    .venv/bin/python tools/measure_forwarding.py --players 4 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import peers  # noqa: E402
from tests.support.wcs_client import WcsClient  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def received_packets(player: peers.Player) -> int:
    total = 0
    for receiver in player.pc.getReceivers():
        stats = receiver._RTCRtpReceiver__remote_streams  # per-SSRC receive counters kept by aiortc
        total += sum(s.packets_received for s in stats.values())
    return total


async def main(players: int, seconds: float) -> None:
    peers.install_loopback_only()
    http, media = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", str(http),
                             "--media-host", "127.0.0.1", "--media-port", str(media), "--media-tcp-port", "off", "--public-ip", "127.0.0.1", "--tls-port", "-1",
                             "--log-level", "warning"])
    try:
        url = f"ws://127.0.0.1:{http}/"
        for _ in range(50):
            try:
                pub_client = await WcsClient.connect(url)
                break
            except OSError:
                await asyncio.sleep(0.1)
        publisher = await peers.publish(pub_client, "measure")
        await publisher.wait_status("PUBLISHING", timeout=10)
        clients = [await WcsClient.connect(url) for _ in range(players)]
        players_ = [await peers.play(c, "measure") for c in clients]
        await asyncio.gather(*(p.wait_frames(10, timeout=15) for p in players_))
        await asyncio.sleep(1)
        cpu0, pk0 = cpu_seconds(proc.pid), sum(received_packets(p) for p in players_)
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, pk1 = cpu_seconds(proc.pid), sum(received_packets(p) for p in players_)
        wall = time.monotonic() - t0
        forwarded = pk1 - pk0
        print(f"players={players} window={wall:.1f}s forwarded_packets={forwarded} "
              f"({forwarded / wall:.0f}/s) server_cpu={cpu1 - cpu0:.2f}s ({100 * (cpu1 - cpu0) / wall:.1f}% of a core) "
              f"=> {1e6 * (cpu1 - cpu0) / max(forwarded, 1):.1f} us of server CPU per forwarded packet "
              f"(includes receiving, RTCP, signalling and the publisher leg)")
        for p in players_:
            await p.stop()
        await publisher.stop()
        for c in [pub_client, *clients]:
            await c.close()
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--players", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.players, args.seconds))
