"""Run inside a private network namespace (`unshare -n`, see tests/e2e/test_cluster_netem.py): two cluster nodes
whose relay traffic between each other crosses `tc netem` delay and loss on that namespace's loopback (a prio
qdisc sends only the relay ports through netem; the clients' and Redis's traffic is not touched). An aiortc
publisher on A, a player on B; prints one JSON line with what the player decoded and what the relay recovered."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import peers  # noqa: E402
from tests.support.cluster import RedisServer, free_port, start_node  # noqa: E402


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


async def main(delay_ms: int, loss_pct: float) -> None:
    sh("ip", "link", "set", "lo", "up")
    relay_a, relay_b = free_port(2), free_port(2)  # SOCK_DGRAM
    if delay_ms or loss_pct:  # 0 0: the same run without netem (to check this script where netem is missing)
        sh("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "prio")
        sh("tc", "qdisc", "add", "dev", "lo", "parent", "1:3", "handle", "30:", "netem", "delay", f"{delay_ms}ms",
           "loss", f"{loss_pct}%")
        for port in (relay_a, relay_b):
            sh("tc", "filter", "add", "dev", "lo", "protocol", "ip", "parent", "1:0", "prio", "1", "u32", "match",
               "ip", "dport", str(port), "0xffff", "flowid", "1:3")
    redis = RedisServer()
    await redis.start()
    tmp = Path(tempfile.mkdtemp(prefix="netem-cluster-"))
    a, b = await asyncio.gather(start_node("A", redis.url, tmp, "--relay-port", str(relay_a)),
                                start_node("B", redis.url, tmp, "--relay-port", str(relay_b)))
    result: dict = {}
    try:
        pub = await peers.publish(await a.client(), "far", width=320, height=240)
        await pub.wait_status("PUBLISHING", 10)
        player = await peers.play(await b.client(), "far")
        await player.wait_decoded_frames(30, timeout=20)
        since = len(player.frames)
        started = time.monotonic()
        await asyncio.sleep(5.0)
        stats = player.counter_stats(since)
        _, state_a = await a.rest_call("/cluster")
        _, state_b = await b.rest_call("/cluster")
        result = {"fps": stats["frames"] / (time.monotonic() - started), "intact": player.intact_ratio(since),
                  "stats": stats, "retransmitted_by_origin": state_a["retransmitted"],
                  "nacks_from_edge": state_b["relay"]["nacks_sent"], "ttff": player.time_to_first_frame}
        await player.close()
        await pub.close()
    except Exception as exc:  # reported, not raised: the test prints the logs
        result = {"error": repr(exc), "log_a": a.log()[-2000:], "log_b": b.log()[-2000:]}
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await redis.stop()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
