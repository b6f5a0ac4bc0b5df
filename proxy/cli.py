"""`sidecache` command line, and the composition root that starts the proxy and admin ports.

This is the one module of `proxy` that imports `admin` (docs/design.md §1).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
from aiohttp import web

from admin.app import create_admin_app
from admin.report.build import WINDOWS
from admin.report.command import report_text, write_report
from proxy.cache.open_redis import check_redis
from proxy.connection import GuardedAppRunner
from proxy.fake_upstream import FakeUpstream, start_fake_upstream
from proxy.ledger.factory import migrate_ledger
from proxy.logs import configure_logging
from proxy.runtime import close_runtime, open_runtime
from proxy.server import create_proxy_app
from proxy.settings import Settings, SettingsError
from proxy.settings_load import load_settings
from proxy.workers import Mesh, Supervisor, WorkerPlace, make_run_dir, stop_when_orphaned

log = logging.getLogger("sidecache")
SHUTDOWN_GRACE_S = 10.0
# Connections the kernel may queue before `accept`: a burst of new connections beyond it is
# refused or retried by SYN timeouts. Linux caps it at net.core.somaxconn (backlog_note).
BACKLOG = 1024
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sidecache", description="Caching sidecar for OpenAI-compatible AI calls."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the proxy and admin ports")
    serve_cmd.add_argument(
        "--upstream",
        metavar="URL|fake",
        help="upstream base URL (overrides UPSTREAM_BASE_URL), or 'fake' for the built-in "
        "fake OpenAI-compatible upstream (no API key needed)",
    )
    serve_cmd.add_argument(
        "--workers",
        metavar="N",
        help="processes sharing the proxy and admin ports (overrides WORKERS; default 1)",
    )
    # A worker's place, given by the supervisor (proxy/workers/supervisor.py).
    serve_cmd.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve_cmd.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    commands.add_parser(
        "migrate",
        help="apply the ledger's SQL migrations to DATABASE_URL (else the SQLite LEDGER_PATH)",
    )
    report_cmd = commands.add_parser("report", help="the optimisation report from the ledger")
    report_cmd.add_argument("--window", choices=sorted(WINDOWS), default="7d")
    report_cmd.add_argument("--format", choices=("md", "html"), default="md")
    report_cmd.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    args = parser.parse_args(argv)
    if args.command == "serve" and (args.worker_index is None) != (args.run_dir is None):
        parser.error("--worker-index and --run-dir go together (the supervisor gives both)")
    if args.command == "migrate":
        return migrate_command(dict(os.environ))
    if args.command == "report":
        return report_command(dict(os.environ), args.window, args.format, args.out)
    environ = dict(os.environ)
    fake = args.upstream == "fake"
    if args.upstream and not fake:
        environ["UPSTREAM_BASE_URL"] = args.upstream
    if fake:  # a demo answering anyone's key: loopback only, unless PROXY_HOST says otherwise
        environ.setdefault("PROXY_HOST", "127.0.0.1")
    if args.workers is not None:
        environ["WORKERS"] = args.workers
    settings = _settings(environ)
    if settings is None:
        return 2
    place = None if args.worker_index is None else WorkerPlace(args.worker_index, args.run_dir)
    try:
        if place is None and settings.server.workers > 1:
            return supervise(settings, args.upstream)
        _run(serve(settings, fake=fake, place=place))
    except OSError as exc:
        print(f"sidecache: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings(environ: dict[str, str]) -> Settings | None:
    """The settings with logging set up, or None after one line on stderr (exit status 2)."""
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        print(f"sidecache: {exc}", file=sys.stderr)
        return None
    configure_logging(settings.server.log_level)
    return settings


def migrate_command(environ: dict[str, str]) -> int:
    """`sidecache migrate`: 0 when the schema is current, 1 when the database failed."""
    settings = _settings(environ)
    if settings is None:
        return 2
    try:
        where, applied = asyncio.run(migrate_ledger(settings))
    except Exception as exc:  # any database failure: one line, never the DSN's password
        print(f"sidecache: migrate failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    done = f"applied {', '.join(map(str, applied))}" if applied else "already up to date"
    print(f"sidecache: ledger schema at {where}: {done}")
    return 0


def report_command(environ: dict[str, str], window: str, fmt: str, out: str | None) -> int:
    """`sidecache report`: 0 with the report written, 1 when the ledger failed."""
    settings = _settings(environ)
    if settings is None:
        return 2
    try:
        text = asyncio.run(report_text(settings, window, fmt))
    except Exception as exc:  # any database failure: one line, never the DSN's password
        print(f"sidecache: report failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    write_report(text, out)
    return 0


def backlog_note(requested: int = BACKLOG, somaxconn: Path = SOMAXCONN) -> str | None:
    """What to log when the kernel silently caps the listen backlog below `requested`: Linux
    truncates `listen(backlog)` to net.core.somaxconn (128 before kernel 5.4, 4096 since).
    None when it does not, or where there is no such file (not Linux)."""
    try:
        cap = int(somaxconn.read_text())
    except (OSError, ValueError):
        return None
    if cap >= requested:
        return None
    return (
        f"the listen backlog is {cap}, not {requested}: the kernel caps it at "
        f"net.core.somaxconn; raise it with `sysctl -w net.core.somaxconn={requested}` "
        "(in a container: its own sysctl, e.g. `docker run --sysctl`)"
    )


def supervise(settings: Settings, upstream: str | None) -> int:
    """WORKERS > 1: the ports are checked free (one line and exit 1 if not), then the workers
    run under the supervisor until SIGTERM/SIGINT."""
    server = settings.server
    for host, port, setting in (
        (server.proxy_host, server.proxy_port, "PROXY_PORT"),
        (server.admin_host, server.admin_port, "ADMIN_PORT"),
    ):
        _listen(host, port, setting).close()  # without SO_REUSEPORT: fails if anyone holds it
    asyncio.run(check_redis(settings.cache))  # a wrong password or certificate: once, here
    if settings.cache.redis_url is None:
        log.warning(
            "WORKERS=%d without REDIS_URL: the memory cache, budgets and single-flight are "
            "per worker (set REDIS_URL to share them)",
            server.workers,
        )
    given = ["--upstream", upstream] if upstream else []

    def command(index: int, run_dir: Path) -> list[str]:
        place = ["--workers", str(server.workers), "--worker-index", str(index)]
        return [sys.executable, "-m", "proxy", "serve", *given, *place, "--run-dir", str(run_dir)]

    return asyncio.run(Supervisor(server.workers, command, make_run_dir()).run())


def _listen(host: str, port: int, setting: str, *, shared: bool = False) -> socket.socket:
    """`shared`: SO_REUSEPORT, the workers' way of listening on one port together."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=shared)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot listen on {host}:{port} ({setting}): {reason}") from None


