"""The operator's API server session: requests in flight are bounded, watch streams are not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kopf
from aiohttp import web

from mlplane.operator.config import API_SERVER_REQUESTS
from mlplane.operator.handlers import bounded_session


async def _serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    body: Callable[[aiohttp.ClientSession, str], Awaitable[Any]],
) -> Any:
    """Run `body` with a bounded session against a local HTTP server answering with `handler`."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = f"http://127.0.0.1:{port}"
    session = bounded_session(kopf.ConnectionInfo(server=server)).aiohttp_session
    try:
        return await body(session, server)
    finally:
        await session.close()
        await runner.cleanup()


def test_requests_beyond_the_bound_wait_for_one_in_flight() -> None:
    in_flight = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"ok": True})

    async def burst(session: aiohttp.ClientSession, server: str) -> list[dict[str, Any]]:
        async def get(i: int) -> dict[str, Any]:
            async with session.get(f"{server}/objects/{i}") as response:
                return await response.json()

        return await asyncio.gather(*(get(i) for i in range(3 * API_SERVER_REQUESTS)))

    answers = asyncio.run(_serving(slow, burst))

    assert answers == [{"ok": True}] * (3 * API_SERVER_REQUESTS)
    assert most == API_SERVER_REQUESTS


def test_watch_streams_do_not_take_a_request_slot() -> None:
    """More open watches than the bound (a namespace pattern matching many namespaces) must not
    starve the status patches."""
    release = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            stream = web.StreamResponse()
            await stream.prepare(request)
            await stream.write(b'{"type": "ADDED"}\n')
            await release.wait()
            return stream
        return web.json_response({"kind": "Status"})

    async def watch_then_patch(session: aiohttp.ClientSession, server: str) -> dict[str, Any]:
        watches: list[aiohttp.ClientResponse] = []
        try:
            async with asyncio.timeout(10):
                for i in range(API_SERVER_REQUESTS + 4):
                    url = f"{server}/watched/{i}"
                    watches.append(await session.get(url, params={"watch": "true"}))
                async with session.get(f"{server}/objects/x") as response:
                    return await response.json()
        finally:
            release.set()
            for watch in watches:
                watch.close()

    assert asyncio.run(_serving(answer, watch_then_patch)) == {"kind": "Status"}
