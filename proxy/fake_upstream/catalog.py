"""The models the fake serves: real OpenAI names, plus any a test adds with the `extra_models`
knob. Every other name is a 404 `model_not_found`, as on the real API."""

from __future__ import annotations

from typing import Any

from .state import FakeUpstream
from .wire import FakeApiError

# id -> `created`, as OpenAI lists them.
MODELS = {
    "gpt-4o-mini": 1721172741,
    "gpt-4o-mini-2024-07-18": 1721172717,
    "gpt-4o": 1715367049,
    "gpt-4o-2024-08-06": 1722814719,
    "gpt-4.1": 1744316542,
    "gpt-4.1-mini": 1744318173,
    "gpt-4.1-nano": 1744321707,
    "o4-mini": 1744225351,
    "gpt-3.5-turbo": 1677610602,
    "gpt-3.5-turbo-instruct": 1692901427,
    "text-embedding-3-small": 1705948997,
    "text-embedding-3-large": 1705953180,
    "text-embedding-ada-002": 1671217299,
    "omni-moderation-latest": 1731689265,
    "text-moderation-latest": 1687884100,
    # Anthropic's, for /v1/messages (proxy/fake_upstream/messages.py).
    "claude-sonnet-4-5": 1759104000,
    "claude-haiku-4-5": 1760486400,
    "claude-opus-4-1": 1754352000,
    "claude-3-5-haiku-latest": 1729555200,
}
_EXTRA_CREATED = 1700000000


def model_ids(fake: FakeUpstream) -> list[str]:
    return list(MODELS) + sorted(set(fake.extra_models) - MODELS.keys())


def model_object(fake: FakeUpstream, model_id: str) -> dict[str, Any]:
    created = MODELS.get(model_id, _EXTRA_CREATED)
    owner = "system" if model_id in MODELS else "user"
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner}


def check_model(fake: FakeUpstream, model_id: str) -> None:
    """The 404 OpenAI answers a generation/embedding/moderation request for an unknown model."""
    if model_id in MODELS or model_id in fake.extra_models:
        return
    raise FakeApiError(
        404,
        f"The model `{model_id}` does not exist or you do not have access to it.",
        code="model_not_found",
    )
