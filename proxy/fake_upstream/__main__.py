"""`python -m proxy.fake_upstream`: run the fake upstream on its own until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from .app import start_fake_upstream
from .state import FakeUpstream


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.fake_upstream",
        description="A fake OpenAI-compatible upstream (deterministic answers, test knobs).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    if args.latency_ms < 0 or args.chunk_delay_ms < 0:
        parser.error("--latency-ms and --chunk-delay-ms must be >= 0")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        parser.error("--max-concurrency must be >= 1")
    return args


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeUpstream(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        max_concurrency=args.max_concurrency,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, url = await start_fake_upstream(fake, args.host, args.port)
    try:
        print(f"fake upstream listening on {url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
