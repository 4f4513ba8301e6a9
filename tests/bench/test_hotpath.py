"""The in-process hot-path micro-benchmark (webcall_bench/hotpath.py) times the real path, doing the real work.

A benchmark that timed a path which forwards nothing (players not started, not promoted, packets refused by
SRTP) would report a win for any change that breaks forwarding; so: every publisher packet is unprotected and
reaches every player through the compiled core, and every player's sender-report tick sends one datagram.
"""

from __future__ import annotations

import os

import pytest

from webcall.media.fanout import load_error, load_library
from webcall_bench.hotpath import ReceiveBench, main


def _lib():
    lib = load_library()
    if lib is None:
        if os.environ.get("WEBCALL_ALLOW_SKIP") == "1":
            pytest.skip(f"fan-out core not built: {load_error()}")
        pytest.fail(f"fan-out core not built (make core): {load_error()}")
    return lib


def test_every_packet_reaches_every_player_through_the_core() -> None:
    bench = ReceiveBench(3, _lib())
    try:
        assert all(c.target is not None for c in bench.consumers), "players were not promoted to the core"
        before_core = [c.target.packets for c in bench.consumers]
        bench.received = 0
        assert bench.run(20) > 0
        assert bench.on_srtp.__self__.srtp_errors == 0
        assert [c.target.packets - b for c, b in zip(bench.consumers, before_core)] == [20, 20, 20]
        assert bench.received == 3 * 20  # within the inbox's buffer
        bench.received = 0
        bench.sender_reports()
        assert bench.received == 3  # one compound SR (audio + video) per player
        bench.received = 0
        bench.core_sender_reports()
        assert bench.received == 3  # the same from the core (media/reports.py)
        assert bench.reports.reports == 3
    finally:
        bench.close()


def test_command_line_prints_one_line_per_fanout(capsys) -> None:
    _lib()
    main(["--players", "1,2", "--packets", "20", "--repeat", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["players=", "1"], ["players=", "2"]]
    for line in lines:
        assert "receive CPU µs/publisher packet median=" in line and "SR CPU µs/player median=" in line
        assert "core SR CPU µs/player median=" in line
