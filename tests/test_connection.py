"""proxy/connection.py on its own: an exception no middleware caught is still answered in the
OpenAI shape (docs/design.md §7), and its traceback stays in the log, since it is a bug."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from proxy.connection import GuardedAppRunner


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def _slow(request: web.Request) -> web.Response:
    raise TimeoutError


@pytest.mark.parametrize(
    ("path", "status", "kind"), [("/boom", 500, "server_error"), ("/slow", 504, "timeout_error")]
)
async def test_an_uncaught_exception_is_answered_openai_shaped(
    caplog: pytest.LogCaptureFixture, path: str, status: int, kind: str
) -> None:
    app = web.Application()
    app.router.add_get("/boom", _boom)
    app.router.add_get("/slow", _slow)
    runner = GuardedAppRunner(app, header_read_timeout=5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}{path}") as answer,
        ):
            assert answer.status == status
            assert answer.content_type == "application/json"
            assert (await answer.json())["error"]["type"] == kind
    finally:
        await runner.cleanup()
    if status == 500:
        bug = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(bug) == 1 and bug[0].exc_info is not None
