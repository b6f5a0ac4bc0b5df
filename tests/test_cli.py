"""`python -m proxy serve` as a real process (docs/design.md §2): it answers the SDK, stops cleanly
on SIGTERM, turns a dead upstream into 502s, and refuses a taken port with one clear line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import openai
import pytest

from proxy.cli import backlog_note
from proxy.settings_load import ENV_FIELDS
from tests.fixtures.server_base import free_port
from tests.fixtures.sidecar import API_KEY, HttpAnswer, http_request

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15.0
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise the water cycle."}]


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], log: IO[bytes], port: int, admin: int):
        self.proc = proc
        self.log = log
        self.url = f"http://127.0.0.1:{port}/v1"
        self.admin = f"http://127.0.0.1:{admin}"

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def admin_get(self, path: str) -> HttpAnswer:
        return http_request(self.admin, "GET", path)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=API_KEY, max_retries=0, timeout=10)


def environ(**extra: str) -> dict[str, str]:
    names = {*ENV_FIELDS, "SIDECACHE_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def launch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log = (tmp_path / "stderr.log").open("w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", *args],
        env=environ(LEDGER_PATH=str(tmp_path / "ledger.db"), **env),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    return proc, log


def wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            pytest.fail(f"exited with {served.proc.returncode}: {served.stderr()}")
        try:
            if served.admin_get("/healthz").status == 200:
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"no /healthz within {START_TIMEOUT_S} s: {served.stderr()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """`serve(*args)`: a running `python -m proxy serve` on free loopback ports."""
    started: list[Served] = []

    def start(*args: str) -> Served:
        port, admin = free_port(), free_port()
        proc, log = launch(
            tmp_path,
            *args,
            PROXY_HOST="127.0.0.1",
            PROXY_PORT=str(port),
            ADMIN_PORT=str(admin),
        )
        served = Served(proc, log, port, admin)
        started.append(served)
        wait_healthy(served)
        return served

    yield start
    for served in started:
        stop(served.proc)
        served.log.close()


def test_fake_upstream_serves_the_sdk_and_sigterm_stops_it(serve: Any) -> None:
    served: Served = serve("--upstream", "fake")
    client = served.client()
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    text = first.parse().choices[0].message.content
    assert text and second.parse().choices[0].message.content == text

    ready = served.admin_get("/readyz")
    assert ready.status == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["cache"]["backend"] == "memory"

    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(5) == 0
    log = served.stderr()
    assert "stopped" in log.splitlines()[-1]
    assert API_KEY not in log


def test_unreachable_upstream_is_a_502_not_a_crash(serve: Any) -> None:
    closed = free_port()
    served: Served = serve("--upstream", f"http://127.0.0.1:{closed}/v1")
    client = served.client()
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == 502
        assert caught.value.response.json()["error"]["type"]
    assert served.proc.poll() is None
    assert served.admin_get("/healthz").status == 200


@pytest.mark.parametrize("which", ["PROXY_PORT", "ADMIN_PORT"])
def test_port_in_use_exits_1_with_one_line(tmp_path: Path, which: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"PROXY_PORT": str(free_port()), "ADMIN_PORT": str(free_port()), which: str(port)}
        proc, log = launch(tmp_path, PROXY_HOST="127.0.0.1", **ports)
        try:
            assert proc.wait(START_TIMEOUT_S) == 1
        finally:
            stop(proc)
    log.seek(0)
    lines = log.read().decode().splitlines()
    log.close()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sidecache: ")
    assert str(port) in lines[0]
    assert "in use" in lines[0].lower()


def _listen_backlog(port: int) -> int:
    """The backlog the kernel holds for a listening port (ss's Send-Q of a LISTEN socket)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    return int(out[2])


def test_both_ports_listen_with_the_backlog_asked_for(serve: Any) -> None:
    """Issue 19 item 11: the ports asked 1024 but aiohttp's site listened again with its default
    128. Now the kernel's cap (net.core.somaxconn) is the only limit, and it is logged."""
    served: Served = serve("--upstream", "fake")
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    expected = min(1024, cap)
    for url in (served.url, served.admin):
        port = int(url.removeprefix("http://").split(":")[1].split("/")[0])
        assert _listen_backlog(port) == expected
    assert ("net.core.somaxconn" in served.stderr()) == (cap < 1024)


def test_the_somaxconn_cap_is_explained(tmp_path: Path) -> None:
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    note = backlog_note(1024, somaxconn)
    assert note is not None
    assert "128" in note
    assert "sysctl -w net.core.somaxconn=1024" in note
    somaxconn.write_text("4096\n")
    assert backlog_note(1024, somaxconn) is None
    assert backlog_note(1024, tmp_path / "absent") is None  # not Linux: nothing said
