"""The control↔worker channel (webcall/workers/channel.py): the frame codec, and two Channels over a real
socketpair — requests, replies, events, errors as values, deadlines, and the ping that finds a silent peer."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from webcall.workers.channel import (
    MAX_FRAME,
    Channel,
    ChannelClosed,
    ChannelTimeout,
    FrameDecoder,
    FrameError,
    RemoteError,
    encode_frame,
)

# -- codec ----------------------------------------------------------------------------------------------------


def test_frame_roundtrip_whole_split_and_batched():
    msgs = [{"t": "req", "id": i, "op": "echo", "args": {"x": "é" * i, "n": [1, 2.5, None, True]}} for i in range(5)]
    wire = b"".join(encode_frame(m) for m in msgs)
    assert FrameDecoder().feed(wire) == msgs
    dec = FrameDecoder()
    out = []
    for i in range(len(wire)):  # one byte at a time
        out += dec.feed(wire[i:i + 1])
    assert out == msgs and dec.pending == 0
    dec = FrameDecoder()
    assert dec.feed(wire[:7]) == [] and dec.pending == 7


def test_frame_rejects_oversize_bad_json_and_non_objects():
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", 3) + b"{x}")
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", 2) + b"\xff\xfe")
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack("!I", 2) + b"[]")
    with pytest.raises(TypeError):
        encode_frame({"raw": b"bytes are not JSON"})


def test_frame_is_length_prefixed_compact_json():
    wire = encode_frame({"a": 1})
    assert wire[:4] == struct.pack("!I", len(wire) - 4)
    assert json.loads(wire[4:]) == {"a": 1}


# -- channel over a socketpair ----------------------------------------------------------------------------------


async def pair() -> tuple[Channel, Channel]:
    sa, sb = socket.socketpair()
    a = await Channel.from_socket(sa, name="a")
    b = await Channel.from_socket(sb, name="b")
    return a, b


async def test_request_reply_sync_and_async_handlers():
    a, b = await pair()

    async def slow_add(x: int, y: int) -> int:
        await asyncio.sleep(0.05)
        return x + y

    b.on_request("add", slow_add)
    b.on_request("echo", lambda **kw: kw)
    a.start(), b.start()
    assert await a.request("echo", s="x", n=[1, {"k": None}]) == {"s": "x", "n": [1, {"k": None}]}
    # out-of-order replies go to the right callers
    slow = asyncio.create_task(a.request("add", x=2, y=3))
    assert await a.request("echo", v=1) == {"v": 1}
    assert await slow == 5
    # both ends can request
    a.on_request("who", lambda: "a")
    assert await b.request("who") == "a"
    a.close(), b.close()


async def test_errors_are_values_and_do_not_kill_the_channel():
    a, b = await pair()

    def boom(**_):
        raise ValueError("no such stream")

    b.on_request("boom", boom)
    b.on_request("bad_result", lambda: object())
    b.on_request("ok", lambda: "ok")
    a.start(), b.start()
    with pytest.raises(RemoteError) as err:
        await a.request("boom", name="x")
    assert err.value.type == "ValueError" and "no such stream" in err.value.message
    with pytest.raises(RemoteError) as err:
        await a.request("nope")
    assert err.value.type == "UnknownOp"
    with pytest.raises(RemoteError) as err:
        await a.request("bad_result")
    assert err.value.type == "TypeError"
    assert await a.request("ok") == "ok"
    assert b.handler_errors == 2 and not a.closed and not b.closed
    a.close(), b.close()


async def test_deadline_raises_channel_timeout_and_late_reply_is_counted():
    a, b = await pair()

    async def slow():
        await asyncio.sleep(0.3)
        return "late"

    b.on_request("slow", slow)
    a.start(), b.start()
    with pytest.raises(ChannelTimeout):
        await a.request("slow", timeout=0.05)
    await asyncio.sleep(0.4)
    assert a.late_replies == 1
    assert await a.request("slow", timeout=2) == "late"
    a.close(), b.close()


async def test_events_arrive_in_order_unknown_and_failing_ones_are_counted():
    a, b = await pair()
    got: list[int] = []
    done = asyncio.Event()

    def on_tick(n: int) -> None:
        got.append(n)
        if n == 99:
            done.set()

    async def on_async(n: int) -> None:
        raise RuntimeError("handler bug")

    b.on_event("tick", on_tick)
    b.on_event("bad", on_async)
    a.start(), b.start()
    a.notify("unheard", x=1)
    a.notify("bad", n=1)
    for i in range(100):
        a.notify("tick", n=i)
    await asyncio.wait_for(done.wait(), 2)
    assert got == list(range(100))
    await asyncio.sleep(0.01)
    assert b.unknown_events == 1 and b.handler_errors == 1 and not b.closed
    a.close(), b.close()


async def test_peer_close_fails_pending_requests_and_reports_eof():
    a, b = await pair()
    reasons: list[str] = []
    b.on_request("forever", lambda: asyncio.sleep(3600))
    a.start(on_closed=reasons.append), b.start()
    pending = asyncio.create_task(a.request("forever", timeout=None))
    await asyncio.sleep(0.05)
    b.close()
    with pytest.raises(ChannelClosed):
        await pending
    assert await asyncio.wait_for(a.wait_closed(), 2) == "eof"
    assert reasons == ["eof"]
    with pytest.raises(ChannelClosed):
        a.notify("x")
    with pytest.raises(ChannelClosed):
        await a.request("x")


async def test_garbage_on_the_wire_closes_the_channel_with_a_reason():
    sa, sb = socket.socketpair()
    a = await Channel.from_socket(sa, name="a")
    a.start()
    sb.sendall(struct.pack("!I", 5) + b"nope!")
    reason = await asyncio.wait_for(a.wait_closed(), 2)
    assert reason.startswith("bad frame")
    sb.close()


async def test_ping_finds_a_silent_peer():
    sa, silent = socket.socketpair()  # the other end is never read: like a stopped process
    a = await Channel.from_socket(sa, name="a")
    lost = asyncio.Event()
    a.start(ping_interval=0.05, ping_timeout=0.1, on_unresponsive=lost.set)
    await asyncio.wait_for(lost.wait(), 1)
    a.close()
    silent.close()


async def test_ping_keeps_quiet_while_the_peer_answers():
    a, b = await pair()
    lost: list[bool] = []
    a.start(ping_interval=0.02, ping_timeout=0.5, on_unresponsive=lambda: lost.append(True))
    b.start()
    await asyncio.sleep(0.3)
    assert lost == [] and not a.closed
    a.close(), b.close()


async def test_abort_closes_at_once_even_with_unread_data_queued():
    sa, silent = socket.socketpair()
    a = await Channel.from_socket(sa, name="a")
    a.start()
    for _ in range(200):
        a.notify("fill", blob="x" * 65536)  # far more than the kernel buffers: the rest waits in user space
    assert a.write_buffer_size > 0
    a.close("peer stopped", abort=True)
    await asyncio.sleep(0.05)
    silent.setblocking(False)
    drained = 0
    try:
        while chunk := silent.recv(1 << 20):
            drained += len(chunk)
    except BlockingIOError:
        pytest.fail("socket still open after abort")
    assert drained < 200 * 65536  # EOF came long before everything was delivered
    silent.close()
