"""Optional: two cluster nodes with delay and loss between them (`tc netem`), in a private network namespace.

Needs `unshare -n` and `tc` (root, or a user namespace allowed by the kernel); skipped with a message when the
machine does not allow them. The netem only touches the relay ports (tests/support/netem_cluster.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "support" / "netem_cluster.py"


def _namespaces_allowed() -> str | None:
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        return "unshare or tc is missing (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "tc qdisc add dev lo root handle 1: prio && "
                            "tc qdisc add dev lo parent 1:3 handle 30: netem delay 1ms"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no network namespace with prio and netem qdiscs here: {probe.stderr.strip()[:200]}"
    return None


def test_relay_between_nodes_with_delay_and_loss() -> None:
    why = _namespaces_allowed()
    if why is not None:
        pytest.skip(f"cluster netem test skipped: {why}")
    out = subprocess.run(["unshare", "-n", sys.executable, str(SCRIPT), "40", "3"], capture_output=True,
                         text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert "error" not in result, result
    # 3 % loss each way, 40 ms each way: the edge NACKs what it lost and the origin resends it from its ring
    assert result["nacks_from_edge"] > 0 and result["retransmitted_by_origin"] > 0, result
    assert result["fps"] > 15, result
    assert result["intact"] > 0.9, result
