"""WebRTC over ICE-TCP in Chromium and Firefox with the official SDK (tests/browser/ice_tcp_driver.mjs).

Two ways a browser ends up on TCP: the SDK's `transport: "TCP"` (the server then announces only its passive TCP
candidates; two media workers, each with its own TCP port, players spread over both), and UDP that goes nowhere:
a one-process server announces UDP and TCP as usual, but its UDP candidate leads to a socket that drops
everything, as a firewall that drops UDP does. The browser tries UDP first (higher priority) and must fall back
to TCP. Both publish and play; what the player renders is checked, and so is the candidate pair each browser
selected. Firefox (its own ICE-TCP) does the first one too. (Chromium's
--force-webrtc-ip-handling-policy=disable_non_proxied_udp was tried first: with no proxy configured it still
used UDP on 127.0.0.1, so it does not block UDP here.)
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess

import pytest

from tests.browser.test_browsers import REPO, ServerThread, _missing_prerequisites, _static_dir
from tests.conftest import RunningServer
from tests.conftest import test_config as base_config
from tests.support.deps import missing_dependency

DRIVER = REPO / "tests" / "browser" / "ice_tcp_driver.mjs"
ARTIFACTS = REPO / "artifacts" / "browser-ice-tcp"
SCENARIOS = ("sdk_tcp", "udp_blocked", "firefox_sdk_tcp")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    missing = _missing_prerequisites()
    if missing:
        missing_dependency("browser tests need: " + ", ".join(missing))
    static = str(_static_dir(tmp_path_factory.mktemp("ice-tcp")))
    thread = ServerThread(base_config(static_dir=static, workers="2", placement="spread"))
    blocked = ServerThread(base_config(static_dir=static))
    thread.start()
    blocked.start()
    try:
        assert thread.server is not None and all(thread.server.workers.media_tcp_ports())
        assert blocked.server is not None and blocked.server.media_tcp_port

        dropped = [0]

        class Hole(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                dropped[0] += 1  # the browser's STUN checks on UDP, answered by nobody

        async def black_hole() -> asyncio.DatagramTransport:
            hole, _ = await asyncio.get_running_loop().create_datagram_endpoint(Hole, local_addr=("127.0.0.1", 0))
            blocked.server.hub.plane.candidates = (("127.0.0.1", hole.get_extra_info("sockname")[1]),)
            return hole

        hole = blocked.run(black_hole())
        cmd = ["node", str(DRIVER), "--base", f"http://127.0.0.1:{thread.server.http_port}",
               "--blocked-base", f"http://127.0.0.1:{blocked.server.http_port}", "--artifacts", str(ARTIFACTS)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "driver.out").write_text(out)
        (ARTIFACTS / "driver.err").write_text(err)
        thread.run(RunningServer(thread.server).wait_empty(timeout=10), timeout=15)
        blocked.run(RunningServer(blocked.server).wait_empty(timeout=10), timeout=15)
        blocked.loop.call_soon_threadsafe(hole.close)
    finally:
        thread.stop()
        blocked.stop()
    found = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            item = json.loads(line[len("RESULT "):])
            found[item["scenario"]] = item
    found["_stderr"] = err
    found["_udp_checks_dropped"] = dropped[0]
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chromium_publishes_and_plays_over_tcp(results: dict, scenario: str) -> None:
    item = results.get(scenario)
    assert item is not None, f"no result for {scenario}; driver stderr:\n{results['_stderr'][-3000:]}"
    assert not item.get("error"), item["error"]
    data = item["data"]
    assert data["published"] == "PUBLISHING", data
    assert data["playing"] == "PLAYING", data
    frames = data["frames"]
    assert not frames.get("error") and (frames["videoWidth"], frames["videoHeight"]) == (640, 480), frames
    assert frames["meanAbsDiff"] > 1.0 and frames["stdLuma"] > 10, f"the player shows no moving picture: {frames}"
    for side in ("publisherPair", "playerPair"):
        pair = data[side]
        assert pair and pair["localProtocol"] == "tcp" and pair["remoteProtocol"] == "tcp", (side, pair)
        assert pair["remoteTcpType"] == "passive", (side, pair)
    assert data["inbound"]["framesDecoded"] > 30, data["inbound"]
    if scenario == "udp_blocked":
        assert results["_udp_checks_dropped"] > 0, "the browser never tried UDP: nothing was blocked"
