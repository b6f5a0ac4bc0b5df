"""An upstream of the test's own that authenticates the way Azure OpenAI (`api-key`) and
Anthropic (`x-api-key`) do, as well as by `Authorization: Bearer`, and records every request
it receives, whatever its path (the fake upstream answers only the OpenAI routes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fixtures.sidecar import LoopThread, serve_double


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]  # names lower-cased


@dataclass
class Recorder:
    url: str = ""  # the base URL to give the sidecar (ends in /v1)
    # Accepted keys, by owner; a request presenting none of them is a 401 unless `open`.
    keys: dict[str, str] = field(default_factory=dict)
    open: bool = False  # a local model server that takes no credential at all
    seen: list[Seen] = field(default_factory=list)

    @property
    def chat_calls(self) -> int:
        return sum(1 for s in self.seen if s.raw_path == "/v1/chat/completions")

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Seen(request.method, request.raw_path, headers))
        if request.raw_path != "/v1/chat/completions":
            return web.json_response({"path": request.raw_path})
        await request.read()
        presented = [
            headers.get("api-key"),
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer ") or None,
        ]
        owner = next((self.keys[k] for k in presented if k in self.keys), None)
        if owner is None and not self.open:
            error = {"message": "Access denied due to invalid subscription key.", "code": "401"}
            return web.json_response({"error": error}, status=401)
        return web.json_response(_completion(f"answer #{self.chat_calls} for {owner}"))


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-recorder",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
    }


@pytest.fixture
def recorder(loop_thread: LoopThread) -> Iterator[Recorder]:
    double = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", double.handle)
    runner, double.url = loop_thread.run(serve_double(app))
    yield double
    loop_thread.run(runner.cleanup())
