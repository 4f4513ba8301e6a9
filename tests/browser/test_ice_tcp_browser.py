"""WebRTC over ICE-TCP in Chromium with the official SDK (tests/browser/ice_tcp_driver.mjs).

Two ways a browser ends up on TCP: the SDK's `transport: "TCP"` (the server then announces only its passive TCP
candidates), and a browser that may not use UDP at all (Chromium's
`--force-webrtc-ip-handling-policy=disable_non_proxied_udp`) meeting a server that announces UDP and TCP. Both
publish and play; what the player renders is checked, and so is the candidate pair each browser selected.
The server runs two media workers (each with its own TCP port), players spread over both.
"""

from __future__ import annotations

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
SCENARIOS = ("sdk_tcp", "udp_blocked")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    missing = _missing_prerequisites()
    if missing:
        missing_dependency("browser tests need: " + ", ".join(missing))
    thread = ServerThread(base_config(static_dir=str(_static_dir(tmp_path_factory.mktemp("ice-tcp"))),
                                      workers="2", placement="spread"))
    thread.start()
    try:
        assert thread.server is not None and all(thread.server.workers.media_tcp_ports())
        cmd = ["node", str(DRIVER), "--base", f"http://127.0.0.1:{thread.server.http_port}",
               "--artifacts", str(ARTIFACTS)]
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
    finally:
        thread.stop()
    found = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            item = json.loads(line[len("RESULT "):])
            found[item["scenario"]] = item
    found["_stderr"] = err
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
