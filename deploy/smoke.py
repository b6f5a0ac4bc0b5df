"""Container smoke test: build the image with podman, run it, probe it, stop it.

Run with the repo venv (it needs the `openai` SDK): `make docker-smoke`, or
`.venv/bin/python deploy/smoke.py [--image TAG]`. Steps: build (deploy/podman/build-image.sh),
start a private Redis on a free loopback port, start the container with `--network host` on
free ports against the built-in fake upstream, wait for /healthz and the HEALTHCHECK, send one
chat request twice through the openai SDK (MISS, then HIT), scrape /metrics, stop the container
with SIGTERM and check it exited 0 within STOP_BUDGET_S. Container and Redis are removed on
every exit path. Prints each step's time, the image size and an `N passed, N failed` line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from openai import OpenAI

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SIDECACHE_PODMAN_STATE", "/var/tmp/sidecache-podman"))
STOP_BUDGET_S = 5.0
START_TIMEOUT_S = 60.0
SEMANTIC = os.environ.get("SIDECACHE_SEMANTIC") == "1"  # build-image.sh reads it too
IMAGE = "localhost/sidecache:semantic" if SEMANTIC else "localhost/sidecache:dev"
QUESTION = "How does photosynthesis work in plants?"
PARAPHRASE = "can you explain how plants do photosynthesis"


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


class Report:
    """Step timings and check results, printed at the end whatever happened."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.passed: list[str] = []
        self.failed: list[str] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"[smoke] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - started))

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        print(f"[smoke]   {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if not ok:
            self.failed.append(name)
            raise SmokeFailure(f"{name}: {detail}")
        self.passed.append(name)

    def print_summary(self, total_s: float) -> None:
        print("\n[smoke] step                           seconds")
        for name, seconds in self.steps:
            print(f"[smoke] {name:<30} {seconds:7.2f}")
        print(f"[smoke] {'total':<30} {total_s:7.2f}")
        print(f"docker-smoke: {len(self.passed)} passed, {len(self.failed)} failed")


def run(*args: str, check: bool = True, timeout: float = 120.0) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise SmokeFailure(f"{' '.join(args[:3])} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def container_logs(name: str, tail: str = "40") -> str:
    done = subprocess.run(
        ["podman", "logs", "--tail", tail, name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.2)
    raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read().decode()
    except OSError:
        return 0, ""


def redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_dbsize(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"DBSIZE\r\n")
        reply = sock.recv(64)
    return int(reply[1:].split(b"\r\n")[0]) if reply.startswith(b":") else -1


def ensure_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    print("[smoke] installing redis-server (Debian)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def container_state(name: str) -> dict[str, object]:
    state: dict[str, object] = json.loads(run("podman", "inspect", name))[0]["State"]
    return state


def health_status(name: str) -> str:
    state = container_state(name)
    health = state.get("Health") or state.get("Healthcheck") or {}
    return str(health.get("Status", "")) if isinstance(health, dict) else ""


def smoke(report: Report, image: str, cleanups: list[Callable[[], None]]) -> None:
    with report.step("build image"):
        subprocess.run(["bash", str(REPO / "deploy/podman/build-image.sh")], check=True)
    os.environ["CONTAINERS_CONF"] = str(STATE / "containers.conf")
    size_mb = int(run("podman", "image", "inspect", "--format", "{{.Size}}", image)) / 1e6
    print(f"[smoke] image {image}: {size_mb:.1f} MB")

    redis_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    with report.step("start redis"):
        workdir = Path(tempfile.mkdtemp(prefix="sidecache-smoke-"))
        cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        argv = f"--port {redis_port} --bind 127.0.0.1 --appendonly no --dir {workdir}".split()
        redis = subprocess.Popen(
            [ensure_redis_server(), *argv, "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop_redis() -> None:
            redis.terminate()
            redis.wait(timeout=10)

        cleanups.append(stop_redis)
        wait_until(f"redis on port {redis_port}", lambda: redis_pings(redis_port), 10)

    name = f"sidecache-smoke-{os.getpid()}"
    with report.step("start container"):

        def remove_container() -> None:
            run("podman", "rm", "--force", "--time", "0", name, check=False)

        cleanups.append(remove_container)
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PROXY_HOST": "127.0.0.1",
            "PROXY_PORT": str(proxy_port),
            "ADMIN_PORT": str(admin_port),
            "LOG_LEVEL": "info",
            **({"SEMANTIC_CACHE": "on", "HF_HUB_OFFLINE": "1"} if SEMANTIC else {}),
        }
        env_args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        run_args = f"run --detach --name {name} --network host".split()
        run("podman", *run_args, *env_args, image, "serve", "--upstream", "fake")

        def healthz_ok() -> bool:
            if container_state(name).get("Status") != "running":
                raise SmokeFailure("the container exited during start-up")
            return http_get(f"http://127.0.0.1:{admin_port}/healthz")[0] == 200

        wait_until("/healthz on the admin port", healthz_ok, START_TIMEOUT_S)
    report.check("admin /healthz answers 200", True, f"port {admin_port}")

    with report.step("container healthcheck"):
        # Podman runs HEALTHCHECKs from systemd timers; without systemd, run it on demand.
        run("podman", "healthcheck", "run", name, check=False)
        health = health_status(name)
        report.check("HEALTHCHECK reports healthy", health == "healthy", health or "no status")

    base_url = f"http://127.0.0.1:{proxy_port}/v1"
    with OpenAI(base_url=base_url, api_key="sk-smoke-test", max_retries=0) as client:
        for expected in ("MISS", "HIT"):
            with report.step(f"chat request ({expected})"):
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "Say hello to the smoke test."}],
                )
                completion = raw.parse()
                got = raw.headers.get("x-cache")
                report.check(f"X-Cache {expected}", got == expected, f"X-Cache: {got}")
                content = completion.choices[0].message.content if completion.choices else None
                report.check(f"completion has content ({expected})", bool(content))
        if SEMANTIC:
            semantic_hit(report, client, name)

    keys = redis_dbsize(redis_port)
    report.check("the cache entry is in the private Redis", keys > 0, f"DBSIZE {keys}")

    with report.step("readyz and /metrics"):
        status, _ = http_get(f"http://127.0.0.1:{admin_port}/readyz")
        report.check("admin /readyz answers 200", status == 200, f"HTTP {status}")
        status, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
        found = status == 200 and "sidecache_requests_total" in body
        report.check("/metrics has sidecache_requests_total", found, f"HTTP {status}")

    with report.step("stop (SIGTERM)"):
        started = time.perf_counter()
        run("podman", "stop", "--time", "10", name, timeout=30)
        took = time.perf_counter() - started
        code = container_state(name).get("ExitCode")
        report.check("exit code 0 after SIGTERM", code == 0, f"exit code {code} after {took:.2f} s")
        report.check(f"stopped within {STOP_BUDGET_S:.0f} s", took < STOP_BUDGET_S, f"{took:.2f} s")
    print(f"[smoke] image size: {size_mb:.1f} MB")


def semantic_hit(report: Report, client: OpenAI, name: str) -> None:
    """SIDECACHE_SEMANTIC=1 (not CI). Semantic lookups skip until the model has loaded."""
    with report.step("semantic model loaded"):
        wait_until("the model", lambda: "MiniLM-L6-v2 loaded" in container_logs(name, "-1"), 120)
    for question, expected in ((QUESTION, "MISS"), (PARAPHRASE, "semantic")):
        with report.step(f"semantic request ({expected})"):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
            got = raw.headers.get("x-cache-match") or raw.headers.get("x-cache")
            report.check(f"paraphrase {expected}", got == expected, f"X-Cache(-Match): {got}")
    rss = run("podman", "exec", name, "grep", "VmRSS", "/proc/1/status").split()[1]
    print(f"[smoke] RSS with the model loaded: {int(rss) / 1024:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("SIDECACHE_IMAGE", IMAGE))
    args = parser.parse_args()
    os.environ["SIDECACHE_IMAGE"] = args.image

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    report, cleanups = Report(), list[Callable[[], None]]()
    started = time.perf_counter()
    try:
        smoke(report, args.image, cleanups)
    except Exception as exc:  # any failure, the openai SDK's included, fails the smoke
        if not isinstance(exc, SmokeFailure) or not report.failed:
            report.failed.append(f"{type(exc).__name__}: {exc}")
        print(f"[smoke] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        logs = container_logs(f"sidecache-smoke-{os.getpid()}")
        if logs:
            print(f"[smoke] container log (tail):\n{logs}", file=sys.stderr)
    finally:
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"[smoke] cleanup: {exc}", file=sys.stderr)
        report.print_summary(time.perf_counter() - started)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
