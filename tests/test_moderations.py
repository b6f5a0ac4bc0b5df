"""Moderations through the sidecar: whole answers cached per tenant, persona never matters."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fixtures.sidecar import OTHER_API_KEY, Sidecar, Stub

TEXT = "I want to kill this bug in my code."


def moderate(client: openai.OpenAI, text: Any = TEXT) -> tuple[Any, dict[str, str]]:
    raw = client.moderations.with_raw_response.create(model="omni-moderation-latest", input=text)
    return raw.parse(), dict(raw.headers)


def test_miss_then_hit(any_sidecar: Sidecar, stub: Stub) -> None:
    client = any_sidecar.client()
    first, headers = moderate(client)
    assert headers["x-cache"] == "MISS"
    assert len(headers["x-cache-key"]) == 16
    assert first.results[0].flagged
    assert first.results[0].categories.violence
    second, headers = moderate(client)
    assert headers["x-cache"] == "HIT"
    assert int(headers["age"]) >= 0
    assert second.model_dump() == first.model_dump()
    assert stub.fake.moderation_inputs_per_call == [1]
    # A list of texts is its own request, with one result per text.
    many, headers = moderate(client, ["hello there", TEXT])
    assert headers["x-cache"] == "MISS"
    assert [r.flagged for r in many.results] == [False, True]
    assert stub.calls == 2


def test_persona_is_ignored(any_sidecar: Sidecar, stub: Stub) -> None:
    beginner = any_sidecar.client(**{"X-Persona-Experience": "beginner", "X-User-Id": "u1"})
    expert = any_sidecar.client(
        **{"X-Persona-Experience": "expert", "X-Persona-Density": "detailed", "X-User-Id": "u2"}
    )
    first, headers = moderate(beginner)
    assert headers["x-cache"] == "MISS"
    second, headers = moderate(expert)
    assert headers["x-cache"] == "HIT"
    assert second.model_dump() == first.model_dump()
    assert stub.calls == 1


def test_another_api_key_misses(any_sidecar: Sidecar, stub: Stub) -> None:
    assert moderate(any_sidecar.client())[1]["x-cache"] == "MISS"
    assert moderate(any_sidecar.client(api_key=OTHER_API_KEY))[1]["x-cache"] == "MISS"
    assert stub.calls == 2
    assert stub.fake.requests[-1].headers["authorization"] == f"Bearer {OTHER_API_KEY}"


@pytest.mark.parametrize("status", [500, 429])
def test_upstream_error_is_not_stored(any_sidecar: Sidecar, stub: Stub, status: int) -> None:
    client = any_sidecar.client()
    stub.fake.fail_next, stub.fake.fail_status = 1, status
    with pytest.raises(openai.APIStatusError) as caught:
        moderate(client)
    assert caught.value.status_code == status
    assert moderate(client)[1]["x-cache"] == "MISS"
    assert moderate(client)[1]["x-cache"] == "HIT"
    assert stub.calls == 2


def test_rejected_input_is_passed_through_and_not_stored(sidecar: Sidecar, stub: Stub) -> None:
    client = sidecar.client()
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as caught:
            moderate(client, "a BAD_INPUT text")
        assert caught.value.param == "input"
    assert stub.calls == 2
