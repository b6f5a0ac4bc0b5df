"""A minimal cache-hit server: the reference for the sidecar's hit path, measured in the same run.

`python -m bench.floor REDIS_URL PORT ANSWER_FILE REQUEST_FILE` stores ANSWER_FILE in Redis under
the key of REQUEST_FILE's JSON, then answers every POST by decoding the JSON body, hashing its
canonical encoding (sha256) and returning the Redis value: aiohttp + uvloop + msgspec +
redis-py/hiredis, no access log, GC frozen after start-up (the minimal server of
docs/design.md §9). It prints `floor listening` when ready and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import uvloop
from aiohttp import web
from redis.asyncio import ConnectionPool, Redis

_CANONICAL = msgspec.json.Encoder(order="deterministic")
_DECODE = msgspec.json.Decoder()


def _key(body: bytes) -> str:
    return "floor:" + hashlib.sha256(_CANONICAL.encode(_DECODE.decode(body))).hexdigest()


async def _serve(redis_url: str, port: int, answer: bytes, request_body: bytes) -> None:
    redis = Redis(connection_pool=ConnectionPool.from_url(redis_url))
    await redis.set(_key(request_body), answer)

    async def hit(request: web.Request) -> web.Response:
        value = await redis.get(_key(await request.read()))
        if value is None:
            return web.Response(status=404)
        return web.Response(body=value, content_type="application/json", headers={"X-Cache": "HIT"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", hit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    gc.collect()
    gc.freeze()
    print("floor listening", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print(
            "usage: python -m bench.floor REDIS_URL PORT ANSWER_FILE REQUEST_FILE", file=sys.stderr
        )
        return 2
    redis_url, port, answer, request_body = args
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            _serve(redis_url, int(port), Path(answer).read_bytes(), Path(request_body).read_bytes())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
