"""Every client against webcall in real browsers (tests/browser/clients_driver.mjs, browsers as in browsers.mjs):

- the vendor's own example pages from @flashphoner/websdk, served unchanged under /static/websdk/ (the package's
  flashphoner.js, examples/demo/dependencies and the streaming pages used, copied as they are), pointed at webcall
  by typing its URL into the page's field and driven by clicking their buttons, in Chromium and Firefox: Two Way
  Streaming, Player, Stream Snapshot, Stream Recording, Stream Diagnostic;
- the published WHIP/WHEP browser clients in Chromium: @eyevinn/whip-web-client publishes to /whip/NAME,
  whip-whep's WHEPClient plays /whep/NAME (bundled here with esbuild into whip.html), and the vendor Player page
  plays the WHIP publication in both browsers.

What each page shows is the check: its status fields, and its <video> playing moving frames. One driver run
(about a minute) feeds every test. Console logs and screenshots land in artifacts/browser-clients/.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.browser.test_browsers import BROWSERS, REPO, Results, ServerThread, _missing_prerequisites
from tests.conftest import RunningServer
from tests.conftest import test_config as base_config
from tests.support.deps import missing_dependency

HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "artifacts" / "browser-clients"
DRIVER = HERE / "clients_driver.mjs"
DRIVER_TIMEOUT = 240
WEBSDK = REPO / "node_modules" / "@flashphoner" / "websdk"
PAGES = ("two_way_streaming", "player", "stream-snapshot", "stream_recording", "stream-diagnostic")
ESBUILD = REPO / "node_modules" / ".bin" / "esbuild"
WHIP_PACKAGES = ("@eyevinn/whip-web-client", "whip-whep")


def _static_dir(tmp: Path) -> Path:
    """The vendor pages as the package ships them, plus whip.html and its bundle."""
    static = tmp / "static"
    sdk = static / "websdk"
    (sdk / "examples" / "demo" / "streaming").mkdir(parents=True)
    shutil.copy(WEBSDK / "flashphoner.js", sdk / "flashphoner.js")  # the pages load ../../../../flashphoner.js
    shutil.copytree(WEBSDK / "examples" / "demo" / "dependencies", sdk / "examples" / "demo" / "dependencies")
    for page in PAGES:
        shutil.copytree(WEBSDK / "examples" / "demo" / "streaming" / page,
                        sdk / "examples" / "demo" / "streaming" / page)
    shutil.copy(HERE / "whip.html", static / "whip.html")
    build = subprocess.run([str(ESBUILD), str(HERE / "whip_clients.js"), "--bundle", "--format=iife",
                            "--target=es2020", f"--outfile={static / 'whip-clients.js'}"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    return static


def _run_driver(base_url: str) -> tuple[int, str, str]:
    cmd = ["node", str(DRIVER), "--base", base_url, "--artifacts", str(ARTIFACTS)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[test] driver killed after {DRIVER_TIMEOUT} s\n"
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    missing = _missing_prerequisites()
    if not (WEBSDK / "examples" / "demo" / "streaming" / "two_way_streaming").is_dir():
        missing.append("the Web SDK examples (npm ci)")
    if not ESBUILD.exists():
        missing.append("node_modules/.bin/esbuild (npm ci)")
    missing += [f"node_modules/{p} (npm ci)" for p in WHIP_PACKAGES
                if not (REPO / "node_modules" / p / "package.json").is_file()]
    if missing:
        missing_dependency("client browser tests need: " + ", ".join(missing))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*"):
        if old.is_file():
            old.unlink()

    tmp = tmp_path_factory.mktemp("clients")
    log_file = ARTIFACTS / "server.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    webcall_log = logging.getLogger("webcall")
    old_level = webcall_log.level
    webcall_log.addHandler(handler)
    webcall_log.setLevel(logging.DEBUG)

    thread = ServerThread(base_config(static_dir=str(_static_dir(tmp)), records_dir=str(tmp / "records")))
    thread.start()
    leftovers = None
    try:
        assert thread.server is not None
        returncode, out, err = _run_driver(f"http://127.0.0.1:{thread.server.http_port}")
        (ARTIFACTS / "driver.out").write_text(out)
        (ARTIFACTS / "driver.err").write_text(err)
        try:
            thread.run(RunningServer(thread.server).wait_empty(timeout=10), timeout=15)
        except AssertionError as exc:
            leftovers = repr(exc)[:2000]
    finally:
        thread.stop()
        webcall_log.removeHandler(handler)
        webcall_log.setLevel(old_level)
        handler.close()
    return Results(out, err, returncode, leftovers, log_file.read_text())


def test_driver_ran_cleanly(results: Results) -> None:
    assert ("all", "done") in results.by_key, "driver did not finish:\n" + results.stderr[-3000:]
    assert results.returncode == 0, results.stderr[-3000:]


def test_server_released_everything(results: Results) -> None:
    assert results.server_leftovers is None, results.server_leftovers


def test_server_log_has_no_errors(results: Results) -> None:
    bad = [line for line in results.server_log.splitlines()
           if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]
    assert not bad, "\n".join(bad[:20])


@pytest.fixture(params=BROWSERS)
def browser(request) -> str:
    return request.param


def assert_moving_picture(frames: dict | None, browser: str) -> None:
    assert frames and not frames.get("error"), frames
    assert frames["videoWidth"] > 0 and frames["videoHeight"] > 0 and not frames["paused"], frames
    assert frames["advanced"] > 0.3, f"the video's clock stands still: {frames}"
    if browser == "firefox":  # Firefox's fake camera: one flat colour that cycles
        assert frames["colourDiff"] > 0.5, f"the picture does not change: {frames}"
    else:
        assert frames["stdLuma"] > 5, f"a flat picture: {frames}"
        assert frames["meanAbsDiff"] > 0.5 and frames["changedFraction"] > 0.005, f"the picture does not move: {frames}"


def assert_player_page(player: dict, browser: str) -> None:
    assert (player["status"], player["info"]) == ("PLAYING", ""), player
    assert_moving_picture(player.get("frames"), browser)
    assert player["stop"] == "STOPPED", player
    assert not player["pageErrors"], player


def test_vendor_two_way_streaming(results: Results, browser: str) -> None:
    data = results.get(browser, "vendor_two_way")
    assert data["connect"] == "ESTABLISHED", data
    assert (data["publish"], data["play"]) == ("PUBLISHING", "PLAYING"), data
    assert_moving_picture(data.get("frames"), browser)
    assert (data["stopPlay"], data["unpublish"], data["disconnect"]) == ("STOPPED", "UNPUBLISHED", "DISCONNECTED"), data
    assert not data["pageErrors"], data


def test_vendor_player(results: Results, browser: str) -> None:
    """The Player page on the stream the Two Way Streaming page publishes (same browser)."""
    data = results.get(browser, "vendor_two_way")
    assert data["player"]["streamNameField"] == data["name"], data  # its streamName query parameter
    assert_player_page(data["player"], browser)


def test_vendor_stream_snapshot(results: Results, browser: str) -> None:
    data = results.get(browser, "vendor_snapshot")
    assert data["publish"] == "PUBLISHING", data
    assert data["snapshotStatus"] == "", data  # the page clears it on SNAPSHOT_COMPLETE, shows FAILED otherwise
    image = data["image"]
    assert image["png"] and image["w"] > 0 and image["h"] > 0, data
    assert data["unpublish"] == "UNPUBLISHED", data
    assert not data["pageErrors"], data


def test_vendor_stream_recording(results: Results, browser: str) -> None:
    data = results.get(browser, "vendor_recording")
    assert (data["publish"], data["unpublish"]) == ("PUBLISHING", "UNPUBLISHED"), data
    assert data["link"]["visible"] and "/client/records/" in data["link"]["href"], data
    assert data["download"]["status"] == 200 and data["download"]["bytes"] > 10_000, data
    assert data["download"]["type"] == "video/webm", data
    video = data["recVideo"]  # the page's own <video> on the record loads it
    assert video["error"] is None and video["readyState"] >= 1 and video["duration"] > 1 and video["w"] > 0, data
    assert not data["pageErrors"], data


def test_vendor_stream_diagnostic(results: Results, browser: str) -> None:
    data = results.get(browser, "vendor_diagnostic")
    assert (data["publish"], data["preview"]) == ("PUBLISHING", "PLAYING"), data
    assert_moving_picture(data.get("frames"), browser)
    assert data["unpublish"] == "UNPUBLISHED", data
    assert not data["pageErrors"], data


def test_whip_web_client_publishes_and_whip_whep_plays(results: Results) -> None:
    data = results.get("chromium", "whip_whep")
    assert "/whip/" in data["publish"]["resource"], data
    assert data["publish"]["ice"] in ("connected", "completed"), data
    # whip-web-client trickles only when the OPTIONS preflight allows PATCH, and gives up trickling when a
    # PATCH fails: still on means every candidate PATCH was accepted (204)
    assert data["publish"]["trickle"] is True, data
    assert data["play"]["connection"] == "connected" and data["play"]["tracks"] == ["audio", "video"], data
    assert "/whep/" in (data["play"]["resource"] or ""), data
    assert_moving_picture(data["frames"], "chromium")
    assert not data["pageErrors"], data
    # Every HTTP request of the page succeeded, the WHIP DELETE included. Not the WHEP DELETE: whip-whep's stop()
    # closes its RTCPeerConnection first, the server ends the playback on the DTLS close_notify (why=peer-closed),
    # and the DELETE that follows finds no session (404; the library ignores the answer).
    unexpected = [line for line in data["httpErrors"]
                  if not line.endswith("/favicon.ico")
                  and not (line.startswith("http 404 DELETE") and "/whep/" in line)]
    assert not unexpected, data["httpErrors"]


def test_whip_publication_in_vendor_player(results: Results, browser: str) -> None:
    data = results.get("chromium", "whip_whep")
    assert_player_page(data["vendorPlayer"][browser], "chromium")  # Chromium's fake camera, whoever plays it
