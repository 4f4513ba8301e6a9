"""Worker apps for tests/unit/test_workers_supervisor.py, plugged in with `--app tests.unit.workers_apps:NAME`."""

from __future__ import annotations

import asyncio

from webcall.workers.main import WorkerContext


async def demo(ctx: WorkerContext) -> None:
    """An op of its own, something in `hello`, an event to the control process, a request to it."""
    ctx.info["app"] = "demo"
    ctx.channel.on_request("double", lambda x: 2 * x)

    async def ask_control(name: str) -> str:
        return await ctx.channel.request("lookup", name=name)

    ctx.channel.on_request("ask_control", ask_control)

    async def report() -> None:
        await asyncio.sleep(0.05)
        ctx.channel.notify("load", players=ctx.index * 10)

    asyncio.get_running_loop().create_task(report())


def crash(ctx: WorkerContext) -> None:
    raise RuntimeError("media port in use")
