"""The cluster with the official Web SDK: Chromium publishes on node A, plays on node B (relayed from A).

Real parts: redis-server and two webcall nodes as processes (tests/support/cluster.py), Debian's chromium
driven by tests/browser/cluster_driver.mjs; the player's picture must move."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests.browser.test_browsers import REPO, _missing_prerequisites, _static_dir, assert_moving_picture
from tests.support.cluster import RedisServer, start_node
from tests.support.deps import missing_dependency

DRIVER = Path(__file__).resolve().parent / "cluster_driver.mjs"


async def test_sdk_publishes_on_one_node_and_plays_on_another(tmp_path) -> None:
    missing = _missing_prerequisites()
    if missing:
        missing_dependency("browser tests need: " + ", ".join(missing))
    static = _static_dir(tmp_path)
    redis = RedisServer()
    await redis.start()
    a, b = await asyncio.gather(start_node("A", redis.url, tmp_path, "--static-dir", str(static)),
                                start_node("B", redis.url, tmp_path, "--static-dir", str(static)))
    try:
        proc = await asyncio.create_subprocess_exec(
            shutil.which("node") or "node", str(DRIVER), "--pub", f"http://127.0.0.1:{a.http}",
            "--play", f"http://127.0.0.1:{b.http}", cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            raise
        lines = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
        assert lines, err.decode()[-3000:]
        result = json.loads(lines[-1][len("RESULT "):])
        assert "error" not in result, result["error"] + err.decode()[-2000:]
        assert result["publish"]["status"] == "PUBLISHING", result
        assert result["play"]["status"] == "PLAYING", result
        assert_moving_picture(result["frames"])
        assert "cluster pull stream=cluster-" in b.log() and "cluster serving stream=cluster-" in a.log()
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await redis.stop()
