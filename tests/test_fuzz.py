"""Hostile input on both ports (issues 19 and 23, "Done when"), on both cache stores.

Two parts, each judging every request by its answer and by the log records emitted meanwhile:
- hypothesis: mutated bodies, header values with any byte but CR/LF/NUL, odd path segments,
  with or without a recognisable credential (tests.fuzz_support.SECRETS);
- a framing matrix on raw sockets: Content-Length mismatches, bad chunking, duplicate and
  conflicting lengths, garbage and small bombs under Content-Encoding, odd `Expect` values,
  bare LF, obs-fold, very long heads.
The rules: no 5xx, no traceback and no ERROR record in the log, no credential in any answer or
log line, nothing written to the cache (the stub upstream answers every call with a 400, never
stored), and afterwards both ports healthy and a chat through the openai SDK a MISS then a HIT.

Bounded: `FUZZ_EXAMPLES` examples per port and store (default 100, derandomized so a CI failure
reproduces). For a long local run: `FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.sidecar import Sidecar, SidecarFactory, Stub
from tests.fuzz_support import (
    ADMIN_PATHS,
    ADMIN_TOKENS,
    KEY_HEADERS,
    PROXY_PATHS,
    SECRET_KEY,
    SECRET_TOKEN,
    TOKEN_HEADERS,
    Findings,
    LogTrap,
    Request,
    log_problems,
    requests,
    route_of,
    send,
    send_raw,
    small_bomb,
    status_of,
    trapped_logs,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))


class Fuzzed:
    """A sidecar under fuzz, the log trap watching it and the findings so far."""

    def __init__(self, sidecar: Sidecar, trap: LogTrap) -> None:
        self.sidecar, self.trap, self.findings = sidecar, trap, Findings()

    def port(self, admin: bool) -> int:
        return self.sidecar.admin_port if admin else self.sidecar.port

    def watch(self, what: str, route: str, exchange: tuple[int, bytes]) -> None:
        """Judge one exchange: `exchange` ran between the last call and this one."""
        status, answer = exchange
        time.sleep(0.02)  # aiohttp logs some errors just after the answer has gone
        logs = log_problems(self.trap.records)
        self.trap.records.clear()
        self.findings.judge(what, route, status, answer, logs)


@pytest.fixture(params=["memory", "redis"])
def fuzzed(
    request: pytest.FixtureRequest, make_sidecar: SidecarFactory, stub: Stub
) -> Iterator[Fuzzed]:
    stub.fake.fail_next, stub.fake.fail_status = 10**9, 400  # nothing the upstream says is stored
    env = {"ADMIN_TOKENS": ADMIN_TOKENS, "LOG_LEVEL": "DEBUG", "UPSTREAM_READ_TIMEOUT": "3"}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")  # flushed: starts empty
    sidecar = make_sidecar(**env)
    with trapped_logs() as trap:
        yield Fuzzed(sidecar, trap)
    if request.param == "redis":
        keys = request.getfixturevalue("redis_server").client().keys()
        assert keys == [b"sc:secret"]  # the key-hashing secret alone: no entry written
    else:
        assert sidecar.runtime.store.usage() == (0, 0)
    stub.fake.fail_next = 0
    assert_healthy(sidecar)


def assert_healthy(sidecar: Sidecar) -> None:
    for admin in (False, True):
        for path in ("/healthz", "/readyz"):
            assert sidecar.request("GET", path, admin=admin).status == 200, (admin, path)
    client = sidecar.client(api_key=SECRET_KEY)
    cache = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
        )
        cache.append(raw.headers["x-cache"])
    assert cache == ["MISS", "HIT"]


@pytest.mark.parametrize("port", ["proxy", "admin"])
def test_a_port_survives_hostile_requests(fuzzed: Fuzzed, port: str) -> None:
    admin = port == "admin"
    paths, credentials = (ADMIN_PATHS, TOKEN_HEADERS) if admin else (PROXY_PATHS, KEY_HEADERS)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(paths), st.sampled_from([[], credentials[:1], credentials]))
    def run(request: Request, keys: list[tuple[str, bytes]]) -> None:
        method, path, headers, body = request
        keyed = (method, path, keys + headers, body)
        what = f"{method} {path} headers={keys + headers!r} body={body[:80]!r}"
        fuzzed.watch(what, f"{method} {route_of(path)}", send(fuzzed.port(admin), keyed))

    run()
    assert not fuzzed.findings.seen, fuzzed.findings.report()


def framing_cases(admin: bool) -> list[tuple[str, bytes, bool]]:
    """(name, raw request, half-close) for the framing matrix on one port: the bytes an HTTP
    client refuses to send. Every request carries the port's credential."""
    auth = f"Authorization: Bearer {SECRET_TOKEN if admin else SECRET_KEY}\r\n".encode()
    path = b"/api/admin/dashboard/cache/invalidate" if admin else b"/v1/chat/completions"
    through = b"/api/admin/dashboard/cache/warm" if admin else b"/v1/files"
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'

    def post(head: bytes, payload: bytes = body, target: bytes = path) -> bytes:
        start = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth
        return start + head + b"\r\n" + payload

    def sized(payload: bytes, extra: bytes = b"", target: bytes = path) -> bytes:
        return post(b"Content-Length: %d\r\n" % len(payload) + extra, payload, target)

    cases = [
        (
            "Content-Length longer than the body, then hang up",
            post(b"Content-Length: 500\r\n"),
            True,
        ),
        ("body longer than Content-Length", post(b"Content-Length: 10\r\n"), False),
        ("duplicate Content-Length, same", post(b"Content-Length: %d\r\n" % len(body) * 2), False),
        (
            "duplicate Content-Length, different",
            post(b"Content-Length: 5\r\nContent-Length: 9\r\n"),
            False,
        ),
        (
            "Transfer-Encoding and Content-Length",
            post(
                b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"5\r\nhello\r\n0\r\n\r\n"
            ),
            False,
        ),
        (
            "chunk size not hex",
            post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
            False,
        ),
        (
            "chunk size negative",
            post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
            False,
        ),
        (
            "chunk size huge",
            post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nhi\r\n"),
            True,
        ),
        (
            "chunk longer than its size",
            post(b"Transfer-Encoding: chunked\r\n", b"2\r\nhello\r\n0\r\n\r\n"),
            False,
        ),
        (
            "chunked without the last chunk, then hang up",
            post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"),
            True,
        ),
        ("bare LF line endings", sized(body, b"X-A: 1\r\n").replace(b"\r\n", b"\n"), False),
        (
            "obs-fold",
            post(b"X-User-Id: a\r\n  folded\r\nContent-Length: %d\r\n" % len(body)),
            False,
        ),
        ("very long header value", sized(body, b"X-User-Id: " + b"v" * 200_000 + b"\r\n"), False),
        (
            "very many headers",
            sized(body, b"".join(b"X-H%d: v\r\n" % i for i in range(500))),
            False,
        ),
        ("header name with a space", sized(body, b"Bad Name: v\r\n"), False),
        ("Expect: 100-continue", sized(body, b"Expect: 100-continue\r\n"), False),
        ("Expect: odd token", sized(body, b"Expect: 200-ok\r\n"), False),
        ("Expect: non-ASCII byte", sized(body, b"Expect: 100-continu\xe9\r\n"), False),
        (
            "Expect: non-ASCII on /healthz",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + auth + b"Expect: \xff\r\n\r\n",
            False,
        ),
        (
            "Cache-Control: max-age= 5000 digits",
            sized(body, b"Cache-Control: max-age=" + b"9" * 5000 + b"\r\n"),
            False,
        ),
        (
            "Cache-Control: max-age= non-ASCII digits",
            sized(body, "Cache-Control: max-age=\u0663\r\n".encode()),
            False,
        ),
        (
            "Expect 100-continue + deflate, pass-through",
            sized(
                zlib.compress(body),
                b"Expect: 100-continue\r\nContent-Encoding: deflate\r\n",
                through,
            ),
            False,
        ),
        (
            "invalid UTF-8 body",
            sized(b'{"a":"\xff\xfe"}', b"Content-Type: application/json\r\n"),
            False,
        ),
    ]
    if not admin:  # the fake upstream's control routes, reached through the proxy
        for target in (b"/v1/%2e%2e/_fake/stats", b"/v1/../_fake/stats", b"/v1/%2E%2E/_fake/knobs"):
            get = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth
            cases.append((f"GET {target.decode()}", get + b"\r\n", False))
    for encoding in ("gzip", "deflate", "br"):
        garbage = b"\x1f\x8b\x08\x00garbage-not-" + encoding.encode()
        ce = b"Content-Encoding: %s\r\n" % encoding.encode()
        cases.append((f"{encoding} body that is garbage", sized(garbage, ce), False))
        cases.append((f"{encoding} garbage, pass-through", sized(garbage, ce, through), False))
        if encoding != "br":
            cases.append((f"{encoding} bomb 2 MB", sized(small_bomb(encoding), ce), False))
            cases.append(
                (
                    f"{encoding} bomb 2 MB, pass-through",
                    sized(small_bomb(encoding), ce, through),
                    False,
                )
            )
    return cases


@pytest.mark.parametrize("port", ["proxy", "admin"])
def test_a_port_survives_bad_framing(fuzzed: Fuzzed, port: str) -> None:
    admin = port == "admin"
    for name, data, half_close in framing_cases(admin):
        answer = send_raw(fuzzed.port(admin), data, half_close=half_close)
        fuzzed.watch(f"{name}: {data[:160]!r}", name, (status_of(answer), answer))
    assert not fuzzed.findings.seen, fuzzed.findings.report()


def test_the_secrets_are_recognisable() -> None:
    """The credential rule can fail: a log line or answer holding a secret is a finding."""
    findings = Findings()
    findings.judge("probe", "/", 200, f"echo {SECRET_KEY}".encode(), [])
    findings.judge("probe", "/", 200, b"", log_problems([]))
    assert list(findings.seen) == ["credential in answer on / (status 200)"]
    assert SECRET_TOKEN in ADMIN_TOKENS
