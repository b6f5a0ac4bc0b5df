"""Child processes on loopback: free ports, start with logs, wait for readiness, always stop."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 5.0


class HarnessError(RuntimeError):
    """The bench itself could not measure (a server did not start, a check failed)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn(
    stack: ExitStack,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.Popen[bytes]:
    """Starts `argv` in `cwd` in its own session (Ctrl-C reaches only the driver, which stops
    it in order) with stdout and stderr in `log`; `stack` stops it (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    stack.callback(_stop, proc)
    return proc


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 20.0,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"{what} exited with status {proc.returncode}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    raise HarnessError(f"{what} not ready after {timeout_s:.0f} s:\n{log_tail(log)}")


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Answer:
    """A finished HTTP exchange: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Answer:
    """One plain HTTP/1.1 request to an `http://host:port/path` URL."""
    if not url.startswith("http://"):
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    hostport, _, path = url[len("http://") :].partition("/")
    conn = http.client.HTTPConnection(hostport, timeout=timeout_s)
    try:
        conn.request(method, "/" + path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def answers_200(url: str) -> bool:
    try:
        return request("GET", url, timeout_s=1.0).status == 200
    except OSError:
        return False


def clean_env(extra: Mapping[str, str], drop: Sequence[str]) -> dict[str, str]:
    """The driver's environment without `drop` (settings that would change what is measured),
    plus `extra`."""
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env.update(extra)
    return env
