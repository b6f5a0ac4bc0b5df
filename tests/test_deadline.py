"""Issue 19, items 6, 8 and 11: a trickling upstream cannot hold the upstream slots forever
(total deadline, bounded slot wait, abandoned calls cancelled), one tenant cannot open the
shared breaker for everyone, a decoded request body goes upstream without its encoding, and
an answer with no choices is never cached.

The stub's `drip_ms` knob answers 200 and then trickles filler bytes forever (each well inside
the read timeout), `hang` holds a request before its headers; both count the requests whose
client closed the connection (`abandoned`), which is how a test sees a call cancelled upstream.
"""

from __future__ import annotations

import gzip
import json

import pytest

from tests.fixtures.sidecar import SidecarFactory, Stub
from tests.test_single_flight import messages

CHAT = "/v1/chat/completions"


def chat_body(question: str = "What is a deadline?") -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": messages(question)}


# -- item 11: choices: [] ----------------------------------------------------------------------


def test_an_answer_without_choices_is_relayed_but_never_cached(
    make_sidecar: SidecarFactory, stub: Stub
) -> None:
    sidecar = make_sidecar()
    stub.fake.empty_choices = True
    first = sidecar.request("POST", CHAT, chat_body())
    assert first.status == 200 and first.json()["choices"] == []
    second = sidecar.request("POST", CHAT, chat_body())
    assert second.headers["x-cache"] == "MISS"  # not served from a stored partial answer
    assert stub.calls == 2


# -- item 8: Content-Encoding of a decoded request body -----------------------------------------


@pytest.mark.parametrize("path", [CHAT, "/v1/not-understood"])
def test_a_gzip_request_body_goes_upstream_decoded_without_its_encoding(
    make_sidecar: SidecarFactory, stub: Stub, path: str
) -> None:
    """aiohttp decodes a request body sent with Content-Encoding, so what goes upstream is the
    decoded body: its encoding header must not go with it (understood and pass-through)."""
    sidecar = make_sidecar()
    body = chat_body("Compressed question")
    answer = sidecar.request(
        "POST",
        path,
        gzip.compress(json.dumps(body).encode()),
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    received = stub.fake.requests[-1]
    assert "content-encoding" not in received.headers
    assert received.body == body  # the stub could read it
    assert answer.status == (200 if path == CHAT else 404)
