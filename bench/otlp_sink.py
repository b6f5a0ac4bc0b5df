"""A local OTLP/HTTP trace receiver for bench/tracing.py: accepts every POST /v1/traces and
discards it, counting the exports and their bytes (GET /count answers "exports bytes").
Run as `python -m bench.otlp_sink PORT`: a process of its own, so that receiving the spans is
not on the sidecar's CPU any more than a real collector's would be."""

from __future__ import annotations

import sys

from aiohttp import web


class Sink:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def traces(self, request: web.Request) -> web.Response:
        self.bytes += len(await request.read())
        self.exports += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def count(self, _: web.Request) -> web.Response:
        return web.Response(text=f"{self.exports} {self.bytes}")


def main() -> None:
    sink = Sink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", sink.traces)
    app.router.add_get("/count", sink.count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
