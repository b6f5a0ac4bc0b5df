"""The fuzzer's parts (tests/test_fuzz.py): what it sends, how it sends it, and what it watches.

A request is judged by its answer (no 5xx, no credential echoed) and by the log records emitted
while it was in flight (no traceback, no ERROR, no credential). Findings are collected rather
than raised one at a time, so a run names every distinct failure with one request that shows it.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import strategies as st

# Recognisable credentials: the proxy key is valid (the stub upstream takes any key), the admin
# token is one of ADMIN_TOKENS. Neither may ever appear in an answer or in a log line.
SECRET_KEY = "sk-fuzz-SECRET-0123456789abcdef"
SECRET_TOKEN = "admin-fuzz-SECRET-token-4242"
ADMIN_TOKENS = f"admin-token-alpha-123,{SECRET_TOKEN}"
SECRETS = (SECRET_KEY, SECRET_TOKEN, "fuzz-SECRET")
KEY_HEADERS = [
    ("Authorization", f"Bearer {SECRET_KEY}".encode()),
    ("api-key", SECRET_KEY.encode()),
    ("x-api-key", SECRET_KEY.encode()),
]
TOKEN_HEADERS = [("Authorization", f"Bearer {SECRET_TOKEN}".encode())]

PROXY_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations"]
PROXY_PATHS += ["/v1/models", "/v1/files", "/healthz", "/readyz", "/"]
ADMIN_PATHS = ["/api/admin/dashboard/overview", "/api/admin/dashboard/costs"]
ADMIN_PATHS += ["/api/admin/dashboard/cache/invalidate", "/api/admin/dashboard/cache/warm"]
ADMIN_PATHS += ["/api/admin/dashboard/circuits/reset", "/api/admin/openapi.json"]
ADMIN_PATHS += ["/metrics", "/healthz", "/readyz", "/"]
HEADERS = ["Authorization", "Cache-Control", "X-Cache-Scope", "X-Cache-Persona-Dims"]
HEADERS += ["X-Persona-Experience", "X-Persona-Interests", "X-User-Id", "X-Priority"]
HEADERS += ["Content-Type", "X-Admin-User", "api-key", "x-api-key", "OpenAI-Project"]
HEADERS += ["Expect", "Content-Encoding", "Accept-Encoding", "Cookie", "Origin"]
# Header values as bytes: anything but CR, LF and NUL (the framing cases send those raw).
HEADER_BYTES = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c not in (0, 10, 13)))
HEADER_VALUES = HEADER_BYTES | st.sampled_from(
    [b"100-continue", b"gzip", b"deflate", b"br", b"max-age=" + b"9" * 5000, b"\xff", b"\x80abc"]
)
SEGMENTS = st.sampled_from(
    ["..", "%2e%2e", "%2E%2e", "%00", "%ff", "a%20b", "%2f", "~", "%c3%a9", "", "_fake", "stats"]
)
JSON_BITS = [b'{"model":', b'"gpt-4o-mini"', b'"messages":[', b'{"role":"user","content":"hi"}']
JSON_BITS += [b"]", b"}", b",", b"\xff\xfe", b'"input":"x"', b"1e999", b'"\\ud800"', b"null"]
JSON_BITS += [b'"selectors":[{}]', b'"api_key":"a\\u0001b"', b'"user_id":"\\n"', b"[" * 50]
BODIES = st.lists(st.sampled_from(JSON_BITS), max_size=8).map(b"".join) | st.binary(max_size=60)


def small_bomb(encoding: str) -> bytes:
    """About 2 KB that inflate to 2 MB of a chat body: enough to show an unbounded inflate."""
    body = b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (2 << 20) + b'"}]}'
    return gzip.compress(body, 9) if encoding == "gzip" else zlib.compress(body, 9)


Headers = list[tuple[str, bytes]]
Request = tuple[str, str, Headers, bytes]


@st.composite
def requests(draw: st.DrawFn, paths: list[str]) -> Request:
    method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    path = draw(st.sampled_from(paths))
    extra = draw(st.lists(SEGMENTS, max_size=3))
    if extra:
        path = path.rstrip("/") + "/" + "/".join(extra)
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADERS), HEADER_VALUES), max_size=4))
    return method, path, headers, draw(BODIES)


def send(port: int, request: Request) -> tuple[int, bytes]:
    """One request through http.client: (status, the whole answer, head and body)."""
    method, path, headers, body = request
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        head = "".join(f"{k}: {v}\n" for k, v in answer.getheaders()).encode()
        return answer.status, head + answer.read()
    finally:
        connection.close()


def send_raw(port: int, data: bytes, *, half_close: bool = False, wait: float = 5) -> bytes:
    """Bytes an HTTP client would not send, on a raw socket; the answer as read until the
    server closes or `wait` seconds pass (b"" when nothing came). `half_close`: stop writing
    at once, as a client that hangs up mid-body."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may close before taking everything: judge its answer
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and not half_close and _complete(received):
                    break
        except OSError:
            pass
        return received


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int:
    """The status of the first final (not 1xx) answer in `answer`; 0 when there is none."""
    while True:
        parts = answer.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if not 100 <= status < 200:
            return status
        answer = answer.partition(b"\r\n\r\n")[2]


@dataclass
class LogTrap(logging.Handler):
    """Every record from every logger of the process (the sidecar runs in a thread of it)."""

    records: list[logging.LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(logging.DEBUG)

    def __hash__(self) -> int:
        return id(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def trapped_logs() -> Iterator[LogTrap]:
    trap, root = LogTrap(), logging.getLogger()
    level = root.level
    root.addHandler(trap)
    root.setLevel(logging.DEBUG)
    try:
        yield trap
    finally:
        root.removeHandler(trap)
        root.setLevel(level)


def log_problems(records: list[logging.LogRecord]) -> list[str]:
    """Each record that breaks a rule, as `RULE: logger LEVEL message` (first 200 chars)."""
    problems = []
    for record in records:
        text = _full_text(record)
        line = f"{record.name} {record.levelname} {record.getMessage()[:200]!r}"
        if record.exc_info or "Traceback" in text:
            problems.append(f"traceback in log: {line}")
        elif record.levelno >= logging.ERROR:
            problems.append(f"ERROR record: {line}")
        if any(secret in text for secret in SECRETS):
            problems.append(f"credential in log: {line}")
    return problems


def _full_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text + str(getattr(record, "__dict__", ""))


@dataclass
class Findings:
    """Failures grouped by signature (what kind of failure, on which route and status), each
    with the first request that showed it."""

    seen: dict[str, str] = field(default_factory=dict)

    def judge(self, what: str, route: str, status: int, answer: bytes, logs: list[str]) -> None:
        problems = [f"status {status}"] if status >= 500 else []
        if any(secret.encode() in answer for secret in SECRETS):
            problems.append("credential in answer")
        problems += [problem.split(": ", 1)[0] for problem in logs]
        for problem in problems:
            signature = f"{problem} on {route} (status {status})"
            detail = "\n      ".join([what[:300], *logs[:3]])
            self.seen.setdefault(signature, detail)

    def report(self) -> str:
        lines = [f"{len(self.seen)} failure signature(s):"]
        for signature, detail in sorted(self.seen.items()):
            lines.append(f"  - {signature}\n      {detail}")
        return "\n".join(lines)


def route_of(path: str) -> str:
    """The route a fuzzed path was built on: its first two known segments."""
    return "/".join(path.split("/")[:4])[:60] or "/"
