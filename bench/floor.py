"""Minimal cache-hit servers: the references for the sidecar's hit path, measured in the same run.

`python -m bench.floor STORE PORT ANSWER_FILE REQUEST_FILE` keeps ANSWER_FILE under the key of
REQUEST_FILE's JSON, then answers every POST by decoding the JSON body, hashing its canonical
encoding (sha256) and returning the stored value: aiohttp + uvloop + msgspec, no access log,
GC frozen after start-up (the minimal server of docs/design.md §9). STORE is a Redis URL (the
value is SET there and each request does one GET with redis-py/hiredis) or `dict` (the value
sits in an in-process dict: the same decode and hash, no round trip, what aiohttp itself
allows). It prints `floor listening` when ready and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import msgspec
import uvloop
from aiohttp import web
from redis.asyncio import ConnectionPool, Redis

DICT_STORE = "dict"
_CANONICAL = msgspec.json.Encoder(order="deterministic")
_DECODE = msgspec.json.Decoder()
_HIT_HEADERS = {"X-Cache": "HIT"}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _key(body: bytes) -> str:
    return "floor:" + hashlib.sha256(_CANONICAL.encode(_DECODE.decode(body))).hexdigest()


def _answer(value: bytes | str | None) -> web.Response:
    if value is None:
        return web.Response(status=404)
    return web.Response(body=value, content_type="application/json", headers=_HIT_HEADERS)


async def _redis_handler(stack: AsyncExitStack, redis_url: str, key: str, answer: bytes) -> Handler:
    redis = Redis(connection_pool=ConnectionPool.from_url(redis_url))
    stack.push_async_callback(redis.aclose)
    await redis.set(key, answer)

    async def hit(request: web.Request) -> web.Response:
        return _answer(await redis.get(_key(await request.read())))

    return hit


def _dict_handler(key: str, answer: bytes) -> Handler:
    values = {key: answer}

    async def hit(request: web.Request) -> web.Response:
        return _answer(values.get(_key(await request.read())))

    return hit


async def _serve(store: str, port: int, answer: bytes, request_body: bytes) -> None:
    async with AsyncExitStack() as stack:
        key = _key(request_body)
        if store == DICT_STORE:
            hit = _dict_handler(key, answer)
        else:
            hit = await _redis_handler(stack, store, key, answer)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", hit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        gc.collect()
        gc.freeze()
        print("floor listening", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print(
            f"usage: python -m bench.floor REDIS_URL|{DICT_STORE} PORT ANSWER_FILE REQUEST_FILE",
            file=sys.stderr,
        )
        return 2
    store, port, answer, request_body = args
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            _serve(store, int(port), Path(answer).read_bytes(), Path(request_body).read_bytes())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
