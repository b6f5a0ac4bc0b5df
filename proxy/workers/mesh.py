"""The worker mesh: how the workers of one `sidecache serve --workers N` reach each other.

Each worker serves a small private app on a unix socket in the run directory the supervisor
made (mode 0700: only this user's processes can reach it): its own metrics exposition, and the
admin actions whose state lives in each process (breaker resets; invalidations with the memory
store). The worker an admin call lands on does the action itself, then asks its siblings to do
it too; the worker a scrape lands on merges its siblings' expositions with its own (merge.py).
A sibling that does not answer (restarting) is left out, and the answer says how many were
reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.invalidation.selectors import Selector
from proxy.runtime import Runtime
from proxy.workers.merge import merge_expositions

log = logging.getLogger("sidecache.workers")
SIBLING_TIMEOUT_S = 2.0
MESH_SOURCE = "mesh"  # the invalidations metric's source for a sibling's copy of an admin rule


class ResetNotice(msgspec.Struct, frozen=True):
    breaker: str | None = None


class InvalidateNotice(msgspec.Struct, frozen=True):
    selectors: list[Selector]


_decode_reset = msgspec.json.Decoder(ResetNotice).decode
_decode_invalidate = msgspec.json.Decoder(InvalidateNotice).decode


def socket_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


class Mesh:
    """This worker's place among `count` workers, and its end of the mesh."""

    def __init__(self, runtime: Runtime, run_dir: Path, index: int, count: int) -> None:
        self.runtime = runtime
        self.run_dir = run_dir
        self.index = index
        self.count = count
        self._runner: web.AppRunner | None = None
        self._supervisor = os.getppid()
        # The admin app adds its own routes (warming jobs) before start().
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._own_metrics)
        self.app.router.add_post("/circuits/reset", self._reset)
        self.app.router.add_post("/invalidate", self._invalidate)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        path = socket_path(self.run_dir, self.index)
        path.unlink(missing_ok=True)  # a previous worker of this index died without removing it
        await web.UnixSite(self._runner, str(path)).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        socket_path(self.run_dir, self.index).unlink(missing_ok=True)
        if os.getppid() != self._supervisor:  # orphaned: the last worker out removes the dir
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    async def merged_metrics(self, request: web.Request) -> web.Response:
        """`GET /metrics` on the admin port: every worker's figures, summed."""
        texts = {self.index: self._exposition()}
        for index, body in (await self.ask_siblings("GET", "/metrics")).items():
            texts[index] = body.decode()
        return web.Response(
            body=merge_expositions(texts), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def broadcast(self, path: str, notice: msgspec.Struct) -> int:
        """Sends `notice` to every sibling; the number of siblings that took it."""
        return len(await self.ask_siblings("POST", path, msgspec.json.encode(notice)))

    async def ask_siblings(self, method: str, path: str, body: bytes = b"") -> dict[int, bytes]:
        """Each sibling's answer body, by index; left out: those that answered 404 (not
        there) or did not answer."""
        siblings = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(*(self._ask(i, method, path, body) for i in siblings))
        return {
            i: answer for i, answer in zip(siblings, answers, strict=True) if answer is not None
        }

    async def _ask(self, index: int, method: str, path: str, body: bytes) -> bytes | None:
        connector = aiohttp.UnixConnector(path=str(socket_path(self.run_dir, index)))
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://worker{path}", data=body) as answer,
            ):
                if answer.status == 404:
                    return None
                answer.raise_for_status()
                return await answer.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("worker %d did not answer %s %s: %s", index, method, path, exc)
            return None

    def _exposition(self) -> str:
        return generate_latest(self.runtime.metrics.registry).decode()

    async def _own_metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self._exposition())

    async def _reset(self, request: web.Request) -> web.Response:
        notice = _decode_reset(await request.read())
        return _json(self.runtime.breakers.reset(notice.breaker))

    async def _invalidate(self, request: web.Request) -> web.Response:
        notice = _decode_invalidate(await request.read())
        stamp = await self.runtime.invalidations.invalidate(notice.selectors, source=MESH_SOURCE)
        return _json({"generation": stamp.generation})


def _json(value: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), content_type="application/json")
