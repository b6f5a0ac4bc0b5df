"""Issue 19, items 6, 8 and 11: a trickling upstream cannot hold the upstream slots forever
(total deadline, bounded slot wait, abandoned calls cancelled), one tenant cannot open the
shared breaker for everyone, a decoded request body goes upstream without its encoding, and
an answer with no choices is never cached.

The stub's `drip_ms` knob answers 200 and then trickles filler bytes forever (each well inside
the read timeout), `hang` holds a request before its headers; both count the requests whose
client closed the connection (`abandoned`), which is how a test sees a call cancelled upstream.
"""

from __future__ import annotations

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