def _loopback_url(sock: socket.socket) -> str:
    """How this process reaches its own proxy port (a wildcard bind answers on loopback)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)  # type: ignore[arg-type]


async def serve(
    settings: Settings, *, fake: bool = False, place: WorkerPlace | None = None
) -> None:
    """Runs until SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish (up to
    SHUTDOWN_GRACE_S) and closes every service. `place`: run as one of the supervisor's workers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = settings.server
    shared = place is not None
    # Both ports are taken before anything starts, so a port in use fails with one line.
    sockets = (
        _listen(server.proxy_host, server.proxy_port, "PROXY_PORT", shared=shared),
        _listen(server.admin_host, server.admin_port, "ADMIN_PORT", shared=shared),
    )
    if place is not None:
        settings = place.settings(settings)
        stop_when_orphaned(loop, stop)
    runners: list[web.AppRunner] = []
    if fake:
        fake_runner, fake_url = await start_fake_upstream(FakeUpstream())
        runners.append(fake_runner)
        upstream = msgspec.structs.replace(
            settings.upstream, base_url=fake_url, anthropic_base_url=None, api_key=None
        )
        settings = msgspec.structs.replace(settings, upstream=upstream)
        log.info("using the built-in fake upstream at %s", fake_url)
    note = backlog_note()
    if note is not None:
        log.warning("%s", note)
    proxy_url = _loopback_url(sockets[0])
    runtime = await open_runtime(settings, proxy_url=proxy_url)
    mesh: Mesh | None = None
    try:
        access_log = logging.getLogger("aiohttp.access") if server.access_log else None
        if place is not None:
            mesh = Mesh(runtime, place.run_dir, place.index, server.workers)
        apps = (create_proxy_app(runtime), create_admin_app(runtime, proxy_url, mesh))
        if mesh is not None:  # after the admin app added its routes to it
            await mesh.start()
        for app, sock in zip(apps, sockets, strict=True):
            runner = GuardedAppRunner(
                app,
                header_read_timeout=server.header_read_timeout_s,
                access_log=access_log,
                shutdown_timeout=SHUTDOWN_GRACE_S,
            )
            await runner.setup()
            runners.insert(0, runner)
            # The event loop calls listen() again with the site's backlog (aiohttp's default:
            # 128), so the site must be given it too.
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        log.info(
            "sidecache ready: proxy http://%s:%d/v1, admin http://%s:%d (cache: %s, upstream: %s)",
            server.proxy_host,
            server.proxy_port,
            server.admin_host,
            server.admin_port,
            runtime.store.backend,
            "fake" if fake else settings.upstream.base_url,
        )
        if place is not None:
            log.info("worker %d of %d ready (pid %d)", place.index, server.workers, os.getpid())
        gc.collect()
        gc.freeze()  # long-lived start-up objects leave the GC's scans (docs/design.md §9)
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        for started in runners:
            await started.cleanup()
        if mesh is not None:
            await mesh.close()
        await close_runtime(runtime)
    log.info("stopped")
